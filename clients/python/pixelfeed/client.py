"""The pixelfeed Flight client: stream encoded images in, tensors out.

The wire contract (version 1) is plain Arrow Flight, so nothing here is
needed to talk to the server; this module only saves the boilerplate:

- ``DoExchange`` with ``FlightDescriptor.for_command(<spec JSON>)``;
- the client streams record batches with a binary ``image`` column (plus any
  passthrough columns); the server streams back output batches holding the
  same rows in the same order (an input batch may come back split in several);
- ``DoAction("presets")`` returns the built-in presets as JSON.

:meth:`Client.preprocess` runs ``streams`` calls at once, each on a thread of
its own that writes and reads in turn (a couple of input batches written ahead
of the outputs read back), and hands their outputs to the caller in input
order (see :mod:`pixelfeed._streams`). So an input of any size streams through
with bounded memory, no deadlock on gRPC flow control, and never two threads
on one call (Arrow C++ aborts the process when a second thread writes to a
call the server is ending). ``prefetch=0`` runs one call on the caller's
thread instead (``Client._exchange``).
"""

from __future__ import annotations

import json
import os
import weakref
from collections import deque
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import pyarrow as pa
import pyarrow.flight as flight

from . import datasets
from ._connection import TRANSIENT_ERRORS, Connection
from ._contract import DEFAULT_PRESET, IMAGE_COLUMN, SEED_COLUMN, SpecLike, encode_spec
from ._streams import _BATCHES_IN_FLIGHT, StreamedBatches, default_streams_for, seed_column_kind

__all__ = ["Client", "connect", "SpecLike", "ImagesLike", "encode_spec", "DEFAULT_PRESET", "StreamedBatches"]

ImagesLike = Union[
    "pa.Table",
    "pa.RecordBatch",
    "pa.RecordBatchReader",
    Iterable[Optional[bytes]],
    Iterable["pa.RecordBatch"],
]

_BYTES_LIKE = (bytes, bytearray, memoryview)
# _BATCHES_IN_FLIGHT (from ._streams): input batches written ahead of the rows
# read back in one exchange (one: see its comment for why).
_BINARY_LIMIT = (1 << 31) - 1  # total bytes one `binary` array can address


def _as_bytes(i: int, img: Any) -> Optional[bytes]:
    """Check one list item: encoded image bytes or ``None``."""
    if img is None or isinstance(img, bytes):
        return img
    if isinstance(img, (bytearray, memoryview)):
        return bytes(img)
    raise TypeError(
        f"image {i} is a {type(img).__name__}; pass encoded image bytes "
        "(e.g. open(path, 'rb').read()) or None"
    )


