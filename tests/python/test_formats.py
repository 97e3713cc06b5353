"""Format and colour-model coverage, each compared with Pillow.

EXIF orientation (all 8 values, bundled and synthetic non-square), grayscale,
CMYK and progressive JPEG, 16-bit, palette (+tRNS) and RGBA PNG, and the
``gray`` colour spec against Pillow's ``convert('L')``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pfhelpers import (
    DATA_IMAGES,
    check_against_pillow,
    mean_abs_diff,
    open_oriented,
    pillow_reference,
    run_named,
)

UINT8_HWC = {"preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": None}
IMAGENET = {"preset": "imagenet"}
GRAY_HWC = {"preset": "imagenet", "color": "gray", "dtype": "uint8", "layout": "hwc", "normalize": None}


def _read(name: str) -> bytes:
    """A bundled image's bytes."""
    return (DATA_IMAGES / name).read_bytes()


def _orientation_file(k: int) -> str:
    """Bundled hopper file carrying EXIF orientation ``k`` (1: none)."""
    return "pillow_hopper.jpg" if k == 1 else f"pillow_hopper_orientation_{k}.jpg"


@pytest.mark.parametrize("k", range(1, 9))
def test_exif_orientation_bundled(client, k):
    data = _read(_orientation_file(k))
    # The bundled file really carries orientation k (guards the test itself).
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112, 1) == k
    diff, tensor, _, _ = check_against_pillow(client, f"orientation_{k}", data, UINT8_HWC, "formats")
    if k != 1:
        # Ignoring the tag would be far off: the test can tell orientations apart.
        unrotated, _ = pillow_reference(data, dict(UINT8_HWC, exif_orientation=False))
        wrong = mean_abs_diff(tensor, UINT8_HWC, unrotated)
        assert wrong > 5 * max(diff, 1.0), f"orientation {k}: output is as close to the unrotated image"


