"""The ``Dataset.map_batches`` callable: one pixelfeed connection per Ray actor.

:class:`Preprocessor` picks its server with :mod:`pixelfeed.ray.locations`
and a round-robin index handed out by a tiny named counter actor, streams
each batch's image column through ``DoExchange`` (:meth:`pixelfeed.Client.preprocess`)
and re-attaches the batch's other columns locally; on a transport error it
reconnects to the next server and re-sends the whole batch.
:func:`preprocess` is ``map_batches(Preprocessor, ...)`` with defaults.
"""

from __future__ import annotations

import threading
import time
import zlib
from typing import Any, Dict, Optional, Sequence, Union

import pyarrow as pa
import ray

from .._connection import TRANSIENT_ERRORS
from .._contract import IMAGE_COLUMN, SpecLike, encode_spec
from ..client import Client, connect
from .locations import choose_locations, expand_locations, parse_locations

__all__ = ["Preprocessor", "preprocess"]


# -- round-robin index -------------------------------------------------------------------


@ray.remote(num_cpus=0)
class _Counter:
    """Hands out 0, 1, 2, ... to the actors of one pool (one per location set)."""

    def __init__(self) -> None:
        """Start at 0."""
        self.n = 0

    def next(self) -> int:
        """The next index."""
        n = self.n
        self.n += 1
        return n


def _actor_index(key: str) -> int:
    """A round-robin index for this actor, shared by every actor using ``key``.

    The counter is a detached actor (namespace ``pixelfeed``, one per
    location set, no CPU): owned by whichever pool actor created it, it
    would die with that actor, and a later pool over the same servers then
    raced its teardown and got index 0 in every actor (seen on Ray 2.5x; cf.
    ray-project/ray#49480). It stays until the Ray cluster stops; remove it
    with ``ray.kill(ray.get_actor(name, namespace="pixelfeed"))``. Failures
    are retried a few times, then this falls back to a hash of the actor id
    (spread, but not strictly round-robin).
    """
    name = "pixelfeed-rr-" + format(zlib.crc32(key.encode()), "08x")
    for attempt in range(5):
        try:
            counter = _Counter.options(
                name=name, namespace="pixelfeed", get_if_exists=True, lifetime="detached"
            ).remote()
            return int(ray.get(counter.next.remote(), timeout=30))
        except ray.exceptions.GetTimeoutError:
            break  # a counter that does not answer: do not wait longer
        except Exception:  # noqa: BLE001 - any other failure: retry, then fall back
            time.sleep(0.2 * (attempt + 1))
    ctx = ray.get_runtime_context()
    ident = ctx.get_actor_id() or ctx.get_worker_id() or ""
    return zlib.crc32(str(ident).encode())



# -- map_batches callable ---------------------------------------------------------------------


