"""The torch-free core of ``TorchLoader``: regrouping, the staging thread's queue, ``normalize=``.

``pixelfeed.torch`` needs PyTorch, which this machine's venv does not have;
the order, bound, error and cancellation rules its CUDA path relies on live
in ``pixelfeed._loader`` and are checked here with plain Python work.
"""

from __future__ import annotations

import threading
import time
from typing import List

import pyarrow as pa
import pytest

from pixelfeed._loader import Prefetcher, parse_normalize, regroup


def _batches(sizes: List[int]) -> List[pa.RecordBatch]:
    out, row = [], 0
    for n in sizes:
        out.append(pa.record_batch({"id": pa.array(range(row, row + n), pa.int64())}))
        row += n
    return out


def _ids(group: List[pa.RecordBatch]) -> List[int]:
    return [i for piece in group for i in piece.column("id").to_pylist()]


def test_regroup_cuts_whole_rows_into_exact_batches():
    groups = list(regroup(_batches([3, 5, 1, 7]), 4))
    assert [_ids(g) for g in groups] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    groups = list(regroup(_batches([3, 2]), 4))
    assert [_ids(g) for g in groups] == [[0, 1, 2, 3], [4]]
    assert [len(g) for g in regroup(_batches([3, 2]), None)] == [1, 1]
    assert list(regroup([], 4)) == []


def test_closing_regroup_closes_its_source():
    closed = []

    def source():
        try:
            yield from _batches([2, 2, 2])
        finally:
            closed.append(True)

    groups = regroup(source(), 2)
    next(groups)
    groups.close()
    assert closed == [True]


def test_prefetcher_runs_on_one_thread_and_keeps_the_order():
    threads = set()

    def work(x: int) -> int:
        threads.add(threading.get_ident())
        time.sleep(0.001 * (x % 3))
        return x * x

    p = Prefetcher(range(50), work, depth=3)
    assert list(p) == [x * x for x in range(50)]
    assert threads == {p.thread.ident} and p.thread.ident != threading.get_ident()
    assert not p.thread.is_alive()


def test_prefetcher_stays_within_its_depth():
    produced = [0]
    taken = [0]
    ahead = []

    def work(x: int) -> int:
        produced[0] += 1
        ahead.append(produced[0] - taken[0])
        return x

    for x in Prefetcher(range(40), work, depth=2):
        taken[0] += 1
        time.sleep(0.002)
    # depth results queued, one being computed, and one the consumer took
    # but has not counted yet.
    assert max(ahead) <= 2 + 2, ahead


def test_prefetcher_raises_errors_after_the_results_before_them():
    def items():
        yield 1
        yield 2
        raise RuntimeError("source failed")

    p = Prefetcher(items(), lambda x: x, depth=4)
    assert next(p) == 1 and next(p) == 2
    with pytest.raises(RuntimeError, match="source failed"):
        next(p)
    with pytest.raises(StopIteration):
        next(p)

    def work(x: int) -> int:
        if x == 3:
            raise ValueError("work failed")
        return x

    got = []
    with pytest.raises(ValueError, match="work failed"):
        for x in Prefetcher(range(10), work):
            got.append(x)
    assert got == [0, 1, 2]


def test_closing_a_prefetcher_cancels_and_closes_its_source_on_its_thread():
    closed_on = []
    cancelled = threading.Event()

    def source():
        try:
            i = 0
            while True:
                # Blocks the way a network read does, until cancelled.
                if cancelled.wait(0.001 if i < 5 else 30):
                    return
                yield i
                i += 1
        finally:
            closed_on.append(threading.get_ident())

    p = Prefetcher(source(), lambda x: x, depth=2, cancel=cancelled.set)
    assert next(p) == 0
    p.close()
    assert not p.thread.is_alive()
    assert closed_on == [p.thread.ident]
    with pytest.raises(StopIteration):
        next(p)


def test_a_dropped_prefetcher_stops_its_thread():
    p = Prefetcher(iter(range(10**9)), lambda x: x, depth=2)
    next(p)
    thread = p.thread
    del p
    thread.join(10)
    assert not thread.is_alive()


def test_parse_normalize():
    assert parse_normalize(None) is None
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert parse_normalize(imagenet) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert parse_normalize({"mean": [0.5], "std": [0.5]}) == ((0.5,), (0.5,))
    with pytest.raises(ValueError):
        parse_normalize(([0.5, 0.5], [0.5]))
    with pytest.raises(ValueError):
        parse_normalize(([0.5], [0.0]))
    with pytest.raises(ValueError):
        parse_normalize({"mean": [0.5]})
    with pytest.raises(TypeError):
        parse_normalize(0.5)
