"""Helpers that read pixelfeed output batches into NumPy without copying.

An output batch (see the wire contract in ``schema/src/tensor.rs``) has the
passthrough columns, then:

- ``tensor``: ``FixedSizeList<float32|float16|uint16|uint8, N>`` carrying the
  ``arrow.fixed_shape_tensor`` extension type (``pa.FixedShapeTensorType`` in
  pyarrow), null for rows that failed; the field metadata ``pixelfeed.dtype``
  names the spec's dtype (``bfloat16`` travels as ``uint16`` bits, since Arrow
  has no bfloat16 type: see :func:`tensors_bf16`);
- ``error``: utf8, null for good rows, a message for failed ones;
- ``height`` / ``width``: uint32 source dimensions after EXIF orientation;
- ``warning``: utf8, set when a row decoded only with recovery (``strict: false``);
- ``geometry``: struct mapping the output back to the source (see :func:`geometry`).

The functions here accept a ``pyarrow.RecordBatch`` (the unit
:meth:`pixelfeed.Client.preprocess` yields), a ``pyarrow.Table`` or the tensor
column itself.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa

from . import _contract
from ._contract import ERROR_COLUMN, GEOMETRY_COLUMN, HEIGHT_COLUMN, TENSOR_COLUMN, WARNING_COLUMN, WIDTH_COLUMN

# The metadata keys as pyarrow hands them out (bytes).
SPEC_METADATA_KEY = _contract.SPEC_METADATA_KEY.encode()
DTYPE_METADATA_KEY = _contract.DTYPE_METADATA_KEY.encode()
_EXTENSION_METADATA_KEY = _contract.EXTENSION_METADATA_KEY.encode()
EXTENSION_NAME = _contract.TENSOR_EXTENSION

BatchLike = Union[pa.RecordBatch, pa.Table]
ColumnLike = Union[pa.Array, pa.ChunkedArray]


def _column(data: Union[BatchLike, ColumnLike], name: str) -> pa.Array:
    """Return column ``name`` of a batch/table as a single ``pa.Array``.

    A bare array is returned as is. A ``ChunkedArray`` (from a ``Table``) with
    one chunk yields that chunk; with several chunks they are concatenated,
    which copies (so :func:`tensors` on a multi-chunk table is not zero-copy).
    """
    if isinstance(data, (pa.RecordBatch, pa.Table)):
        if name not in data.schema.names:
            raise KeyError(
                f"no column {name!r} in batch (columns: {', '.join(data.schema.names)}); "
                "is this a pixelfeed output batch?"
            )
        col = data.column(name)
    else:
        col = data
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 1:
            col = col.chunk(0)
        elif col.num_chunks == 0:
            col = pa.array([], type=col.type)
        else:
            col = pa.concat_arrays(col.chunks)
    return col


def _tensor_layout(col: pa.Array) -> Tuple[pa.FixedSizeListArray, List[int], Optional[List[int]]]:
    """Split a tensor column into (storage array, logical shape, permutation).

    Understands both the registered pyarrow extension type
    (``pa.FixedShapeTensorType``) and a plain ``FixedSizeList`` whose extension
    metadata was not recognised (then the shape cannot be known from the array
    alone and a flat ``(N, list_size)`` shape is used).
    """
    typ = col.type
    if isinstance(typ, pa.FixedShapeTensorType):
        storage = col.storage
        shape = [int(d) for d in typ.shape]
        perm = typ.permutation
        perm = [int(p) for p in perm] if perm is not None else None
        return storage, shape, perm
    if isinstance(typ, pa.BaseExtensionType):
        col = col.storage
        typ = col.type
    if pa.types.is_fixed_size_list(typ):
        return col, [typ.list_size], None
    raise TypeError(f"tensor column must be arrow.fixed_shape_tensor / fixed_size_list, got {typ}")


def tensor_shape(data: Union[BatchLike, ColumnLike, pa.Schema]) -> Tuple[int, ...]:
    """Return the per-row tensor shape, e.g. ``(3, 224, 224)``.

    Accepts a batch, a table, the tensor column or a schema.
    """
    if isinstance(data, pa.Schema):
        typ = data.field(TENSOR_COLUMN).type
        if isinstance(typ, pa.FixedShapeTensorType):
            return tuple(int(d) for d in typ.shape)
        md = data.field(TENSOR_COLUMN).metadata or {}
        raw = md.get(_EXTENSION_METADATA_KEY)
        if raw:
            return tuple(int(d) for d in json.loads(raw)["shape"])
        return (typ.list_size,)
    _, shape, _ = _tensor_layout(_column(data, TENSOR_COLUMN))
    return tuple(shape)


def tensors(data: Union[BatchLike, ColumnLike]) -> np.ndarray:
    """Return the batch's tensors as one ``numpy.ndarray`` of shape ``(N, *shape)``.

    The array is a zero-copy, read-only view of the Arrow values buffer of the
    ``tensor`` column (for a ``RecordBatch`` or a single-chunk table), so it
    stays valid as long as it is referenced (NumPy keeps the buffer alive).
    Copy it (``np.array(x)``) before writing to it.

    Rows whose tensor is null (failed images) are present in the result, with
    whatever the server put in their slot: the server zero-fills them, so they
    read as zeros. Use :func:`valid` to tell them apart.

    Sliced arrays are handled: both the list array's and its child's offsets
    are applied. The dtype follows the column's value type (``float32`` or
    ``uint8``); the shape is the one in the extension type's metadata. (A type
    with a ``permutation``, which the server never sends, is handed to
    pyarrow's ``to_numpy_ndarray``.)
    """
    col = _column(data, TENSOR_COLUMN)
    storage, shape, perm = _tensor_layout(col)
    list_size = storage.type.list_size
    n = len(storage)
    child = storage.values  # the whole child array; ignores storage.offset
    dtype = child.type.to_pandas_dtype()
    if not isinstance(dtype, type) or not issubclass(dtype, np.number):
        raise TypeError(f"tensor value type must be numeric, got {child.type}")
    dtype = np.dtype(dtype)
    if perm is not None:
        # Never produced by the pixelfeed server; defer to pyarrow's own
        # interpretation of a permuted layout (it may copy).
        return col.to_numpy_ndarray()
    if int(np.prod(shape)) != list_size:
        raise ValueError(f"tensor shape {shape} does not match the list size {list_size}")

    buffers = child.buffers()
    values_buf = buffers[1] if len(buffers) > 1 else None
    count = n * list_size
    if values_buf is None or count == 0:
        out = np.zeros((n, *shape), dtype=dtype)
    else:
        start = (child.offset + storage.offset * list_size) * dtype.itemsize
        if start + count * dtype.itemsize > values_buf.size:
            raise ValueError("tensor values buffer is shorter than the column claims")
        out = np.frombuffer(values_buf, dtype=dtype, count=count, offset=start).reshape((n, *shape))
    # Arrow data is immutable: a write through this view would change every
    # other reader of the batch.
    out.flags.writeable = False
    return out


def tensor_dtype(data: Union[BatchLike, pa.Schema]) -> str:
    """Return the spec dtype of the tensor column: ``float32``, ``float16``, ``bfloat16`` or ``uint8``.

    Read from the tensor field's ``pixelfeed.dtype`` metadata; it matters for
    ``bfloat16``, whose values arrive as ``uint16`` bits.
    """
    schema = data if isinstance(data, pa.Schema) else data.schema
    md = schema.field(TENSOR_COLUMN).metadata or {}
    raw = md.get(DTYPE_METADATA_KEY)
    if raw is not None:
        return raw.decode()
    typ = schema.field(TENSOR_COLUMN).type
    storage = typ.storage_type if isinstance(typ, pa.BaseExtensionType) else typ
    return str(storage.value_type)


def tensors_bf16(data: BatchLike) -> np.ndarray:
    """Return a ``bfloat16`` batch's tensors as a zero-copy ``ml_dtypes.bfloat16`` array.

    NumPy has no bfloat16; ``ml_dtypes`` (installed with JAX) provides it, and
    ``jnp.asarray`` takes the result directly. Without ``ml_dtypes``, use
    :func:`tensors` (``uint16`` bits) or :func:`pixelfeed.torch.to_torch`
    (a ``torch.bfloat16`` tensor).
    """
    dtype = tensor_dtype(data)
    if dtype != "bfloat16":
        raise TypeError(f"the tensor column holds {dtype}, not bfloat16")
    try:
        import ml_dtypes
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("tensors_bf16 needs the ml_dtypes package (pip install ml_dtypes)") from exc
    return tensors(data).view(ml_dtypes.bfloat16)


def errors(data: Union[BatchLike, ColumnLike]) -> List[Optional[str]]:
    """Return the ``error`` column as a list: ``None`` for good rows, the message otherwise."""
    if isinstance(data, (pa.RecordBatch, pa.Table)):
        return data.column(ERROR_COLUMN).to_pylist()
    return data.to_pylist()


def valid(data: Union[BatchLike, ColumnLike]) -> np.ndarray:
    """Return a ``numpy`` bool array, ``True`` where the row's tensor is present.

    For a batch, a row is valid when its tensor is non-null and its ``error``
    is null (the server keeps the two consistent; requiring both makes a
    disagreement show up as an invalid row rather than a silently bad tensor).
    Given just the tensor column, only its validity is used.
    """
    if isinstance(data, (pa.RecordBatch, pa.Table)):
        tensor_col = _column(data, TENSOR_COLUMN)
        storage = tensor_col.storage if isinstance(tensor_col, pa.ExtensionArray) else tensor_col
        ok = storage.is_valid().to_numpy(zero_copy_only=False).astype(bool)
        if ERROR_COLUMN in data.schema.names:
            err = _column(data, ERROR_COLUMN)
            ok &= err.is_null().to_numpy(zero_copy_only=False).astype(bool)
        return ok
    col = _column(data, TENSOR_COLUMN)
    storage = col.storage if isinstance(col, pa.ExtensionArray) else col
    return storage.is_valid().to_numpy(zero_copy_only=False).astype(bool)


def warnings(data: BatchLike) -> List[Optional[str]]:
    """Return the ``warning`` column as a list: ``None`` unless the row decoded only with recovery."""
    return _column(data, WARNING_COLUMN).to_pylist()


def geometry(data: BatchLike) -> Dict[str, np.ndarray]:
    """Return the ``geometry`` struct as a dict of NumPy arrays, one entry per row.

    Keys: ``orientation`` (EXIF value applied, 1 = none), ``flipped_horizontal``,
    ``flipped_vertical``, ``scale_y``, ``scale_x`` (output pixels per source
    pixel), ``box_top``, ``box_left``, ``box_height``, ``box_width`` (the source
    region, after EXIF orientation, that the whole output covers). Output pixel
    centre ``(y + .5, x + .5)`` maps to source
    ``(box_top + (y + .5) / scale_y, box_left + (x + .5) / scale_x)`` (before the
    flips, which mirror the output). Failed rows read NaN in the float fields.
    """
    col = _column(data, GEOMETRY_COLUMN)
    valid_rows = col.is_valid().to_numpy(zero_copy_only=False).astype(bool)
    out: Dict[str, np.ndarray] = {}
    for i in range(col.type.num_fields):
        name = col.type.field(i).name
        values = col.field(i).to_numpy(zero_copy_only=False)
        if values.dtype.kind == "f":
            values = np.where(valid_rows, values, np.nan)
        out[name] = values
    return out


def heights(data: BatchLike) -> np.ndarray:
    """Return the source heights (after EXIF orientation) as a float64 array, NaN when unknown."""
    return _column(data, HEIGHT_COLUMN).to_numpy(zero_copy_only=False).astype(np.float64)


def widths(data: BatchLike) -> np.ndarray:
    """Return the source widths (after EXIF orientation) as a float64 array, NaN when unknown."""
    return _column(data, WIDTH_COLUMN).to_numpy(zero_copy_only=False).astype(np.float64)


def batch_spec(data: Union[BatchLike, pa.Schema]) -> Dict[str, Any]:
    """Return the resolved spec the server applied (schema metadata ``pixelfeed.spec``)."""
    schema = data if isinstance(data, pa.Schema) else data.schema
    md = schema.metadata or {}
    raw = md.get(SPEC_METADATA_KEY)
    if raw is None:
        raise KeyError(f"schema has no {_contract.SPEC_METADATA_KEY} metadata; is this a pixelfeed output batch?")
    return json.loads(raw)

