"""``read_pixelfeed``: a Ray Data datasource over a dataset the server reads itself.

One ``GetFlightInfo`` returns K endpoints (a ticket plus the servers that can
serve it); each endpoint becomes one Ray read task running ``DoGet``, so a
cluster reads a sharded dataset from many servers in parallel.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import pyarrow as pa
import pyarrow.flight as flight
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from .._connection import TRANSIENT_ERRORS
from .._contract import SpecLike, info_command
from .locations import parse_locations

__all__ = ["PixelfeedDatasource", "read_pixelfeed"]

_TRANSIENT = TRANSIENT_ERRORS


def _read_endpoint(
    ticket: bytes, locations: List[str], timeout: Optional[float], connect_kwargs: Dict[str, Any]
) -> Iterator[pa.Table]:
    """Read task body: ``DoGet(ticket)`` from the first location that answers."""
    last: Optional[BaseException] = None
    for loc in locations:
        client = flight.FlightClient(loc, **connect_kwargs)
        try:
            options = flight.FlightCallOptions(timeout=timeout) if timeout else flight.FlightCallOptions()
            # A whole shard is read before its block is returned, so a
            # failed attempt yields nothing and the next location starts over.
            table = client.do_get(flight.Ticket(ticket), options).read_all()
            yield table
            return
        except _TRANSIENT as e:
            last = e
        finally:
            client.close()
    assert last is not None
    raise last


class PixelfeedDatasource(Datasource):
    """Ray Data datasource over a pixelfeed server dataset (see :func:`read_pixelfeed`)."""

    def __init__(
        self,
        location: str,
        dataset: str,
        spec: SpecLike = None,
        shards: Optional[int] = None,
        *,
        timeout: Optional[float] = 300.0,
        connect_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Remember where to ask; ``GetFlightInfo`` runs in :meth:`get_read_tasks`."""
        self.location = parse_locations([location])[0]
        self.dataset = dataset
        self.spec = spec
        self.shards = shards
        self.timeout = timeout
        self.connect_kwargs = dict(connect_kwargs or {})
        self._info: Optional[flight.FlightInfo] = None

    def flight_info(self, shards: int) -> flight.FlightInfo:
        """``GetFlightInfo`` for the dataset cut in ``shards`` (cached per instance)."""
        if self._info is None:
            client = flight.FlightClient(self.location, **self.connect_kwargs)
            try:
                descriptor = flight.FlightDescriptor.for_command(info_command(self.dataset, self.spec, shards))
                options = flight.FlightCallOptions(timeout=self.timeout) if self.timeout else flight.FlightCallOptions()
                self._info = client.get_flight_info(descriptor, options)
            finally:
                client.close()
        return self._info

    def estimate_inmemory_data_size(self) -> Optional[int]:
        """The server's byte estimate when it gave one."""
        info = self._info
        if info is None or info.total_bytes is None or info.total_bytes < 0:
            return None
        return int(info.total_bytes)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None, **_: Any) -> List[ReadTask]:
        """One read task per endpoint; ``shards`` defaults to Ray's ``parallelism``."""
        info = self.flight_info(self.shards or max(1, parallelism))
        tasks: List[ReadTask] = []
        for endpoint in info.endpoints:
            # An endpoint without locations is served by the server we asked
            # (the Flight convention).
            locations = [str(loc.uri.decode() if isinstance(loc.uri, bytes) else loc.uri) for loc in endpoint.locations]
            locations = locations or [self.location]
            ticket = endpoint.ticket.ticket
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            read_fn = _bind_read(ticket, locations, self.timeout, self.connect_kwargs)
            if per_task_row_limit is not None:
                tasks.append(ReadTask(read_fn, meta, schema=info.schema, per_task_row_limit=per_task_row_limit))
            else:
                tasks.append(ReadTask(read_fn, meta, schema=info.schema))
        return tasks

    def get_name(self) -> str:
        """Name shown in Ray's progress output."""
        return f"Pixelfeed({self.dataset})"


def _bind_read(
    ticket: bytes, locations: List[str], timeout: Optional[float], connect_kwargs: Dict[str, Any]
) -> Callable[[], Iterable[pa.Table]]:
    """A picklable zero-argument read function for one endpoint."""

    def read() -> Iterable[pa.Table]:
        """Read the endpoint's shard."""
        return _read_endpoint(ticket, locations, timeout, connect_kwargs)

    return read


def read_pixelfeed(
    location: str,
    dataset: str,
    spec: SpecLike = None,
    shards: Optional[int] = None,
    *,
    timeout: Optional[float] = 300.0,
    connect_kwargs: Optional[Dict[str, Any]] = None,
    **read_kwargs: Any,
) -> "ray.data.Dataset":
    """A Ray Dataset of the tensors of server-side dataset ``dataset``.

    Sends ``GetFlightInfo`` with the CMD descriptor ``{"dataset": NAME,
    "spec": SPEC, "shards": K}`` to ``location``; each returned endpoint (a
    ticket and the servers that can serve it) becomes one read task that runs
    ``DoGet``, trying the endpoint's locations in order. ``shards`` defaults to
    Ray's read parallelism. Output rows are the dataset's rows (passthrough
    columns, ``tensor``, ``error``, ...), each exactly once. Further keyword
    arguments go to ``ray.data.read_datasource``.
    """
    source = PixelfeedDatasource(location, dataset, spec, shards, timeout=timeout, connect_kwargs=connect_kwargs)
    return ray.data.read_datasource(source, **read_kwargs)
