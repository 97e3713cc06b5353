"""Ray Data integration: run pixelfeed preprocessing inside a Ray cluster.

Two entry points, both plain Arrow Flight underneath:

- :class:`Preprocessor`, a callable class for ``Dataset.map_batches`` in an
  actor pool: each actor keeps one long-lived Flight connection (a
  :class:`pixelfeed.Client`) to one pixelfeed server and streams every batch
  it is given through ``DoExchange``::

      import ray
      from pixelfeed.ray import Preprocessor, drop_errors

      ds = ray.data.read_binary_files("s3://bucket/imgs/", include_paths=True)
      ds = ds.map_batches(
          Preprocessor,
          fn_constructor_kwargs={"locations": ["grpc://10.0.0.5:8815", "grpc://10.0.0.6:8815"],
                                 "spec": "imagenet", "image_column": "bytes"},
          batch_format="pyarrow",
          compute=ray.data.ActorPoolStrategy(size=8),
          num_cpus=0.25,        # the actor mostly waits on the server
      )
      for batch in drop_errors(ds).drop_columns(["path"]).iter_torch_batches(batch_size=256):
          x = batch["tensor"]   # torch.Tensor (N, 3, 224, 224)

  :func:`preprocess` is the same call with those defaults filled in.

- :func:`read_pixelfeed`, a Ray Data datasource over a dataset the *server*
  reads itself: one ``GetFlightInfo`` returns K endpoints (a ticket plus the
  servers that can serve it), and each endpoint becomes one Ray read task
  running ``DoGet`` — so a cluster reads a sharded dataset from many servers
  in parallel.

Which server an actor uses: the locations come from the ``locations``
argument, else the ``PIXELFEED_LOCATIONS`` environment variable (comma or
space separated; set it per node, or through ``runtime_env={"env_vars": ...}``
since Ray workers do not inherit the driver's environment). A name that
resolves to several addresses (a Kubernetes headless Service) counts as one
location per address. An actor prefers the servers on its own node (the node
IP from ``ray.util.get_node_ip_address()``; loopback addresses count as
local) and spreads over them, or over all servers when none is local,
round-robin by actor (a tiny named counter actor hands out the indexes). If
its server becomes unreachable the actor reconnects to the next one and
redoes the whole batch.

Rows are never dropped or duplicated: a bad image comes back as a row with a
null ``tensor`` and an ``error`` text (never an exception), and the output
table of a batch is built only once the server returned every row, so Ray's
task or actor retries re-run whole batches. The output tensor column is the
canonical ``arrow.fixed_shape_tensor`` extension type as the server sent it
(no conversion, no copy): Ray Data >= 2.50 with pyarrow >= 16 treats it as one
of its tensor types (ray-project/ray#56284; older Ray could not even move it
through the object store, ray-project/ray#51959, hence the version floor), so
``iter_batches(batch_format="numpy")`` gives ``(N, *shape)`` arrays and
``iter_torch_batches`` torch tensors, *once the error rows are gone* — Arrow refuses to turn a tensor
column holding nulls into one ndarray, and Ray refuses to turn the string
``error`` column into a torch tensor. :func:`drop_errors` removes both;
:func:`errors_only` keeps just the failures for a report.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import zlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight

from ._contract import (
    ERROR_COLUMN,
    GEOMETRY_COLUMN,
    IMAGE_COLUMN,
    WARNING_COLUMN,
    SpecLike,
    encode_spec,
    info_command,
)
from .client import Client, connect

try:
    import ray
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError("pixelfeed.ray needs Ray Data: pip install 'pixelfeed[ray]' (ray[data])") from _e

__all__ = [
    "LOCATIONS_ENV",
    "Preprocessor",
    "preprocess",
    "drop_errors",
    "errors_only",
    "parse_locations",
    "choose_locations",
    "read_pixelfeed",
    "PixelfeedDatasource",
]

#: Environment variable read when no ``locations`` argument is given.
LOCATIONS_ENV = "PIXELFEED_LOCATIONS"

#: Flight errors after which the same batch is worth sending to another server:
#: the server is gone or overloaded, not the request wrong.
_TRANSIENT = (flight.FlightUnavailableError, flight.FlightTimedOutError, flight.FlightCancelledError)

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


# -- locations -------------------------------------------------------------------------


def parse_locations(
    value: Union[None, str, Sequence[str]] = None, env: Optional[Mapping[str, str]] = None
) -> List[str]:
    """Normalise a location list: ``None`` reads ``$PIXELFEED_LOCATIONS``.

    A string is split on commas and whitespace; ``host:port`` becomes
    ``grpc://host:port``. Order is kept and duplicates removed. Raises
    ``ValueError`` when nothing is left, naming where it looked.
    """
    source = "the locations argument"
    if value is None:
        value = (env if env is not None else os.environ).get(LOCATIONS_ENV, "")
        source = f"${LOCATIONS_ENV}"
    items = value.replace(",", " ").split() if isinstance(value, str) else [str(v).strip() for v in value]
    out: List[str] = []
    for item in items:
        if not item:
            continue
        loc = item if "://" in item else "grpc://" + item
        if loc not in out:
            out.append(loc)
    if not out:
        raise ValueError(f"no pixelfeed server locations in {source} (e.g. grpc://10.0.0.5:8815)")
    return out


def _split(location: str) -> "tuple[str, str, int]":
    """``(scheme, host, port)`` of a ``grpc[+tls|+tcp]://host:port`` location."""
    u = urlparse(location)
    if not u.hostname or not u.port:
        raise ValueError(f"location {location!r} needs a host and a port")
    return u.scheme, u.hostname, u.port


