"""Split pixelfeed output rows by outcome, in Ray Data form.

A tensor column holding nulls cannot become one ndarray (Arrow refuses), and
Ray cannot turn the string ``error``/``warning`` columns or the ``geometry``
struct into tensors: :func:`drop_errors` keeps the good rows in a shape
``iter_batches(batch_format="numpy")`` and ``iter_torch_batches`` accept;
:func:`errors_only` keeps the failures for a report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from .._contract import ERROR_COLUMN, GEOMETRY_COLUMN, WARNING_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    import ray

__all__ = ["drop_errors", "errors_only"]


def _valid_rows(table: pa.Table) -> pa.Table:
    """Rows whose ``error`` is null, ready for numpy/torch batches.

    Drops the ``error`` and ``warning`` text columns and flattens the
    ``geometry`` struct into numeric ``geometry_<field>`` columns (Ray cannot
    turn strings or structs into tensors).
    """
    table = table.filter(pc.is_null(table.column(ERROR_COLUMN)))
    table = table.drop_columns([c for c in (ERROR_COLUMN, WARNING_COLUMN) if c in table.column_names])
    if GEOMETRY_COLUMN in table.column_names:
        at = table.column_names.index(GEOMETRY_COLUMN)
        geometry = table.column(GEOMETRY_COLUMN)
        table = table.remove_column(at)
        for k in range(geometry.type.num_fields):
            name = f"{GEOMETRY_COLUMN}_{geometry.type.field(k).name}"
            table = table.add_column(at + k, name, pc.struct_field(geometry, [k]))
    return table


def _error_rows(table: pa.Table) -> pa.Table:
    """Rows whose ``error`` is set (their tensor is null)."""
    return table.filter(pc.is_valid(table.column(ERROR_COLUMN)))


def drop_errors(ds: "ray.data.Dataset") -> "ray.data.Dataset":
    """Keep the rows that decoded; drop ``error``/``warning``, flatten ``geometry`` to ``geometry_*`` columns.

    Needed before ``iter_torch_batches``/numpy batches: a tensor column with
    nulls cannot become one ndarray, and a string column cannot become a torch
    tensor. Plain ``map_batches`` in Arrow form, so it works on any Ray version.
    """
    return ds.map_batches(_valid_rows, batch_format="pyarrow", batch_size=None)


def errors_only(ds: "ray.data.Dataset") -> "ray.data.Dataset":
    """Keep only the failed rows (null tensor, ``error`` text), e.g. to log them."""
    return ds.map_batches(_error_rows, batch_format="pyarrow", batch_size=None)
