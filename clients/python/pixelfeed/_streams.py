"""Several ``DoExchange`` calls behind one :meth:`pixelfeed.Client.preprocess` iteration.

The job: keep every server core busy and the caller's thread free. One
iteration over K streams and a prefetch depth P runs on K + 1 threads of its
own besides the caller's::

    feeder thread          stream thread j (one per call)         caller's thread
    pulls the input,  ──▶  writes its batches and reads their ──▶ takes results from
    numbers batch n,       outputs in turn, at most               one queue, puts them
    deals it to stream     _BATCHES_IN_FLIGHT ahead; puts each    back in input order,
    n % K, at most P       output piece on the results queue      waits only when the
    batches ahead of                                              next batch is not
    the caller                                                    there yet

Rows of one input batch all go through the stream it was dealt to, so the
caller gets the same rows, in the same order, as from one stream. Random
draws are keyed by a row's position in its call's stream, which differs
between streams, so with K > 1 every row carries its position in the whole
input as an explicit ``seed`` column (added here and taken off the output, or
the caller's own column, whose null cells are filled here and restored in the
output); the pixels are then those of one stream.

Ends: the iteration ends when every batch was handed over and every call
finished cleanly. The first error of any stream, or of the caller's input,
ends it at once: every call is cancelled and that error is raised.
:meth:`StreamedBatches.close` (also on ``break``, garbage collection, or an
exception in the caller's loop) and :meth:`StreamedBatches.cancel` (from any
thread) cancel every call and return once their threads are gone, so the
server drops their producers and their output blocks go back to its pool.

**Architecture invariant:** every operation on a call (open, ``begin``,
``write_batch``, ``done_writing``, ``read_chunk``, ``close``) runs on the one
thread that opened it; :class:`_Call` checks this on every operation. Arrow
C++ aborts the whole process (``GRPC_CALL_ERROR_TOO_MANY_OPERATIONS``) when a
second thread writes or half-closes a call the server is ending. The one
cross-thread operation is ``cancel()``: gRPC's ``ClientContext::TryCancel``,
thread-safe by contract, which starts no operation on the call; it is how a
stream blocked in a read is stopped promptly. Each call keeps at most
:data:`_BATCHES_IN_FLIGHT` (one) input batch ahead of its outputs (below the
server's pipeline depth of two), so neither side waits on the other's flow
control, and a call waiting for the server's input budget holds nothing
there.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from ._contract import SEED_COLUMN

__all__ = ["StreamedBatches", "default_streams_for", "default_prefetch", "MAX_DEFAULT_STREAMS", "seed_column_kind"]

#: Input batches one call writes ahead of the rows it has read back: one. A
#: call then sends its next batch only once it has read every row it is
#: owed, so while that batch waits for the server's input budget
#: (``--max-input-bytes-in-flight``) the call holds nothing on the server,
#: and calls are served first come, first served. With two, a call owes its
#: output whenever it sends, the server must let such a message past the
#: budget (pyarrow reads nothing while its write is held back, which would
#: pin the output), and under a full budget calls already streaming kept
#: their place: 13 of 32 clients got no rows until the others stopped
#: (``bench/rss.py --clients 32``). The pipelining comes from the streams:
#: measured with ``bench/run.py --set all``, two streams of one batch gave
#: 0.99 of the images/s of two streams of two (median of 5 rounds), one call
#: alone 0.87-0.92 on the imagenet set and 0.97-0.98 on the large set
#: (before the server framed output without tonic's copy, which gave back
#: 1.11-1.13 on the imagenet set).
_BATCHES_IN_FLIGHT = 1
#: The most streams chosen by default (see :func:`default_streams_for`).
MAX_DEFAULT_STREAMS = 4
#: Seconds :meth:`StreamedBatches.close` waits for each cancelled stream's thread.
_JOIN_SECONDS = 30.0
#: The integer types the server reads a ``seed`` column as (others are passed through, unused).
_SEED_TYPES = (pa.int32(), pa.int64(), pa.uint32(), pa.uint64())

#: Test hook: when set, called as ``_TRACE(call_id, operation)`` on the thread
#: that performs each operation on a call (``cancel`` included).
_TRACE: Optional[Callable[[int, str], None]] = None
_call_ids = itertools.count()


def default_streams_for(threads: Optional[int]) -> int:
    """Streams used when the caller does not say: ``threads`` clamped to 2..4.

    ``threads`` is the server's engine thread count when its ``stats`` reports
    one, else the number of CPUs of this machine. The engine spreads every
    batch over all its threads; more calls only hide the tail of one batch
    behind the start of another and the client's turnaround, which a few do.
    Each call holds the output block of its one batch in flight in the
    server's pool, so many calls of large batches would fill a 1 GiB pool.
    Since each call keeps one batch in flight, at least two streams keep
    the server busy while one call turns around (a lone call ran at
    0.87-0.92 of two streams' images/s on small images).
    """
    if not threads or threads < 1:
        threads = os.cpu_count() or 1
    return max(2, min(MAX_DEFAULT_STREAMS, int(threads)))


def default_prefetch(streams: int) -> int:
    """Input batches in flight ahead of the caller by default: ``streams + 2``.

    Each call keeps :data:`_BATCHES_IN_FLIGHT` (one) on the wire, as the
    one-call client does; the window also counts outputs read back and not
    yet taken (the one being handed over, one ready after it). Without those
    two the calls run out of input whenever outputs wait for the caller
    (measured 6-8 % fewer images/s on 2 cores).
    """
    return _BATCHES_IN_FLIGHT * streams + 2


def seed_column_kind(schema: pa.Schema) -> str:
    """How the input keys its random draws: ``"none"``, ``"integer"`` or ``"other"``.

    ``"integer"``: a ``seed`` column of a type the server reads
    (int32/int64/uint32/uint64). ``"other"``: a ``seed`` column of another
    type, which the server passes through without using it.
    """
    index = schema.get_field_index(SEED_COLUMN)
    if index < 0:
        return "none"
    return "integer" if schema.field(index).type in _SEED_TYPES else "other"


# -- one call ------------------------------------------------------------------------


class _Call:
    """One ``DoExchange``, used only from the thread that opened it (``cancel`` excepted)."""

    def __init__(self, client: flight.FlightClient, descriptor: flight.FlightDescriptor,
                 options: flight.FlightCallOptions) -> None:
        self.owner = threading.get_ident()
        self.id = next(_call_ids)
        self._enter("open")
        self.writer, self.reader = client.do_exchange(descriptor, options)

    def _enter(self, operation: str) -> None:
        """Refuse an operation from a thread other than the owner's (a pixelfeed bug)."""
        if threading.get_ident() != self.owner:
            raise RuntimeError(
                f"pixelfeed bug: {operation} on DoExchange call {self.id} from a thread that did not open it"
            )
        if _TRACE is not None:
            _TRACE(self.id, operation)

    def begin(self, schema: pa.Schema) -> None:
        """Send the schema (with the descriptor)."""
        self._enter("begin")
        self.writer.begin(schema)

    def write(self, batch: pa.RecordBatch) -> None:
        """Send one input batch."""
        self._enter("write")
        self.writer.write_batch(batch)

    def done_writing(self) -> None:
        """Half-close: no more input."""
        self._enter("done_writing")
        self.writer.done_writing()

    def read_chunk(self) -> Any:
        """The next output message (``StopIteration`` at the end; the server's error if it failed)."""
        self._enter("read")
        return self.reader.read_chunk()

    def close(self) -> None:
        """Finish the call (raises its status when it failed)."""
        self._enter("close")
        self.writer.close()

    def cancel(self) -> None:
        """Cancel the call from any thread (gRPC ``TryCancel``); a blocked read or write then fails."""
        if _TRACE is not None:
            _TRACE(self.id, "cancel")
        self.reader.cancel()


# -- output fix-ups for the seed column ---------------------------------------------------

Fixup = Optional[Callable[[pa.RecordBatch, int], pa.RecordBatch]]


def _without_column(batch: pa.RecordBatch, name: str) -> pa.RecordBatch:
    """``batch`` without column ``name`` (zero-copy; schema metadata kept)."""
    i = batch.schema.get_field_index(name)
    columns = [c for j, c in enumerate(batch.columns) if j != i]
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema.remove(i))


