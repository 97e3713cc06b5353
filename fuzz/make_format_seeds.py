"""Writes the WebP/GIF/BMP/TIFF variants of tests/python/test_more_formats.py
(valid files of every layout the tests compare with Pillow, plus the hostile
ones) into DIR/<format>/, as seeds for the per-format fuzz targets.

    python fuzz/make_format_seeds.py fuzz/seeds-formats
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))

import test_more_formats as variants  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    for fmt, table in (("webp", variants.WEBP), ("gif", variants.GIF), ("bmp", variants.BMP), ("tiff", variants.TIFF)):
        folder = out / fmt
        folder.mkdir(parents=True, exist_ok=True)
        for name, (make, _) in table.items():
            (folder / f"{name}.{fmt}").write_bytes(make())
    for name, data, _ in variants._hostile():
        fmt = name.split("_", 1)[0]
        (out / fmt / f"hostile_{name}.{fmt}").write_bytes(data)


if __name__ == "__main__":
    main()
