"""Draft decoding (``"draft": true``): JPEGs decoded at 1/2, 1/4 or 1/8 scale
in the DCT domain, compared with Pillow after ``Image.draft('RGB', size)``.

Only libjpeg-turbo decodes at a reduced scale (cargo feature ``turbojpeg``, on
in every documented build). Against a pure-Rust build
(``PIXELFEED_PURE_RUST=1``), the refusal is checked and the pixel tests skip
visibly.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import pixelfeed
from pfhelpers import (
    bundled_images,
    check_against_pillow,
    corpus_path,
    image_files,
    open_drafted,
    open_oriented,
    run_named,
    server_drafts,
)

#: Small resize targets so the bundled images (128 to 640 pixels) are drafted
#: at 2, 4 and 8; the imagenet preset for the 4 Mpx benchmark photos.
SMALL = {"resize": {"mode": "shorter_side", "size": 48}, "crop": {"mode": "center", "height": 40, "width": 40},
         "dtype": "uint8", "layout": "hwc", "draft": True}
MEDIUM = {"resize": {"mode": "shorter_side", "size": 100}, "crop": {"mode": "center", "height": 96, "width": 96},
          "draft": True, "preset": "imagenet"}
IMAGENET_DRAFT = {"preset": "imagenet", "draft": True}
EXACT = {"resize": {"mode": "exact", "height": 60, "width": 50}, "filter": "bicubic", "dtype": "uint8",
         "layout": "hwc", "draft": True}

#: Largest mean |diff| (0–255 scale) against Pillow with the same draft. Both
#: sides run libjpeg-turbo's scaled IDCT; what remains is the resize's ±1.
DRAFT_TOLERANCE = 0.5


@pytest.fixture
def drafting(client):
    if not server_drafts(client):
        pytest.skip("server built without libjpeg-turbo (a pure-Rust build): draft pixels not tested")
    return client


def _jpegs() -> List[Tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in bundled_images() if p.suffix == ".jpg"]


def test_draft_is_refused_or_decodes(client):
    """A build either drafts or refuses the spec by name; it never decodes in full silently."""
    if server_drafts(client):
        out = run_named(client, [("a", _jpegs()[0][1])], SMALL)["a"]
        assert out[3] is None
    else:
        with pytest.raises((flight.FlightError, pa.ArrowException), match="spec field draft"):
            run_named(client, [("a", _jpegs()[0][1])], SMALL)


@pytest.mark.parametrize("spec", [SMALL, MEDIUM, EXACT], ids=["small_u8", "medium_f32", "exact_bicubic"])
def test_bundled_jpegs_match_pillow_draft(drafting, spec: Dict[str, Any]):
    scales = set()
    for name, data in _jpegs():
        _, scale = open_drafted(data, spec)
        scales.add(scale)
        check_against_pillow(drafting, f"draft:{name}", data, spec, "draft", tolerance=DRAFT_TOLERANCE)
    if spec is SMALL:
        # The bundled set reaches the scales 2 and 8, and the CMYK file too.
        assert {2, 8} <= scales, scales


def test_benchmark_photos_match_pillow_draft(drafting):
    root = corpus_path()
    if root is None or not (root / "bench" / "large").is_dir():
        pytest.skip("../shared/corpus/bench/large not present")
    for path in image_files(root / "bench" / "large")[:6]:
        data = path.read_bytes()
        _, scale = open_drafted(data, IMAGENET_DRAFT)
        assert scale == 4, f"{path.name}: Pillow drafted at 1/{scale}"
        check_against_pillow(drafting, f"draft:{path.name}", data, IMAGENET_DRAFT, "draft",
                             tolerance=DRAFT_TOLERANCE)


def test_draft_differs_from_full_decode_and_says_where_it_came_from(drafting):
    """Drafting really happens (pixels differ from a full decode), and the
    geometry column still speaks in full-size source coordinates."""
    name, data = next((n, d) for n, d in _jpegs() if n.startswith("china"))
    full_spec = dict(SMALL, draft=False)
    table = pa.table({"image": pa.array([data], pa.binary())})
    drafted = next(iter(drafting.preprocess(table, spec=SMALL)))
    full = next(iter(drafting.preprocess(table, spec=full_spec)))
    a = pixelfeed.tensors(drafted)[0]
    b = pixelfeed.tensors(full)[0]
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.1, "draft gave the full decode's pixels"
    img = open_oriented(data)
    g_draft = drafted.column("geometry").to_pylist()[0]
    g_full = full.column("geometry").to_pylist()[0]
    # 640x427 -> shorter side 48: the crop spans ~40/48 of the short side in
    # both cases; the drafted box is within a couple of drafted pixels (8
    # source pixels each) of the full one.
    for key in ("box_top", "box_left", "box_height", "box_width"):
        assert abs(g_draft[key] - g_full[key]) <= 16, (key, g_draft[key], g_full[key])
    assert abs(g_draft["scale_x"] - g_full["scale_x"]) < 0.01
    assert 0 <= g_draft["box_left"] and g_draft["box_left"] + g_draft["box_width"] <= img.width + 8


def test_png_is_decoded_in_full(drafting):
    """No scaled decoder for PNG: draft leaves its pixels as a full decode gives them (CMYK JPEGs
    are drafted, as Pillow drafts them: see test_bundled_jpegs_match_pillow_draft)."""
    named = [(p.name, p.read_bytes()) for p in bundled_images() if p.suffix == ".png"]
    assert named
    drafted = run_named(drafting, named, SMALL)
    full = run_named(drafting, named, dict(SMALL, draft=False))
    for name, _ in named:
        assert drafted[name][3] is None, (name, drafted[name][3])
        np.testing.assert_array_equal(drafted[name][0], full[name][0], err_msg=name)


def test_damaged_draft_is_an_error_when_strict_and_a_warning_otherwise(drafting):
    _, data = next((n, d) for n, d in _jpegs() if n.startswith("mpl_grace"))
    cut = data[: len(data) * 6 // 10]
    table = pa.table({"image": pa.array([cut, data], pa.binary())})
    strict = next(iter(drafting.preprocess(table, spec=dict(SMALL, strict=True))))
    errors = pixelfeed.errors(strict)
    assert errors[0] and "JPEG" in errors[0], errors
    assert errors[1] is None
    lenient = next(iter(drafting.preprocess(table, spec=SMALL)))
    assert pixelfeed.errors(lenient) == [None, None]
    warnings = lenient.column("warning").to_pylist()
    assert warnings[0] and warnings[1] is None, warnings
    # The decoded part of the cut file matches the intact one at the top.
    top = pixelfeed.tensors(lenient)
    np.testing.assert_allclose(top[0][:4].astype(int), top[1][:4].astype(int), atol=2)
