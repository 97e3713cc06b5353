"""Server pixels against the Pillow/torchvision reference.

Every bundled image and every JPEG/PNG in ``../shared/corpus/real/`` (when the
corpus is there) goes through the server with the ``imagenet`` preset and with
a uint8 HWC spec; each output must have the reference's shape and a mean
absolute difference (0–255 scale) of at most 1.0 for JPEG (decoders differ in
IDCT and chroma upsampling rounding) and 0.5 for PNG (lossless: only resize
rounding may differ). Measured values are printed in a table at the end of the
run (see ``conftest.pytest_terminal_summary``).

Synthetic images (random noise, made here with NumPy and saved as PNG by
Pillow) pin down the geometry: torchvision's long-side truncation, the
round-half-to-even centre-crop offset, exact resizes and every filter.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
from PIL import Image

from pfhelpers import (
    SPECS,
    check_against_pillow,
    TOLERANCE,
    bundled_images,
    corpus_path,
    expected_shape,
    image_files,
    mean_abs_diff,
    pillow_reference,
    record_diff,
    run_named,
    sniff,
)


def _cases() -> List[Tuple[str, Path]]:
    """(label, path) for the bundled images and, when present, corpus/real."""
    cases = [(f"data/{p.name}", p) for p in bundled_images()]
    corpus = corpus_path()
    if corpus is not None and (corpus / "real").is_dir():
        cases += [(f"real/{p.name}", p) for p in image_files(corpus / "real")]
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def server_outputs(session_client):
    """``get(spec_name)`` → the server's output for every case, one call per spec (cached)."""
    cache: Dict[str, dict] = {}

    def get(spec_name: str) -> dict:
        """Outputs for every case under ``SPECS[spec_name]``."""
        if spec_name not in cache:
            named = [(name, path.read_bytes()) for name, path in CASES]
            cache[spec_name] = run_named(session_client, named, SPECS[spec_name])
        return cache[spec_name]

    return get


def test_real_corpus_is_covered(corpus):
    """Visible skip (via the ``corpus`` fixture) when ../shared/corpus is missing."""
    real = image_files(corpus / "real")
    assert real, "corpus/real has no JPEG/PNG files"
    assert sum(1 for name, _ in CASES if name.startswith("real/")) == len(real)


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("name,path", CASES, ids=[n for n, _ in CASES])
def test_matches_pillow(server_outputs, spec_name: str, name: str, path: Path):
    data = path.read_bytes()
    kind = sniff(data)
    spec = SPECS[spec_name]
    ref, (src_h, src_w) = pillow_reference(data, spec)
    tensor, height, width, error = server_outputs(spec_name)[name]
    assert error is None and tensor is not None, f"{name}: server reported {error!r}"
    assert tensor.shape == expected_shape(spec)
    diff = mean_abs_diff(tensor, spec, ref)
    record_diff(spec_name, name, kind, diff)
    assert (height, width) == (src_h, src_w), "height/width columns are not the oriented source size"
    assert diff <= TOLERANCE[kind], f"{name}: mean |diff| {diff:.3f} > {TOLERANCE[kind]} ({kind})"


# ---------------------------------------------------------------------------------------
# Geometry, on synthetic noise (any one-pixel shift or wrong size shows as a huge diff).


def _noise_png(width: int, height: int, seed: int, mode: str = "RGB") -> bytes:
    """A PNG of uniform random noise (every pixel shift is visible)."""
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    img = Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _check_one(client, data: bytes, spec: dict, label: str, tolerance: float = 0.5) -> float:
    """Compare one synthetic PNG with Pillow under ``spec`` (recorded as "geometry")."""
    return check_against_pillow(client, label, data, spec, "geometry", tolerance)[0]


# (w, h): 500x375 is the typical ImageNet size (long side 341: crop offset 58.5
# rounds to 58, half to even); the others exercise truncation of the long side
# and tall images.
@pytest.mark.parametrize("size", [(500, 375), (375, 500), (333, 17), (17, 333), (7, 13), (1, 1), (300, 256), (257, 300)])
def test_shorter_side_geometry(client, size):
    w, h = size
    spec = {"preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": None}
    _check_one(client, _noise_png(w, h, seed=w * 1000 + h), spec, f"noise_{w}x{h}")


@pytest.mark.parametrize("crop_w,crop_h", [(100, 100), (99, 98), (116, 99)])
def test_center_crop_offsets_round_half_to_even(client, crop_w, crop_h):
    # An identity resize (exact to the source size, nearest) isolates the crop:
    # (117 - 100) / 2 = 8.5 must give 8, as Python's round() does in torchvision.
    spec = {
        "resize": {"mode": "exact", "height": 100, "width": 117},
        "crop": {"mode": "center", "height": crop_h, "width": crop_w},
        "filter": "nearest",
        "dtype": "uint8",
        "layout": "hwc",
    }
    _check_one(client, _noise_png(117, 100, seed=7), spec, f"crop_{crop_w}x{crop_h}_of_117x100", tolerance=0.0)


@pytest.mark.parametrize("filt", ["nearest", "bilinear", "bicubic", "lanczos3"])
@pytest.mark.parametrize("out", [(96, 64), (300, 200)], ids=["down", "up"])
def test_filters_match_pillow(client, filt, out):
    w, h = out
    data = (Path(__file__).resolve().parents[1] / "data" / "images" / "pillow_hopper.png").read_bytes()
    spec = {
        "resize": {"mode": "exact", "height": h, "width": w},
        "filter": filt,
        "dtype": "uint8",
        "layout": "hwc",
    }
    _check_one(client, data, spec, f"hopper.png->{w}x{h}/{filt}")


def test_float_chw_without_normalize_is_pixels_over_255(client):
    data = _noise_png(64, 48, seed=3)
    spec = {"resize": {"mode": "exact", "height": 48, "width": 64}, "filter": "nearest", "dtype": "float32", "layout": "chw"}
    ref, _ = pillow_reference(data, spec)
    tensor, *_rest, error = run_named(client, [("f", data)], spec)["f"]
    assert error is None
    assert tensor.dtype == np.float32 and tensor.shape == (3, 48, 64)
    np.testing.assert_allclose(tensor.transpose(1, 2, 0), ref / 255.0, atol=1e-6)


def test_normalize_is_applied_per_channel(client):
    data = _noise_png(32, 32, seed=4)
    mean, std = [0.1, 0.5, 0.9], [0.5, 0.25, 2.0]
    spec = {
        "resize": {"mode": "exact", "height": 32, "width": 32},
        "filter": "nearest",
        "normalize": {"mean": mean, "std": std},
    }
    ref, _ = pillow_reference(data, spec)
    tensor, *_rest, error = run_named(client, [("n", data)], spec)["n"]
    assert error is None
    want = (ref / 255.0 - np.asarray(mean)) / np.asarray(std)
    np.testing.assert_allclose(tensor.transpose(1, 2, 0), want, atol=1e-5)
