"""Hand pixelfeed output to other array libraries without copying.

- :func:`dlpack_values` — the batch's tensor values as a flat Arrow array that
  implements the DLPack protocol (``__dlpack__``), for ``jax.dlpack``,
  ``cupy.from_dlpack``, ``torch.from_dlpack``, ``np.from_dlpack``; reshape the
  result to ``(N, *tensor_shape(batch))``.
- :func:`numpy_view` — the same data as :func:`pixelfeed.tensors`, optionally
  writeable-flagged (for libraries such as ``torch.from_numpy`` that refuse or
  warn about read-only arrays; do not actually write through it).
"""

from __future__ import annotations

from typing import Union

import numpy as np
import pyarrow as pa

from .arrays import BatchLike, ColumnLike, TENSOR_COLUMN, _column, _tensor_layout, tensor_shape, tensors

__all__ = ["dlpack_values", "numpy_view", "tensor_shape"]


def dlpack_values(data: Union[BatchLike, ColumnLike]) -> pa.Array:
    """Return the tensor values of every row as one flat, zero-copy Arrow array.

    The array is a slice of the ``tensor`` column's child values covering
    exactly the batch's rows (failed rows included, zero-filled), has no
    nulls, and so supports ``__dlpack__`` (pyarrow >= 15). Example::

        import jax
        flat = jax.dlpack.from_dlpack(pixelfeed.interop.dlpack_values(batch))
        x = flat.reshape((batch.num_rows, *pixelfeed.tensor_shape(batch)))
    """
    col = _column(data, TENSOR_COLUMN)
    storage, _, _ = _tensor_layout(col)
    size = storage.type.list_size
    return storage.values.slice(storage.offset * size, len(storage) * size)


def numpy_view(data: Union[BatchLike, ColumnLike], writeable: bool = False) -> np.ndarray:
    """Like :func:`pixelfeed.tensors`; with ``writeable=True`` the view is flagged writeable.

    Arrow buffers are immutable by contract: the flag only exists to satisfy
    consumers that insist on it. Writing through the view changes the batch for
    every other reader. Where the underlying buffer is genuinely read-only the
    flag cannot be set and a read-only view is returned.
    """
    x = tensors(data)
    if writeable:
        view = x.view()
        try:
            view.flags.writeable = True
        except ValueError:
            return x
        return view
    return x
