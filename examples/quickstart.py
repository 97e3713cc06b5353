#!/usr/bin/env python3
"""pixelfeed quick start: send images to a running server, print what comes back.

    python examples/quickstart.py --server grpc://127.0.0.1:8815
    python examples/quickstart.py --corpus --repeat 20     # throughput run

It sends the sample images in ``tests/data/images/`` (plus the JPEG/PNG files
in ``../shared/corpus/real/`` with ``--corpus``), prints one line per image
(tensor shape, dtype, source size, or the error), then images/s and MB/s.
With ``--repeat N`` the image list is streamed N times through one call, which
is a throughput measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pyarrow as pa

import pixelfeed

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "images"
CORPUS_REAL = REPO.parent / "shared" / "corpus" / "real"


def is_image(path: Path) -> bool:
    """JPEG or PNG by magic bytes (the server sniffs the same way)."""
    with open(path, "rb") as f:
        head = f.read(8)
    return head[:3] == b"\xff\xd8\xff" or head == b"\x89PNG\r\n\x1a\n"


def load_images(with_corpus: bool) -> List[Tuple[str, bytes]]:
    """(name, bytes) for every sample image (and corpus image if asked)."""
    folders = [SAMPLES]
    if with_corpus:
        if CORPUS_REAL.is_dir():
            folders.append(CORPUS_REAL)
        else:
            print(f"note: {CORPUS_REAL} not found, using the bundled samples only", file=sys.stderr)
    out = []
    for folder in folders:
        for p in sorted(folder.iterdir()):
            if p.is_file() and is_image(p):
                out.append((f"{folder.name}/{p.name}", p.read_bytes()))
    return out


def parse_spec(text: str):
    """A preset name or a JSON object."""
    return json.loads(text) if text.lstrip().startswith("{") else text


def show_results(client: pixelfeed.Client, images: List[Tuple[str, bytes]], spec, batch_size: int) -> int:
    """One pass with names attached; prints a line per image; returns the failure count."""
    table = pa.table(
        {
            "name": pa.array([n for n, _ in images], pa.string()),
            "image": pa.array([d for _, d in images], pa.binary()),
        }
    )
    failures = 0
    width = max(len(n) for n, _ in images)
    print(f"  {'image':<{width}}  {'src WxH':>9}    tensor")
    for batch in client.preprocess(table, spec=spec, batch_size=batch_size):
        x = pixelfeed.tensors(batch)
        ok = pixelfeed.valid(batch)
        errs = pixelfeed.errors(batch)
        hs = batch.column("height").to_pylist()
        ws = batch.column("width").to_pylist()
        for i, name in enumerate(batch.column("name").to_pylist()):
            if ok[i]:
                size = f"{ws[i]}x{hs[i]}"
                print(f"  {name:<{width}}  {size:>9} -> shape {tuple(x.shape[1:])} {x.dtype}"
                      f"  mean {float(x[i].mean()):+.3f}")
            else:
                failures += 1
                print(f"  {name:<{width}}  ERROR {errs[i]}")
    return failures


def throughput(client: pixelfeed.Client, images: List[Tuple[str, bytes]], spec, batch_size: int, repeat: int) -> None:
    """Stream the images ``repeat`` times through one call; print images/s and MB/s."""
    datas = [d for _, d in images]

    def stream() -> Iterator[bytes]:
        """The image list, ``repeat`` times over, produced lazily."""
        for _ in range(repeat):
            yield from datas

    n_in = len(datas) * repeat
    bytes_in = sum(len(d) for d in datas) * repeat
    rows = bytes_out = 0
    start = time.perf_counter()
    for batch in client.preprocess(stream(), spec=spec, batch_size=batch_size):
        rows += batch.num_rows
        bytes_out += pixelfeed.tensors(batch).nbytes
    secs = time.perf_counter() - start
    assert rows == n_in, f"sent {n_in} images, got {rows} rows back"
    print(
        f"{rows} images in {secs:.2f} s: {rows / secs:.1f} images/s, "
        f"{bytes_in / secs / 1e6:.1f} MB/s encoded in, {bytes_out / secs / 1e6:.1f} MB/s tensors out"
    )


def main(argv=None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default="grpc://127.0.0.1:8815", help="Flight location of a running server")
    ap.add_argument("--corpus", action="store_true", help="also send ../shared/corpus/real images if present")
    ap.add_argument("--repeat", type=int, default=1, help="stream the image list N times for a throughput run")
    ap.add_argument("--spec", default="imagenet", help='preset name or JSON spec, e.g. \'{"preset":"imagenet","dtype":"uint8"}\'')
    ap.add_argument("--batch-size", type=int, default=64, help="rows per request batch")
    args = ap.parse_args(argv)

    images = load_images(args.corpus)
    spec = parse_spec(args.spec)
    print(f"pixelfeed quickstart: {len(images)} images -> {args.server} (spec {json.dumps(spec)})")
    with pixelfeed.connect(args.server, timeout=600) as client:
        try:
            presets = client.presets()
        except Exception as e:  # noqa: BLE001 - the usual first-run problem: nothing listening
            print(f"error: cannot reach a pixelfeed server at {args.server}: {e}", file=sys.stderr)
            return 2
        print(f"server presets: {', '.join(sorted(presets))}")
        failures = show_results(client, images, spec, args.batch_size)
        print(f"{len(images) - failures} ok, {failures} failed")
        throughput(client, images, spec, args.batch_size, max(1, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