def _oriented_jpeg(k: int, size=(128, 80)) -> bytes:
    """A non-square (128 wide, 80 high) JPEG with EXIF orientation ``k``."""
    src = Image.open(DATA_IMAGES / "pillow_hopper.png").convert("RGB").resize(size, Image.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = k
    buf = io.BytesIO()
    src.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("k", range(1, 9))
def test_exif_orientation_non_square_dims(client, k):
    data = _oriented_jpeg(k)
    oriented = open_oriented(data)
    want_w, want_h = oriented.size
    assert (want_w, want_h) == ((128, 80) if k <= 4 else (80, 128))
    _, _, height, width = check_against_pillow(client, f"synthetic_orientation_{k}", data, UINT8_HWC, "formats")
    assert (height, width) == (want_h, want_w)


def test_exif_orientation_can_be_disabled(client):
    data = _oriented_jpeg(6)
    spec = dict(UINT8_HWC, exif_orientation=False)
    _, _, height, width = check_against_pillow(client, "orientation_6_ignored", data, spec, "formats")
    assert (height, width) == (80, 128)


@pytest.mark.parametrize("name", ["pillow_xmp_tags_orientation.png", "pillow_exif_imagemagick_orientation.png"])
def test_png_orientation_like_pillow(client, corpus, name):
    """PNG orientation from XMP ``tiff:Orientation`` / an ImageMagick EXIF text
    chunk: the reference is whatever Pillow's ``exif_transpose`` does, and the
    test checks that this really is a rotation (so ignoring it would fail)."""
    path = corpus / "real" / name
    if not path.exists():
        pytest.skip(f"{path} missing")
    data = path.read_bytes()
    orientation = Image.open(io.BytesIO(data)).getexif().get(0x0112, 1)
    assert orientation != 1, f"Pillow sees no orientation in {name}: the reference would not rotate"
    diff, tensor, _, _ = check_against_pillow(client, f"orientation/{name}", data, UINT8_HWC, "formats")
    unrotated, _ = pillow_reference(data, dict(UINT8_HWC, exif_orientation=False))
    assert mean_abs_diff(tensor, UINT8_HWC, unrotated) > 5 * max(diff, 1.0)


def test_grayscale_jpeg(client):
    data = _read("pillow_hopper_gray.jpg")
    assert Image.open(io.BytesIO(data)).mode == "L"
    _, tensor, _, _ = check_against_pillow(client, "gray.jpg", data, UINT8_HWC, "formats")
    # Gray source, RGB output: three equal channels.
    assert np.array_equal(tensor[..., 0], tensor[..., 1]) and np.array_equal(tensor[..., 1], tensor[..., 2])
    check_against_pillow(client, "gray.jpg/float", data, IMAGENET, "formats")


def test_cmyk_jpeg(client):
    data = _read("pillow_pil_sample_cmyk.jpg")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    check_against_pillow(client, "cmyk.jpg", data, UINT8_HWC, "formats")


def test_progressive_jpeg(client):
    data = _read("china_progressive_420_q90.jpg")
    assert Image.open(io.BytesIO(data)).info.get("progressive") or Image.open(io.BytesIO(data)).info.get(
        "progression"
    )
    check_against_pillow(client, "progressive.jpg", data, UINT8_HWC, "formats")
    check_against_pillow(client, "progressive.jpg/float", data, IMAGENET, "formats")


def test_16bit_png_takes_high_byte(client):
    data = _read("coffee_gray16.png")
    img = Image.open(io.BytesIO(data))
    assert img.mode.startswith("I;16")
    _, tensor, _, _ = check_against_pillow(client, "gray16.png", data, UINT8_HWC, "formats")
    # Pillow's own convert('L') clamps 16-bit values to 255: the server must
    # not do that (the reference above takes the high byte explicitly).
    clamped = np.asarray(img).clip(0, 255).astype(np.uint8)
    if (np.asarray(img) > 255).mean() > 0.5:
        clamped_img = Image.fromarray(clamped, "L").convert("RGB")
        assert np.asarray(clamped_img).mean() > 200  # mostly white: clearly different
        assert tensor.mean() < 200


def test_palette_png_with_trns(client):
    data = _read("coffee_palette16_trns.png")
    img = Image.open(io.BytesIO(data))
    assert img.mode == "P" and "transparency" in img.info
    check_against_pillow(client, "palette_trns.png", data, UINT8_HWC, "formats")


def test_palette_png(client):
    data = _read("pillow_hopper_wal.png")
    assert Image.open(io.BytesIO(data)).mode == "P"
    check_against_pillow(client, "palette.png", data, UINT8_HWC, "formats")


def test_rgba_png_drops_alpha(client):
    data = _read("pillow_pil123rgba.png")
    assert Image.open(io.BytesIO(data)).mode == "RGBA"
    check_against_pillow(client, "rgba.png", data, UINT8_HWC, "formats")


def test_rgba_alpha_is_dropped_not_premultiplied(client):
    # Random colours under random alpha (a quarter fully transparent): the
    # output must be the colour channels as stored, like convert('RGB').
    rng = np.random.default_rng(11)
    rgba = rng.integers(0, 256, size=(40, 50, 4), dtype=np.uint8)
    rgba[::2, ::2, 3] = 0
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    spec = {"resize": {"mode": "exact", "height": 40, "width": 50}, "filter": "nearest", "dtype": "uint8", "layout": "hwc"}
    _, tensor, _, _ = check_against_pillow(client, "rgba_noise.png", buf.getvalue(), spec, "formats", tolerance=0.0)
    assert np.array_equal(tensor, rgba[:, :, :3])


@pytest.mark.parametrize(
    "name",
    [
        "pillow_hopper.jpg",
        "pillow_hopper.png",
        "pillow_hopper_gray.jpg",
        "pillow_hopper_wal.png",
        "pillow_pil123rgba.png",
        "coffee_palette16_trns.png",
        "coffee_gray16.png",
        "pillow_pil_sample_cmyk.jpg",
        "china_progressive_420_q90.jpg",
    ],
)
def test_gray_spec_matches_convert_L(client, name):
    data = _read(name)
    _, tensor, _, _ = check_against_pillow(client, f"gray/{name}", data, GRAY_HWC, "formats")
    assert tensor.shape == (224, 224, 1)


def test_gray_spec_weights_exact_on_png(client):
    # ITU-R 601 luma exactly as Pillow's convert('L') rounds it, on noise.
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, size=(30, 30, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    spec = {
        "resize": {"mode": "exact", "height": 30, "width": 30},
        "filter": "nearest",
        "color": "gray",
        "dtype": "uint8",
        "layout": "chw",
    }
    _, tensor, _, _ = check_against_pillow(client, "gray_noise.png", buf.getvalue(), spec, "formats", tolerance=0.0)
    assert tensor.shape == (1, 30, 30)
    assert np.array_equal(tensor[0], np.asarray(Image.fromarray(rgb).convert("L")))


def test_null_and_garbage_rows(client):
    out = run_named(client, [("ok", _read("pillow_hopper.jpg")), ("junk", b"definitely not an image")], UINT8_HWC)
    assert out["ok"][3] is None and out["ok"][0] is not None
    tensor, height, width, error = out["junk"]
    assert tensor is None and error
