"""``pixelfeed.Engine``: the engine in this process (the ``pixelfeed_native`` module).

Checked: the same output as the Flight server, byte for byte and column for
column (seeded random crops and flips, error rows, passthrough columns,
schema metadata); every input form; bad specs and contract breaks as
``ValueError``; ``stream`` order, prefetch and early close; the GIL released
while decoding; several Python threads on one engine; the pool's blocks
lent without a copy and given back when Python drops the batch; a full pool
as ``MemoryError``, never a hang; RSS flat over 10 000 batches.

``scripts/test.sh`` builds the module (``maturin develop``), so these run in
CI; elsewhere they skip, saying how to build it.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import List

import numpy as np
import pyarrow as pa
import pytest

import pixelfeed
from pfhelpers import bundled_images

pytest.importorskip(
    "pixelfeed_native",
    reason="the native module is not built: maturin develop -m native/Cargo.toml (scripts/test.sh does it)",
)

SMALL = {"resize": {"mode": "exact", "height": 20, "width": 28}, "dtype": "uint8", "layout": "hwc"}
#: Random resized crops and flips keyed by row position (no seed column).
RANDOM = {"preset": "imagenet_train", "seed": 11, "crop": {"mode": "random_resized_crop", "height": 24, "width": 24},
          "dtype": "uint8", "layout": "hwc", "normalize": None}


def _images() -> List[bytes]:
    return [p.read_bytes() for p in bundled_images()]


def _batches(sizes: List[int]) -> List[pa.RecordBatch]:
    """Batches with ``id``, ``label`` and ``image`` (bundled images, every fifth row not an image)."""
    pool = _images()
    out, row = [], 0
    for n in sizes:
        ids = list(range(row, row + n))
        out.append(pa.record_batch({
            "id": pa.array(ids, pa.int64()),
            "label": pa.array([f"row{i}" for i in ids], pa.string()),
            "image": pa.array([b"not an image" if i % 5 == 4 else pool[i % len(pool)] for i in ids], pa.binary()),
        }))
        row += n
    return out


def _table(batches) -> pa.Table:
    return pa.Table.from_batches(list(batches)).combine_chunks()


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise KeyError("VmRSS")


@pytest.mark.parametrize("spec", [RANDOM, "imagenet"], ids=["random_u8", "imagenet_f32"])
def test_the_same_output_as_the_flight_server(client, spec):
    batches = _batches([7, 1, 12, 5])
    engine = pixelfeed.Engine(spec, threads=2)
    native = _table(engine.stream(batches, prefetch=2))
    flight = _table(client.preprocess(batches, spec=spec, streams=1))
    assert native.schema.equals(flight.schema, check_metadata=True)
    assert native.num_rows == sum(b.num_rows for b in batches)
    for name in native.column_names:
        assert native.column(name).equals(flight.column(name)), name
    assert native.column("id").to_pylist() == list(range(native.num_rows))
    np.testing.assert_array_equal(pixelfeed.tensors(native), pixelfeed.tensors(flight))
    assert sum(e is not None for e in pixelfeed.errors(native)) == 5


def test_every_input_form_gives_the_same_rows():
    images = _images()[:5] + [None]
    engine = pixelfeed.Engine(SMALL, threads=1)
    want = engine.process(images)
    assert want.num_rows == 6 and not pixelfeed.valid(want)[-1]
    assert pixelfeed.errors(want)[-1] == "image is null"
    forms = [
        pa.array(images, pa.binary()),
        pa.chunked_array([images[:2], images[2:]], pa.binary()),
        pa.record_batch({"image": pa.array(images, pa.large_binary())}),
        pa.table({"image": pa.chunked_array([images[:3], images[3:]], pa.binary())}),
    ]
    for form in forms:
        got = engine.process(form)
        np.testing.assert_array_equal(pixelfeed.tensors(got), pixelfeed.tensors(want))
        assert pixelfeed.errors(got) == pixelfeed.errors(want)
    assert engine.process([]).num_rows == 0
    with pytest.raises(TypeError, match="list of encoded images"):
        engine.process(images[0])


def test_a_bad_spec_or_limit_raises_value_error_naming_it():
    with pytest.raises(ValueError, match=r"resize\.mode"):
        pixelfeed.Engine({"resize": {"mode": "sideways", "size": 3}})
    with pytest.raises(ValueError, match="unknown field"):
        pixelfeed.Engine({"presets": "imagenet"})
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        pixelfeed.Engine(SMALL, max_aspect_ratio=0.5)
    with pytest.raises(ValueError, match="threads"):
        pixelfeed.Engine(SMALL, threads=0)


def test_a_batch_that_breaks_the_contract_raises_and_the_engine_goes_on():
    engine = pixelfeed.Engine(SMALL, threads=1)
    with pytest.raises(ValueError, match="image"):
        engine.process(pa.record_batch({"picture": pa.array([b"x"], pa.binary())}))
    with pytest.raises(ValueError):
        engine.process(pa.record_batch({"image": pa.array([b"x"], pa.binary()), "error": pa.array(["x"])}))
    assert engine.process(_images()[:2]).num_rows == 2


def test_limits_make_error_rows():
    engine = pixelfeed.Engine(SMALL, threads=1, max_pixels=100)
    out = engine.process(_images()[:3])
    assert not pixelfeed.valid(out).any()
    assert all("limit" in e for e in pixelfeed.errors(out)), pixelfeed.errors(out)


def test_stream_keeps_order_and_keys_rows_as_one_call():
    batches = _batches([3, 9, 1, 6, 4, 2])
    engine = pixelfeed.Engine(RANDOM, threads=2)
    serial, row = [], 0
    for b in batches:
        serial.append(engine.process(b, first_row=row))
        row += b.num_rows
    for prefetch in (1, 2, 5):
        got = _table(engine.stream(iter(batches), prefetch=prefetch))
        assert got.equals(_table(serial)), prefetch
    # Keyed by position: the same rows in another batching, same bytes.
    rebatched = _table(engine.stream(_table(batches).to_batches(max_chunksize=5)))
    assert rebatched.equals(_table(serial))
    with pytest.raises(ValueError, match="prefetch"):
        engine.stream(batches, prefetch=0)


def test_an_input_error_is_raised_in_order_after_the_batches_before_it():
    engine = pixelfeed.Engine(SMALL, threads=1)

    def broken():
        yield from _batches([2, 2])
        raise RuntimeError("the caller's input broke")

    seen = []
    with pytest.raises(RuntimeError, match="input broke"):
        for b in engine.stream(broken(), prefetch=3):
            seen.append(b.num_rows)
    assert seen == [2, 2]
    del b  # the loop's last batch
    assert engine.stats()["pool"]["blocks_in_use"] == 0


def test_closing_a_stream_early_gives_every_block_back():
    engine = pixelfeed.Engine(SMALL, threads=2)
    endless = (b for _ in iter(int, 1) for b in _batches([8]))
    it = engine.stream(endless, prefetch=3)
    first = next(it)
    assert first.num_rows == 8
    it.close()
    del first
    assert engine.stats()["pool"]["blocks_in_use"] == 0


def test_the_tensor_is_the_pool_block_lent_without_a_copy():
    engine = pixelfeed.Engine(SMALL, threads=1, pinned=False)
    out = engine.process(_images()[:4])
    pool = engine.stats()["pool"]
    assert pool["mode"] == "pageable"
    # The block stays lent while pyarrow holds the batch (a copy would have
    # given it back at once), and is reused, not reallocated, afterwards.
    assert pool["blocks_in_use"] == 1
    view = pixelfeed.tensors(out)
    del out
    assert engine.stats()["pool"]["blocks_in_use"] == 1, "the NumPy view keeps the block"
    del view
    assert engine.stats()["pool"]["blocks_in_use"] == 0
    for _ in range(5):
        engine.process(_images()[:4])
    assert engine.stats()["pool"]["allocations"] == 1


def test_a_full_pool_raises_memory_error_instead_of_hanging():
    # Blocks come in 64 KiB steps: this pool holds one small batch.
    engine = pixelfeed.Engine(SMALL, threads=1, pinned=False, pool_bytes=64 << 10, pool_wait_seconds=0.3)
    held = engine.process(_images()[:2])
    assert held.num_rows == 2
    started = time.monotonic()
    with pytest.raises(MemoryError, match="held by batches still in use"):
        engine.process(_images()[:2])
    assert time.monotonic() - started < 5
    del held
    assert engine.process(_images()[:2]).num_rows == 2


def test_decoding_releases_the_gil():
    engine = pixelfeed.Engine("imagenet", threads=1)
    images = _images() * 6
    # Switch threads often, so a held GIL lets the counter run only for a
    # sliver of the call (at most one switch interval after it returns).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    ticks = [0]
    done = threading.Event()

    def count() -> None:
        while not done.is_set():
            ticks[0] += 1

    counter = threading.Thread(target=count)
    try:
        counter.start()
        # The counter's rate with nothing else to run: this thread sleeps.
        before = ticks[0]
        time.sleep(0.1)
        rate = (ticks[0] - before) / 0.1
        before = ticks[0]
        started = time.perf_counter()
        engine.process(images)
        took = time.perf_counter() - started
        during = ticks[0] - before
    finally:
        done.set()
        counter.join()
        sys.setswitchinterval(interval)
    assert took > 0.05, f"the call took only {took:.3f} s: too short to tell"
    # Released: the counter runs for most of the call. Held: for at most a
    # few switch intervals (~0.001 s of its rate).
    assert during > 0.2 * rate * took, f"{during} ticks in {took:.3f} s at {rate:.0f}/s alone"


def test_several_python_threads_share_one_engine():
    engine = pixelfeed.Engine(RANDOM, threads=2)
    batches = _batches([6, 6, 6, 6, 6, 6])
    want = [engine.process(b, first_row=100 * i) for i, b in enumerate(batches)]
    got: List = [None] * len(batches)

    def work(i: int) -> None:
        got[i] = engine.process(batches[i], first_row=100 * i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        assert g.equals(w)


def test_rss_stays_flat_over_10000_batches():
    engine = pixelfeed.Engine(SMALL, threads=2, pinned=False)
    small = min(_images(), key=len)
    batch = pa.record_batch({"image": pa.array([small, small], pa.binary())})
    rss = {}
    for i in range(1, 10_001):
        out = engine.process(batch, first_row=2 * i)
        pixelfeed.tensors(out).flat[0]  # noqa: B018 - use the output
        if i in (100, 10_000):
            rss[i] = _rss_kib()
    assert engine.stats()["pool"]["blocks_in_use"] <= 1
    grew = (rss[10_000] - rss[100]) / 1024
    assert grew < 64, f"RSS grew {grew:.1f} MiB between batch 100 and 10 000"


def test_engine_is_lazy_and_says_how_to_build_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pixelfeed_native", None)
    from pixelfeed import native

    assert not native.available()
    with pytest.raises(ImportError, match="maturin develop"):
        pixelfeed.Engine(SMALL)


def test_engine_outputs_read_with_the_client_helpers():
    out = pixelfeed.Engine("imagenet", threads=1).process([Path(p).read_bytes() for p in bundled_images()[:2]])
    assert pixelfeed.tensors(out).shape == (2, 3, 224, 224)
    assert pixelfeed.tensor_dtype(out) == "float32"
    assert pixelfeed.batch_spec(out)["resize"] == {"mode": "shorter_side", "size": 256}
