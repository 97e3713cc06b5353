"""``read_pixelfeed``: a Ray Data datasource over a dataset the server reads itself.

One ``GetFlightInfo`` returns K endpoints (a ticket plus the servers that can
serve it); each endpoint becomes one Ray read task running ``DoGet``, so a
cluster reads a sharded dataset from many servers in parallel.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional

import pyarrow as pa
import pyarrow.flight as flight
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from .._connection import Connection
from .._contract import SpecLike
from ..datasets import Dataset, read_table
from .locations import parse_locations

__all__ = ["PixelfeedDatasource", "read_pixelfeed"]


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
        """Remember where to ask; ``GetFlightInfo`` runs in :meth:`get_read_tasks`.

        ``connect_kwargs`` are those of :func:`pixelfeed.connect` (``token``,
        ``ca_file``, ``cert_chain``/``private_key``, other
        ``pyarrow.flight.FlightClient`` keywords); they apply to
        ``GetFlightInfo`` and to every read task, whichever server it reads.
        """
        self.location = parse_locations([location])[0]
        self.dataset = dataset
        self.spec = spec
        self.shards = shards
        self.timeout = timeout
        self.connect_kwargs = dict(connect_kwargs or {})
        #: The settings of every call (picklable: it travels in the read tasks).
        self.connection = Connection(self.location, timeout=timeout or None, **self.connect_kwargs)
        self._info: Optional[flight.FlightInfo] = None

    def flight_info(self, shards: int) -> flight.FlightInfo:
        """``GetFlightInfo`` for the dataset cut in ``shards`` (cached per instance)."""
        if self._info is None:
            self._info = Dataset(self.connection, self.dataset, self.spec).info(shards)
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
            uris = (loc.uri for loc in endpoint.locations)
            locations = [u.decode() if isinstance(u, bytes) else str(u) for u in uris]
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            read_fn = _bind_read(self.connection, endpoint.ticket.ticket, locations)
            if per_task_row_limit is not None:
                tasks.append(ReadTask(read_fn, meta, schema=info.schema, per_task_row_limit=per_task_row_limit))
            else:
                tasks.append(ReadTask(read_fn, meta, schema=info.schema))
        return tasks

    def get_name(self) -> str:
        """Name shown in Ray's progress output."""
        return f"Pixelfeed({self.dataset})"


def _bind_read(connection: Connection, ticket: bytes, locations: List[str]) -> Callable[[], Iterable[pa.Table]]:
    """A picklable zero-argument read function for one endpoint (``FlightEndpoint`` itself does not pickle)."""

    def read() -> Iterable[pa.Table]:
        """Read the endpoint's shard whole (:func:`pixelfeed.datasets.read_table`): one block."""
        endpoint = flight.FlightEndpoint(ticket, locations)
        return [read_table(connection, endpoint)]

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
    ``DoGet``, trying the endpoint's locations in order (an endpoint without
    locations is read from ``location``). ``connect_kwargs`` are those of
    :func:`pixelfeed.connect` (``token``, ``ca_file``, client certificate,
    ...) and apply to every call. ``shards`` defaults to Ray's read
    parallelism. Output rows are the dataset's rows (passthrough columns,
    ``tensor``, ``error``, ...), each exactly once. Further keyword arguments
    go to ``ray.data.read_datasource``.
    """
    source = PixelfeedDatasource(location, dataset, spec, shards, timeout=timeout, connect_kwargs=connect_kwargs)
    return ray.data.read_datasource(source, **read_kwargs)
