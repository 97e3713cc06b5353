"""``Client.preprocess(..., streams=K)``: several calls, one thread each, outputs in input order.

Checked against the one-call client on the caller's thread (``prefetch=0``)
as the reference: the same rows, order, columns and bytes for every K,
random crops included; the first error of any call ends the iteration with
that call's status; closing early cancels every call, and the server's pool
gets its blocks back; no call is ever used from two threads.
"""

from __future__ import annotations

import gc
import json
import re
import threading
import time
import urllib.request
from collections import defaultdict
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import pixelfeed
from pixelfeed import _streams
from pixelfeed._streams import StreamedBatches, default_streams_for

from conftest import ServerHandle, _start_server
from pfhelpers import DATA_IMAGES

GOOD = ["pillow_hopper.jpg", "pillow_hopper.png", "china_progressive_420_q90.jpg", "pillow_hopper_gray.jpg",
        "pillow_hopper_orientation_6.jpg"]
TINY = {"resize": {"mode": "exact", "height": 12, "width": 16}, "filter": "nearest", "dtype": "uint8", "layout": "hwc"}
#: imagenet_train's random resized crop and flips, small output: random draws on every row.
RANDOM = {"preset": "imagenet_train", "seed": 7, "crop": {"mode": "random_resized_crop", "height": 24, "width": 24},
          "dtype": "uint8", "layout": "hwc", "normalize": None}


def _images() -> List[bytes]:
    return [(DATA_IMAGES / n).read_bytes() for n in GOOD]


def _varied_batches(sizes: List[int], with_seed: Optional[List[Optional[int]]] = None) -> List[pa.RecordBatch]:
    """Input batches of the given sizes: ids, a label, images cycling through GOOD plus a bad one."""
    pool = _images() + [b"not an image"]
    out, row = [], 0
    for n in sizes:
        ids = list(range(row, row + n))
        columns = {
            "id": pa.array(ids, pa.int64()),
            "label": pa.array([f"row{i}" for i in ids], pa.string()),
            "image": pa.array([pool[i % len(pool)] for i in ids], pa.binary()),
        }
        if with_seed is not None:
            columns["seed"] = pa.array(with_seed[row : row + n], pa.int64())
        out.append(pa.record_batch(columns))
        row += n
    return out


def _table(batches) -> pa.Table:
    return pa.Table.from_batches(list(batches))


def _reference(client, batches, spec) -> pa.Table:
    """One call on the caller's thread: the client as it was before streams."""
    return _table(client.preprocess(iter(batches), spec=spec, streams=1, prefetch=0))


def _assert_same(got: pa.Table, want: pa.Table) -> None:
    assert got.column_names == want.column_names
    assert got.num_rows == want.num_rows
    for name in want.column_names:
        if name == "tensor":
            np.testing.assert_array_equal(pixelfeed.tensors(got.combine_chunks()), pixelfeed.tensors(want.combine_chunks()))
            assert got.column(name).is_valid().to_pylist() == want.column(name).is_valid().to_pylist()
        else:
            assert got.column(name).to_pylist() == want.column(name).to_pylist(), name


def _stream_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pixelfeed-stream")]


# ---------------------------------------------------------------------------------------
# Order, columns, pixels.


@pytest.mark.parametrize("streams", [1, 2, 3, 4])
def test_outputs_come_back_in_input_order_for_any_stream_count(client, streams):
    sizes = [1, 7, 3, 9, 2, 2, 5, 1, 8, 4, 6, 1, 3, 9, 2]
    batches = _varied_batches(sizes)
    want = _reference(client, batches, TINY)
    it = client.preprocess(iter(batches), spec=TINY, batch_size=64, streams=streams)
    got = _table(it)
    assert it.streams == streams
    _assert_same(got, want)
    assert got.column("id").to_pylist() == list(range(sum(sizes)))
    assert got.column_names[:2] == ["id", "label"], "passthrough columns first, in input order"


def test_small_prefetch_and_reslicing_keep_the_order(client):
    batches = _varied_batches([10, 3, 17, 1])
    want = _reference(client, batches, TINY)
    for prefetch in (1, 2, 5):
        got = _table(client.preprocess(iter(batches), spec=TINY, batch_size=4, streams=3, prefetch=prefetch))
        _assert_same(got, want)


def test_random_crops_are_the_same_bytes_with_one_stream_or_three(client):
    batches = _varied_batches([5] * 12)
    one = _reference(client, batches, RANDOM)
    threaded_one = _table(client.preprocess(iter(batches), spec=RANDOM, streams=1))
    three = _table(client.preprocess(iter(batches), spec=RANDOM, streams=3))
    _assert_same(threaded_one, one)
    _assert_same(three, one)
    assert "seed" not in three.column_names, "the seed column the client adds stays on the wire"
    # The spec really draws per row: the crop boxes differ between rows.
    geo = pixelfeed.geometry(three.combine_chunks())
    boxes = {(t, l, h, w) for t, l, h, w in zip(geo["box_top"], geo["box_left"], geo["box_height"], geo["box_width"])
             if not np.isnan(t)}
    assert len(boxes) > 10


