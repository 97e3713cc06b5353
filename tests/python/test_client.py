"""The pixelfeed Python client: input forms, streaming, and the zero-copy readers.

The first group needs no server (``tensors``/``valid``/``errors`` on arrays
built here, spec encoding, input chunking); the rest runs against the server.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from PIL import Image

import pixelfeed
from pixelfeed.client import _input_stream

DATA = Path(__file__).resolve().parents[1] / "data" / "images"
GOOD = ["pillow_hopper.jpg", "pillow_hopper.png", "china_progressive_420_q90.jpg", "pillow_hopper_gray.jpg"]
UINT8_SMALL = {"resize": {"mode": "exact", "height": 24, "width": 32}, "dtype": "uint8", "layout": "hwc"}


def _buffer_range(arr: pa.Array):
    """(address, size) of a tensor column's values buffer."""
    storage = arr.storage if isinstance(arr, pa.ExtensionArray) else arr
    buf = storage.values.buffers()[1]
    return buf.address, buf.size


def _data_ptr(x: np.ndarray) -> int:
    """Address of an ndarray's first element."""
    return x.__array_interface__["data"][0]


def _local_tensor_batch(n=5, shape=(2, 3, 4), dtype=np.float32, nulls=(1,), permutation=None):
    """A batch shaped like server output, built locally."""
    values = np.arange(n * int(np.prod(shape)), dtype=dtype)
    for i in nulls:
        values.reshape(n, -1)[i] = 0
    typ = pa.fixed_shape_tensor(pa.from_numpy_dtype(dtype), list(shape), permutation=permutation)
    mask = pa.array([i in nulls for i in range(n)])
    storage = pa.FixedSizeListArray.from_arrays(pa.array(values), int(np.prod(shape)), mask=mask)
    tensor = pa.ExtensionArray.from_storage(typ, storage)
    errors = pa.array(["bad" if i in nulls else None for i in range(n)], pa.string())
    return pa.RecordBatch.from_arrays(
        [pa.array(range(n), pa.int64()), tensor, errors, pa.array([10] * n, pa.uint32()), pa.array([20] * n, pa.uint32())],
        names=["id", "tensor", "error", "height", "width"],
    ), values.reshape(n, *shape)


# ---------------------------------------------------------------------------------------
# No server needed.


def test_tensors_local_zero_copy_and_values():
    batch, want = _local_tensor_batch()
    x = pixelfeed.tensors(batch)
    assert x.shape == (5, 2, 3, 4) and x.dtype == np.float32
    np.testing.assert_array_equal(x, want)
    addr, size = _buffer_range(batch.column("tensor"))
    assert addr <= _data_ptr(x) < addr + size
    assert not x.flags.writeable


@pytest.mark.parametrize("start,length", [(0, 5), (1, 3), (2, 1), (4, 1), (3, 0)])
def test_tensors_local_sliced(start, length):
    batch, want = _local_tensor_batch()
    sliced = batch.slice(start, length)
    x = pixelfeed.tensors(sliced)
    assert x.shape == (length, 2, 3, 4)
    np.testing.assert_array_equal(x, want[start : start + length])
    if length:
        addr, size = _buffer_range(sliced.column("tensor"))
        assert addr <= _data_ptr(x) < addr + size
    assert pixelfeed.valid(sliced).tolist() == [i != 1 for i in range(start, start + length)]
    assert pixelfeed.errors(sliced) == ["bad" if i == 1 else None for i in range(start, start + length)]


def test_tensors_local_uint8_and_permutation():
    batch, want = _local_tensor_batch(dtype=np.uint8, shape=(2, 2, 3), nulls=())
    np.testing.assert_array_equal(pixelfeed.tensors(batch), want)
    # A permuted type: logical result must match pyarrow's own conversion.
    pbatch, _ = _local_tensor_batch(shape=(2, 3, 4), nulls=(), permutation=[2, 0, 1])
    np.testing.assert_array_equal(pixelfeed.tensors(pbatch), pbatch.column("tensor").to_numpy_ndarray())