def _resolve(host: str) -> List[str]:
    """Every address ``host`` resolves to (sorted, so all actors agree on the order)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return []
    return sorted({info[4][0] for info in infos})


def expand_locations(
    locations: Sequence[str], resolve: Callable[[str], List[str]] = _resolve
) -> List["tuple[str, Optional[str]]"]:
    """Expand names into one location per address: ``[(location, tls_hostname)]``.

    A headless Service name resolves to every ready pod, so this is the
    client-side round robin over them. For ``grpc+tls`` the original name is
    kept as the TLS host name to verify (the certificate names the Service,
    not the pod IP). IP literals and names that do not resolve stay as given.
    """
    out: List["tuple[str, Optional[str]]"] = []
    for loc in locations:
        scheme, host, port = _split(loc)
        addrs = [] if _is_ip(host) else resolve(host)
        if not addrs:
            out.append((loc, None))
            continue
        for a in addrs:
            shown = f"[{a}]" if ":" in a else a
            out.append((f"{scheme}://{shown}:{port}", host if "tls" in scheme else None))
    return out


def _is_ip(host: str) -> bool:
    """Whether ``host`` is an IPv4/IPv6 literal."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


def choose_locations(locations: Sequence[str], node_ip: str, index: int) -> List[str]:
    """Order ``locations`` for the actor with round-robin ``index`` on ``node_ip``.

    The first entry is the actor's server: among the locations on the same
    node (host equal to ``node_ip``, or loopback) if any, else among all,
    picked by ``index`` modulo their count. The others follow (same-node ones
    first, each group rotated by ``index``) as fail-over targets.
    """
    if not locations:
        raise ValueError("no locations to choose from")

    def local(loc: str) -> bool:
        """Whether ``loc`` is served from this actor's node."""
        host = _split(loc)[1]
        return host == node_ip or host in _LOOPBACK or host.startswith("127.")

    near = [loc for loc in locations if local(loc)]
    far = [loc for loc in locations if not local(loc)]

    def rotated(group: List[str]) -> List[str]:
        """``group`` starting at ``index``."""
        if not group:
            return []
        k = index % len(group)
        return group[k:] + group[:k]

    return rotated(near) + rotated(far)


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
        :func:`pixelfeed.connect` (TLS roots, headers, ...).
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
                batches = list(self._client.preprocess(images, self.command, self.batch_size))
                if not batches:
                    raise ValueError("no output: the batch had no rows")
                return pa.Table.from_batches(batches)
            except _TRANSIENT as e:
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


# -- read_pixelfeed: a datasource over GetFlightInfo endpoints ---------------------------------


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
