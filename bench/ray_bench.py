"""Images/s of the Ray Data path (pixelfeed.ray.Preprocessor) vs the direct client.

    .venv/bin/python bench/ray_bench.py                       # corpus bench/imagenet, 2000 images
    .venv/bin/python bench/ray_bench.py --servers 2 --actors 2 --images 4000

Starts ``--servers`` pixelfeed servers (release binary if built, else debug;
``--bin`` to choose) on loopback, then on the same N encoded images and the
same spec (uint8 HWC by default, ``--spec imagenet`` for float32 CHW):

- ``direct``: one ``Client.preprocess`` stream to the first server;
- ``direct xS``: one stream per server, in threads (what a hand-rolled
  client-side round robin gets);
- ``ray``: ``ray.data.from_arrow`` → ``map_batches(Preprocessor)`` with an
  actor pool of ``--actors`` over all servers → ``iter_batches`` on the
  driver (the tensors travel through Ray's object store to the consumer, as
  they would to a trainer). Every execution starts its actor pool afresh;
  that fixed cost, estimated from a one-batch-per-actor run, is shown.

Needs ``pip install -e 'clients/python[ray]'``. Numbers depend on the cores:
on a 2-core box the servers, the Ray workers and the driver share them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "clients" / "python"))

import pixelfeed  # noqa: E402

LISTEN_RE = re.compile(r"pixelfeed listening on (?:grpc(?:\+tcp)?://)?(\S+:\d+)")
SPECS = {
    "u8": {"preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": None},
    "imagenet": {"preset": "imagenet"},
}


def start_server(binary: Path, threads: int) -> "tuple[subprocess.Popen, str]":
    """Start one server on a free loopback port; return (process, grpc URI)."""
    args = [str(binary), "serve", "--listen", "127.0.0.1:0"]
    if threads:
        args += ["--threads", str(threads)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        m = LISTEN_RE.search(line)
        if m:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, "grpc://" + m.group(1)
    raise RuntimeError(f"{binary} exited with {proc.wait()} before listening")


def load_images(src: Path, n: int) -> List[bytes]:
    """``n`` encoded images, cycling over the files of ``src``."""
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no images in {src}")
    data = [p.read_bytes() for p in files]
    return [data[i % len(data)] for i in range(n)]


def run_direct(locations: List[str], images: List[bytes], spec, batch: int) -> float:
    """Seconds for one stream per location over an equal share of ``images``."""
    share = [images[i :: len(locations)] for i in range(len(locations))]
    rows = [0] * len(locations)

    def one(k: int) -> None:
        """One client stream."""
        with pixelfeed.connect(locations[k]) as c:
            for b in c.preprocess(share[k], spec, batch):
                rows[k] += b.num_rows

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(locations))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    assert sum(rows) == len(images), (sum(rows), len(images))
    return dt


def run_ray(locations: List[str], images: List[bytes], spec, batch: int, actors: int, blocks: int) -> float:
    """Seconds for the Ray pipeline, consumed on the driver.

    Every execution starts a fresh actor pool (worker processes importing
    Ray, pyarrow and pixelfeed): a fixed cost included here.
    """
    import ray

    from pixelfeed.ray import preprocess

    table = pa.table({"id": pa.array(range(len(images))), "image": pa.array(images, pa.binary())})
    step = -(-len(images) // blocks)
    t0 = time.perf_counter()
    ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, len(images), step)])
    ds = preprocess(ds, locations, spec, actors=actors, batch_size=batch)
    rows = 0
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=batch):
        rows += b.num_rows
    dt = time.perf_counter() - t0
    assert rows == len(images), (rows, len(images))
    return dt


def main() -> None:
    """Parse arguments, start servers, print one line per method."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    corpus = Path(os.environ.get("PIXELFEED_CORPUS", REPO.parent / "shared" / "corpus")) / "bench" / "imagenet"
    ap.add_argument("--dir", type=Path, default=corpus if corpus.is_dir() else REPO / "tests" / "data" / "images")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="--threads per server (0: server default)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--spec", choices=sorted(SPECS), default="u8")
    ap.add_argument("--bin", type=Path, default=None)
    args = ap.parse_args()
    binary = args.bin or next(
        (p for p in (REPO / "target" / "release" / "pixelfeed", REPO / "target" / "debug" / "pixelfeed") if p.exists()),
        None,
    )
    if binary is None:
        raise SystemExit("build the server first: cargo build --release -p pixelfeed-cli --bin pixelfeed")
    images = load_images(args.dir, args.images)
    spec = SPECS[args.spec]
    servers = [start_server(binary, args.threads) for _ in range(args.servers)]
    locations = [loc for _, loc in servers]
    print(
        f"# {len(images)} images from {args.dir}, spec {args.spec}, batch {args.batch}, "
        f"{args.servers} server(s) ({binary}), {os.cpu_count()} cores"
    )
    try:
        run_direct(locations[:1], images[: args.batch * 2], spec, args.batch)  # warm up
        n = len(images)
        dt = run_direct(locations[:1], images, spec, args.batch)
        print(f"direct, 1 stream        {n / dt:8.1f} images/s  ({dt:.2f} s)")
        if len(locations) > 1:
            dt = run_direct(locations, images, spec, args.batch)
            print(f"direct, {len(locations)} streams       {n / dt:8.1f} images/s  ({dt:.2f} s)")
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        blocks = max(args.actors * 4, 8)
        direct_rate = n / dt
        run_ray(locations, images[: args.batch], spec, args.batch, args.actors, 1)  # warm up imports/caches
        # The fixed cost of one execution (actor pool start, scheduling), from
        # a run of one batch per actor. Only shown: in a long run it overlaps
        # with work, so subtracting it would overstate the steady rate.
        small = images[: args.batch * args.actors]
        fixed = run_ray(locations, small, spec, args.batch, args.actors, args.actors) - len(small) / direct_rate
        dt = run_ray(locations, images, spec, args.batch, args.actors, blocks)
        print(
            f"ray, {args.actors} actors          {n / dt:8.1f} images/s  ({dt:.2f} s, ~{fixed:.1f} s of it actor start)"
        )
        ray.shutdown()
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