def _with_column(batch: pa.RecordBatch, name: str, column: pa.Array) -> pa.RecordBatch:
    """``batch`` with column ``name`` replaced by ``column`` (same type; zero-copy)."""
    i = batch.schema.get_field_index(name)
    columns = list(batch.columns)
    columns[i] = column
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


def _drop_seed(piece: pa.RecordBatch, offset: int) -> pa.RecordBatch:  # noqa: ARG001
    """Take off the ``seed`` column the client added."""
    return _without_column(piece, SEED_COLUMN)


def keyed(batch: pa.RecordBatch, first_row: int, seed_kind: str) -> Tuple[pa.RecordBatch, Fixup]:
    """The batch to send so its rows' draws do not depend on the stream, and the output's fix-up.

    ``first_row``: the batch's first row's position in the whole input.
    """
    n = batch.num_rows
    if seed_kind == "none":
        keys = pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
        columns = list(batch.columns) + [keys]
        schema = batch.schema.append(pa.field(SEED_COLUMN, pa.int64()))
        return pa.RecordBatch.from_arrays(columns, schema=schema), _drop_seed
    column = batch.column(SEED_COLUMN)
    if seed_kind != "integer" or column.null_count == 0:
        return batch, None
    # Null cells fall back to the row's position in its stream on the server;
    # send the position in the whole input instead and give the caller's
    # column back in the output.
    positions = pa.array(np.arange(first_row, first_row + n, dtype=np.int64)).cast(column.type)
    filled = pa.array(np.where(column.is_null().to_numpy(zero_copy_only=False), positions.to_numpy(),
                               column.fill_null(0).to_numpy()), type=column.type)

    def restore(piece: pa.RecordBatch, offset: int) -> pa.RecordBatch:
        return _with_column(piece, SEED_COLUMN, column.slice(offset, piece.num_rows))

    return _with_column(batch, SEED_COLUMN, filled), restore


