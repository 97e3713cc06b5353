"""The server-wide input budget under more clients than it holds messages.

Twelve clients (pyarrow underneath: a call's thread blocks in its write and
reads nothing until the write is taken) send batches of about 4.8 MB,
against a budget of 12 MiB (two and a half such messages) and an output
pool of three 9.6 MB blocks. Half use the Python client (one batch in
flight per call; some run three calls over one connection); the other
half are bare pyarrow calls that write two batches ahead of their reads,
so they owe output whenever they send and go over the cap. Charging input
frame by frame let every call hold part of a message and wait for room for
the rest, which stalled every call until the idle timeout. Every row must
come back, in order, and the budget and pool must be empty afterwards.
"""

from __future__ import annotations

import io
import json
import threading
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
from PIL import Image

import pixelfeed
from conftest import _start_server

CLIENTS = 12
BATCHES = 6
ROWS = 16
# float32 outputs (9.6 MB per batch) outgrow a client's receive window, so
# unread output stays in the server's pool blocks.
SPEC = {"resize": {"mode": "exact", "height": 224, "width": 224}, "dtype": "float32", "layout": "chw"}


def _noise_jpegs(n: int) -> List[bytes]:
    """JPEGs of noise (about 300 KB each: noise does not compress)."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def test_more_clients_than_the_budget_holds_all_finish():
    images = _noise_jpegs(ROWS)
    message = sum(len(b) for b in images)
    assert 4_000_000 < message < 6_000_000, message
    server = _start_server(
        "--max-message-bytes", str(12 << 20),
        "--max-input-bytes-in-flight", str(12 << 20),
        "--pinned-pool-bytes", str(3 * ROWS * 224 * 224 * 3 * 4),
        "--pinned", "off",
        "--idle-timeout", "10",
    )
    try:
        failures: List[str] = []
        ids: List[List[int]] = [[] for _ in range(CLIENTS)]

        def batches(i: int):
            for b in range(BATCHES):
                first = (i * BATCHES + b) * ROWS
                yield pa.record_batch({
                    "image": pa.array(images, pa.binary()),
                    "id": pa.array(range(first, first + ROWS), pa.int64()),
                })

        def taken(i: int, out: pa.RecordBatch) -> None:
            if not pixelfeed.valid(out).all():
                failures.append(f"client {i}: {set(e for e in pixelfeed.errors(out) if e)}")
            ids[i].extend(out.column("id").to_pylist())

        def two_ahead(i: int) -> None:
            """A bare pyarrow call writing two batches ahead of its reads."""
            conn = flight.connect(server.location)
            try:
                descriptor = flight.FlightDescriptor.for_command(json.dumps(SPEC))
                writer, reader = conn.do_exchange(descriptor)
                pending = list(batches(i))
                writer.begin(pending[0].schema)
                sent = 0
                for batch in pending:
                    writer.write_batch(batch)
                    sent += 1
                    while len(ids[i]) < (sent - 2) * ROWS:
                        taken(i, reader.read_chunk().data)
                writer.done_writing()
                for out in reader:
                    if out.data is not None:
                        taken(i, out.data)
                writer.close()
            except Exception as e:  # noqa: BLE001 - every failure is the test's
                failures.append(f"client {i}: {type(e).__name__}: {e}")
            finally:
                conn.close()

        def worker(i: int) -> None:
            if i % 2:
                return two_ahead(i)
            client = pixelfeed.connect(server.location)
            try:
                # Every third client runs three calls over its one connection.
                streams = 3 if i % 3 == 0 else 1
                for out in client.preprocess(batches(i), spec=SPEC, batch_size=ROWS, streams=streams, prefetch=2):
                    taken(i, out)
            except Exception as e:  # noqa: BLE001 - every failure is the test's
                failures.append(f"client {i}: {type(e).__name__}: {e}")
            finally:
                client.close()

        # A stall ends calls with RESOURCE_EXHAUSTED once nothing is given
        # back for the 10 s idle timeout: a failure below.
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "clients still running after 120 s"
        assert not failures, "\n".join(failures[:5])
        for i in range(CLIENTS):
            first = i * BATCHES * ROWS
            assert ids[i] == list(range(first, first + BATCHES * ROWS)), f"client {i} rows out of order or lost"
        stats_client = pixelfeed.connect(server.location)
        try:
            stats = stats_client.stats()
        finally:
            stats_client.close()
        assert stats["input"]["bytes_in_flight"] == 0, stats["input"]
        assert stats["output"]["bytes_in_flight"] == 0, stats["output"]
        assert stats["pool"]["blocks_in_use"] == 0, stats["pool"]
    finally:
        assert server.stop() == 0, server.tail()
