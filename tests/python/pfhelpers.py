"""Helpers shared by the Python end-to-end tests: paths, the Pillow reference
pipeline, and the registry of measured differences printed at the end of a run.

The reference is what a PyTorch user would get from torchvision on PIL images:
``Image.open -> ImageOps.exif_transpose -> convert('RGB' | 'L') ->
resize((w, h), filter) -> center crop``, with torchvision's geometry
(shorter side -> ``size``, longer side ``int(size * long / short)``, crop
offsets ``int(round((H - h) / 2))`` with Python's round-half-to-even).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[2]
DATA_IMAGES = REPO / "tests" / "data" / "images"

#: The wire contract's ``imagenet`` preset, expanded (a contract, not pixels).
IMAGENET: Dict[str, Any] = {
    "resize": {"mode": "shorter_side", "size": 256},
    "crop": {"mode": "center", "height": 224, "width": 224},
    "filter": "bilinear",
    "color": "rgb",
    "dtype": "float32",
    "layout": "chw",
    "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "exif_orientation": True,
}

#: The two specs every pixel test runs with.
SPECS: Dict[str, Dict[str, Any]] = {
    "imagenet": {"preset": "imagenet"},
    "uint8_hwc": {"preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": None},
}

#: Largest mean |diff| (0–255 scale) accepted per image, by format.
#: Lossy formats 1.0, lossless ones 0.5 (issue #15); a lossless WebP or a
#: JPEG-compressed TIFF passes its own tolerance explicitly.
TOLERANCE = {"JPEG": 1.0, "PNG": 0.5, "WebP": 1.0, "GIF": 0.5, "BMP": 0.5, "TIFF": 0.5}

PIL_FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos3": Image.LANCZOS,
}

#: (spec name, image) -> (format, mean |diff|, note); printed by conftest's summary hook.
DIFFS: Dict[Tuple[str, str], Tuple[str, float, str]] = {}


def record_diff(spec_name: str, image: str, kind: str, mean_abs_diff: float, note: str = "") -> None:
    """Remember one measured mean |diff| for the end-of-run table."""
    DIFFS[(spec_name, image)] = (kind, float(mean_abs_diff), note)


#: title -> lines; printed as extra sections by conftest's summary hook (for
#: tables that are not one number per image, e.g. the JPEG layout matrix).
SUMMARIES: Dict[str, List[str]] = {}


def record_summary(title: str, lines: List[str]) -> None:
    """Print ``lines`` under ``title`` at the end of the run (replaces an earlier entry)."""
    SUMMARIES[title] = list(lines)


def corpus_path() -> Optional[Path]:
    """``<repo>/../shared/corpus`` (or ``$PIXELFEED_CORPUS``), ``None`` when absent."""
    import os

    env = os.environ.get("PIXELFEED_CORPUS")
    path = Path(env) if env else REPO.parent / "shared" / "corpus"
    return path if path.is_dir() else None


def sniff(data: bytes) -> Optional[str]:
    """The format the server decodes ``data`` as, by magic bytes (``"JPEG"``,
    ``"PNG"``, ``"WebP"``, ``"GIF"``, ``"BMP"``, ``"TIFF"``), ``None`` for
    anything else. Needs the first 18 bytes."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "TIFF"
    if data[:2] == b"BM" and len(data) >= 18 and int.from_bytes(data[14:18], "little") in (12, 16, 40, 52, 56, 64, 108, 124):
        return "BMP"
    return None