# -- the threads ---------------------------------------------------------------------------

# Inbox items besides (seq, batch, fixup): the end of the input, a stop request.
_END = object()
_STOP = object()
# Results queue items: (kind, a, b, c).
_PIECE = "piece"  # (seq, piece, last piece of that batch)
_DONE = "done"  # (stream index, -, -): the call finished cleanly
_ERROR = "error"  # (stream index, exception, -)
_INPUT_END = "input_end"  # (batches dealt, streams started, -)
_INPUT_ERROR = "input_error"  # (-, exception, -)
_WAKE = "wake"  # cancel() from another thread


class _Stopped(Exception):
    """The iteration was cancelled; the stream thread unwinds quietly."""


class _Outstanding:
    """An input batch written to a call and not fully read back."""

    __slots__ = ("seq", "left", "offset", "fixup")

    def __init__(self, seq: int, rows: int, fixup: Fixup) -> None:
        self.seq, self.left, self.offset, self.fixup = seq, rows, 0, fixup


class _Stream:
    """One call and the thread that owns it."""

    def __init__(self, index: int, run: "_Run") -> None:
        self.index = index
        self.inbox: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._run_state = run
        self._lock = threading.Lock()
        self._call: Optional[_Call] = None
        self._cancelled = False
        self.thread = threading.Thread(target=self._main, name=f"pixelfeed-stream-{index}", daemon=True)

    def cancel(self) -> None:
        """Stop this stream now (any thread): wake its thread and cancel its call."""
        with self._lock:
            self._cancelled = True
            call = self._call
        self.inbox.put(_STOP)
        if call is not None:
            try:
                call.cancel()
            except Exception:  # noqa: BLE001 - a finished call may refuse; it is stopping anyway
                pass

    def _main(self) -> None:
        """The stream's thread: open the call, pump it, report how it ended."""
        run = self._run_state
        call: Optional[_Call] = None
        closed = False
        try:
            call = _Call(run.client, run.descriptor, run.options)
            with self._lock:
                self._call = call
                if self._cancelled:
                    raise _Stopped()
            self._pump(call)
            closed = True
            call.close()  # finished cleanly: a failure to close is this call's status
            run.results.put((_DONE, self.index, None, None))
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - reported to the caller's thread, which raises it
            run.results.put((_ERROR, self.index, e, None))
        finally:
            if call is not None and not closed:
                try:
                    call.cancel()
                except Exception:  # noqa: BLE001
                    pass
                try:
                    call.close()
                except Exception:  # noqa: BLE001 - a cancelled call reports CANCELLED here
                    pass

    def _pump(self, call: _Call) -> None:
        """Write this stream's batches and read their outputs in turn, until the call ends.

        A write that fails (the server ended the call) stops the writing; the
        reads that follow raise the server's status, which says why better
        than the write's own error.
        """
        run = self._run_state
        outstanding: Deque[_Outstanding] = deque()
        rows_sent = 0
        rows_received = 0
        write_failed: Optional[BaseException] = None
        input_done = False
        try:
            call.begin(run.schema)
        except pa.ArrowException as e:
            write_failed, input_done = e, True
        while True:
            if not input_done and len(outstanding) < _BATCHES_IN_FLIGHT:
                # Wait for input only when nothing is on its way back.
                if outstanding:
                    try:
                        item = self.inbox.get_nowait()
                    except queue.Empty:
                        item = None
                else:
                    item = self.inbox.get()
                if item is _STOP:
                    raise _Stopped()
                if item is _END:
                    input_done = True
                    try:
                        call.done_writing()
                    except pa.ArrowException as e:
                        write_failed = e
                    continue
                if item is not None:
                    seq, batch, fixup = item
                    try:
                        call.write(batch)
                    except pa.ArrowException as e:
                        write_failed, input_done = e, True
                        continue
                    outstanding.append(_Outstanding(seq, batch.num_rows, fixup))
                    rows_sent += batch.num_rows
                    continue
            try:
                chunk = call.read_chunk()
            except StopIteration:
                break
            if chunk.data is not None:  # else a message with only app_metadata
                rows_received += chunk.data.num_rows
                self._deliver(chunk.data, outstanding)
        if write_failed is not None:
            raise write_failed
        if not input_done:
            raise RuntimeError("pixelfeed server ended the call before the input did")
        if rows_received != rows_sent:
            raise RuntimeError(f"pixelfeed server returned {rows_received} rows for {rows_sent} input rows")

    def _deliver(self, data: pa.RecordBatch, outstanding: Deque[_Outstanding]) -> None:
        """Cut an output message at input-batch boundaries and queue the pieces for the caller."""
        results = self._run_state.results
        start = 0
        n = data.num_rows
        while start < n:
            if not outstanding:
                raise RuntimeError("pixelfeed server returned more rows than it was sent")
            head = outstanding[0]
            take = min(n - start, head.left)
            piece = data if take == n else data.slice(start, take)
            if head.fixup is not None:
                piece = head.fixup(piece, head.offset)
            head.left -= take
            head.offset += take
            last = head.left == 0
            if last:
                outstanding.popleft()
            results.put((_PIECE, head.seq, piece, last))
            start += take