def test_a_seed_column_with_nulls_keys_rows_as_one_stream_does_and_comes_back_unchanged(client):
    n = 40
    seeds = [None if i % 3 == 0 else 1000 + i for i in range(n)]
    batches = _varied_batches([4] * (n // 4), with_seed=seeds)
    one = _reference(client, batches, RANDOM)
    three = _table(client.preprocess(iter(batches), spec=RANDOM, streams=3))
    _assert_same(three, one)
    assert three.column("seed").to_pylist() == seeds


def test_a_seed_column_the_server_does_not_read_needs_one_stream(client):
    table = pa.table({"image": pa.array(_images(), pa.binary()), "seed": pa.array(["a"] * len(GOOD))})
    with pytest.raises(TypeError, match="seed"):
        client.preprocess(table, spec=TINY, batch_size=1, streams=2)
    it = client.preprocess(table, spec=TINY, batch_size=1)
    assert _table(it).column("seed").to_pylist() == ["a"] * len(GOOD)
    assert it.streams == 1


def test_no_more_streams_than_batches_and_empty_input(client):
    it = client.preprocess(_images()[:2], spec=TINY, batch_size=1, streams=4)
    assert sum(b.num_rows for b in it) == 2 and it.streams == 2
    assert list(client.preprocess([], spec=TINY, streams=3)) == []
    # With no rows the server still judges the spec, as with one call.
    for how in ({"streams": 3}, {"prefetch": 0}):
        with pytest.raises((pa.ArrowException, flight.FlightError), match="dtype"):
            list(client.preprocess([], spec={"preset": "imagenet", "dtype": "int7"}, **how))


def test_default_streams_come_from_the_server_or_the_cpu_count(server, monkeypatch):
    import os

    c = pixelfeed.connect(server.location)
    try:
        stats = c.stats()
        assert "pool" in stats
        want = default_streams_for(stats.get("threads") or os.cpu_count())
        assert c.default_streams() == want
        it = c.preprocess(iter(_varied_batches([2] * 8)), spec=TINY)
        assert sum(b.num_rows for b in it) == 16 and it.streams == want
    finally:
        c.close()
    for reported, want in [({"threads": 16}, 4), ({"threads": 3}, 3), ({"threads": 1}, 2), ({}, None)]:
        c = pixelfeed.connect(server.location)
        monkeypatch.setattr(c, "stats", lambda timeout=None, r=reported: r)
        assert c.default_streams() == (want or max(2, min(4, os.cpu_count() or 1)))
        c.close()
    assert default_streams_for(None) == max(2, min(4, os.cpu_count() or 1))


def test_bad_arguments_are_refused_before_any_call():
    c = pixelfeed.connect("grpc://127.0.0.1:1")  # never contacted
    with pytest.raises(ValueError, match="streams"):
        c.preprocess([b"x"], streams=0)
    with pytest.raises(ValueError, match="prefetch"):
        c.preprocess([b"x"], prefetch=-1)
    with pytest.raises(ValueError, match="streams must be 1"):
        c.preprocess([b"x"], streams=2, prefetch=0)


# ---------------------------------------------------------------------------------------
# Errors.


def test_one_call_failing_ends_the_whole_iteration_with_its_status():
    handle = _start_server("--max-rows-per-batch", "8", "--pinned", "off")
    try:
        c = pixelfeed.connect(handle.location, timeout=60)
        sizes = [4] * 12
        sizes[7] = 9  # over the limit: the call it is dealt to fails
        batches = _varied_batches(sizes)
        ids: List[int] = []
        with pytest.raises((pa.ArrowException, flight.FlightError), match="rows per batch"):
            for b in c.preprocess(iter(batches), spec=TINY, batch_size=64, streams=3):
                ids += b.column("id").to_pylist()
        assert ids == list(range(len(ids))) and len(ids) < sum(sizes[:7]) + 1, "a prefix, in order"
        assert not _stream_threads(), "stream threads outlived the iteration"
        _wait_for_idle_pool(c)
        # The client goes on working.
        assert sum(b.num_rows for b in c.preprocess(iter(_varied_batches([4, 4])), spec=TINY, streams=3)) == 8
        c.close()
    finally:
        assert handle.stop() == 0, handle.tail()


def test_an_error_in_the_callers_input_is_raised_and_cancels_the_calls(client):
    def gen():
        yield from _varied_batches([3, 3, 3])
        raise RuntimeError("boom from the caller's iterator")

    with pytest.raises(RuntimeError, match="boom"):
        list(client.preprocess(gen(), spec=TINY, streams=3))
    mixed = [_varied_batches([2])[0], pa.record_batch({"image": pa.array(_images()[:1], pa.binary())})]
    with pytest.raises(ValueError, match="share one schema"):
        list(client.preprocess(iter(mixed), spec=TINY, streams=2))
    assert not _stream_threads()


def test_calls_the_server_refuses_never_crash_the_client_with_several_streams(client):
    # Every call is refused (a reserved column name) while other calls of the
    # same iteration are writing: each call's own thread handles its end.
    image = _images()[0]
    for n in [1, 3, 7] * 60:
        table = pa.table({"image": pa.array([image] * n, pa.binary()), "error": ["x"] * n})
        with pytest.raises((pa.ArrowException, flight.FlightError), match="error"):
            list(client.preprocess(table, batch_size=1, streams=3))
    assert sum(b.num_rows for b in client.preprocess(_images(), spec=TINY, streams=3)) == len(GOOD)


# ---------------------------------------------------------------------------------------
# Cancellation.


def _pool(c: pixelfeed.Client) -> Dict[str, int]:
    return c.stats()["pool"]


def _active_calls(metrics_addr: str) -> float:
    text = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10).read().decode()
    return float(re.search(r"^pixelfeed_active_calls (\S+)$", text, re.M).group(1))


def _wait_for_idle_pool(c: pixelfeed.Client, seconds: float = 20) -> Dict[str, int]:
    deadline = time.monotonic() + seconds
    while True:
        pool = _pool(c)
        if pool["blocks_in_use"] == 0 or time.monotonic() > deadline:
            assert pool["blocks_in_use"] == 0, pool
            return pool
        time.sleep(0.05)


def _metrics_addr(handle: ServerHandle) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in list(handle.output):
            m = re.search(r"pixelfeed metrics on (\S+)", line)
            if m:
                return m.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no metrics line:\n{handle.tail()}")


@pytest.fixture(scope="module")
def busy_server():
    """A server of its own, so its pool and call counters are this module's."""
    handle = _start_server("--pinned", "off", "--metrics-listen", "127.0.0.1:0")
    try:
        yield handle
    finally:
        assert handle.stop() == 0, handle.tail()


def _endless(stop: threading.Event):
    """Batches of 8 full-size images until told to stop (the server is busy all along)."""
    images = _images()
    batch = pa.record_batch({"image": pa.array([images[i % len(images)] for i in range(8)], pa.binary())})
    while not stop.is_set():
        yield batch


@pytest.mark.parametrize("how", ["close", "break", "cancel_from_another_thread"])
def test_closing_early_cancels_every_call_and_frees_the_pool(busy_server, how):
    metrics = _metrics_addr(busy_server)
    c = pixelfeed.connect(busy_server.location, timeout=120)
    watcher = pixelfeed.connect(busy_server.location)
    stop = threading.Event()
    try:
        # A window wider than the default (streams + 2) keeps the calls
        # sending while this thread takes nothing: each call holds the
        # output block of its one batch in flight only until it has read
        # that batch back, so with the default window the server may hold
        # none by the time we look.
        it = c.preprocess(_endless(stop), spec="imagenet", streams=3, prefetch=16)
        first = next(it)
        # The first message of the first batch (8 float32 images, 4.8 MB:
        # cut at --target-message-bytes, 4 MiB by default).
        assert 0 < first.num_rows <= 8
        # Wait until the server holds output blocks for this iteration (it
        # keeps working: three calls with batches queued).
        deadline = time.monotonic() + 20
        held = 0
        while not held and time.monotonic() < deadline:
            held = _pool(watcher)["blocks_in_use"]
            time.sleep(0.01)
        assert held > 0
        assert _active_calls(metrics) >= 3
        if how == "close":
            it.close()
        elif how == "break":
            for _ in it:
                break
            del it
            gc.collect()
        else:
            blocked = threading.Event()
            outcome: List[str] = []

            def consume() -> None:
                try:
                    for _ in it:
                        blocked.set()
                    outcome.append("ended")
                except BaseException as e:  # noqa: BLE001 - reported below
                    outcome.append(repr(e))

            consumer = threading.Thread(target=consume)
            consumer.start()
            blocked.wait(20)
            it.cancel()
            consumer.join(20)
            assert outcome == ["ended"], outcome
        assert not _stream_threads(), "close returned before the stream threads ended"
        pool = _wait_for_idle_pool(watcher)
        deadline = time.monotonic() + 20
        while _active_calls(metrics) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _active_calls(metrics) == 0
        assert pool["bytes_in_use"] == 0
        # And the next iteration works.
        out = _table(c.preprocess(iter(_varied_batches([3, 3, 3])), spec=TINY, streams=3))
        assert out.column("id").to_pylist() == list(range(9))
    finally:
        stop.set()
        c.close()
        watcher.close()


# ---------------------------------------------------------------------------------------
# One thread per call.


def test_every_call_is_used_from_one_thread_of_its_own(client, monkeypatch):
    ops: List[tuple] = []
    lock = threading.Lock()

    def trace(call_id: int, operation: str) -> None:
        with lock:
            ops.append((call_id, operation, threading.get_ident(), threading.current_thread().name))

    monkeypatch.setattr(_streams, "_TRACE", trace)
    caller = threading.get_ident()
    batches = _varied_batches([3] * 20)
    # A clean run, an early close and a refused call.
    assert sum(b.num_rows for b in client.preprocess(iter(batches), spec=TINY, streams=4)) == 60
    it = client.preprocess(iter(batches), spec=TINY, streams=3)
    next(it)
    it.close()
    bad = pa.table({"image": pa.array(_images(), pa.binary()), "error": ["x"] * len(GOOD)})
    with pytest.raises((pa.ArrowException, flight.FlightError)):
        list(client.preprocess(bad, batch_size=1, streams=2))

    threads_of: Dict[int, set] = defaultdict(set)
    kinds: Dict[int, set] = defaultdict(set)
    cancelled_by_caller = set()
    for call_id, operation, ident, name in ops:
        kinds[call_id].add(operation)
        if operation == "cancel" and ident == caller:
            cancelled_by_caller.add(call_id)
        if operation != "cancel":  # TryCancel: the one thread-safe, cross-thread operation
            threads_of[call_id].add(ident)
            assert name.startswith("pixelfeed-stream"), (call_id, operation, name)
            assert ident != caller
    assert len(threads_of) == 4 + 3 + 2
    for call_id, idents in threads_of.items():
        assert len(idents) == 1, f"call {call_id} used from {len(idents)} threads"
        assert {"open", "close"} <= kinds[call_id]  # a call cancelled at once may never begin
    # Calls of one iteration run on different threads.
    ids = sorted(threads_of)
    owners = [next(iter(threads_of[i])) for i in ids]
    assert len(set(owners[:4])) == 4
    # A clean end cancels nothing; an early close cancels every call from the
    # caller's thread at once (gRPC TryCancel), so none waits for its
    # server's next output before it stops.
    assert all("cancel" not in kinds[i] for i in ids[:4])
    assert set(ids[4:7]) <= cancelled_by_caller


def test_a_call_refuses_operations_from_a_thread_that_did_not_open_it():
    class Fake:
        def do_exchange(self, descriptor, options):
            return object(), object()

    call = _streams._Call(Fake(), flight.FlightDescriptor.for_command(b"{}"), flight.FlightCallOptions())
    errors: List[BaseException] = []

    def other() -> None:
        for op in (lambda: call.write(None), lambda: call.read_chunk(), lambda: call.close()):
            try:
                op()
            except RuntimeError as e:
                errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 3 and all("did not open it" in str(e) for e in errors)


# ---------------------------------------------------------------------------------------
# Bounded prefetch.


def test_the_input_is_pulled_at_most_prefetch_batches_ahead_of_the_caller(client):
    pulled = [0]
    batches = _varied_batches([2] * 30)

    def gen():
        for b in batches:
            pulled[0] += 1
            yield b

    prefetch = 3
    it = client.preprocess(gen(), spec=TINY, streams=2, prefetch=prefetch)
    assert isinstance(it, StreamedBatches)
    handed = 0
    ahead = []
    for b in it:
        handed += 1
        time.sleep(0.01)  # a slow consumer: the feeder runs into the window
        ahead.append(pulled[0] - handed)
    assert handed == 30
    # The feeder holds one pulled batch while it waits for room, and the
    # caller may have taken one more than it has counted.
    assert max(ahead) <= prefetch + 2, ahead
    assert min(ahead) >= 0


def test_preprocess_table_takes_streams(client):
    batches = _varied_batches([5, 5, 5])
    t = client.preprocess_table(_table(batches), spec=TINY, batch_size=5, streams=3)
    assert t.column("id").to_pylist() == list(range(15))


def test_closing_the_client_first_cancels_its_open_iterations(server):
    c = pixelfeed.connect(server.location, timeout=60)
    stop = threading.Event()
    it = c.preprocess(_endless(stop), spec=TINY, streams=3)
    try:
        next(it)
        c.close()
        assert not _stream_threads()
        with pytest.raises(StopIteration):
            next(it)
    finally:
        stop.set()


def test_stats_is_json(client):
    stats = client.stats()
    json.dumps(stats)
    assert stats["pool"]["blocks_total"] >= 0