def image_files(folder: Path) -> List[Path]:
    """Every file in ``folder`` the server decodes (by magic bytes, not extension), sorted."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file():
            with open(p, "rb") as f:
                if sniff(f.read(18)):
                    out.append(p)
    return out


def bundled_images() -> List[Path]:
    """The JPEG/PNG files shipped in ``tests/data/images``."""
    return image_files(DATA_IMAGES)


def resolve(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """Expand a spec the way the contract says (preset first, then whole-field overrides)."""
    out: Dict[str, Any] = {}
    if spec.get("preset") == "imagenet":
        out = json.loads(json.dumps(IMAGENET))
    elif "preset" in spec:
        raise ValueError(f"unknown preset {spec['preset']}")
    for k, v in spec.items():
        if k != "preset":
            out[k] = v
    out.setdefault("filter", "bilinear")
    out.setdefault("color", "rgb")
    out.setdefault("dtype", "float32")
    out.setdefault("layout", "chw")
    out.setdefault("normalize", None)
    out.setdefault("crop", None)
    out.setdefault("exif_orientation", True)
    return out


def resized_size(width: int, height: int, resize: Mapping[str, Any]) -> Tuple[int, int]:
    """(new_w, new_h) as torchvision computes it for a PIL image."""
    if resize["mode"] == "exact":
        return int(resize["width"]), int(resize["height"])
    size = int(resize["size"])
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_box(width: int, height: int, crop_w: int, crop_h: int) -> Tuple[int, int, int, int]:
    """torchvision ``center_crop`` box: offsets ``int(round((H - h) / 2.0))`` (Python round)."""
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return left, top, left + crop_w, top + crop_h


def _to_8bit(img: Image.Image) -> Image.Image:
    """Bring 16/32-bit integer grayscale images to 8 bits the way the contract says.

    The contract takes the high byte of 16-bit samples (``v >> 8``). Pillow's
    own ``convert('L')`` from ``I;16`` *clamps* (every value above 255 becomes
    255), which no training pipeline wants, so the reference is built
    explicitly from the 16-bit samples instead of with ``convert``. (16-bit RGB
    PNGs already open as 8-bit ``RGB``/``RGBA`` in Pillow, high bytes kept.)
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.int64)
        if img.mode == "I" and arr.max(initial=0) <= 255:
            return Image.fromarray(arr.astype(np.uint8), "L")
        return Image.fromarray((arr >> 8).clip(0, 255).astype(np.uint8), "L")
    return img


def open_oriented(data: bytes, orient: bool = True) -> Image.Image:
    """Open and (optionally) apply EXIF/XMP orientation exactly as Pillow does."""
    img = Image.open(io.BytesIO(data))
    img.load()
    if orient:
        img = ImageOps.exif_transpose(img)
    return img


#: EXIF orientations that swap width and height (transpose and the rotations by 90°).
_TRANSPOSING = {5, 6, 7, 8}


def open_drafted(data: bytes, spec: Mapping[str, Any]) -> Tuple[Image.Image, int]:
    """Open a JPEG the way a Pillow user with ``draft`` would: the resized size
    of the full image is asked of ``Image.draft('RGB', size)`` (in stored
    orientation), then the drafted image is oriented. Returns the image and the
    scale Pillow chose (1 when it did not draft, as for CMYK and PNG files)."""
    s = resolve(spec)
    full = open_oriented(data, bool(s["exif_orientation"]))
    new_w, new_h = resized_size(full.width, full.height, s["resize"])
    img = Image.open(io.BytesIO(data))
    orientation = img.getexif().get(0x0112, 1) if s["exif_orientation"] else 1
    if orientation in _TRANSPOSING:
        new_w, new_h = new_h, new_w
    scale = 1
    if img.format == "JPEG":
        img.draft(img.mode, (new_w, new_h))
        scale = img.decoderconfig[0] if img.decoderconfig else 1
    img.load()
    if s["exif_orientation"]:
        img = ImageOps.exif_transpose(img)
    return img, scale


def server_drafts(client: Any) -> bool:
    """Whether the server under test was built with libjpeg-turbo (cargo
    feature ``turbojpeg``, on by default), which alone drafts: one bundled
    JPEG sent with ``"draft": true``. Any refusal other than the "built
    without" one fails the test."""
    import pyarrow as pa
    import pyarrow.flight as flight

    data = (DATA_IMAGES / "pillow_hopper.jpg").read_bytes()
    try:
        run_named(client, [("probe", data)], {"preset": "imagenet", "draft": True})
        return True
    except (flight.FlightError, pa.ArrowException) as e:
        assert "built without libjpeg-turbo" in str(e), f"unexpected refusal: {e}"
        return False


def pillow_reference(data: bytes, spec: Mapping[str, Any]) -> Tuple[np.ndarray, Tuple[int, int]]:
    """Reference pixels for one image: (uint8 array H×W×C, (source_h, source_w) after orientation).

    With ``"draft": true`` the pipeline starts from :func:`open_drafted`; the
    returned source size is still the full image's."""
    s = resolve(spec)
    img = open_oriented(data, bool(s["exif_orientation"]))
    src_w, src_h = img.size
    if s.get("draft"):
        img, _ = open_drafted(data, s)
    img = _to_8bit(img)
    with warnings.catch_warnings():
        # "Palette images with Transparency expressed in bytes should be
        # converted to RGBA": irrelevant, alpha is dropped either way.
        warnings.simplefilter("ignore", UserWarning)
        img = img.convert("RGB" if s["color"] == "rgb" else "L")
    new_w, new_h = resized_size(img.width, img.height, s["resize"])
    img = img.resize((new_w, new_h), PIL_FILTERS[s["filter"]])
    if s["crop"]:
        img = img.crop(center_crop_box(new_w, new_h, int(s["crop"]["width"]), int(s["crop"]["height"])))
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr, (src_h, src_w)


