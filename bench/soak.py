#!/usr/bin/env python3
"""Soak and chaos: many clients, mixed behaviour, one server, on loopback.

    .venv/bin/python bench/soak.py [--clients 32] [--seconds 600] [--bin target/release/pixelfeed]
                                   [--pool-mib 256] [--seed 1] [--json OUT]

Starts `pixelfeed serve` (output pool --pool-mib, idle timeout 3 s, metrics
on) and runs --clients client processes for --seconds (each its own gRPC
connection). Each repeats, chosen at
random (seeded), one of:

  good       the bundled and real-corpus images with an `id` column, random
             batch size and stream count; every id must come back once, in
             order, with a tensor
  hostile    good images mixed with ../shared/corpus/hostile files (or
             generated bad bytes without the corpus); same row check, the
             bad ones as error rows
  huge       one batch over --max-message-bytes: must fail RESOURCE_EXHAUSTED
  vanish     a raw DoExchange that writes two batches and closes the
             connection without reading
  never_read a raw DoExchange that writes and never reads: the server's idle
             timeout must end it
  deadline   a call with a 20 ms deadline on a large batch: DEADLINE_EXCEEDED
             (or done in time)

Then, with no client left, the server's `stats` must show no output block
and no input byte in flight (leaks), and a last burst of 8 good clients runs
while the server gets SIGTERM: it must exit 0 within its drain timeout, and
every call of the burst must end complete or with a clean status (never a
short OK).

Prints a JSON report: calls by behaviour and outcome (gRPC code), rows,
error rows by reason (the server's metrics), peak RSS (VmHWM), blocks and
input bytes left in flight, rows lost or duplicated. Exit 1 when any
invariant broke. Not part of scripts/test.sh (it runs for minutes); a
shorter smoke: --clients 8 --seconds 30.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
SPEC = {"resize": {"mode": "shorter_side", "size": 64}, "crop": {"mode": "center", "height": 56, "width": 56},
        "dtype": "uint8"}
MAX_MESSAGE = 32 << 20
IDLE_TIMEOUT_S = 3


def read_images(folder: Path, limit: int) -> List[bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [p.read_bytes() for p in files[:limit]]


def hostile_images(good: List[bytes]) -> List[bytes]:
    folder = CORPUS / "hostile"
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix not in (".tsv", ".md"))
        return [p.read_bytes() for p in files]
    rng = random.Random(7)
    out = [g[: len(g) // 2] for g in good] + [bytes(rng.randrange(256) for _ in range(512))]
    return out + [b"\xff\xd8\xff" + bytes(64), b"\x89PNG\r\n\x1a\n" + bytes(64)]


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.rows = 0
        self.error_rows = 0
        self.lost = 0
        self.duplicated = 0
        self.broken: List[str] = []

    def call(self, kind: str, outcome: str) -> None:
        with self.lock:
            self.calls[kind][outcome] += 1

    def fail(self, why: str) -> None:
        with self.lock:
            if len(self.broken) < 20:
                self.broken.append(why)

    def as_dict(self) -> Dict[str, object]:
        return {"calls": {k: dict(v) for k, v in self.calls.items()}, "rows": self.rows,
                "error_rows": self.error_rows, "lost": self.lost, "duplicated": self.duplicated,
                "broken": self.broken}

    def merge(self, other: Dict[str, object]) -> None:
        for kind, outcomes in other["calls"].items():  # type: ignore[union-attr]
            self.calls[kind].update(outcomes)
        self.rows += other["rows"]  # type: ignore[operator]
        self.error_rows += other["error_rows"]  # type: ignore[operator]
        self.lost += other["lost"]  # type: ignore[operator]
        self.duplicated += other["duplicated"]  # type: ignore[operator]
        self.broken.extend(other["broken"])  # type: ignore[arg-type]


def code_of(e: BaseException) -> str:
    import pyarrow.flight as fl

    if isinstance(e, KeyboardInterrupt):
        # pyarrow raises a CANCELLED status met inside read_all() as
        # KeyboardInterrupt (its signal handler's doing); here only the
        # server's idle timeout cancels calls.
        return "CANCELLED"

    for cls, name in [(fl.FlightUnavailableError, "UNAVAILABLE"), (fl.FlightTimedOutError, "DEADLINE_EXCEEDED"),
                      (fl.FlightCancelledError, "CANCELLED"), (fl.FlightUnauthenticatedError, "UNAUTHENTICATED"),
                      (fl.FlightServerError, "SERVER_ERROR"), (fl.FlightInternalError, "INTERNAL")]:
        if isinstance(e, cls):
            return name
    text = str(e)
    for name in ["RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "CANCELLED", "UNAVAILABLE",
                 "INTERNAL", "UNKNOWN", "OUT_OF_RANGE", "PERMISSION_DENIED"]:
        if name in text.upper().replace(" ", "_"):
            return name
    if "deadline" in text.lower():
        return "DEADLINE_EXCEEDED"
    return type(e).__name__


def run_checked(client, images: List[bytes], rng: random.Random, tally: Tally, kind: str) -> None:
    """A preprocess call whose ids must come back once each, in order."""
    import pyarrow as pa

    import pixelfeed

    n = rng.randrange(1, 3 * len(images))
    picked = [images[rng.randrange(len(images))] for _ in range(n)]
    table = pa.table({"id": pa.array(range(n), pa.int64()), "image": pa.array(picked, pa.binary())})
    got: List[int] = []
    errors = 0
    try:
        for out in client.preprocess(table, spec=SPEC, batch_size=rng.choice([1, 7, 32, 64]),
                                     streams=rng.choice([1, 2, 3])):
            got.extend(out.column("id").to_pylist())
            errors += sum(1 for e in pixelfeed.errors(out) if e)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - counted by code; an outcome here
        code = code_of(e)
        tally.call(kind, code)
        if code in ("INTERNAL", "UNKNOWN", "SERVER_ERROR"):
            tally.fail(f"{kind}: {code}: {e}")
        return
    tally.call(kind, "OK")
    with tally.lock:
        tally.rows += len(got)
        tally.error_rows += errors
        counts = collections.Counter(got)
        tally.lost += sum(1 for i in range(n) if counts[i] == 0)
        tally.duplicated += sum(c - 1 for c in counts.values() if c > 1)
    if got != list(range(n)):
        tally.fail(f"{kind}: ids out of order or missing ({len(got)} of {n})")
    if kind == "good" and errors:
        tally.fail(f"good: {errors} error rows")


def raw_exchange(location: str, batches, read: bool, timeout: Optional[float], close_early: bool):
    import pyarrow.flight as fl

    client = fl.connect(location)
    try:
        options = fl.FlightCallOptions(timeout=timeout) if timeout else fl.FlightCallOptions()
        writer, reader = client.do_exchange(fl.FlightDescriptor.for_command(json.dumps(SPEC)), options)
        writer.begin(batches[0].schema)
        for b in batches:
            writer.write_batch(b)
        if close_early:
            return "OK"  # the finally closes the connection mid-call
        if not read:
            # Past the idle timeout the server has ended the call; reading
            # now yields the outputs it sent, then its status.
            time.sleep(IDLE_TIMEOUT_S + 1.5)
            reader.read_all()
            return "OK"
        writer.done_writing()
        reader.read_all()
        return "OK"
    finally:
        client.close()


def worker_process(location: str, seed: int, deadline: float, good: List[bytes], bad: List[bytes], big: bytes,
                   kind: str, results) -> None:
    """One client in a process of its own (its own gRPC connection, its own GIL); sends its tally back."""
    tally = Tally()
    try:
        if kind == "burst":
            _burst(location, good, tally, deadline, seed)
        else:
            worker(location, seed, deadline, good, bad, big, tally)
    except Exception as e:  # noqa: BLE001 - reported
        tally.fail(f"client {seed} crashed: {type(e).__name__}: {e}")
    results.put(tally.as_dict())


def worker(location: str, seed: int, deadline: float, good: List[bytes], bad: List[bytes], big: bytes,
           tally: Tally) -> None:
    import pyarrow as pa

    import pixelfeed

    rng = random.Random(seed)
    client = pixelfeed.connect(location, timeout=120)
    one = pa.record_batch({"image": pa.array(good[:4], pa.binary())})
    huge = pa.record_batch({"image": pa.array([big] * (MAX_MESSAGE // len(big) + 2), pa.binary())})
    large = pa.record_batch({"image": pa.array([big] * 64, pa.binary())})
    try:
        while time.monotonic() < deadline:
            kind = rng.choices(["good", "hostile", "huge", "vanish", "never_read", "deadline"],
                               [40, 25, 8, 10, 5, 12])[0]
            if kind == "good":
                run_checked(client, good, rng, tally, kind)
            elif kind == "hostile":
                run_checked(client, good + bad, rng, tally, kind)
            else:
                try:
                    outcome = raw_exchange(
                        location, [huge] if kind == "huge" else [large] if kind == "deadline" else [one, one],
                        read=kind not in ("vanish", "never_read"), timeout=0.02 if kind == "deadline" else 60,
                        close_early=kind == "vanish")
                except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - the outcome is the point
                    outcome = code_of(e)
                tally.call(kind, outcome)
                expected = {"huge": {"RESOURCE_EXHAUSTED"}, "never_read": {"OK", "CANCELLED", "DEADLINE_EXCEEDED",
                                                                           "UNAVAILABLE", "RESOURCE_EXHAUSTED"},
                            "deadline": {"OK", "DEADLINE_EXCEEDED", "CANCELLED"}, "vanish": {"OK", "CANCELLED"}}
                if outcome not in expected[kind]:
                    tally.fail(f"{kind}: {outcome}")
    finally:
        client.close()


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def metric_lines(metrics_addr: str, name: str) -> Dict[str, float]:
    text = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10).read().decode()
    out: Dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name):]] = float(value)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--pool-mib", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bin", type=Path, default=REPO / "target" / "release" / "pixelfeed")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import pyarrow.flight as fl

    good = read_images(REPO / "tests" / "data" / "images", 64) + read_images(CORPUS / "real", 24)
    bad = hostile_images(good)
    large = read_images(CORPUS / "bench" / "large", 1)
    big = large[0] if large else max(good, key=len)
    print(f"soak: {len(good)} good images, {len(bad)} hostile, big image {len(big) >> 10} KiB, "
          f"{args.clients} clients for {args.seconds:.0f} s", flush=True)

    proc = subprocess.Popen(
        [str(args.bin), "serve", "--listen", "127.0.0.1:0", "--pinned", "off",
         "--pinned-pool-bytes", str(args.pool_mib << 20), "--metrics-listen", "127.0.0.1:0",
         "--max-message-bytes", str(MAX_MESSAGE), "--idle-timeout", str(IDLE_TIMEOUT_S), "--drain-timeout", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "RUST_LOG": "warn"})
    tally = Tally()
    report: Dict[str, object] = {}
    try:
        addr = metrics_addr = None
        for line in proc.stdout:  # type: ignore[union-attr]
            if "pixelfeed listening on" in line:
                addr = line.split("pixelfeed listening on", 1)[1].split()[0]
            if "pixelfeed metrics on" in line:
                metrics_addr = line.split("pixelfeed metrics on", 1)[1].split()[0]
                break
        if addr is None or metrics_addr is None:
            print("server exited before listening", file=sys.stderr)
            return 2
        location = f"grpc://{addr}"
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]

        t0 = time.monotonic()
        deadline = t0 + args.seconds
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()

        def start(kind: str, n: int, until: float) -> List[multiprocessing.process.BaseProcess]:
            procs = [ctx.Process(target=worker_process, args=(location, args.seed * 1000 + i, until, good, bad, big,
                                                             kind, results), daemon=True) for i in range(n)]
            for p in procs:
                p.start()
            return procs

        def collect(procs, into: Tally, limit: float) -> None:
            got = 0
            while got < len(procs):
                try:
                    into.merge(results.get(timeout=max(1.0, limit - time.monotonic())))
                    got += 1
                except queue.Empty:
                    into.fail(f"{len(procs) - got} clients still running {limit - deadline:.0f} s after the end: "
                              "a call hung")
                    break
            for p in procs:
                p.join(5)
                if p.is_alive():
                    p.kill()

        clients = start("mixed", args.clients, deadline)
        while time.monotonic() < deadline:
            time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
            print(f"  {time.monotonic() - t0:5.0f} s: RSS {rss_kib(proc.pid, 'VmRSS') >> 10} MiB, "
                  f"peak {rss_kib(proc.pid, 'VmHWM') >> 10} MiB", flush=True)
        collect(clients, tally, deadline + 120)

        # No client left: nothing may stay in flight.
        time.sleep(IDLE_TIMEOUT_S + 1)
        raw = fl.connect(location)
        stats = json.loads(next(iter(raw.do_action("stats"))).body.to_pybytes())
        raw.close()
        blocks_in_use = stats["pool"]["blocks_in_use"]
        input_in_flight = stats["input"]["bytes_in_flight"]
        if blocks_in_use or input_in_flight:
            tally.fail(f"leak: {blocks_in_use} blocks, {input_in_flight} input bytes still in flight")
        image_errors = metric_lines(metrics_addr, "pixelfeed_image_errors_total")
        calls_by_code = metric_lines(metrics_addr, "pixelfeed_calls_total")
        peak_kib = rss_kib(proc.pid, "VmHWM")

        # SIGTERM under load: calls end complete or cleanly; exit 0 in time.
        burst = Tally()
        burst_procs = start("burst", 8, time.monotonic() + 30)
        time.sleep(5)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(40)
        drain_s = time.monotonic() - stopped
        collect(burst_procs, burst, time.monotonic() + 60)
        if code != 0:
            tally.fail(f"SIGTERM: exit code {code}")
        tally.broken.extend(burst.broken)

        report = {
            "clients": args.clients, "seconds": round(time.monotonic() - t0, 1), "seed": args.seed,
            "calls": {k: dict(v) for k, v in tally.calls.items()},
            "rows_checked": tally.rows, "error_rows_checked": tally.error_rows,
            "rows_lost": tally.lost + burst.lost, "rows_duplicated": tally.duplicated + burst.duplicated,
            "server_calls_by_code": {re.sub(r"[{}\"]", "", k): v for k, v in calls_by_code.items()},
            "server_error_rows_by_reason": {re.sub(r"[{}\"]", "", k): v for k, v in image_errors.items()},
            "rss_peak_mib": round(peak_kib / 1024, 1), "pool_cap_mib": args.pool_mib,
            "blocks_in_use_after": blocks_in_use, "input_bytes_in_flight_after": input_in_flight,
            "sigterm": {"exit_code": code, "drain_s": round(drain_s, 1),
                        "burst_calls": {k: dict(v) for k, v in burst.calls.items()}},
            "broken": tally.broken,
        }
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    ok = not report.get("broken") and report.get("rows_lost") == 0 and report.get("rows_duplicated") == 0
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def _burst(location: str, good: List[bytes], tally: Tally, deadline: float, seed: int) -> None:
    import pixelfeed

    rng = random.Random(10_000 + seed)
    try:
        client = pixelfeed.connect(location, timeout=60)
    except Exception:  # noqa: BLE001 - the server may already be gone
        return
    try:
        while time.monotonic() < deadline:
            before = sum(tally.calls["burst"].values())
            run_checked(client, good, rng, tally, "burst")
            if sum(tally.calls["burst"].values()) == before or tally.calls["burst"]["UNAVAILABLE"]:
                break
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
