"""The wire contract, exercised with plain pyarrow.flight and NO pixelfeed code.

This is what any Arrow Flight user sees: ``DoExchange`` with the spec JSON as
the descriptor command, input batches with an ``image`` column, output
batches with passthrough columns then ``tensor`` (``arrow.fixed_shape_tensor``),
``error``, ``height``, ``width`` and the resolved spec in the schema metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "images"
GOOD = ["pillow_hopper.jpg", "pillow_hopper.png", "china_progressive_420_q90.jpg"]

IMAGENET_RESOLVED = {
    "resize": {"mode": "shorter_side", "size": 256},
    "crop": {"mode": "center", "height": 224, "width": 224},
    "filter": "bilinear",
    "color": "rgb",
    "dtype": "float32",
    "layout": "chw",
    "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "exif_orientation": True,
    "flip": None,
    "seed": 0,
    "strict": False,
    "draft": False,
    "decoder": "auto",
}


def default_jpeg_decoder(location) -> str:
    """The decoder ``auto`` means on this server (``stats``: the default first, with its version)."""
    client = flight.FlightClient(location)
    try:
        body = b"".join(r.body.to_pybytes() for r in client.do_action(flight.Action("stats", b"")))
    finally:
        client.close()
    return json.loads(body)["decoders"]["jpeg_default"].split(" ")[0]


def assert_same_spec(got, want, path: str = "spec") -> None:
    """Equal JSON, floats compared to float32 precision (the server keeps f32)."""
    if isinstance(want, float) or isinstance(got, float):
        assert isinstance(got, (int, float)) and abs(got - want) <= 1e-6 * max(1.0, abs(want)), f"{path}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_same_spec(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_spec(g, w, f"{path}[{i}]")
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def exchange(location: str, spec, batches: List[pa.RecordBatch], timeout: float = 120) -> pa.Table:
    """Raw DoExchange: begin, write every batch, done_writing, read all."""
    client = flight.FlightClient(location)
    try:
        command = spec if isinstance(spec, bytes) else json.dumps(spec).encode()
        descriptor = flight.FlightDescriptor.for_command(command)
        writer, reader = client.do_exchange(descriptor, flight.FlightCallOptions(timeout=timeout))
        with writer:
            writer.begin(batches[0].schema)
            for b in batches:
                writer.write_batch(b)
            writer.done_writing()
            table = reader.read_all()
        return table
    finally:
        client.close()


def images_batch(image_type: pa.DataType = pa.binary(), extra_bad: bool = False) -> pa.RecordBatch:
    """``id``, ``image`` (of ``image_type``), ``label``; optionally a garbage and a null row."""
    datas = [(DATA / n).read_bytes() for n in GOOD]
    ids = list(range(len(datas)))
    if extra_bad:
        datas += [b"not an image", None]
        ids += [len(ids), len(ids) + 1]
    return pa.RecordBatch.from_arrays(
        [
            pa.array(ids, pa.int64()),
            pa.array(datas, image_type),
            pa.array([f"label{i}" for i in ids], pa.string()),
        ],
        names=["id", "image", "label"],
    )


def test_output_schema_and_tensor_type(location):
    table = exchange(location, {"preset": "imagenet"}, [images_batch(extra_bad=True)])
    assert table.num_rows == len(GOOD) + 2
    assert table.column_names == ["id", "label", "tensor", "error", "height", "width", "warning", "geometry"]
    assert table.column("id").to_pylist() == list(range(len(GOOD) + 2))
    assert table.column("label").to_pylist() == [f"label{i}" for i in range(len(GOOD) + 2)]

    typ = table.schema.field("tensor").type
    assert isinstance(typ, pa.FixedShapeTensorType), f"tensor column is {typ!r}"
    assert typ.extension_name == "arrow.fixed_shape_tensor"
    assert list(typ.shape) == [3, 224, 224]
    assert list(typ.dim_names) == ["C", "H", "W"]
    assert typ.value_type == pa.float32()
    assert typ.storage_type == pa.list_(pa.float32(), 3 * 224 * 224)
    assert table.schema.field("error").type == pa.utf8()
    assert table.schema.field("height").type == pa.uint32()
    assert table.schema.field("width").type == pa.uint32()
    assert table.schema.field("warning").type == pa.utf8()
    assert table.schema.field("tensor").metadata == {b"pixelfeed.dtype": b"float32"}
    f64 = pa.float64()
    assert table.schema.field("geometry").type == pa.struct(
        [
            pa.field("orientation", pa.uint8(), nullable=False),
            pa.field("flipped_horizontal", pa.bool_(), nullable=False),
            pa.field("flipped_vertical", pa.bool_(), nullable=False),
        ]
        + [pa.field(n, f64, nullable=False) for n in ["scale_y", "scale_x", "box_top", "box_left", "box_height", "box_width"]]
    )
    geometry = table.column("geometry").combine_chunks()
    assert geometry.is_null().to_pylist() == [False] * len(GOOD) + [True, True]

    # The resolved spec names the JPEG decoder that ran, never "auto".
    spec = json.loads(table.schema.metadata[b"pixelfeed.spec"])
    decoder = default_jpeg_decoder(location)
    assert decoder in ("libjpeg-turbo", "zune-jpeg")
    assert_same_spec(spec, dict(IMAGENET_RESOLVED, decoder=decoder))

    errors = table.column("error").to_pylist()
    assert errors[: len(GOOD)] == [None] * len(GOOD)
    assert all(isinstance(e, str) and e for e in errors[len(GOOD) :])
    tensor = table.column("tensor").combine_chunks()
    assert tensor.null_count == 2
    assert tensor.is_null().to_pylist() == [False] * len(GOOD) + [True, True]

    good = tensor.slice(0, len(GOOD))
    arr = good.to_numpy_ndarray()
    assert arr.shape == (len(GOOD), 3, 224, 224)
    assert arr.dtype == np.float32
    assert np.isfinite(arr).all()
    # ImageNet-normalised photos: roughly zero-centred, within a few std.
    assert -3.0 < arr.min() < 0.0 < arr.max() < 3.0


@pytest.mark.parametrize("dtype, storage", [("float16", pa.float16()), ("bfloat16", pa.uint16())])
def test_half_dtypes_on_the_wire(location, dtype, storage):
    """float16 is Arrow HalfFloat; bfloat16 is uint16 storage marked in the field metadata."""
    table = exchange(location, {"preset": "imagenet", "dtype": dtype}, [images_batch()])
    field = table.schema.field("tensor")
    assert isinstance(field.type, pa.FixedShapeTensorType)
    assert field.type.value_type == storage
    assert field.metadata[b"pixelfeed.dtype"] == dtype.encode()
    assert json.loads(table.schema.metadata[b"pixelfeed.spec"])["dtype"] == dtype
    arr = table.column("tensor").combine_chunks().to_numpy_ndarray()
    assert arr.shape == (len(GOOD), 3, 224, 224) and arr.dtype == storage.to_pandas_dtype()


def test_height_width_are_source_dims(location):
    table = exchange(location, {"preset": "imagenet"}, [images_batch()])
    from PIL import Image

    want = [Image.open(DATA / n).size for n in GOOD]
    assert list(zip(table.column("width").to_pylist(), table.column("height").to_pylist())) == want


def test_uint8_hwc_type(location):
    spec = {"preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": None}
    table = exchange(location, spec, [images_batch()])
    typ = table.schema.field("tensor").type
    assert isinstance(typ, pa.FixedShapeTensorType)
    assert list(typ.shape) == [224, 224, 3] and list(typ.dim_names) == ["H", "W", "C"]
    assert typ.value_type == pa.uint8()
    arr = table.column("tensor").combine_chunks().to_numpy_ndarray()
    assert arr.shape == (len(GOOD), 224, 224, 3) and arr.dtype == np.uint8
    resolved = json.loads(table.schema.metadata[b"pixelfeed.spec"])
    assert resolved["dtype"] == "uint8" and resolved["layout"] == "hwc" and resolved["normalize"] is None


@pytest.mark.parametrize(
    "spec,field",
    [
        ({"preset": "imagenet", "dtype": "float64"}, "dtype"),
        ({"preset": "imagenet", "layout": "nchw"}, "layout"),
        ({"preset": "imagenet", "filter": "cubic"}, "filter"),
        ({"preset": "imagenet", "crop": {"mode": "center", "height": 300, "width": 224}}, "crop.height"),
        ({"preset": "imagenet", "resize": {"mode": "shorter_side", "size": 0}}, "resize.size"),
        ({"preset": "imagenet", "bogus": 1}, "bogus"),
        ({"preset": "nope"}, "preset"),
        ({"preset": "imagenet", "dtype": "uint8"}, "normalize"),
        (b"{not json", "spec"),
    ],
)
def test_invalid_spec_names_the_field(location, spec, field):
    with pytest.raises((pa.ArrowException, flight.FlightError)) as info:
        exchange(location, spec, [images_batch()])
    assert field in str(info.value), f"error does not name {field!r}: {info.value}"


def test_missing_image_column_is_rejected(location):
    batch = pa.RecordBatch.from_arrays([pa.array([b"x"], pa.binary())], names=["img"])
    with pytest.raises((pa.ArrowException, flight.FlightError)) as info:
        exchange(location, {"preset": "imagenet"}, [batch])
    assert "image" in str(info.value)


@pytest.mark.parametrize("image_type", [pa.large_binary(), pa.binary_view()], ids=["large_binary", "binary_view"])
def test_other_binary_types_accepted(location, image_type):
    spec = {"preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": None}
    base = exchange(location, spec, [images_batch(pa.binary())])
    other = exchange(location, spec, [images_batch(image_type)])
    assert other.column("error").to_pylist() == [None] * len(GOOD)
    np.testing.assert_array_equal(
        other.column("tensor").combine_chunks().to_numpy_ndarray(),
        base.column("tensor").combine_chunks().to_numpy_ndarray(),
    )


def test_many_batches_keep_order(location):
    # 12 input batches of 5 rows: output may be re-split but rows stay in order.
    datas = [(DATA / GOOD[i % len(GOOD)]).read_bytes() for i in range(60)]
    batches = [
        pa.RecordBatch.from_arrays(
            [pa.array(range(s, s + 5), pa.int64()), pa.array(datas[s : s + 5], pa.binary())], names=["id", "image"]
        )
        for s in range(0, 60, 5)
    ]
    spec = {"resize": {"mode": "exact", "height": 16, "width": 16}, "dtype": "uint8"}
    table = exchange(location, spec, batches)
    assert table.column("id").to_pylist() == list(range(60))
    assert table.column("error").null_count == 60


def test_actions(location):
    client = flight.FlightClient(location)
    try:
        names = [a.type for a in client.list_actions()]
        assert "presets" in names
        body = b"".join(r.body.to_pybytes() for r in client.do_action(flight.Action("presets", b"")))
        presets = json.loads(body)
        assert_same_spec(presets["imagenet"], IMAGENET_RESOLVED)
    finally:
        client.close()