def to_255_hwc(tensor: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """Bring one server tensor back to float64 H×W×C on the 0–255 scale.

    Float output is de-normalised (``(x * std + mean) * 255``), uint8 used as is.
    """
    s = resolve(spec)
    x = np.asarray(tensor, dtype=np.float64)
    if s["layout"] == "chw":
        x = x.transpose(1, 2, 0)
    if s["dtype"] == "float32":
        if s["normalize"]:
            mean = np.asarray(s["normalize"]["mean"], dtype=np.float64)
            std = np.asarray(s["normalize"]["std"], dtype=np.float64)
            x = x * std + mean
        x = x * 255.0
    return x


def expected_shape(spec: Mapping[str, Any]) -> Tuple[int, int, int]:
    """The per-row tensor shape the spec asks for, in layout order."""
    s = resolve(spec)
    if s["crop"]:
        h, w = int(s["crop"]["height"]), int(s["crop"]["width"])
    else:
        h, w = int(s["resize"]["height"]), int(s["resize"]["width"])
    c = 3 if s["color"] == "rgb" else 1
    return (c, h, w) if s["layout"] == "chw" else (h, w, c)


def run_named(client: Any, named: Iterable[Tuple[str, bytes]], spec: Mapping[str, Any], batch_size: int = 16):
    """Send ``(name, bytes)`` pairs through one ``preprocess`` call.

    Returns ``{name: (tensor ndarray or None, height, width, error)}``, checking
    on the way that rows come back in input order.
    """
    import pixelfeed
    import pyarrow as pa

    named = list(named)
    table = pa.table(
        {
            "id": pa.array([n for n, _ in named], pa.string()),
            "image": pa.array([d for _, d in named], pa.binary()),
        }
    )
    out: Dict[str, Tuple[Optional[np.ndarray], Optional[int], Optional[int], Optional[str]]] = {}
    ids: List[str] = []
    for batch in client.preprocess(table, spec=dict(spec), batch_size=batch_size):
        x = pixelfeed.tensors(batch)
        ok = pixelfeed.valid(batch)
        errs = pixelfeed.errors(batch)
        hs = batch.column("height").to_pylist()
        ws = batch.column("width").to_pylist()
        for i, name in enumerate(batch.column("id").to_pylist()):
            ids.append(name)
            out[name] = (np.array(x[i]) if ok[i] else None, hs[i], ws[i], errs[i])
    assert ids == [n for n, _ in named], "rows came back out of order or missing"
    return out


def mean_abs_diff(server_tensor: np.ndarray, spec: Mapping[str, Any], reference: np.ndarray) -> float:
    """Mean |server - reference| on the 0–255 scale (shapes must match)."""
    got = to_255_hwc(server_tensor, spec)
    assert got.shape == reference.shape, f"shape {got.shape} != reference {reference.shape}"
    return float(np.abs(got - reference.astype(np.float64)).mean())


def check_against_pillow(
    client: Any,
    label: str,
    data: bytes,
    spec: Mapping[str, Any],
    group: str,
    tolerance: Optional[float] = None,
) -> Tuple[float, np.ndarray, int, int]:
    """Send one image alone, compare with the Pillow reference, record and assert.

    Checks: no error, the spec's shape, height/width columns equal the oriented
    source size, mean |diff| ≤ ``tolerance`` (default: by format). Returns
    (diff, tensor, height, width).
    """
    kind = sniff(data) or "?"
    ref, (src_h, src_w) = pillow_reference(data, spec)
    tensor, height, width, error = run_named(client, [(label, data)], spec)[label]
    assert error is None and tensor is not None, f"{label}: server reported {error!r}"
    assert tensor.shape == expected_shape(spec)
    diff = mean_abs_diff(tensor, spec, ref)
    record_diff(group, label, kind, diff)
    assert (height, width) == (src_h, src_w), (
        f"{label}: height/width columns {(height, width)} != oriented source size {(src_h, src_w)}"
    )
    tol = TOLERANCE.get(kind, 0.5) if tolerance is None else tolerance
    assert diff <= tol, f"{label}: mean |diff| {diff:.3f} > {tol} ({kind})"
    return diff, tensor, height, width