def test_tensors_on_table_and_column():
    batch, want = _local_tensor_batch(nulls=())
    table = pa.Table.from_batches([batch, batch])
    np.testing.assert_array_equal(pixelfeed.tensors(table), np.concatenate([want, want]))
    np.testing.assert_array_equal(pixelfeed.tensors(batch.column("tensor")), want)
    assert pixelfeed.tensor_shape(batch) == (2, 3, 4)
    assert pixelfeed.tensor_shape(batch.schema) == (2, 3, 4)


def test_dlpack_values_zero_copy():
    batch, want = _local_tensor_batch()
    sliced = batch.slice(1, 3)
    flat = pixelfeed.interop.dlpack_values(sliced)
    assert flat.null_count == 0 and len(flat) == 3 * 24
    x = np.from_dlpack(flat)
    np.testing.assert_array_equal(x.reshape(3, 2, 3, 4), want[1:4])
    assert _data_ptr(x) == _data_ptr(pixelfeed.tensors(sliced))


def test_torch_cpu_handoff_zero_copy():
    torch = pytest.importorskip("torch", reason="PyTorch not installed (optional)")
    from pixelfeed.torch import TorchLoader, to_torch

    batch, want = _local_tensor_batch(nulls=())
    t = to_torch(batch)
    assert t.data_ptr() == _data_ptr(pixelfeed.tensors(batch))
    np.testing.assert_array_equal(t.numpy(), want)
    got = list(TorchLoader([batch, batch], device="cpu"))
    assert len(got) == 2 and all(isinstance(g, torch.Tensor) for g in got)


def test_encode_spec():
    assert json.loads(pixelfeed.encode_spec(None)) == {"preset": "imagenet"}
    assert json.loads(pixelfeed.encode_spec("imagenet")) == {"preset": "imagenet"}
    assert json.loads(pixelfeed.encode_spec({"preset": "imagenet", "normalize": None})) == {
        "preset": "imagenet",
        "normalize": None,
    }
    assert json.loads(pixelfeed.encode_spec('{"preset": "imagenet"}')) == {"preset": "imagenet"}
    assert pixelfeed.encode_spec(b'{"x":1}') == b'{"x":1}'
    with pytest.raises(TypeError):
        pixelfeed.encode_spec(42)


def test_input_chunking():
    schema, batches = _input_stream([b"a", None, b"ccc", b"d", b"e"], batch_size=2)
    got = list(batches)
    assert schema == pa.schema([pa.field("image", pa.binary())])
    assert [b.num_rows for b in got] == [2, 2, 1]
    assert sum((b.column(0).to_pylist() for b in got), []) == [b"a", None, b"ccc", b"d", b"e"]

    table = pa.table({"id": [1, 2, 3], "image": pa.array([b"x", b"y", b"z"], pa.binary())})
    schema, batches = _input_stream(table, batch_size=2)
    assert schema.names == ["id", "image"] and [b.num_rows for b in batches] == [2, 1]

    gen = (pa.RecordBatch.from_pydict({"image": pa.array([b"x"] * 5, pa.binary())}) for _ in range(2))
    schema, batches = _input_stream(gen, batch_size=3)
    assert [b.num_rows for b in batches] == [3, 2, 3, 2]

    with pytest.raises(TypeError):
        _input_stream(["not bytes"], 2)[1].__next__()
    with pytest.raises(TypeError):
        _input_stream([1, 2], 2)


def test_preprocess_rejects_bad_input_client_side():
    client = pixelfeed.connect("grpc://127.0.0.1:1")  # never contacted
    with pytest.raises(ValueError, match="image"):
        client.preprocess(pa.table({"img": [b"x"]}))
    with pytest.raises(TypeError, match="binary"):
        client.preprocess(pa.table({"image": ["text"]}))


# ---------------------------------------------------------------------------------------
# Against the server.


def _images():
    """The bundled GOOD images as bytes."""
    return [(DATA / n).read_bytes() for n in GOOD]


