"""The transform catalogue against an independent reference: torchvision's
transforms on PIL images, with their arithmetic written out over Pillow
(torch is too large to install in CI; every torchvision op used here is a thin
wrapper over the Pillow call named in its comment).

- Geometry: every resize mode × every filter, centre / box / random resized
  crops, letterbox padding, flips; on a JPEG and a lossless PNG.
- Output formats: dtype × layout × colour, where float16 / bfloat16 values
  must equal NumPy's / ml_dtypes' round-to-nearest-even conversion of the
  float32 formula applied to the server's own uint8 pixels (bit for bit).
- Random ops are compared with the parameters the server reports for the row
  (``geometry`` column), and must be reproducible: same spec + seed gives the
  same bytes across batch sizes and across two server processes.

Thresholds (0–255 scale): mean |diff| ≤ 1.0 for JPEG, ≤ 0.5 for PNG.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import pixelfeed
from pfhelpers import DATA_IMAGES, PIL_FILTERS, TOLERANCE, _to_8bit, open_oriented, record_diff, sniff

#: One JPEG and one lossless PNG (EXIF-less, RGB).
IMAGES = ["mpl_grace_hopper.jpg", "pillow_hopper.png"]
FILTERS = ["nearest", "bilinear", "bicubic", "lanczos3"]

#: Geometry cases: name -> spec fragment (uint8 HWC RGB output, no normalisation).
GEOMETRY: Dict[str, Dict[str, Any]] = {
    "shorter_side+center": {"resize": {"mode": "shorter_side", "size": 100}, "crop": {"mode": "center", "height": 96, "width": 80}},
    "longer_side+center": {"resize": {"mode": "longer_side", "size": 90}, "crop": {"mode": "center", "height": 70, "width": 70}},
    "exact": {"resize": {"mode": "exact", "height": 61, "width": 97}},
    "fit": {"resize": {"mode": "fit", "height": 64, "width": 96, "pad_value": [114, 20, 250]}},
    "fit_tall": {"resize": {"mode": "fit", "height": 96, "width": 40, "pad_value": 7}},
    "none+center_padded": {"resize": {"mode": "none"}, "crop": {"mode": "center", "height": 700, "width": 90}},
    "none+box": {"resize": {"mode": "none"}, "crop": {"mode": "box", "top": -10, "left": 40, "height": 60, "width": 120}},
    "shorter_side+box": {"resize": {"mode": "shorter_side", "size": 64}, "crop": {"mode": "box", "top": 5, "left": 3, "height": 50, "width": 40}},
    "random_resized_crop": {"crop": {"mode": "random_resized_crop", "height": 56, "width": 48, "scale": [0.2, 0.9], "ratio": [0.5, 2.0]}, "seed": 11},
    "random_resized_crop+flip": {"crop": {"mode": "random_resized_crop", "height": 48, "width": 48}, "flip": {"horizontal_p": 0.5, "vertical_p": 0.5}, "seed": 3},
}


def _spec(fragment: Mapping[str, Any], **extra: Any) -> Dict[str, Any]:
    spec = {"dtype": "uint8", "layout": "hwc", "color": "rgb", "filter": "bilinear"}
    spec.update(fragment)
    spec.update(extra)
    return spec


def _rgb(data: bytes, color: str = "rgb") -> Image.Image:
    img = _to_8bit(open_oriented(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return img.convert("L" if color == "gray" else "RGB")


def _paste(img: Image.Image, size: Tuple[int, int], at: Tuple[int, int], fill: Any) -> Image.Image:
    """torchvision ``pad`` / letterbox: ``img`` on a ``size`` canvas of ``fill`` at ``at``."""
    canvas = Image.new(img.mode, size, fill)
    canvas.paste(img, at)
    return canvas


def _center_crop(img: Image.Image, crop_h: int, crop_w: int) -> Image.Image:
    """torchvision ``F.center_crop`` on PIL: pad with zeros where the crop is larger, then crop."""
    w, h = img.size
    if crop_w > w or crop_h > h:
        left = (crop_w - w) // 2 if crop_w > w else 0
        top = (crop_h - h) // 2 if crop_h > h else 0
        right = (crop_w - w + 1) // 2 if crop_w > w else 0
        bottom = (crop_h - h + 1) // 2 if crop_h > h else 0
        img = _paste(img, (w + left + right, h + top + bottom), (left, top), 0)
        w, h = img.size
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


def reference(data: bytes, spec: Mapping[str, Any], geometry: Mapping[str, Any]) -> np.ndarray:
    """The torchvision-on-PIL pixels (uint8 H×W×C, RGB or L order) for ``spec``.

    Random crops and flips take their parameters from the server's
    ``geometry`` row, as a user replaying them would.
    """
    img = _rgb(data, spec.get("color", "rgb"))
    flt = PIL_FILTERS[spec.get("filter", "bilinear")]
    w, h = img.size
    resize = spec.get("resize") or {"mode": "none"}
    crop = spec.get("crop")
    if crop and crop["mode"] == "random_resized_crop":
        # F.resized_crop = img.crop(box).resize(size)
        top, left = int(geometry["box_top"]), int(geometry["box_left"])
        bh, bw = round(geometry["box_height"]), round(geometry["box_width"])
        img = img.crop((left, top, left + bw, top + bh)).resize((crop["width"], crop["height"]), flt)
    elif resize["mode"] == "shorter_side":
        size = resize["size"]
        short, long = (w, h) if w <= h else (h, w)
        new = (size, int(size * long / short))
        img = img.resize(new if w <= h else new[::-1], flt)
    elif resize["mode"] == "longer_side":
        # Resize(size=None, max_size=size)
        size = resize["size"]
        short, long = (w, h) if w <= h else (h, w)
        new = (max(1, int(size * short / long)), size)
        img = img.resize(new if w <= h else new[::-1], flt)
    elif resize["mode"] == "exact":
        img = img.resize((resize["width"], resize["height"]), flt)
    elif resize["mode"] == "fit":
        th, tw = resize["height"], resize["width"]
        if th / h <= tw / w:
            nh, nw = th, max(1, min(tw, round(w * th / h)))
        else:
            nh, nw = max(1, min(th, round(h * tw / w))), tw
        pad = resize.get("pad_value", 0)
        pad = pad if isinstance(pad, list) else [pad] * 3
        fill = pad[0] if img.mode == "L" else tuple(pad)
        img = _paste(img.resize((nw, nh), flt), (tw, th), ((tw - nw) // 2, (th - nh) // 2), fill)
    if crop and crop["mode"] == "center":
        img = _center_crop(img, crop["height"], crop["width"])
    elif crop and crop["mode"] == "box":
        # F.crop on PIL is img.crop, which reads zeros outside the image.
        t, l = crop["top"], crop["left"]
        img = img.crop((l, t, l + crop["width"], t + crop["height"]))
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if geometry.get("flipped_horizontal"):
        arr = arr[:, ::-1]
    if geometry.get("flipped_vertical"):
        arr = arr[::-1]
    if spec.get("color") == "bgr":
        arr = arr[:, :, ::-1]
    return arr


def run(client, images: List[bytes], spec: Mapping[str, Any], batch_size: int = 16, seeds: Optional[List[int]] = None):
    """One call; returns (tensors ndarray copy, geometry list of dicts, batches)."""
    cols = {"image": pa.array(images, pa.binary())}
    if seeds is not None:
        cols["seed"] = pa.array(seeds, pa.int64())
    batches = list(client.preprocess(pa.table(cols), spec=dict(spec), batch_size=batch_size))
    table = pa.Table.from_batches(batches)
    assert table.num_rows == len(images)
    errs = [e for e in table.column("error").to_pylist() if e]
    assert not errs, errs
    geo = table.column("geometry").to_pylist()
    return np.array(pixelfeed.tensors(table.combine_chunks())), geo, batches


def _hwc(x: np.ndarray, layout: str) -> np.ndarray:
    return x.transpose(1, 2, 0) if layout == "chw" else x


@pytest.mark.parametrize("name", IMAGES)
@pytest.mark.parametrize("filt", FILTERS)
@pytest.mark.parametrize("case", list(GEOMETRY))
def test_geometry_matches_torchvision_on_pil(client, case, filt, name):
    data = (DATA_IMAGES / name).read_bytes()
    spec = _spec(GEOMETRY[case], filter=filt)
    x, geo, _ = run(client, [data] * 3, spec)
    kind = sniff(data)
    for i in range(3):
        ref = reference(data, spec, geo[i])
        assert x[i].shape == ref.shape, (x[i].shape, ref.shape)
        diff = float(np.abs(x[i].astype(np.float64) - ref).mean())
        record_diff(f"{case}/{filt}", f"{name}#{i}", kind, diff)
        assert diff <= TOLERANCE[kind], f"{case} {filt} {name} row {i}: mean |diff| {diff:.3f}"


@pytest.mark.parametrize("name", IMAGES)
@pytest.mark.parametrize("layout", ["chw", "hwc"])
@pytest.mark.parametrize("color", ["rgb", "bgr", "gray"])
def test_dtypes_layouts_colors(client, name, layout, color):
    """uint8 against Pillow; float32/16/bf16 against the formula on the server's uint8 pixels."""
    import ml_dtypes

    data = (DATA_IMAGES / name).read_bytes()
    channels = 1 if color == "gray" else 3
    mean, std = [0.485, 0.456, 0.406][:channels], [0.229, 0.224, 0.225][:channels]
    base = {"resize": {"mode": "shorter_side", "size": 80}, "crop": {"mode": "center", "height": 64, "width": 72},
            "layout": layout, "color": color}
    raw, geo, _ = run(client, [data], _spec(base, layout=layout))
    raw = _hwc(raw[0], layout)
    ref = reference(data, _spec(base), geo[0])
    diff = float(np.abs(raw.astype(np.float64) - ref).mean())
    record_diff(f"dtype/uint8/{layout}/{color}", name, sniff(data), diff)
    assert diff <= TOLERANCE[sniff(data)]
    # torchvision ToTensor + Normalize in float32 on the same bytes.
    expect32 = (raw.astype(np.float32) / np.float32(255.0) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    for dtype, convert in [("float32", np.float32), ("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16)]:
        spec = _spec(base, dtype=dtype, normalize={"mean": mean, "std": std})
        x, _, batches = run(client, [data], spec)
        assert pixelfeed.tensor_dtype(batches[0]) == dtype
        got = _hwc(x[0], layout)
        if dtype == "bfloat16":
            assert got.dtype == np.uint16  # bits on the wire
            got = pixelfeed.tensors_bf16(batches[0])[0]
            got = _hwc(got, layout)
        want = expect32.astype(convert)
        assert got.dtype == want.dtype
        assert np.array_equal(got.view(np.uint16 if dtype != "float32" else np.uint32),
                              want.view(np.uint16 if dtype != "float32" else np.uint32)), dtype


def test_reported_geometry_maps_back_to_the_source(client):
    data = (DATA_IMAGES / "mpl_grace_hopper.jpg").read_bytes()  # 512 wide, 600 high
    spec = _spec(GEOMETRY["fit"])
    _, geo, _ = run(client, [data], spec)
    g = geo[0]
    # fit 600x512 into 64x96: height limits, scale 64/600, width round(512*64/600) = 55.
    assert g["scale_y"] == pytest.approx(64 / 600)
    assert g["scale_x"] == pytest.approx(55 / 512)
    assert g["box_top"] == pytest.approx(0.0)
    assert g["box_left"] == pytest.approx(-((96 - 55) // 2) / (55 / 512))
    assert g["box_height"] == pytest.approx(600.0)
    assert g["orientation"] == 1 and g["flipped_horizontal"] is False
    rotated = (DATA_IMAGES / "pillow_hopper_orientation_6.jpg").read_bytes()
    _, geo, _ = run(client, [rotated], _spec({"preset": "raw_u8"}))
    assert geo[0]["orientation"] == 6


def test_random_crop_parameters_follow_torchvision_ranges(client):
    """Reported regions respect scale/ratio (up to side rounding) and vary per row."""
    data = (DATA_IMAGES / "mpl_grace_hopper.jpg").read_bytes()
    spec = _spec({"crop": {"mode": "random_resized_crop", "height": 16, "width": 16, "scale": [0.25, 0.5],
                           "ratio": [0.75, 1.3333]}, "seed": 99})
    _, geo, _ = run(client, [data] * 40, spec)
    boxes = set()
    for g in geo:
        area = g["box_height"] * g["box_width"] / (600 * 512)
        assert 0.23 <= area <= 0.52, area
        assert 0.7 <= g["box_width"] / g["box_height"] <= 1.4
        assert 0 <= g["box_top"] and g["box_top"] + g["box_height"] <= 600
        boxes.add((g["box_top"], g["box_left"], g["box_height"], g["box_width"]))
    assert len(boxes) >= 35


def test_flip_probability(client):
    data = (DATA_IMAGES / "pillow_hopper.png").read_bytes()
    spec = _spec({"resize": {"mode": "exact", "height": 8, "width": 8}, "flip": {"horizontal_p": 0.3}, "seed": 1})
    _, geo, _ = run(client, [data] * 200, spec)
    flips = sum(g["flipped_horizontal"] for g in geo)
    assert 35 <= flips <= 85, flips  # 60 expected; ±3.5 sigma
    assert not any(g["flipped_vertical"] for g in geo)


RANDOM_SPEC = {"preset": "imagenet_train", "seed": 1234, "dtype": "uint8", "layout": "hwc", "normalize": None,
               "crop": {"mode": "random_resized_crop", "height": 64, "width": 64}}


def _random_images() -> List[bytes]:
    names = ["mpl_grace_hopper.jpg", "pillow_hopper.png", "china_progressive_420_q90.jpg", "pillow_hopper.jpg"]
    return [(DATA_IMAGES / n).read_bytes() for n in names] * 3


def test_same_seed_same_bytes_across_batch_sizes(client):
    images = _random_images()
    a, _, _ = run(client, images, RANDOM_SPEC, batch_size=len(images))
    b, _, _ = run(client, images, RANDOM_SPEC, batch_size=1)
    c, _, _ = run(client, images, RANDOM_SPEC, batch_size=5)
    assert np.array_equal(a, b) and np.array_equal(a, c)
    other, _, _ = run(client, images, dict(RANDOM_SPEC, seed=1235))
    assert not np.array_equal(a, other)
    # The same image at different positions gets different draws.
    assert not np.array_equal(a[0], a[4])


def test_seed_column_replaces_the_position(client):
    images = _random_images()[:4]
    a, _, _ = run(client, images, RANDOM_SPEC, seeds=[10, 11, 12, 13])
    b, _, _ = run(client, images[::-1], RANDOM_SPEC, seeds=[13, 12, 11, 10])
    assert np.array_equal(a, b[::-1])


def test_same_seed_same_bytes_across_servers(client):
    from conftest import _start_server

    images = _random_images()
    a, _, _ = run(client, images, RANDOM_SPEC, batch_size=3)
    other = _start_server()
    try:
        with pixelfeed.connect(other.location) as second:
            b, _, _ = run(second, images, RANDOM_SPEC, batch_size=7)
    finally:
        other.stop()
    assert np.array_equal(a, b)


def _truncated_jpeg() -> bytes:
    data = (DATA_IMAGES / "mpl_grace_hopper.jpg").read_bytes()
    return data[: int(len(data) * 0.6)]


def test_strict_decides_between_error_and_warning(client):
    """A truncated JPEG: an error row with ``strict``, else pixels plus a warning; good rows neither."""
    good = (DATA_IMAGES / "pillow_hopper.jpg").read_bytes()
    full = (DATA_IMAGES / "mpl_grace_hopper.jpg").read_bytes()
    no_eoi = full[:-2] if full.endswith(b"\xff\xd9") else full
    images = [good, _truncated_jpeg(), no_eoi]
    table = pa.table({"image": pa.array(images, pa.binary())})
    base = {"preset": "raw_u8"}

    lenient = pa.Table.from_batches(list(client.preprocess(table, spec=base)))
    warn = lenient.column("warning").to_pylist()
    assert lenient.column("error").to_pylist() == [None, None, None]
    assert warn[0] is None
    assert warn[1] and "recovery" in warn[1], warn
    assert warn[2] and "EOI" in warn[2], warn
    # The missing EOI loses no data: pixels equal the complete file's.
    ref = pa.Table.from_batches(list(client.preprocess(pa.table({"image": pa.array([full], pa.binary())}), spec=base)))
    x = pixelfeed.tensors(lenient.combine_chunks())
    assert np.array_equal(x[2], pixelfeed.tensors(ref.combine_chunks())[0])

    strict = pa.Table.from_batches(list(client.preprocess(table, spec=dict(base, strict=True))))
    errs = strict.column("error").to_pylist()
    assert errs[0] is None and errs[1] and errs[2] and "EOI" in errs[2], errs
    assert strict.column("warning").to_pylist() == [None, None, None]
    assert pixelfeed.valid(strict).tolist() == [True, False, False]


def test_presets_listed(client):
    presets = client.presets()
    for name in ["imagenet", "imagenet_train", "clip", "siglip", "dinov2", "raw_u8"]:
        assert name in presets, sorted(presets)
    clip = presets["clip"]
    assert clip["filter"] == "bicubic"
    assert clip["normalize"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert presets["raw_u8"]["dtype"] == "uint8" and presets["raw_u8"]["normalize"] is None
    assert math.isclose(presets["imagenet_train"]["crop"]["ratio"][1], 4 / 3)
