"""Server-side datasets: sharded reads of data the server reads itself.

The server registers datasets (``pixelfeed serve --dataset NAME=URI`` or
:meth:`pixelfeed.Client.register_dataset`). ``GetFlightInfo`` with a CMD
descriptor ``{"dataset": NAME, "spec": ..., "shards": K}`` answers with the
output schema and K endpoints, one per contiguous shard of rows; each
endpoint's ticket is self-describing, so any server listed in its locations
(the server and its ``--peer``\\ s) can serve it with ``DoGet``.

Example::

    ds = client.dataset("train", "imagenet")
    endpoints = ds.shards(8)
    for batch in client.read(endpoints[0]):
        x = pixelfeed.tensors(batch)
    table = client.read_all(endpoints, parallel=4)

:func:`assign_shards` is the rule that splits shards over data-loader workers
and distributed ranks without overlap (used by
``pixelfeed.torch.ShardedDataset``).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.flight as flight

from . import _contract
from ._connection import TRANSIENT_ERRORS, Connection, location_uri
from ._contract import SpecLike

__all__ = ["Dataset", "read", "read_table", "read_all", "assign_shards", "info_command"]

#: What the functions here read through: a :class:`pixelfeed.Client` (its
#: open Flight client is reused for its own location) or a bare
#: :class:`~pixelfeed._connection.Connection` (clients are opened per call).
#: Either way, any other location is opened with the same token and TLS settings.
Source = Any


def info_command(name: str, spec: SpecLike, shards: int) -> bytes:
    """The ``GetFlightInfo`` CMD descriptor bytes for a sharded read (see :func:`pixelfeed._contract.info_command`)."""
    return _contract.info_command(name, spec, shards)


def _parts(source: Source) -> Tuple[Connection, Optional[flight.FlightClient]]:
    """The connection settings of ``source`` and its open Flight client, if it has one."""
    if isinstance(source, Connection):
        return source, None
    return source.connection, source.flight_client


@contextmanager
def _flight_client(source: Source, location: Optional[str] = None) -> Iterator[flight.FlightClient]:
    """A Flight client to ``location`` (default: the source's own server).

    The source's own open client when it points there, else a new one with
    the source's TLS settings, closed on exit.
    """
    conn, own = _parts(source)
    if own is not None and (location is None or location == location_uri(conn.location)):
        yield own
        return
    opened = conn.open(location)
    try:
        yield opened
    finally:
        opened.close()


class Dataset:
    """A named server-side dataset read with one transform spec."""

    def __init__(self, client: Source, name: str, spec: SpecLike = None) -> None:
        """Bind ``name`` on ``client``'s server to ``spec`` (default: the imagenet preset)."""
        self.client = client
        self.name = name
        self.spec = spec

    def __repr__(self) -> str:
        """Show the dataset's name and server."""
        return f"pixelfeed.Dataset({self.name!r} on {_parts(self.client)[0].location!r})"

    def info(self, shards: int = 1, *, timeout: Optional[float] = None) -> flight.FlightInfo:
        """``GetFlightInfo`` for ``shards`` shards: output schema, row count, endpoints."""
        descriptor = flight.FlightDescriptor.for_command(info_command(self.name, self.spec, shards))
        options = _parts(self.client)[0].options(timeout)
        with _flight_client(self.client) as conn:
            return conn.get_flight_info(descriptor, options)

    def shards(self, k: int = 1, *, timeout: Optional[float] = None) -> List[flight.FlightEndpoint]:
        """The dataset cut into ``k`` contiguous shards, as Flight endpoints (in row order)."""
        return list(self.info(k, timeout=timeout).endpoints)

    def schema(self, *, timeout: Optional[float] = None) -> pa.Schema:
        """The output schema (passthrough columns, then the tensor and its companions)."""
        return self.info(1, timeout=timeout).schema


def _locations(endpoint: flight.FlightEndpoint) -> List[str]:
    return [location_uri(loc) for loc in endpoint.locations]


def read(
    client: Source, endpoint: flight.FlightEndpoint, *, timeout: Optional[float] = None
) -> Iterator[pa.RecordBatch]:
    """Stream one shard's output batches with ``DoGet``.

    The endpoint's locations are tried in order (the first is the server the
    shard was assigned to, the others are alternatives); an endpoint without
    locations is read from ``client``'s own server. Every location is reached
    with ``client``'s token and TLS settings. A location that cannot be
    reached (``FlightUnavailableError``) before any batch arrived moves on
    to the next.
    """
    options = _parts(client)[0].options(timeout)
    locations: List[Optional[str]] = list(_locations(endpoint)) or [None]
    last: Optional[BaseException] = None
    for loc in locations:
        started = False
        try:
            with _flight_client(client, loc) as conn:
                for chunk in conn.do_get(endpoint.ticket, options):
                    started = True
                    yield chunk.data
                return
        except flight.FlightUnavailableError as exc:
            if started:
                raise  # rows were handed out: another location would repeat them
            last = exc
    raise last if last is not None else RuntimeError("endpoint has no usable location")


def read_table(client: Source, endpoint: flight.FlightEndpoint, *, timeout: Optional[float] = None) -> pa.Table:
    """Read one shard whole, as one table: all of its rows or an exception.

    Locations are tried as in :func:`read`, with ``client``'s token and TLS
    settings. As nothing is handed out before the shard is complete, a
    location that fails at any point with a transport error (unavailable,
    timed out, cancelled) moves on to the next, which starts the shard over.
    """
    options = _parts(client)[0].options(timeout)
    locations: List[Optional[str]] = list(_locations(endpoint)) or [None]
    last: Optional[BaseException] = None
    for loc in locations:
        try:
            with _flight_client(client, loc) as conn:
                return conn.do_get(endpoint.ticket, options).read_all()
        except TRANSIENT_ERRORS as exc:
            last = exc
    raise last if last is not None else RuntimeError("endpoint has no usable location")


def read_all(
    client: Source,
    endpoints: Sequence[flight.FlightEndpoint],
    parallel: int = 4,
    *,
    timeout: Optional[float] = None,
) -> pa.Table:
    """Read every endpoint (``parallel`` at a time) into one table, in endpoint order."""
    endpoints = list(endpoints)
    if not endpoints:
        raise ValueError("no endpoints to read")

    def one(ep: flight.FlightEndpoint) -> List[pa.RecordBatch]:
        return list(read(client, ep, timeout=timeout))

    with ThreadPoolExecutor(max_workers=max(1, int(parallel))) as pool:
        parts = list(pool.map(one, endpoints))
    batches = [b for part in parts for b in part]
    if batches:
        return pa.Table.from_batches(batches)
    # No rows at all: the schema still comes from GetFlightInfo's answer,
    # which DoGet repeats; read it off an (empty) stream.
    with _flight_client(client) as conn:
        return conn.do_get(endpoints[0].ticket, _parts(client)[0].options(timeout)).read_all()


def assign_shards(n_shards: int, rank: int = 0, world_size: int = 1, worker: int = 0, workers: int = 1) -> List[int]:
    """Shard indices one reader takes: reader ``rank * workers + worker`` of
    ``world_size * workers`` takes every shard whose index is congruent to it.

    Across all ranks and workers every shard is taken exactly once.
    """
    if not (0 <= rank < world_size and 0 <= worker < workers):
        raise ValueError(f"rank {rank}/{world_size}, worker {worker}/{workers} out of range")
    reader, readers = rank * workers + worker, world_size * workers
    return list(range(reader, n_shards, readers))


def register(client: Source, name: str, uri: str, *, timeout: Optional[float] = None) -> Dict[str, Any]:
    """``DoAction("register_dataset")``: the server opens ``uri`` as ``name``; returns ``{"name", "rows"}``."""
    body = json.dumps({"name": name, "uri": uri}).encode()
    with _flight_client(client) as conn:
        results = list(conn.do_action(flight.Action("register_dataset", body), _parts(client)[0].options(timeout)))
    return json.loads(b"".join(r.body.to_pybytes() for r in results))
