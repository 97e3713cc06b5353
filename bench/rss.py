#!/usr/bin/env python3
"""Server memory under concurrent streaming: N clients stream the large
benchmark set (4 Mpx JPEGs) through one server at once; the server's peak
RSS (VmHWM) is compared with its output-pool cap + 256 MiB.

    .venv/bin/python bench/rss.py [--clients 8] [--seconds 20] [--pool-mib 256]
                                  [--spec '{"preset":"imagenet"}'] [--bin target/release/pixelfeed]
                                  [--streams 1] [--server-arg=--flag=value ...]

Every client runs one DoExchange that streams batches of 32 images back to
back for --seconds (the Python client keeps one batch in flight per call). Prints
one JSON line: rows, images/s, the fewest rows one client got (0 would be a
starved client), the median and longest wait for a client's first rows and
how many clients got theirs only after the others stopped sending (calls
that start while the input budget is full wait for streaming calls to
end), peak RSS, the highest input-budget, pool and encoded
output use sampled (every 0.2 s), the pool's own counters, and
whether the peak stayed under the budget. Exit status 1 when it did not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List

REPO = Path(__file__).resolve().parent.parent
BATCH = 32


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def seconds(t: float):
    """`t` rounded for the report; None for a client that never got rows."""
    return None if math.isinf(t) else round(t, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--pool-mib", type=int, default=256, help="--pinned-pool-bytes of the server, in MiB")
    ap.add_argument("--spec", default='{"preset":"imagenet"}')
    ap.add_argument("--bin", type=Path, default=REPO / "target" / "release" / "pixelfeed")
    ap.add_argument("--streams", type=int, default=1, help="DoExchange calls per client")
    ap.add_argument("--server-arg", action="append", default=[], help="extra `pixelfeed serve` flag (repeatable)")
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus" / "bench" / "large")
    args = ap.parse_args()

    import pyarrow as pa

    import pixelfeed

    files = sorted(p for p in args.corpus.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        print(f"no images in {args.corpus}", file=sys.stderr)
        return 2
    images = [p.read_bytes() for p in files]
    batch = pa.record_batch({"image": pa.array([images[i % len(images)] for i in range(BATCH)], pa.binary())})
    spec = json.loads(args.spec)
    pool_bytes = args.pool_mib << 20

    proc = subprocess.Popen(
        [str(args.bin), "serve", "--listen", "127.0.0.1:0", "--pinned", "off",
         "--pinned-pool-bytes", str(pool_bytes), *args.server_arg],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        addr = None
        for line in proc.stdout:  # type: ignore[union-attr]
            if "pixelfeed listening on" in line:
                addr = line.split("pixelfeed listening on", 1)[1].split()[0]
                break
        if addr is None:
            print("server exited before listening", file=sys.stderr)
            return 2
        baseline_kib = rss_kib(proc.pid, "VmRSS")
        rows = [0] * args.clients
        # Seconds from the start to each client's first rows: a client that
        # waits while others stream is starved, whatever its final count.
        first_rows_s: List[float] = [math.inf] * args.clients
        failures: List[str] = []
        stop_at = time.monotonic() + args.seconds

        def batches() -> Iterator[pa.RecordBatch]:
            while time.monotonic() < stop_at:
                yield batch

        def worker(i: int) -> None:
            client = pixelfeed.connect(f"grpc://{addr}")
            try:
                for out in client.preprocess(batches(), spec=spec, batch_size=BATCH, streams=args.streams):
                    if not pixelfeed.valid(out).all():
                        failures.append(f"client {i}: {set(e for e in pixelfeed.errors(out) if e)}")
                        return
                    if rows[i] == 0:
                        first_rows_s[i] = time.perf_counter() - t0
                    rows[i] += out.num_rows
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                failures.append(f"client {i}: {type(e).__name__}: {e}")
            finally:
                client.close()

        import pyarrow.flight as flight

        stats_client = flight.connect(f"grpc://{addr}")

        def read_stats() -> dict:
            return json.loads(next(iter(stats_client.do_action("stats"))).body.to_pybytes())

        # What the peak is made of: the highest input-budget use (overdrafts
        # included), pool use and encoded output in flight seen, sampled
        # every 0.2 s.
        peaks = {"input_bytes_in_flight": 0, "pool_bytes_in_use": 0, "output_bytes_in_flight": 0}
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                s = read_stats()
                peaks["input_bytes_in_flight"] = max(peaks["input_bytes_in_flight"], s["input"]["bytes_in_flight"])
                peaks["pool_bytes_in_use"] = max(peaks["pool_bytes_in_use"], s["pool"]["bytes_in_use"])
                peaks["output_bytes_in_flight"] = max(peaks["output_bytes_in_flight"], s.get("output", {}).get("bytes_in_flight", 0))

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        peak_kib = rss_kib(proc.pid, "VmHWM")
        try:
            stats = read_stats()
        finally:
            stats_client.close()
        budget_mib = args.pool_mib + 256
        result = {
            "clients": args.clients, "streams": args.streams, "server_args": args.server_arg, "seconds": round(wall, 1), "rows": sum(rows),
            "images_per_s": round(sum(rows) / wall, 1), "rows_per_client_min": min(rows),
            "first_rows_s_median": seconds(statistics.median(first_rows_s)), "first_rows_s_max": seconds(max(first_rows_s)),
            "clients_first_rows_after_end": sum(1 for t in first_rows_s if t > args.seconds), "spec": spec,
            "rss_idle_mib": round(baseline_kib / 1024, 1), "rss_peak_mib": round(peak_kib / 1024, 1),
            "input_peak_mib": round(peaks["input_bytes_in_flight"] / 2**20, 1),
            "pool_peak_mib": round(peaks["pool_bytes_in_use"] / 2**20, 1),
            "output_peak_mib": round(peaks["output_bytes_in_flight"] / 2**20, 1),
            "pool_cap_mib": args.pool_mib, "budget_mib": budget_mib,
            "within_budget": peak_kib / 1024 <= budget_mib, "failures": failures[:5], "stats": stats,
        }
        print(json.dumps(result))
        return 0 if result["within_budget"] and not failures else 1
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    sys.exit(main())