class _Run:
    """State shared by the feeder, the stream threads and the caller's iterator.

    The threads hold this, never the :class:`StreamedBatches` itself, so
    dropping the iterator lets it be collected and cancel them.
    """

    def __init__(self, client: flight.FlightClient, command: bytes, schema: pa.Schema,
                 batches: Iterator[pa.RecordBatch], options: flight.FlightCallOptions,
                 streams: int, prefetch: int) -> None:
        self.client = client
        self.descriptor = flight.FlightDescriptor.for_command(command)
        self.options = options
        self.input_schema = schema
        self.seed_kind = seed_column_kind(schema)
        if streams > 1 and self.seed_kind == "other":
            raise ValueError(f"a '{SEED_COLUMN}' column must be int32/int64/uint32/uint64 to run on several streams")
        if streams > 1 and self.seed_kind == "none":
            schema = schema.append(pa.field(SEED_COLUMN, pa.int64()))
        self.schema = schema
        self.batches = batches
        self.k = streams
        self.prefetch = prefetch
        self.results: "queue.SimpleQueue[Tuple[str, Any, Any, Any]]" = queue.SimpleQueue()
        self.lock = threading.Lock()  # guards streams and stopped
        self.window = threading.Condition(self.lock)  # the feeder waits here for the caller
        self.streams: List[_Stream] = []  # all K once started
        self.stopped = False
        self.consumed = 0  # batches fully handed to the caller

    def start(self) -> None:
        """Start the K stream threads (each opens its call at once) and the feeder.

        Every call is opened before any input is pulled, as one call always
        was: a server that starts draining afterwards still finishes them.
        """
        with self.lock:
            for i in range(self.k):
                s = _Stream(i, self)
                self.streams.append(s)
                s.thread.start()
        threading.Thread(target=self.feed, name="pixelfeed-feeder", daemon=True).start()

    def feed(self) -> None:
        """The feeder thread: deal input batches round-robin, at most ``prefetch`` ahead of the caller."""
        seq = 0
        row = 0
        try:
            for batch in self.batches:
                if self.stopped:
                    return
                if not batch.schema.equals(self.input_schema, check_metadata=False):
                    raise ValueError(
                        "all input batches must share one schema; got\n"
                        f"{batch.schema}\nafter\n{self.input_schema}"
                    )
                if batch.num_rows == 0:
                    continue
                with self.window:
                    while not self.stopped and seq - self.consumed >= self.prefetch:
                        self.window.wait()
                    if self.stopped:
                        return
                n = batch.num_rows
                fixup: Fixup = None
                if self.k > 1:
                    batch, fixup = keyed(batch, row, self.seed_kind)
                self.streams[seq % self.k].inbox.put((seq, batch, fixup))
                seq += 1
                row += n
            for s in self.streams:
                s.inbox.put(_END)
            self.results.put((_INPUT_END, seq, len(self.streams), None))
        except BaseException as e:  # noqa: BLE001 - the caller's thread raises it
            self.results.put((_INPUT_ERROR, None, e, None))

    def handed_over(self) -> None:
        """The caller took a whole batch: let the feeder deal one more."""
        with self.window:
            self.consumed += 1
            self.window.notify()

    def stop(self) -> List[_Stream]:
        """Stop feeding and starting streams (idempotent); the streams started so far."""
        with self.window:
            self.stopped = True
            self.window.notify_all()
            return list(self.streams)