def _bytes_batches(items: Iterator[Any], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Chunk an iterable of image bytes into single-column ``binary`` ``image`` batches.

    A chunk closes at ``batch_size`` rows, or earlier when the next image would
    push it past the 2 GiB a ``binary`` array can address.
    """
    chunk: List[Optional[bytes]] = []
    total = 0
    for i, item in enumerate(items):
        b = _as_bytes(i, item)
        size = len(b) if b is not None else 0
        if chunk and (len(chunk) >= batch_size or total + size > _BINARY_LIMIT):
            yield pa.RecordBatch.from_arrays([pa.array(chunk, type=pa.binary())], names=[IMAGE_COLUMN])
            chunk, total = [], 0
        chunk.append(b)
        total += size
    if chunk:
        yield pa.RecordBatch.from_arrays([pa.array(chunk, type=pa.binary())], names=[IMAGE_COLUMN])


def _resliced(batches: Iterable[pa.RecordBatch], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Yield the batches, slicing any longer than ``batch_size`` rows (zero-copy)."""
    for b in batches:
        if not isinstance(b, pa.RecordBatch):
            raise TypeError(f"expected pyarrow.RecordBatch items, got {type(b).__name__}")
        if b.num_rows <= batch_size:
            yield b
            continue
        for start in range(0, b.num_rows, batch_size):
            yield b.slice(start, batch_size)


def _check_input_schema(schema: pa.Schema) -> None:
    """Fail early, client-side, on inputs the server would reject anyway."""
    if IMAGE_COLUMN not in schema.names:
        raise ValueError(f"input has no column named '{IMAGE_COLUMN}' (columns: {', '.join(schema.names)})")
    typ = schema.field(IMAGE_COLUMN).type
    ok = pa.types.is_binary(typ) or pa.types.is_large_binary(typ)
    ok = ok or (hasattr(pa.types, "is_binary_view") and pa.types.is_binary_view(typ))
    if not ok:
        raise TypeError(f"column '{IMAGE_COLUMN}' must be binary, large_binary or binary_view, got {typ}")


def _without_dictionaries(
    schema: pa.Schema, batches: Iterator[pa.RecordBatch]
) -> Tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Decode top-level dictionary columns (e.g. pandas categoricals).

    The server passes extra columns through unchanged and refuses
    dictionary-encoded ones (a dictionary would have to be expanded row by
    row on the way back); decoding here sends each row's value instead.
    """
    if not any(pa.types.is_dictionary(f.type) for f in schema):
        return schema, batches
    plain = pa.schema(
        [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema],
        metadata=schema.metadata,
    )

    def decoded() -> Iterator[pa.RecordBatch]:
        for b in batches:
            columns = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in b.columns]
            yield pa.RecordBatch.from_arrays(columns, schema=plain)

    return plain, decoded()


def _input_stream(images: ImagesLike, batch_size: int) -> Tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Normalise any accepted ``images`` argument to (schema, batch iterator).

    Only the first element of a lazy iterable is consumed here (to learn the
    schema); the rest is pulled as the stream proceeds.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, pa.Table):
        return images.schema, iter(images.to_batches(max_chunksize=batch_size))
    if isinstance(images, pa.RecordBatch):
        return images.schema, _resliced([images], batch_size)
    if isinstance(images, pa.RecordBatchReader):
        return images.schema, _resliced(images, batch_size)
    if isinstance(images, _BYTES_LIKE):
        images = [images]
    it = iter(images)
    try:
        first = next(it)
    except StopIteration:
        schema = pa.schema([pa.field(IMAGE_COLUMN, pa.binary())])
        return schema, iter(())
    if isinstance(first, pa.RecordBatch):

        def chained() -> Iterator[pa.RecordBatch]:
            """The peeked first batch, then the rest."""
            yield first
            yield from it

        return first.schema, _resliced(chained(), batch_size)
    if first is None or isinstance(first, _BYTES_LIKE):

        def items() -> Iterator[Any]:
            """The peeked first item, then the rest."""
            yield first
            yield from it

        return pa.schema([pa.field(IMAGE_COLUMN, pa.binary())]), _bytes_batches(items(), batch_size)
    raise TypeError(
        f"images must be a list of bytes, a pyarrow Table/RecordBatch with an '{IMAGE_COLUMN}' "
        f"column, or an iterable of RecordBatches; got items of type {type(first).__name__}"
    )


def _batch_count(images: ImagesLike, batch_size: int) -> Optional[int]:
    """How many batches :func:`_input_stream` makes of ``images``, when known without consuming it."""
    if isinstance(images, (pa.Table, pa.RecordBatch)):
        rows = images.num_rows
    elif isinstance(images, _BYTES_LIKE):
        rows = 1
    elif isinstance(images, (list, tuple)) and not any(isinstance(x, pa.RecordBatch) for x in images[:1]):
        rows = len(images)  # bytes items; a batch may close early at 2 GiB, so this is a lower bound
    else:
        return None
    return max(1, -(-rows // batch_size))


def _same_schema(a: pa.Schema, b: pa.Schema) -> bool:
    """Schemas equal field for field (metadata ignored)."""
    return a.equals(b, check_metadata=False)


class Client:
    """A connection to one pixelfeed server.

    Create it with :func:`connect`. The client is thread-safe in the sense
    that several threads may each run their own :meth:`preprocess` call; a
    single call's iterator must be consumed by one thread at a time.
    """

    def __init__(
        self,
        location: Union[str, flight.Location],
        *,
        timeout: Optional[float] = None,
        token: Optional[str] = None,
        ca_file: Optional[str] = None,
        **flight_kwargs: Any,
    ) -> None:
        """Open a Flight client to ``location`` (``grpc://host:port``, ``grpc+tls://host:port`` or ``host:port``).

        ``timeout`` (seconds) is the default deadline of every call, ``None``
        for none. ``token`` is sent as ``authorization: Bearer <token>`` on
        every call (the server's ``--auth-token-file``). ``ca_file`` is a PEM
        file of CA certificates to trust for ``grpc+tls://`` (read into
        ``tls_root_certs``). Other keyword arguments go to
        ``pyarrow.flight.FlightClient`` (``tls_root_certs``, ``cert_chain`` and
        ``private_key`` for mutual TLS, ``override_hostname``, ...). All of
        them are kept in :attr:`connection`, which also opens the clients for
        shards served by other servers (:meth:`read`).
        """
        #: The settings this client was made with (see :class:`pixelfeed._connection.Connection`).
        self.connection = Connection(location, timeout=timeout, token=token, ca_file=ca_file, **flight_kwargs)
        self._flight = self.connection.open()
        self._default_streams: Optional[int] = None
        # Open preprocess iterations, closed before the Flight client is: their
        # threads must not use it afterwards.
        self._iterations: "weakref.WeakSet[StreamedBatches]" = weakref.WeakSet()

    @property
    def location(self) -> Union[str, flight.Location]:
        """Where the client points (``host:port`` expanded to ``grpc://host:port``)."""
        return self.connection.location

    @property
    def timeout(self) -> Optional[float]:
        """The default deadline of every call, in seconds (``None``: none)."""
        return self.connection.timeout

    @timeout.setter
    def timeout(self, value: Optional[float]) -> None:
        self.connection.timeout = value

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Close the underlying Flight client, after cancelling :meth:`preprocess` iterations still open."""
        for running in list(self._iterations):
            running.close()
        self._flight.close()

    def __enter__(self) -> "Client":
        """Use the client as a context manager; it closes on exit."""
        return self

    def __exit__(self, *exc: Any) -> None:
        """Close the client."""
        self.close()

    def __repr__(self) -> str:
        """Show where the client points."""
        return f"pixelfeed.Client({self.location!r})"

    @property
    def flight_client(self) -> flight.FlightClient:
        """The underlying ``pyarrow.flight.FlightClient``, for raw calls."""
        return self._flight

    # -- calls ---------------------------------------------------------------------

    def presets(self, *, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Return the server's built-in presets (``DoAction("presets")``) as a dict.

        The server answers with JSON; a JSON object is returned as is (preset
        name → resolved spec), a JSON list of names becomes ``{name: None}``.
        """
        results = list(self._flight.do_action(flight.Action("presets", b""), self.connection.options(timeout)))
        body = b"".join(r.body.to_pybytes() for r in results)
        value = json.loads(body) if body else {}
        if isinstance(value, list):
            return {str(name): None for name in value}
        if not isinstance(value, dict):
            raise ValueError(f"unexpected presets answer: {value!r}")
        return value

    def stats(self, *, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Return the server's ``DoAction("stats")`` answer as a dict (``pool``, ``decoders``, ...)."""
        results = list(self._flight.do_action(flight.Action("stats", b""), self.connection.options(timeout)))
        value = json.loads(b"".join(r.body.to_pybytes() for r in results) or b"{}")
        if not isinstance(value, dict):
            raise ValueError(f"unexpected stats answer: {value!r}")
        return value

    def default_streams(self, *, timeout: Optional[float] = None) -> int:
        """The number of ``DoExchange`` calls :meth:`preprocess` runs when not told: ``threads`` clamped to 2..4.

        ``threads`` is the engine thread count the server reports as
        ``"threads"`` in ``DoAction("stats")``; a server that does not report
        one (or refuses the action) gets this machine's CPU count, clamped
        the same way. Two at least because each call keeps one batch in
        flight: a lone call leaves the server idle while it turns around.
        Asked once per client; a transient failure (server
        unavailable, timeout) is not remembered.
        """
        if self._default_streams is None:
            threads: Optional[int] = None
            try:
                reported = self.stats(timeout=timeout).get("threads")
                if isinstance(reported, int) and not isinstance(reported, bool) and reported > 0:
                    threads = reported
            except TRANSIENT_ERRORS:
                return default_streams_for(os.cpu_count())
            except (flight.FlightError, pa.ArrowException, ValueError):
                pass  # an older server: no stats, or stats without threads
            self._default_streams = default_streams_for(threads)
        return self._default_streams

    # -- server-side datasets (pixelfeed.datasets) ---------------------------------

    def dataset(self, name: str, spec: SpecLike = None) -> datasets.Dataset:
        """A server-side dataset read with ``spec``; see :class:`pixelfeed.datasets.Dataset`."""
        return datasets.Dataset(self, name, spec)

    def register_dataset(self, name: str, uri: str, *, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Have the server open ``uri`` (``[dir:|parquet:|tar:]PATH[?...]``, a path on the *server's* disk)
        as dataset ``name``; returns ``{"name", "rows"}``.

        An operator's call: raises ``pyarrow.flight.FlightUnauthorizedError`` (gRPC ``PERMISSION_DENIED``)
        when the server has no ``--dataset-root``, when ``uri`` resolves outside every root (``..`` and
        symlinks are resolved, also for files inside a directory), or when the server has an operator
        token (``--operator-token-file``) and this client was not connected with it.
        """
        return datasets.register(self, name, uri, timeout=timeout)

    def read(self, endpoint: flight.FlightEndpoint, *, timeout: Optional[float] = None) -> Iterator[pa.RecordBatch]:
        """Stream one shard (endpoint) with ``DoGet``; see :func:`pixelfeed.datasets.read`."""
        return datasets.read(self, endpoint, timeout=timeout)

    def read_all(self, endpoints: Any, parallel: int = 4, *, timeout: Optional[float] = None) -> pa.Table:
        """Read shards in parallel into one table; see :func:`pixelfeed.datasets.read_all`."""
        return datasets.read_all(self, endpoints, parallel, timeout=timeout)

    def preprocess(
        self,
        images: ImagesLike,
        spec: SpecLike = None,
        batch_size: int = 64,
        *,
        timeout: Optional[float] = None,
        streams: Optional[int] = None,
        prefetch: Optional[int] = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream ``images`` through the server; yield the output record batches.

        Parameters
        ----------
        images:
            A list (or any iterable) of encoded image ``bytes`` (``None`` for a
            missing image), a ``pyarrow.Table`` / ``RecordBatch`` /
            ``RecordBatchReader`` with an ``image`` column (binary,
            large_binary or binary_view; other columns pass through, and
            dictionary-encoded ones, which the server refuses, are sent
            decoded), or an iterable of ``RecordBatch``es sharing one schema. Lazy iterables are
            consumed as the stream goes, not up front.
        spec:
            ``None`` (the ``imagenet`` preset), a preset name, a dict such as
            ``{"preset": "imagenet", "dtype": "uint8", "layout": "hwc",
            "normalize": None}``, or JSON bytes. See :func:`encode_spec`.
        batch_size:
            Largest number of rows per batch sent to the server. Input batches
            larger than this are sliced (zero-copy).
        timeout:
            Deadline in seconds for the whole call (default: the client's);
            each stream's call has it.
        streams:
            How many ``DoExchange`` calls run at once (each on a thread of its
            own). Input batches are dealt to them round-robin and the outputs
            come back in input order, so the result is the same for any
            ``streams``: same rows, same order, same pixels (random crops and
            flips included: with several streams every row is sent with its
            position in the whole input as its ``seed`` column key, unless the
            input has a ``seed`` column of its own; that column is not in the
            output). Default: :meth:`default_streams`, ``threads`` clamped to 2..4
            with ``threads`` the server's (``stats``) or this machine's CPU
            count. An input whose ``seed`` column is not int32/int64/uint32/uint64
            runs on one stream by default and refuses ``streams > 1``.
        prefetch:
            Input batches in flight ahead of the caller: dealt to the streams
            and not yet handed over. Up to that many output batches wait in
            this process's memory when the caller is slower than the server.
            Default ``streams + 2``: one batch on the wire per call (as the
            one-call client keeps) plus the one being handed over and one
            ready after it; smaller windows leave the calls without input
            while outputs wait for the caller. ``0``: no threads; one call
            runs on the caller's thread, writing and reading in turn as the
            caller asks for outputs (``streams`` must then be 1 or ``None``).

        Yields
        ------
        pyarrow.RecordBatch
            Output batches: passthrough columns, then ``tensor``, ``error``,
            ``height``, ``width``, ``warning``, ``geometry``; rows in input
            order. Row counts of input and output batches need not match one
            to one, but add up to the same total (checked at the end of the
            stream). Use :func:`pixelfeed.tensors`, :func:`pixelfeed.valid`,
            :func:`pixelfeed.errors`, :func:`pixelfeed.warnings` and
            :func:`pixelfeed.geometry` to read them.

        Raises
        ------
        pyarrow.ArrowInvalid / pyarrow.flight.FlightServerError
            The server rejected the spec or the input schema (the message names
            the field).
        TypeError / ValueError
            The input is not one of the accepted forms.

        pyarrow.flight.FlightError / pyarrow.ArrowException
            Any call failing (server error, deadline, lost connection) ends
            the whole iteration with that call's status; the other calls are
            cancelled.

        The request is sent lazily: nothing happens until the first output
        batch is requested. The iterator (a :class:`StreamedBatches`, or a
        generator with ``prefetch=0``) holds the caller's thread only while it
        waits for the next batch in order. Breaking out of the loop, an
        exception in it, ``close()`` or garbage collection cancels every call
        and waits for their threads, so the server frees their output blocks.
        """
        command = encode_spec(spec)
        schema, batches = _without_dictionaries(*_input_stream(images, batch_size))
        _check_input_schema(schema)
        if streams is not None and streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        if prefetch is not None and prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        options = self.connection.options(timeout)
        if prefetch == 0:
            if streams not in (None, 1):
                raise ValueError("prefetch=0 runs one call on the caller's thread: streams must be 1")
            return self._exchange(command, schema, batches, options)
        seed_kind = seed_column_kind(schema)
        if streams is not None and streams > 1 and seed_kind == "other":
            raise TypeError(
                f"column '{SEED_COLUMN}' is {schema.field(SEED_COLUMN).type}; random draws are keyed by "
                "int32/int64/uint32/uint64 seeds, which several streams need: cast it, or pass streams=1"
            )

        def resolve() -> int:
            """The stream count, asked of the server at the first ``next()`` when not given."""
            if streams is not None:
                return streams
            return 1 if seed_kind == "other" else self.default_streams(timeout=timeout)

        iteration = StreamedBatches(
            self._flight, command, schema, batches, options, resolve, prefetch, _batch_count(images, batch_size)
        )
        self._iterations.add(iteration)
        return iteration

    def preprocess_table(
        self,
        images: ImagesLike,
        spec: SpecLike = None,
        batch_size: int = 64,
        *,
        timeout: Optional[float] = None,
        streams: Optional[int] = None,
    ) -> pa.Table:
        """Like :meth:`preprocess`, but collect every output batch into one ``pyarrow.Table``."""
        batches = list(self.preprocess(images, spec, batch_size, timeout=timeout, streams=streams))
        if not batches:
            raise ValueError("no output: the input had no rows")
        return pa.Table.from_batches(batches)

    # -- the streaming core ----------------------------------------------------------

    def _exchange(
        self,
        command: bytes,
        schema: pa.Schema,
        batches: Iterator[pa.RecordBatch],
        options: flight.FlightCallOptions,
    ) -> Iterator[pa.RecordBatch]:
        """Run one ``DoExchange`` from this one thread, writing and reading in turn (``prefetch=0``).

        Why one thread: Arrow C++'s exchange stream is not safe when the
        server ends the call while another thread writes: the reader's
        internal ``Finish`` half-closes the stream, and a concurrent or later
        write or ``done_writing`` aborts the whole process inside gRPC
        ("API misuse ... GRPC_CALL_ERROR_TOO_MANY_OPERATIONS"). Interleaving
        writes and reads on one thread rules that out for every way a call
        can end (server error, deadline, cancellation, lost connection).

        Why no deadlock: at most :data:`_BATCHES_IN_FLIGHT` input batches are
        written ahead of the rows read back. The server keeps up to its
        pipeline depth of processed batches queued (two) besides the one it
        is sending, so it never stops reading our input while fewer than that
        many are outstanding, and a write never waits on our own reads. Every
        input row gives exactly one output row in order, so counting rows
        tells which batches are still outstanding.

        Failure handling: an error raised while *producing* input (the
        caller's iterator, a schema mismatch) cancels the call and is
        re-raised; an error *writing* (usually: the server ended the call) is
        replaced by the server's status, read next, which carries the real
        reason; closing the generator early (``break``) cancels the call.
        """
        descriptor = flight.FlightDescriptor.for_command(command)
        writer, reader = self._flight.do_exchange(descriptor, options)
        outstanding: Deque[int] = deque()  # rows of each batch not fully read back
        rows_sent = 0
        rows_received = 0
        finished = False

        def read_one() -> Tuple[bool, Optional[pa.RecordBatch]]:
            """Read one message: (whether the stream goes on, its batch if any)."""
            nonlocal rows_received
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                return False, None
            if chunk.data is None:  # a message with only app_metadata
                return True, None
            rows_received += chunk.data.num_rows
            left = chunk.data.num_rows
            while left and outstanding:
                taken = min(left, outstanding[0])
                left -= taken
                outstanding[0] -= taken
                if outstanding[0] == 0:
                    outstanding.popleft()
            return True, chunk.data

        try:
            write_failed: Optional[BaseException] = None
            stream_ended = False
            try:
                writer.begin(schema)
            except pa.ArrowException as e:
                write_failed = e
            it = iter(batches)
            while write_failed is None and not stream_ended:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                if not _same_schema(batch.schema, schema):
                    raise ValueError(
                        "all input batches must share one schema; got\n"
                        f"{batch.schema}\nafter\n{schema}"
                    )
                if batch.num_rows == 0:
                    continue
                # Make room: read back until fewer batches are outstanding.
                while len(outstanding) >= _BATCHES_IN_FLIGHT:
                    going_on, data = read_one()
                    if not going_on:
                        stream_ended = True  # ended early: its status is read below
                        break
                    if data is not None:
                        yield data
                if stream_ended:
                    break
                try:
                    writer.write_batch(batch)
                except pa.ArrowException as e:
                    write_failed = e
                    break
                outstanding.append(batch.num_rows)
                rows_sent += batch.num_rows
            if write_failed is None and not stream_ended:
                try:
                    writer.done_writing()
                except pa.ArrowException as e:
                    write_failed = e
            # The rest of the output. A call the server ended raises its
            # status here, which explains a failed write better than the
            # write's own error does.
            while True:
                going_on, data = read_one()
                if not going_on:
                    break
                if data is not None:
                    yield data
            if write_failed is not None:
                raise write_failed
            if rows_received != rows_sent:
                raise RuntimeError(
                    f"pixelfeed server returned {rows_received} rows for {rows_sent} input rows"
                )
            finished = True
        finally:
            if not finished:
                try:
                    reader.cancel()
                except Exception:  # noqa: BLE001
                    pass
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - a cancelled call reports CANCELLED here
                if finished:
                    raise


def connect(location: Union[str, flight.Location], **kwargs: Any) -> Client:
    """Connect to a pixelfeed server, e.g. ``connect("grpc://127.0.0.1:8815")``.

    Keyword arguments go to :class:`Client` (``timeout``, ``token``,
    ``ca_file``) and on to ``pyarrow.flight.FlightClient``, e.g.
    ``connect("grpc+tls://host:8815", token=t, ca_file="ca.pem")``. The connection is made lazily by gRPC;
    the first call fails if nothing listens there.
    """
    return Client(location, **kwargs)