def test_preprocess_list_of_bytes(client):
    batches = list(client.preprocess(_images(), batch_size=3))
    assert sum(b.num_rows for b in batches) == len(GOOD)
    for b in batches:
        x = pixelfeed.tensors(b)
        assert x.shape == (b.num_rows, 3, 224, 224) and x.dtype == np.float32
        assert pixelfeed.valid(b).all()
        assert pixelfeed.errors(b) == [None] * b.num_rows
        assert pixelfeed.batch_spec(b)["dtype"] == "float32"


def test_preprocess_forms_agree(client):
    images = _images()
    ref = np.concatenate([pixelfeed.tensors(b) for b in client.preprocess(images, spec=UINT8_SMALL)])
    assert ref.shape == (len(GOOD), 24, 32, 3) and ref.dtype == np.uint8

    table = pa.table(
        {
            "id": pa.array(range(len(images)), pa.int64()),
            "image": pa.array(images, pa.binary()),
            "path": pa.array(GOOD, pa.string()),
        }
    )
    out = pa.Table.from_batches(list(client.preprocess(table, spec=UINT8_SMALL, batch_size=2)))
    assert out.column_names == ["id", "path", "tensor", "error", "height", "width", "warning", "geometry"]
    assert out.column("id").to_pylist() == list(range(len(GOOD)))
    assert out.column("path").to_pylist() == GOOD
    np.testing.assert_array_equal(pixelfeed.tensors(out), ref)

    def gen():
        for b in table.to_batches(max_chunksize=1):
            yield b

    got = np.concatenate([pixelfeed.tensors(b) for b in client.preprocess(gen(), spec=UINT8_SMALL)])
    np.testing.assert_array_equal(got, ref)

    one = table.combine_chunks().to_batches()[0]
    got = np.concatenate([pixelfeed.tensors(b) for b in client.preprocess(one, spec=UINT8_SMALL, batch_size=3)])
    np.testing.assert_array_equal(got, ref)

    t = client.preprocess_table(iter(images), spec=UINT8_SMALL)
    np.testing.assert_array_equal(pixelfeed.tensors(t), ref)


def test_tensors_zero_copy_and_equal_to_pyarrow(client):
    for batch in client.preprocess(_images(), spec="imagenet", batch_size=len(GOOD)):
        x = pixelfeed.tensors(batch)
        addr, size = _buffer_range(batch.column("tensor"))
        assert addr <= _data_ptr(x) < addr + size, "tensors() copied the data"
        assert _data_ptr(x) + x.nbytes <= addr + size
        np.testing.assert_array_equal(x, batch.column("tensor").to_numpy_ndarray())
        if batch.num_rows >= 3:
            s = batch.slice(1, 2)
            xs = pixelfeed.tensors(s)
            assert addr <= _data_ptr(xs) < addr + size
            np.testing.assert_array_equal(xs, x[1:3])


def test_errors_and_valid(client):
    images = _images()[:2] + [b"\x89PNG\r\n\x1a\n garbage", None] + _images()[2:]
    out = pa.Table.from_batches(list(client.preprocess(images, spec=UINT8_SMALL)))
    batch = out.combine_chunks().to_batches()[0]
    ok = pixelfeed.valid(batch)
    assert ok.dtype == bool and ok.tolist() == [True, True, False, False] + [True] * (len(GOOD) - 2)
    errs = pixelfeed.errors(batch)
    assert errs[2] and errs[3] and errs[0] is None
    x = pixelfeed.tensors(batch)
    assert not x[2].any() and not x[3].any(), "failed rows are not zero-filled"
    assert x[0].any()


def test_presets(client):
    presets = client.presets()
    assert "imagenet" in presets
    p = presets["imagenet"]
    assert p["crop"] == {"mode": "center", "height": 224, "width": 224}
    assert p["resize"] == {"mode": "shorter_side", "size": 256}
    assert p["dtype"] == "float32" and p["layout"] == "chw"


def test_invalid_spec_raises_naming_field(client):
    with pytest.raises((pa.ArrowException, flight.FlightError), match="dtype"):
        list(client.preprocess(_images(), spec={"preset": "imagenet", "dtype": "int7"}))