class StreamedBatches(Iterator[pa.RecordBatch]):
    """The output batches of one :meth:`pixelfeed.Client.preprocess` call, in input order.

    An iterator over ``pyarrow.RecordBatch``\\ es. Nothing is sent until the
    first ``next()``; then ``streams`` ``DoExchange`` calls open at once, each
    on its own thread (see the module doc), no more than the input has
    batches when its size is known. Consume it from one thread at a time.

    - :attr:`streams`: the number of calls used (known once iteration started);
    - :meth:`close`: cancel everything and wait for the threads (also on
      ``with``-exit and when the iterator is garbage collected, e.g. after a
      ``break``); later ``next()`` calls raise ``StopIteration``;
    - :meth:`cancel`: the same, callable from any thread; a ``next()`` blocked
      in another thread returns by raising ``StopIteration``.
    """

    def __init__(self, client: flight.FlightClient, command: bytes, schema: pa.Schema,
                 batches: Iterator[pa.RecordBatch], options: flight.FlightCallOptions,
                 streams: Callable[[], int], prefetch: Optional[int], max_batches: Optional[int] = None) -> None:
        self._args = (client, command, schema, batches, options)
        self._resolve_streams = streams
        self._prefetch = prefetch
        self._max_batches = max_batches
        self._run: Optional[_Run] = None
        self._ready: Dict[int, Deque[Tuple[pa.RecordBatch, bool]]] = {}
        self._next_seq = 0
        self._total: Optional[int] = None
        self._started = 0
        self._done = 0
        self._closed = False
        self._close_lock = threading.Lock()
        #: The number of ``DoExchange`` calls (``None`` until the first ``next()``).
        self.streams: Optional[int] = None

    def _start(self) -> None:
        k = self._resolve_streams()
        if self._max_batches is not None:  # no more calls than input batches
            k = max(1, min(k, self._max_batches))
        prefetch = self._prefetch if self._prefetch is not None else default_prefetch(k)
        self.streams = k
        self._run = _Run(*self._args, streams=k, prefetch=prefetch)
        self._args = None  # type: ignore[assignment] - the run holds them now
        self._run.start()

    def __iter__(self) -> "StreamedBatches":
        return self

    def __next__(self) -> pa.RecordBatch:
        if self._closed:
            raise StopIteration
        try:
            if self._run is None:
                self._start()
            return self._next()
        except StopIteration:
            self._finish()
            raise
        except BaseException:
            self.close()
            raise

    def _next(self) -> pa.RecordBatch:
        run = self._run
        assert run is not None
        while True:
            ready = self._ready.get(self._next_seq)
            if ready:
                piece, last = ready.popleft()
                if last:
                    del self._ready[self._next_seq]
                    self._next_seq += 1
                    run.handed_over()
                return piece
            if self._total is not None and self._next_seq >= self._total and self._done >= self._started:
                raise StopIteration
            kind, a, b, c = run.results.get()
            if kind == _PIECE:
                self._ready.setdefault(a, deque()).append((b, c))
            elif kind == _DONE:
                self._done += 1
            elif kind == _INPUT_END:
                self._total, self._started = a, b
            elif kind in (_ERROR, _INPUT_ERROR):
                if self._closed:  # cancelled from another thread: its streams report CANCELLED
                    raise StopIteration
                raise b
            elif kind == _WAKE:
                raise StopIteration

    def _finish(self) -> None:
        """The iteration ended: every call finished, or another thread cancelled them; join the threads."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._run is not None:
            for s in self._run.stop():
                s.thread.join(_JOIN_SECONDS)

    def close(self) -> None:
        """Cancel every call still running and wait for their threads (idempotent)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        run = self._run
        if run is None:
            return
        streams = run.stop()
        for s in streams:
            s.cancel()
        run.results.put((_WAKE, None, None, None))
        current = threading.current_thread()
        for s in streams:
            if s.thread is not current:
                s.thread.join(_JOIN_SECONDS)

    def cancel(self) -> None:
        """:meth:`close`, safe to call from any thread."""
        self.close()

    def __enter__(self) -> "StreamedBatches":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
