"""Load test: 16 concurrent pyarrow clients against one server for a bounded time.

Each client loops over DoExchange calls whose batches mix the bundled good images with
hostile bytes (synthetic ones always; the shared corpus's ``hostile/`` files when present)
and an ``id`` passthrough column. Asserts, over the whole run:

- zero failed calls;
- every row accounted for, in order (ids come back as sent), good images valid and the
  synthetic hostile ones error rows;
- the server's peak RSS stays bounded, and after the run no pool block is held, the pool
  stays under its cap and no file descriptor has leaked (``/proc/PID/fd``).

Runs ``PIXELFEED_LOAD_SECONDS`` seconds (default 20; set it higher for a soak).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from typing import Dict, List, Optional, Tuple

import pyarrow as pa
import pyarrow.flight as flight

from conftest import _start_server
from pfhelpers import bundled_images, corpus_path

CLIENTS = 16
SECONDS = float(os.environ.get("PIXELFEED_LOAD_SECONDS", "20"))
POOL_CAP = 256 << 20
SPECS = [
    {"resize": {"mode": "exact", "height": 64, "width": 64}, "dtype": "uint8", "layout": "hwc"},
    {"resize": {"mode": "shorter_side", "size": 72}, "crop": {"mode": "center", "height": 64, "width": 64}},
]


def _synthetic_hostile(good: List[bytes]) -> List[Optional[bytes]]:
    """Bytes that must become error rows, whatever the corpus holds."""
    rng = random.Random(7)
    huge_png = (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (200000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
        + b"\x00\x00\x00\x00"
    )
    return [
        None,
        b"",
        bytes(rng.getrandbits(8) for _ in range(2048)),
        b"\xff\xd8\xff\xd9",
        b"GIF89a" + b"\x00" * 64,
        huge_png,
    ]


def _corpus_hostile() -> List[bytes]:
    root = corpus_path()
    if root is None or not (root / "hostile").is_dir():
        return []
    files = sorted(p for p in (root / "hostile").iterdir() if p.is_file() and p.suffix in (".jpg", ".png"))
    return [p.read_bytes() for p in files if p.stat().st_size <= (1 << 20)]


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _pool(client: flight.FlightClient) -> Dict[str, int]:
    body = next(iter(client.do_action(flight.Action("stats", b"")))).body.to_pybytes()
    return json.loads(body)["pool"]


def test_sixteen_clients_mixed_good_and_hostile():
    server = _start_server("--pinned-pool-bytes", str(POOL_CAP), "--pinned", "off")
    good = [p.read_bytes() for p in bundled_images()]
    bad = _synthetic_hostile(good)
    extra = _corpus_hostile()
    # Each entry: (bytes, expected validity or None when not known in advance).
    pool: List[Tuple[Optional[bytes], Optional[bool]]] = (
        [(b, True) for b in good]
        + [(b, False) for b in bad]
        # A truncated JPEG may decode leniently (with a warning): either outcome is fine.
        + [(jpeg[: len(jpeg) // 3], None) for jpeg in good if jpeg[:2] == b"\xff\xd8"]
        + [(b, None) for b in extra]
    )
    stats_client = flight.connect(server.location)
    try:
        # Warm up (threads, pool blocks, connections), then take the baselines.
        warm = flight.connect(server.location)
        _one_call(warm, random.Random(0), pool, 0)
        warm.close()
        time.sleep(0.5)
        _pool(stats_client)  # its connection is open in both fd counts
        fds_before = _fds(server.pid)

        stop_at = time.monotonic() + SECONDS
        failures: List[str] = []
        counts = [0] * CLIENTS
        rows = [0] * CLIENTS

        def worker(i: int) -> None:
            rng = random.Random(1000 + i)
            client = flight.connect(server.location)
            try:
                while time.monotonic() < stop_at and not failures:
                    try:
                        rows[i] += _one_call(client, rng, pool, i * 10**9 + counts[i] * 1000)
                        counts[i] += 1
                    except Exception as e:  # noqa: BLE001 - every failure is a test failure
                        failures.append(f"client {i} call {counts[i]}: {type(e).__name__}: {e}")
            finally:
                client.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SECONDS + 120)
        server.check_alive("during the load")
        assert not failures, "\n".join(failures[:10])
        assert all(c > 0 for c in counts), counts

        time.sleep(1.0)  # let the last calls' connections close
        after = _pool(stats_client)
        fds_after = _fds(server.pid)
        peak_mib = server.rss_kib("VmHWM") / 1024
        print(
            f"\nload: {sum(counts)} calls, {sum(rows)} rows in {SECONDS:.0f} s by {CLIENTS} clients; "
            f"peak RSS {peak_mib:.0f} MiB; fds {fds_before} -> {fds_after}; pool {after}"
        )
        assert after["blocks_in_use"] == 0, after
        assert after["bytes_total"] <= POOL_CAP, after
        assert fds_after <= fds_before + 2, (fds_before, fds_after)
        # The pool cap plus decode scratch per worker thread and buffered messages.
        assert peak_mib < 1024, peak_mib
    finally:
        stats_client.close()
        assert server.stop() == 0, server.tail()


def _one_call(client: flight.FlightClient, rng: random.Random, pool, first_id: int) -> int:
    """One DoExchange of 1-3 batches of 4-24 mixed rows; checks every row; returns the row count."""
    spec = rng.choice(SPECS)
    batches = []
    expected: List[Optional[bool]] = []
    next_id = first_id
    for _ in range(rng.randint(1, 3)):
        picks = [rng.choice(pool) for _ in range(rng.randint(4, 24))]
        ids = list(range(next_id, next_id + len(picks)))
        next_id += len(picks)
        expected += [ok for _, ok in picks]
        batches.append(
            pa.record_batch(
                {"id": pa.array(ids, pa.int64()), "image": pa.array([b for b, _ in picks], pa.binary())}
            )
        )
    options = flight.FlightCallOptions(timeout=120)
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(json.dumps(spec)), options)
    writer.begin(batches[0].schema)
    for b in batches:
        writer.write_batch(b)
    writer.done_writing()
    table = reader.read_all()
    writer.close()
    assert table.column("id").to_pylist() == list(range(first_id, next_id)), "rows lost or reordered"
    valid = table.column("tensor").is_valid().to_pylist()
    errors = table.column("error").to_pylist()
    for row, (want, ok, err) in enumerate(zip(expected, valid, errors)):
        assert ok == (err is None), (row, err)
        if want is not None:
            assert ok == want, (row, err)
    return table.num_rows