class Preprocessor:
    """``Dataset.map_batches`` callable: one pixelfeed connection per Ray actor.

    Use with ``batch_format="pyarrow"`` and an actor pool (``compute=
    ray.data.ActorPoolStrategy(...)`` or ``concurrency=N``). Each call sends the
    batch's image column to the server and returns the batch's other columns
    unchanged (they never travel to the server), followed by the server's
    output columns (``tensor``, ``error``, ``height``, ``width``, ...), row for
    row. The image bytes column is dropped.
    """

    def __init__(
        self,
        locations: Union[None, str, Sequence[str]] = None,
        spec: SpecLike = None,
        *,
        image_column: str = IMAGE_COLUMN,
        batch_size: int = 64,
        timeout: Optional[float] = 300.0,
        connect_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Pick this actor's server and connect to it.

        ``locations``: list or comma-separated string of ``grpc://host:port``
        (``None``: ``$PIXELFEED_LOCATIONS``). ``spec``: as for
        :meth:`pixelfeed.Client.preprocess`. ``image_column``: the column
        holding encoded bytes (``"bytes"`` for ``read_binary_files``).
        ``batch_size``: rows per Flight message. ``timeout``: per-batch
        deadline in seconds. ``connect_kwargs``: passed to
        :func:`pixelfeed.connect` (``token``, ``ca_file``, client certificate, ...).
        """
        self.command = encode_spec(spec)
        self.image_column = image_column
        self.batch_size = batch_size
        self.timeout = timeout
        self.connect_kwargs = dict(connect_kwargs or {})
        given = parse_locations(locations)
        expanded = expand_locations(given)
        self._tls_names = dict(expanded)
        node_ip = ray.util.get_node_ip_address()
        self.index = _actor_index(",".join(given))
        self.candidates = choose_locations([loc for loc, _ in expanded], node_ip, self.index)
        self._lock = threading.Lock()
        self._client: Optional[Client] = None
        self._empty: Optional[pa.Table] = None
        self._current = 0
        self._connect(0)

    @property
    def location(self) -> str:
        """The server this actor talks to now."""
        return self.candidates[self._current]

    def _connect(self, k: int) -> None:
        """(Re)connect to candidate ``k``."""
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - the old connection is being dropped anyway
                pass
        self._current = k % len(self.candidates)
        kwargs = dict(self.connect_kwargs)
        tls_name = self._tls_names.get(self.location)
        if tls_name and "override_hostname" not in kwargs:
            kwargs["override_hostname"] = tls_name
        self._client = connect(self.location, timeout=self.timeout, **kwargs)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Preprocess one Ray batch (a ``pyarrow.Table``); see the class doc."""
        if not isinstance(batch, pa.Table):
            raise TypeError(f"use map_batches(..., batch_format='pyarrow'); got {type(batch).__name__}")
        if self.image_column not in batch.column_names:
            raise ValueError(
                f"batch has no column {self.image_column!r} (columns: {', '.join(batch.column_names)}); "
                "set image_column="
            )
        rest = batch.drop_columns([self.image_column])
        images = pa.table({IMAGE_COLUMN: batch.column(self.image_column)})
        with self._lock:  # an actor may run calls concurrently (max_concurrency)
            if images.num_rows == 0:
                # Nothing to stream, but the output must still have the
                # server's columns: learn them once from a one-row call.
                if self._empty is None:
                    self._empty = self._send(pa.table({IMAGE_COLUMN: pa.array([None], pa.binary())})).slice(0, 0)
                out = self._empty
            else:
                out = self._send(images)
        clash = set(rest.column_names) & set(out.column_names)
        if clash:
            raise ValueError(f"input columns {sorted(clash)} collide with pixelfeed's output columns; rename them")
        if out.num_rows != batch.num_rows:  # Client checks this too; a broken invariant must not pass silently
            raise RuntimeError(f"pixelfeed returned {out.num_rows} rows for {batch.num_rows}")
        columns = list(rest.columns) + list(out.columns)
        fields = list(rest.schema) + list(out.schema)
        return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=out.schema.metadata))

    def _send(self, images: pa.Table) -> pa.Table:
        """Run the exchange, failing over to the next server on transport errors.

        The result is assembled only after the whole batch came back, so a
        failed attempt leaves nothing behind and the retry sends the batch again
        from its first row.
        """
        last: Optional[BaseException] = None
        for attempt in range(len(self.candidates)):
            if attempt:
                self._connect(self._current + 1)
            try:
                assert self._client is not None
                # One call on this thread: the actor is the unit of parallelism
                # (one stream per actor), and a retry re-sends the whole batch.
                batches = list(self._client.preprocess(images, self.command, self.batch_size, streams=1, prefetch=0))
                if not batches:
                    raise ValueError("no output: the batch had no rows")
                return pa.Table.from_batches(batches)
            except TRANSIENT_ERRORS as e:  # the server, not the batch: try the next one
                last = e
        assert last is not None
        raise last

    def info(self) -> Dict[str, Any]:
        """This actor's round-robin index, current server and fail-over order."""
        return {"index": self.index, "location": self.location, "candidates": list(self.candidates)}

    def __repr__(self) -> str:
        """Show the actor's server."""
        return f"pixelfeed.ray.Preprocessor(location={self.location!r}, index={self.index})"


def preprocess(
    ds: "ray.data.Dataset",
    locations: Union[None, str, Sequence[str]] = None,
    spec: SpecLike = None,
    *,
    image_column: str = IMAGE_COLUMN,
    actors: Optional[int] = None,
    batch_size: int = 256,
    num_cpus: float = 0.25,
    **map_batches_kwargs: Any,
) -> "ray.data.Dataset":
    """``ds.map_batches(Preprocessor, ...)`` with sensible defaults.

    ``actors`` defaults to the number of locations (one stream per server);
    ``batch_size`` is the Ray batch size (rows per call); ``num_cpus`` per actor
    is small because the actor waits on the server. Further keyword arguments go
    to ``map_batches``.
    """
    locs = parse_locations(locations)
    n = actors or len(locs)
    kwargs: Dict[str, Any] = {
        "fn_constructor_kwargs": {"locations": locs, "spec": spec, "image_column": image_column},
        "batch_format": "pyarrow",
        "batch_size": batch_size,
        "compute": ray.data.ActorPoolStrategy(size=n),
        "num_cpus": num_cpus,
    }
    kwargs.update(map_batches_kwargs)
    return ds.map_batches(Preprocessor, **kwargs)
