#!/usr/bin/env python3
"""Does the Python client overlap the server's work with the consumer's?

    PYTHONPATH=clients/python .venv/bin/python bench/overlap.py [--bin-dir DIR] [--rounds 3]
        [--seconds 3] [--spec u8|f32] [--streams 1,2,4:16] [--json OUT]

Starts `pixelfeed serve --threads CORES` on loopback (built with cargo as
bench/run.py does, or --bin-dir with prebuilt binaries) and streams the
imagenet benchmark set (../shared/corpus/bench/imagenet, batches of 32)
through these clients, in one process, interleaved round by round so that
other load on the machine hits all of them alike:

  serial   preprocess(..., streams=1, prefetch=0): one call written and read
           in turn on the caller's thread (the client before it had streams)
  kK       preprocess(..., streams=K) for each K of --streams: K calls, each
           on its own thread, outputs handed over in input order through a
           queue (kKpP: with prefetch=P)

Per round and client, back to back:

  free     the consumer only touches each batch: the server's rate R with
           this client (images/s), and the CPU seconds per 1000 images of
           the client process (getrusage RUSAGE_SELF: every thread of this
           process) and of the server (/proc/PID/stat)
  busy     the consumer sleeps T = 32 / R per batch (its rate equals the
           server's), using no CPU (a stand-in for GPU work). The score is
           busy images/s / min(consumer rate, server rate) = busy / R; a
           loader that overlaps fully scores 1, a serial one about 0.5 (the
           harmonic sum), the target is >= 0.9. Measuring R right before
           the busy phase keeps load that other processes add or remove
           between rounds out of the score.

Medians over rounds are printed with the machine's load from other
processes (other%: their share of all CPUs during the phase, worst phase);
above ~10 % the rates and the scores are noise, so the scores are also
given over the clean rounds alone (--max-other-load).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402 - the Server, corpus and CPU helpers of bench/run.py

BATCH = bench.BATCH
SPECS = {"u8": bench.SPEC_U8, "f32": bench.SPEC_F32}


def phase(client: Any, spec: Dict[str, Any], slices: List[Any], how: Dict[str, int], seconds: float,
          sleep_s: float, server_pid: int) -> Dict[str, float]:
    """Stream batches for about ``seconds`` with ``sleep_s`` of consumer time per batch."""
    import pixelfeed

    t0 = time.perf_counter()

    def gen():
        k = 0
        while time.perf_counter() - t0 < seconds or k < 8:
            yield slices[k % len(slices)]
            k += 1

    with bench.Window(server_pid) as window:
        srv0, self0 = bench.proc_cpu(server_pid), bench.rusage_cpu(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        rows = 0
        for b in client.preprocess(gen(), spec=spec, batch_size=BATCH, **how):
            pixelfeed.tensors(b).flat[0]  # noqa: B018 - touch the zero-copy view
            rows += b.num_rows
            if sleep_s:
                time.sleep(sleep_s)
        wall = time.perf_counter() - t0
        srv = bench.proc_cpu(server_pid) - srv0
        own = bench.rusage_cpu(resource.RUSAGE_SELF) - self0
    return {"ips": rows / wall, "client_cpu_per_1k": own * 1000 / rows, "server_cpu_per_1k": srv * 1000 / rows,
            "other_load": window.other_load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", type=Path, help="prebuilt pixelfeed here (no cargo)")
    ap.add_argument("--corpus", type=Path, default=bench.DEFAULT_CORPUS)
    ap.add_argument("--cores", type=int, default=len(__import__("os").sched_getaffinity(0)))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each phase")
    ap.add_argument("--spec", choices=sorted(SPECS), default="u8")
    ap.add_argument("--streams", default="1,2",
                    help="stream counts of the new client, comma-separated; K:P also sets prefetch=P")
    ap.add_argument("--max-other-load", type=float, default=0.15,
                    help="a free+busy pair counts as clean when other processes used less than this share "
                         "of the CPUs in both phases")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    sys.path.insert(0, str(bench.REPO / "clients" / "python"))
    import pyarrow as pa

    import pixelfeed

    bins = bench.build(args.bin_dir, no_build=args.bin_dir is not None)
    _, images = bench.load_set(args.corpus, "imagenet")
    spec = SPECS[args.spec]
    n = len(images)
    table = pa.record_batch({"image": pa.array([images[i % n] for i in range(n * BATCH)], pa.binary())})
    slices = [table.slice(i * BATCH, BATCH) for i in range(n)]
    clients = {"serial": {"streams": 1, "prefetch": 0}}
    for item in args.streams.split(","):
        k, _, p = item.partition(":")
        clients[f"k{k}" + (f"p{p}" if p else "")] = {"streams": int(k), **({"prefetch": int(p)} if p else {})}

    server = bench.Server(bins["pixelfeed"], args.cores)
    results: Dict[str, Dict[str, List[Dict[str, float]]]] = {name: {"free": [], "busy": []} for name in clients}
    scores: Dict[str, List[float]] = {name: [] for name in clients}
    try:
        client = pixelfeed.connect(f"grpc://{server.addr}")
        for how in clients.values():  # warm-up: threads, pool blocks, connections
            phase(client, spec, slices, how, 0.5, 0.0, server.proc.pid)
        for rnd in range(args.rounds):
            line = []
            for name, how in clients.items():
                free = phase(client, spec, slices, how, args.seconds, 0.0, server.proc.pid)
                sleep_s = BATCH / free["ips"]
                busy = phase(client, spec, slices, how, args.seconds, sleep_s, server.proc.pid)
                results[name]["free"].append(free)
                results[name]["busy"].append(busy)
                scores[name].append(busy["ips"] / free["ips"])
                other = max(free["other_load"], busy["other_load"])
                line.append(f"{name} {scores[name][-1]:.2f} (T {1e3 * sleep_s:.1f} ms, other {100 * other:.0f}%)")
            print(f"[round {rnd + 1}/{args.rounds}] " + "  ".join(line), flush=True)
        client.close()
    finally:
        server.close()

    med = statistics.median
    print(f"\n{args.spec} spec, {args.cores} cores, batch {BATCH}, {args.rounds} rounds (medians):")
    print(f"  {'client':<8} {'free img/s':>10} {'client cpu-s/1k':>16} {'server cpu-s/1k':>16} "
          f"{'busy img/s':>10} {'overlap':>8} {'other%':>7} {'clean':>6} {'overlap(clean)':>15}")
    for name in clients:
        fr, bu = results[name]["free"], results[name]["busy"]
        other = max(r["other_load"] for r in fr + bu)
        clean = [sc for f, b, sc in zip(fr, bu, scores[name])
                 if max(f["other_load"], b["other_load"]) < args.max_other_load]
        print(f"  {name:<8} {med(r['ips'] for r in fr):10.0f} {med(r['client_cpu_per_1k'] for r in fr):16.3f} "
              f"{med(r['server_cpu_per_1k'] for r in fr):16.3f} {med(r['ips'] for r in bu):10.0f} "
              f"{med(scores[name]):8.2f} {100 * other:6.0f}% {len(clean):6d} "
              f"{(f'{med(clean):.2f}' if clean else '-'):>15}")
    print("  overlap = busy images/s / min(consumer rate, server rate), consumer rate = server rate (target >= 0.9);")
    print(f"  clean: rounds where other processes used < {100 * args.max_other_load:.0f}% of the CPUs in both phases")
    base = med(r["client_cpu_per_1k"] for r in results["serial"]["free"])
    for name in clients:
        if name != "serial":
            print(f"  client cpu/1k {name}/serial: {med(r['client_cpu_per_1k'] for r in results[name]['free']) / base:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "scores": scores}, indent=1))


if __name__ == "__main__":
    main()