def test_error_in_input_iterator_propagates(client):
    def gen():
        yield pa.RecordBatch.from_pydict({"image": pa.array(_images()[:1], pa.binary())})
        raise RuntimeError("boom from the caller's iterator")

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="boom"):
        list(client.preprocess(gen(), spec=UINT8_SMALL))
    assert time.monotonic() - start < 30


def test_early_break_cancels_and_client_still_works(client):
    images = _images() * 50
    it = client.preprocess(images, spec=UINT8_SMALL, batch_size=4)
    first = next(it)
    assert first.num_rows >= 1
    it.close()  # cancels the call; must not hang
    out = list(client.preprocess(_images(), spec=UINT8_SMALL))
    assert sum(b.num_rows for b in out) == len(GOOD)


def test_large_input_streams_without_deadlock(client):
    # 3000 rows (~19 MB in, ~28 MB out) through one call: the writer must keep
    # writing while outputs are read, or gRPC flow control stalls both sides.
    data = (DATA / "pillow_hopper.jpg").read_bytes()
    n = 3000
    spec = {"resize": {"mode": "exact", "height": 24, "width": 32}, "filter": "nearest", "dtype": "float32", "layout": "hwc"}
    rows = 0
    start = time.monotonic()
    for b in client.preprocess((data for _ in range(n)), spec=spec, batch_size=256, timeout=170):
        rows += b.num_rows
        assert pixelfeed.valid(b).all()
    assert rows == n
    assert time.monotonic() - start < 170


def test_passthrough_column_names_reserved(client):
    table = pa.table({"image": pa.array(_images()[:1], pa.binary()), "error": ["x"]})
    with pytest.raises((pa.ArrowException, flight.FlightError), match="error"):
        list(client.preprocess(table))


def test_dictionary_columns_are_sent_decoded(client):
    # The server refuses dictionaries (they would be expanded row by row on
    # the way back); the client decodes them, so categoricals just work.
    labels = pa.array(["cat", "dog", "cat"]).dictionary_encode()
    table = pa.table({"image": pa.array(_images()[:3], pa.binary()), "label": labels})
    out = pa.Table.from_batches(list(client.preprocess(table, spec=UINT8_SMALL)))
    assert out.column("label").type == pa.string()
    assert out.column("label").to_pylist() == ["cat", "dog", "cat"]


def test_a_raw_dictionary_column_is_invalid_argument(location):
    # Written with pyarrow directly, the dictionary reaches the server.
    labels = pa.array(["cat", "dog"]).dictionary_encode()
    table = pa.table({"image": pa.array(_images()[:2], pa.binary()), "label": labels})
    raw = flight.connect(location)
    descriptor = flight.FlightDescriptor.for_command(json.dumps(UINT8_SMALL).encode())
    writer, reader = raw.do_exchange(descriptor)
    # INVALID_ARGUMENT is pyarrow's ArrowInvalid.
    with pytest.raises(pa.ArrowInvalid, match="dictionary-encoded"):
        writer.begin(table.schema)
        writer.write_table(table)
        writer.done_writing()
        reader.read_all()
    raw.close()


def test_calls_the_server_ends_early_never_crash_the_client(client):
    # Regression: with a writer thread, the server ending a call (here: a
    # reserved column name) while the client was still writing made Arrow
    # C++ half-close the stream twice and abort the whole process
    # ("GRPC_CALL_ERROR_TOO_MANY_OPERATIONS"), about once in a few hundred calls.
    image = _images()[0]
    for n in [1, 2, 5] * 400:
        table = pa.table({"image": pa.array([image] * n, pa.binary()), "error": ["x"] * n})
        with pytest.raises((pa.ArrowException, flight.FlightError), match="error"):
            list(client.preprocess(table, batch_size=1))
    # The client still works afterwards.
    assert sum(b.num_rows for b in client.preprocess(_images(), spec=UINT8_SMALL)) == len(GOOD)


def test_gray_image_from_pillow_roundtrip(client):
    # Images made on the fly by Pillow work like files.
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 100, 50)).save(buf, format="PNG")
    out = list(client.preprocess([buf.getvalue()], spec=UINT8_SMALL))
    x = pixelfeed.tensors(out[0])
    assert (x[0] == np.array([200, 100, 50], np.uint8)).all()
