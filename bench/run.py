#!/usr/bin/env python3
"""pixelfeed benchmark: the pixelfeed engine and server against the usual
Python image pipelines, on the same images and the same cores, in one run.

    .venv/bin/python bench/run.py [--quick] [--set imagenet|large|all] [--json OUT]

Methods (every one turns encoded bytes already in memory into tensors):

  pillow        Pillow + NumPy imagenet eval transform (torchvision's
                semantics: shorter side 256 BILINEAR, center crop 224,
                float32 /255, mean/std, CHW), in a pool of `cores` processes
  torchvision   the same through torchvision.transforms (Resize, CenterCrop,
                ToTensor, Normalize) in the same pool; skipped without torch
  decode_only   Pillow Image.open().load() (libjpeg-turbo) only, same pool:
                the practical ceiling of a CPU decoder
  decode_only_draft  Pillow draft('RGB', (256, 256)) + load() only: the
                ceiling at the DCT scale engine_draft decodes at; large set
  pillow_draft  `pillow` after Image.draft('RGB', (256, 256)) (libjpeg-turbo
                DCT-domain downscale); large set only
  engine        pixelfeed_engine::process_batch in-process, rayon pool
                of `cores` threads (engine/examples/engine_bench.rs),
                imagenet preset (float32 CHW, normalised); the default JPEG
                decoder, libjpeg-turbo
  engine_zune   same, "decoder": "zune-jpeg" (the pure-Rust fallback), for
                reference
  engine_u8     same engine, flight_u8's spec (the like-for-like baseline
                of flight_u8)
  engine_u8_2f  engine_u8 with two batches in flight on the same pool
                (engine_bench --concurrent 2): engine_u8 over it is what one
                batch at a time costs in idle cores at a batch's tail (the
                straggler effect)
  engine_draft  same engine, imagenet preset + "draft": true (libjpeg-turbo
                decodes: DCT-domain downscale on the large set, pixels equal
                to pillow_draft's; full size on the imagenet set, pixels
                equal to Pillow's); needs the `turbojpeg` build (cmake + nasm)
  native_f32    pixelfeed.Engine (the in-process module, native/, built
                with maturin --release) in this Python process, `cores`
                threads, imagenet preset, one batch at a time as engine;
                skipped when the module cannot be built or imported
  native_u8     same, flight_u8's spec
  flight_draft  flight_f32 with "draft": true; large set only
  flight_f32    `pixelfeed serve` + the Python client over loopback,
                imagenet preset (float32 CHW, normalised), one call run on
                the caller's thread (preprocess(..., streams=1, prefetch=0):
                the client before it had streams)
  flight_u8     same, {"preset":"imagenet","dtype":"uint8","layout":"hwc",
                "normalize":null}
  flight_u8_k2  flight_u8's spec through preprocess(..., streams=2): two
                calls, each on its own thread, outputs in input order
  flight_u8_uds flight_u8 against a second server listening on a Unix
                domain socket (--listen unix:///PATH), same cores

The process pools work like torch's DataLoader(num_workers=cores,
batch_size=32, prefetch_factor=2): each worker builds whole 32-image batches
straight into shared memory that the parent reads without a copy, two
batches in flight per worker. Images are in memory before the pool forks.

Measured per method:
  images/s      sustained: batches of 32 back to back (pipelined where the
                method pipelines: pools and Flight) for at least --seconds
  cpu/1k        user+sys CPU seconds per 1000 images of every process
                involved in that throughput phase: this process
                (RUSAGE_SELF), pool workers (RUSAGE_CHILDREN once joined),
                the engine binary (its own getrusage), the server
                (/proc/PID/stat)
  p50/p99 ms    latency of one 32-image batch on an otherwise idle system,
                using all `cores`: the pools split the batch over their
                workers; the engine times each process_batch call; Flight
                times one DoExchange call of one batch

With --rounds > 1 every method runs once per round, rounds interleaved (so
machine noise hits all methods alike); images/s and cpu/1k are the median
over rounds, latencies pool every round's samples.

The images come from ../shared/corpus/bench/{imagenet,large} next to the
repository (or --corpus DIR). The binaries are built with cargo (release)
unless --bin-dir names a folder that holds prebuilt `pixelfeed` and
`engine_bench`.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import mmap
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "bench"
SETS = ("imagenet", "large")
BATCH = 32
# imagenet preset output of one row, float32 CHW.
OUT_SHAPE = (3, 224, 224)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SPEC_F32: Dict[str, Any] = {"preset": "imagenet"}
SPEC_U8: Dict[str, Any] = {"preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": None}
SPEC_DRAFT: Dict[str, Any] = {"preset": "imagenet", "draft": True}
SPEC_ZUNE: Dict[str, Any] = {"preset": "imagenet", "decoder": "zune-jpeg"}

METHODS_BY_SET = {
    "imagenet": ["pillow", "torchvision", "decode_only", "engine", "engine_zune", "engine_draft", "engine_u8", "engine_u8_2f",
                 "native_f32", "native_u8", "flight_f32", "flight_u8", "flight_u8_k2", "flight_u8_uds"],
    "large": ["pillow", "pillow_draft", "torchvision", "decode_only", "decode_only_draft", "engine", "engine_zune",
              "engine_draft", "engine_u8",
              "flight_f32", "flight_draft", "flight_u8"],
}

# (name, numerator, denominator, set, comparison, target, what)
RATIOS = [
    ("engine/torchvision", "engine", "torchvision", "imagenet", ">=", 2.0, "ips"),
    ("engine/decode_only", "engine", "decode_only", "imagenet", ">=", 0.9, "ips"),
    ("engine_zune/decode_only (pure-Rust fallback)", "engine_zune", "decode_only", "imagenet", None, None, "ips"),
    ("engine_draft/decode_only", "engine_draft", "decode_only", "imagenet", None, None, "ips"),
    ("engine_u8/engine_u8_2f (straggler: 1 vs 2 batches in flight)", "engine_u8", "engine_u8_2f", "imagenet", ">=",
     0.9, "ips"),
    ("native_u8/engine_u8 (the Python binding's cost)", "native_u8", "engine_u8", "imagenet", ">=", 0.95, "ips"),
    ("native_f32/engine", "native_f32", "engine", "imagenet", ">=", 0.95, "ips"),
    ("native_f32/pillow", "native_f32", "pillow", "imagenet", ">=", 2.5, "ips"),
    ("flight_u8/engine_u8", "flight_u8", "engine_u8", "imagenet", ">=", 0.85, "ips"),
    ("flight_u8_k2/engine_u8 (two streams)", "flight_u8_k2", "engine_u8", "imagenet", ">=", 0.95, "ips"),
    ("flight_u8_k2/flight_u8", "flight_u8_k2", "flight_u8", "imagenet", None, None, "ips"),
    ("flight_u8_uds/flight_u8 (Unix socket / loopback TCP)", "flight_u8_uds", "flight_u8", "imagenet", None, None,
     "ips"),
    ("flight_u8_uds cpu/1k ÷ flight_u8 cpu/1k", "flight_u8_uds", "flight_u8", "imagenet", None, None, "cpu"),
    ("flight_u8/engine (f32 engine row; for reference)", "flight_u8", "engine", "imagenet", None, None, "ips"),
    ("flight_f32/engine", "flight_f32", "engine", "imagenet", None, None, "ips"),
    ("flight_f32/torchvision", "flight_f32", "torchvision", "imagenet", ">=", 1.5, "ips"),
    ("large engine_draft/decode_only_draft (same DCT scale)", "engine_draft", "decode_only_draft", "large", ">=",
     0.9, "ips"),
    ("large engine_draft/pillow_draft", "engine_draft", "pillow_draft", "large", ">=", 2.0, "ips"),
    ("large flight_draft/pillow_draft", "flight_draft", "pillow_draft", "large", None, None, "ips"),
    ("large engine (full decode)/pillow_draft", "engine", "pillow_draft", "large", None, None, "ips"),
    ("engine cpu/1k ÷ torchvision cpu/1k", "engine", "torchvision", "imagenet", "<=", 0.5, "cpu"),
]
# When torch is absent, the torchvision ratios are also shown against
# `pillow` (the same PIL resize; NumPy instead of ToTensor/Normalize), marked
# as a proxy, never as the target itself.
PROXY = {"torchvision": "pillow"}


def die(msg: str) -> "None":
    print(f"bench/run.py: {msg}", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------
# CPU accounting
# ----------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rusage_cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # Fields after the parenthesised command name; utime, stime are 14, 15.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine, all CPUs (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


NCPU = os.cpu_count() or 1


class Window:
    """Measures, over a with-block, the CPU this benchmark used (this process,
    reaped children, optionally a live server) against the whole machine's,
    so that load from other processes on a shared machine shows up as
    `other_load` (fraction of the machine's capacity used by others)."""

    def __init__(self, pid: Optional[int] = None):
        self.pid = pid

    def _ours(self) -> float:
        c = rusage_cpu(resource.RUSAGE_SELF) + rusage_cpu(resource.RUSAGE_CHILDREN)
        return c + (proc_cpu(self.pid) if self.pid else 0.0)

    def __enter__(self) -> "Window":
        self.t0, self.ours0, self.busy0 = time.perf_counter(), self._ours(), machine_busy()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.perf_counter() - self.t0
        ours = self._ours() - self.ours0
        busy = machine_busy() - self.busy0
        self.other_load = max(0.0, busy - ours) / (wall * NCPU) if wall > 0 else 0.0


def percentile(xs: List[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ----------------------------------------------------------------------------
# Process-pool methods (pillow, torchvision, decode_only, decode_only_draft, pillow_draft)
# ----------------------------------------------------------------------------

# Set in the parent before the pool forks; the workers inherit them.
_IMAGES: List[bytes] = []
_SLOTS: Optional[mmap.mmap] = None
_SLOT_BYTES = 0
# Per worker: the transform, built by the initializer.
_TRANSFORM: Optional[Callable[[bytes], Any]] = None
# Shared by a pool's workers: CPU seconds they spent in the initializer
# (imports: several seconds for torch), taken out of the per-image CPU.
_INIT_CPU: Any = None


def _pil_resize_crop(img, draft: bool):
    """torchvision Resize(256) + CenterCrop(224) on a PIL image, as PIL calls."""
    from PIL import Image

    if draft:
        # Largest libjpeg-turbo DCT scale keeping both sides >= 256.
        img.draft("RGB", (256, 256))
    img = img.convert("RGB")
    w, h = img.size
    if w <= h:
        ow, oh = 256, int(256 * h / w)
    else:
        oh, ow = 256, int(256 * w / h)
    img = img.resize((ow, oh), Image.BILINEAR)
    top = int(round((oh - 224) / 2.0))
    left = int(round((ow - 224) / 2.0))
    return img.crop((left, top, left + 224, top + 224))


def _make_transform(kind: str) -> Callable[[bytes], Any]:
    import numpy as np
    from PIL import Image

    if kind in ("decode_only", "decode_only_draft"):
        draft = kind == "decode_only_draft"

        def decode(b: bytes) -> None:
            img = Image.open(io.BytesIO(b))
            if draft:
                # The scale engine_draft decodes at: the largest keeping both
                # sides >= 256 (the imagenet preset's resize).
                img.draft("RGB", (256, 256))
            img.load()
            return None

        return decode

    if kind in ("pillow", "pillow_draft"):
        draft = kind == "pillow_draft"
        # x/255 then (x - mean)/std, folded: x * scale - offset, per channel.
        scale = (1.0 / (255.0 * np.array(STD, np.float32))).astype(np.float32)
        offset = (np.array(MEAN, np.float32) / np.array(STD, np.float32)).astype(np.float32)

        def pil(b: bytes):
            img = _pil_resize_crop(Image.open(io.BytesIO(b)), draft)
            hwc = np.asarray(img, dtype=np.float32)
            hwc *= scale
            hwc -= offset
            return hwc.transpose(2, 0, 1)  # written into the CHW slot by the caller

        return pil

    if kind == "torchvision":
        import torch
        import torchvision.transforms as T

        torch.set_num_threads(1)  # as DataLoader workers do
        t = T.Compose(
            [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)]
        )

        def tv(b: bytes):
            return t(Image.open(io.BytesIO(b)).convert("RGB")).numpy()

        return tv

    raise ValueError(kind)


def _init_worker(kind: str) -> None:
    global _TRANSFORM
    _TRANSFORM = _make_transform(kind)
    # A forked child's rusage starts at zero: this is the init cost alone.
    with _INIT_CPU.get_lock():
        _INIT_CPU.value += rusage_cpu(resource.RUSAGE_SELF)


def _work(slot: int, row0: int, idxs: List[int]) -> int:
    """Transform images `idxs` into rows row0.. of shared-memory slot `slot`."""
    import numpy as np

    assert _TRANSFORM is not None and _SLOTS is not None
    out = np.ndarray((BATCH,) + OUT_SHAPE, np.float32, buffer=_SLOTS, offset=slot * _SLOT_BYTES)
    for j, i in enumerate(idxs):
        x = _TRANSFORM(_IMAGES[i])
        if x is not None:
            out[row0 + j] = x
    return len(idxs)


def cycled_batches(n: int) -> Iterator[List[int]]:
    """Index lists of BATCH consecutive images from the endless cycle over n."""
    k = 0
    while True:
        yield [(k + j) % n for j in range(BATCH)]
        k = (k + BATCH) % n


def run_pool(kind: str, images: List[bytes], cores: int, cfg: "Config") -> Dict[str, Any]:
    import numpy as np

    global _IMAGES, _SLOTS, _SLOT_BYTES, _INIT_CPU
    ctx = mp.get_context("fork")
    _INIT_CPU = ctx.Value("d", 0.0)
    nslots = 2 * cores  # DataLoader's prefetch_factor=2 per worker
    _IMAGES = images
    _SLOT_BYTES = BATCH * int(np.prod(OUT_SHAPE)) * 4
    _SLOTS = mmap.mmap(-1, nslots * _SLOT_BYTES)  # MAP_SHARED | MAP_ANONYMOUS
    try:
        # -- throughput: each worker builds whole batches, 2 in flight each.
        window = Window().__enter__()
        self0, child0 = rusage_cpu(resource.RUSAGE_SELF), rusage_cpu(resource.RUSAGE_CHILDREN)
        pool = ctx.Pool(cores, initializer=_init_worker, initargs=(kind,))
        done_images = 0
        try:
            # Warm-up: one batch per worker (counted in CPU, not in wall time).
            batches = cycled_batches(len(images))
            done_images += sum(
                pool.starmap(_work, [(s, 0, next(batches)) for s in range(cores)], chunksize=1)
            )
            pending: deque = deque()
            t0 = time.perf_counter()
            submitted = 0
            for s in range(nslots):
                pending.append((s, pool.apply_async(_work, (s, 0, next(batches)))))
                submitted += 1
            timed = 0
            while pending:
                slot, res = pending.popleft()
                timed += res.get()
                # The consumer's view of the batch (zero-copy), as a DataLoader hands it over.
                view = np.ndarray((BATCH,) + OUT_SHAPE, np.float32, buffer=_SLOTS, offset=slot * _SLOT_BYTES)
                view[0, 0, 0, 0]  # noqa: B018 - touch it
                if time.perf_counter() - t0 < cfg.seconds or submitted < cfg.min_batches:
                    pending.append((slot, pool.apply_async(_work, (slot, 0, next(batches)))))
                    submitted += 1
            wall = time.perf_counter() - t0
            done_images += timed
        finally:
            pool.close()
            pool.join()
        cpu = (rusage_cpu(resource.RUSAGE_SELF) - self0) + (rusage_cpu(resource.RUSAGE_CHILDREN) - child0)
        cpu -= _INIT_CPU.value  # worker start-up (imports) is not per-image work
        window.__exit__()

        # -- latency: one batch at a time, split over all workers.
        lat = []
        pool = ctx.Pool(cores, initializer=_init_worker, initargs=(kind,))
        try:
            batches = cycled_batches(len(images))
            per = math.ceil(BATCH / cores)

            def one(idxs: List[int]) -> float:
                t = time.perf_counter()
                parts = [
                    pool.apply_async(_work, (0, r, idxs[r : r + per])) for r in range(0, BATCH, per)
                ]
                for p in parts:
                    p.get()
                return time.perf_counter() - t

            one(next(batches))  # warm-up
            t0 = time.perf_counter()
            while len(lat) < cfg.lat_min or (len(lat) < cfg.lat_max and time.perf_counter() - t0 < cfg.lat_seconds):
                lat.append(one(next(batches)) * 1e3)
        finally:
            pool.close()
            pool.join()
    finally:
        _SLOTS.close()
        _SLOTS = None
        _IMAGES = []
    return {"images": timed, "wall_s": wall, "ips": timed / wall, "cpu_s": cpu,
            "cpu_per_1k": cpu * 1000.0 / done_images, "lat_ms": lat, "other_load": window.other_load}


# ----------------------------------------------------------------------------
# engine (in-process Rust) and Flight
# ----------------------------------------------------------------------------


def run_engine(bins: Dict[str, Path], spec: Dict[str, Any], folder: Path, cores: int,
               cfg: "Config", concurrent: int = 1) -> Dict[str, Any]:
    cmd = [
        str(bins["engine_bench"]), "--dir", str(folder), "--threads", str(cores),
        "--batch", str(BATCH), "--spec", json.dumps(spec), "--concurrent", str(concurrent),
        "--min-seconds", str(cfg.seconds), "--min-batches", str(max(cfg.min_batches, cfg.lat_min)),
        "--warmup", "2",
    ]
    with Window() as window:
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        if "built without libjpeg-turbo" in done.stderr:
            raise DraftUnavailable()
        die(f"engine_bench failed ({done.returncode}): {done.stderr.strip()}")
    r = json.loads(done.stdout)
    if r["errors"]:
        die(f"engine_bench reported {r['errors']} failed rows in {folder}")
    return {"images": r["images"], "wall_s": r["wall_s"], "ips": r["images_per_s"], "cpu_s": r["cpu_s"],
            "cpu_per_1k": r["cpu_s_per_1000"], "lat_ms": r["latencies_ms"], "other_load": window.other_load}


def build_native(no_build: bool) -> Optional[str]:
    """Builds and installs the native module in release mode into this venv; why not, or None."""
    if not no_build:
        if importlib.util.find_spec("maturin") is None:
            return "maturin is not installed in this venv (scripts/test.sh installs it)"
        print("building the native module (maturin develop --release) ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "maturin", "develop", "--release", "-q", "-m", str(REPO / "native/Cargo.toml"),
             *cargo_features()],
            cwd=REPO, env={**os.environ, "VIRTUAL_ENV": sys.prefix}, capture_output=True, text=True,
        )
        if done.returncode != 0:
            return f"maturin develop failed: {done.stderr.strip()[-300:]}"
        importlib.invalidate_caches()
    if importlib.util.find_spec("pixelfeed_native") is None:
        return "pixelfeed_native is not installed (maturin develop --release -m native/Cargo.toml)"
    return None


def cycled_slices(images: List[bytes]) -> List[Any]:
    """Every distinct batch of BATCH consecutive images of the endless cycle over ``images``, as
    zero-copy slices of one ``image: binary`` record batch (as engine_bench builds them)."""
    import pyarrow as pa

    n = len(images)
    distinct = n // math.gcd(n, BATCH)
    table = pa.record_batch({"image": pa.array([images[i % n] for i in range(distinct * BATCH)], pa.binary())})
    return [table.slice(i * BATCH, BATCH) for i in range(distinct)]


#: One engine per spec for the whole run, as a training loop keeps one.
_ENGINES: Dict[str, Any] = {}


def run_native(spec: Dict[str, Any], images: List[bytes], cores: int, cfg: "Config") -> Dict[str, Any]:
    """pixelfeed.Engine in this process, measured as run_engine measures engine_bench."""
    import pixelfeed

    key = json.dumps(spec, sort_keys=True)
    if key not in _ENGINES:
        _ENGINES[key] = pixelfeed.Engine(spec, threads=cores, pinned=False)
    engine = _ENGINES[key]
    slices = cycled_slices(images)
    distinct = len(slices)

    def step(k: int) -> None:
        out = engine.process(slices[k % distinct], first_row=k * BATCH)
        if not pixelfeed.valid(out).all():
            die(f"native: failed rows: {set(e for e in pixelfeed.errors(out) if e)}")

    for k in range(2):  # warm-up, as engine_bench
        step(k)
    lat = []
    k = 2
    with Window() as window:
        cpu0, t0 = rusage_cpu(resource.RUSAGE_SELF), time.perf_counter()
        while len(lat) < max(cfg.min_batches, cfg.lat_min) or time.perf_counter() - t0 < cfg.seconds:
            t = time.perf_counter()
            step(k)
            lat.append((time.perf_counter() - t) * 1e3)
            k += 1
        wall, cpu = time.perf_counter() - t0, rusage_cpu(resource.RUSAGE_SELF) - cpu0
    rows = len(lat) * BATCH
    return {"images": rows, "wall_s": wall, "ips": rows / wall, "cpu_s": cpu, "cpu_per_1k": cpu * 1000.0 / rows,
            "lat_ms": lat, "other_load": window.other_load}


class DraftUnavailable(Exception):
    """The binaries were built without the `turbojpeg` feature."""


class Server:
    """`pixelfeed serve` on a free loopback port (or ``listen``, e.g. a Unix socket) until closed."""

    def __init__(self, binary: Path, cores: int, listen: str = "127.0.0.1:0"):
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--listen", listen, "--threads", str(cores), "--pinned", "off"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        self.addr = None
        deadline = time.time() + 30
        assert self.proc.stdout is not None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if "pixelfeed listening on " in line:
                self.addr = line.strip().rsplit(" ", 1)[-1]
                break
        if self.addr is None:
            self.close()
            die("pixelfeed serve did not announce its address")
        # Keep draining stdout so the server never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_flight(server: Server, spec: Dict[str, Any], images: List[bytes], cfg: "Config",
               streams: int = 1) -> Dict[str, Any]:
    """Throughput and latency over Flight; ``streams=1`` is one call on this
    thread (``prefetch=0``), more are ``preprocess(..., streams=N)``."""
    import pixelfeed

    slices = cycled_slices(images)
    distinct = len(slices)
    client = pixelfeed.connect(server.addr)  # as printed: HOST:PORT or unix:///PATH
    how = {"streams": 1, "prefetch": 0} if streams == 1 else {"streams": streams}
    try:
        def drain(stream) -> int:
            rows = 0
            for b in stream:
                x = pixelfeed.tensors(b)
                x.flat[0]  # noqa: B018 - touch the zero-copy view
                if not pixelfeed.valid(b).all():
                    die(f"flight: failed rows: {set(e for e in pixelfeed.errors(b) if e)}")
                rows += b.num_rows
            return rows

        try:
            drain(client.preprocess(slices[:2], spec=spec, batch_size=BATCH, **how))  # warm-up
        except Exception as e:  # pyarrow.ArrowInvalid / FlightError, by pyarrow version
            if "built without libjpeg-turbo" in str(e):
                raise DraftUnavailable() from e
            raise

        # -- throughput: batches of 32, until --seconds have passed.
        t0 = time.perf_counter()
        sent = [0]

        def gen() -> Iterator[Any]:
            k = 0
            while time.perf_counter() - t0 < cfg.seconds or sent[0] < cfg.min_batches:
                yield slices[k % distinct]
                sent[0] += 1
                k += 1

        with Window(server.proc.pid) as window:
            srv0, self0 = proc_cpu(server.proc.pid), rusage_cpu(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            rows = drain(client.preprocess(gen(), spec=spec, batch_size=BATCH, **how))
            wall = time.perf_counter() - t0
            cpu = (proc_cpu(server.proc.pid) - srv0) + (rusage_cpu(resource.RUSAGE_SELF) - self0)

        # -- latency: one DoExchange call of one 32-image batch at a time.
        lat = []
        t0 = time.perf_counter()
        k = 0
        while len(lat) < cfg.lat_min or (len(lat) < cfg.lat_max and time.perf_counter() - t0 < cfg.lat_seconds):
            t = time.perf_counter()
            drain(client.preprocess(slices[k % distinct], spec=spec, batch_size=BATCH, **how))
            lat.append((time.perf_counter() - t) * 1e3)
            k += 1
    finally:
        client.close()
    return {"images": rows, "wall_s": wall, "ips": rows / wall, "cpu_s": cpu,
            "cpu_per_1k": cpu * 1000.0 / rows, "lat_ms": lat, "other_load": window.other_load}


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------


class Config:
    def __init__(self, quick: bool, rounds: Optional[int]):
        # seconds: throughput phase per method per round; lat_*: latency batches.
        if quick:
            self.seconds, self.min_batches, self.rounds = 2.0, 4, rounds or 1
            self.lat_min, self.lat_max, self.lat_seconds = 5, 20, 1.5
        else:
            self.seconds, self.min_batches, self.rounds = 5.0, 8, rounds or 3
            self.lat_min, self.lat_max, self.lat_seconds = 6, 40, 3.0


def cargo_features() -> List[str]:
    """The build of scripts/features.sh: libjpeg-turbo (needs cmake and nasm), or the pure-Rust
    fallback with PIXELFEED_PURE_RUST=1 (the draft methods are then skipped)."""
    if os.environ.get("PIXELFEED_PURE_RUST") == "1":
        return ["--no-default-features"]
    missing = [tool for tool in ("cmake", "nasm") if shutil.which(tool) is None]
    if missing:
        die(f"building libjpeg-turbo needs {' and '.join(missing)} (apt-get install cmake nasm), "
            "or set PIXELFEED_PURE_RUST=1 to bench the pure-Rust fallback")
    return []


def build(bin_dir: Optional[Path], no_build: bool) -> Dict[str, Path]:
    if bin_dir is not None:
        bins = {"pixelfeed": bin_dir / "pixelfeed", "engine_bench": bin_dir / "engine_bench"}
    else:
        bins = {"pixelfeed": REPO / "target/release/pixelfeed",
                "engine_bench": REPO / "target/release/examples/engine_bench"}
        if not no_build:
            if shutil.which("cargo") is None:
                die("cargo not found: install Rust, or pass --bin-dir with prebuilt pixelfeed and engine_bench")
            features = cargo_features()
            print(f"building release binaries (cargo build --release {' '.join(features)}) ...",
                  file=sys.stderr, flush=True)
            subprocess.run(
                ["cargo", "build", "--release", "-q", "-p", "pixelfeed-cli", "-p", "pixelfeed-engine",
                 "--bin", "pixelfeed", "--example", "engine_bench", *features],
                cwd=REPO, check=True,
            )
    for name, p in bins.items():
        if not os.access(p, os.X_OK):
            die(f"{p} missing ({name}); build it or fix --bin-dir")
    return bins


#: Files a set folder contributes (any format the engine decodes; the same
#: list as engine/examples/engine_bench.rs).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def load_set(corpus: Path, name: str) -> Tuple[Path, List[bytes]]:
    folder = corpus / name
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        die(f"no images in {folder}")
    return folder, [p.read_bytes() for p in files]


def fmt_row(name: str, r: Dict[str, Any]) -> str:
    if "skipped" in r:
        return f"  {name:<13} skipped: {r['skipped']}"
    return (f"  {name:<13} {r['ips']:9.1f} {r['cpu_per_1k']:9.2f} {r['ips_cpu']:8.1f} {r['p50_ms']:8.1f}"
            f" {r['p99_ms']:8.1f} {r['p99_ms'] / r['p50_ms']:7.2f} {len(r['lat_ms']):5d}"
            f" {100 * r['other_load']:5.0f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short phases, one round (~2 min)")
    ap.add_argument("--set", choices=["imagenet", "large", "all"], default="all")
    ap.add_argument("--json", type=Path, help="also write all results to this file")
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)),
                    help="processes/threads for every method (default: usable cores)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, --quick 1)")
    ap.add_argument("--methods", help="comma-separated subset of methods")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                    help="folder holding imagenet/ and large/ (default ../shared/corpus/bench)")
    ap.add_argument("--bin-dir", type=Path, help="use prebuilt pixelfeed and engine_bench from here (no cargo)")
    ap.add_argument("--no-build", action="store_true", help="use target/release as it is")
    args = ap.parse_args()

    if not args.corpus.is_dir():
        die(f"benchmark images not found at {args.corpus} "
            "(expected ../shared/corpus/bench/{imagenet,large}/ next to the repository; or pass --corpus)")
    try:
        import numpy  # noqa: F401
        import PIL  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as e:
        die(f"{e}: run with the project venv (.venv/bin/python; bash scripts/test.sh creates it)")
    sys.path.insert(0, str(REPO / "clients" / "python"))  # the pixelfeed client, installed or not

    cfg = Config(args.quick, args.rounds)
    sets = list(SETS) if args.set == "all" else [args.set]
    wanted = set(args.methods.split(",")) if args.methods else None
    have_torch = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None
    bins = build(args.bin_dir, args.no_build)
    native_missing = None
    if wanted is None or wanted & {"native_f32", "native_u8"}:
        native_missing = build_native(args.no_build or args.bin_dir is not None)

    from PIL import features

    env = {
        "cores": args.cores, "rounds": cfg.rounds, "quick": args.quick, "batch": BATCH,
        "python": platform.python_version(), "pillow": __import__("PIL").__version__,
        "libjpeg_turbo": features.version("jpg") if features.check_feature("libjpeg_turbo") else None,
        "numpy": __import__("numpy").__version__, "pyarrow": __import__("pyarrow").__version__,
        "torch": None, "cpu": platform.processor() or platform.machine(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if have_torch:
        import importlib.metadata as md

        env["torch"] = md.version("torch")
        env["torchvision"] = md.version("torchvision")
    print(f"cores={args.cores} rounds={cfg.rounds} batch={BATCH} cpu={env['cpu']!r} "
          f"pillow={env['pillow']} libjpeg-turbo={env['libjpeg_turbo']} torch={env['torch']}", flush=True)

    data = {s: load_set(args.corpus, s) for s in sets}
    raw: Dict[str, Dict[str, List[Dict[str, Any]]]] = {s: {} for s in sets}
    skipped: Dict[str, Dict[str, str]] = {s: {} for s in sets}
    server = Server(bins["pixelfeed"], args.cores)
    uds_server: Optional[Server] = None
    uds_dir = Path(tempfile.mkdtemp(prefix="pf-bench-"))
    t_start = time.perf_counter()
    draft_unavailable = False
    try:
        for rnd in range(cfg.rounds):
            for s in sets:
                folder, images = data[s]
                for m in METHODS_BY_SET[s]:
                    if wanted is not None and m not in wanted:
                        continue
                    if m == "torchvision" and not have_torch:
                        skipped[s][m] = "torch/torchvision not installed (no CPU wheel on this machine's index)"
                        continue
                    if m.startswith("native_") and native_missing is not None:
                        skipped[s][m] = native_missing
                        continue
                    if m in ("engine_draft", "flight_draft") and draft_unavailable:
                        skipped[s][m] = "binaries built without libjpeg-turbo (PIXELFEED_PURE_RUST=1): no draft decoding"
                        continue
                    t = time.perf_counter()
                    try:
                        if m == "engine":
                            r = run_engine(bins, SPEC_F32, folder, args.cores, cfg)
                        elif m == "engine_zune":
                            r = run_engine(bins, SPEC_ZUNE, folder, args.cores, cfg)
                        elif m == "engine_draft":
                            r = run_engine(bins, SPEC_DRAFT, folder, args.cores, cfg)
                        elif m == "engine_u8":
                            r = run_engine(bins, SPEC_U8, folder, args.cores, cfg)
                        elif m == "native_f32":
                            r = run_native(SPEC_F32, images, args.cores, cfg)
                        elif m == "native_u8":
                            r = run_native(SPEC_U8, images, args.cores, cfg)
                        elif m == "engine_u8_2f":
                            r = run_engine(bins, SPEC_U8, folder, args.cores, cfg, concurrent=2)
                        elif m == "flight_f32":
                            r = run_flight(server, SPEC_F32, images, cfg)
                        elif m == "flight_draft":
                            r = run_flight(server, SPEC_DRAFT, images, cfg)
                        elif m == "flight_u8":
                            r = run_flight(server, SPEC_U8, images, cfg)
                        elif m == "flight_u8_k2":
                            r = run_flight(server, SPEC_U8, images, cfg, streams=2)
                        elif m == "flight_u8_uds":
                            if uds_server is None:
                                uds_server = Server(bins["pixelfeed"], args.cores, f"unix://{uds_dir}/pf.sock")
                            r = run_flight(uds_server, SPEC_U8, images, cfg)
                        else:
                            r = run_pool(m, images, args.cores, cfg)
                    except DraftUnavailable:
                        draft_unavailable = True
                        skipped[s][m] = "binaries built without libjpeg-turbo (PIXELFEED_PURE_RUST=1): no draft decoding"
                        continue
                    raw[s].setdefault(m, []).append(r)
                    print(f"[round {rnd + 1}/{cfg.rounds}] {s:<8} {m:<12} {r['ips']:8.1f} img/s "
                          f"{r['cpu_per_1k']:6.2f} cpu-s/1k  other load {100 * r['other_load']:3.0f}%  "
                          f"({time.perf_counter() - t:4.1f}s)", flush=True)
    finally:
        server.close()
        if uds_server is not None:
            uds_server.close()
        shutil.rmtree(uds_dir, ignore_errors=True)
    elapsed = time.perf_counter() - t_start

    results: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for s in sets:
        results[s] = {}
        for m in METHODS_BY_SET[s]:
            if m in skipped[s]:
                results[s][m] = {"skipped": skipped[s][m]}
            elif m in raw[s]:
                rs = raw[s][m]
                lat = [x for r in rs for x in r["lat_ms"]]
                results[s][m] = {
                    "ips": statistics.median(r["ips"] for r in rs),
                    "cpu_per_1k": statistics.median(r["cpu_per_1k"] for r in rs),
                    "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
                    "ips_rounds": [r["ips"] for r in rs], "cpu_per_1k_rounds": [r["cpu_per_1k"] for r in rs],
                    "lat_ms": lat,
                    "ips_cpu": args.cores * 1000.0 / statistics.median(r["cpu_per_1k"] for r in rs),
                    "other_load": max(r["other_load"] for r in rs),
                }

    print()
    for s in sets:
        n = len(data[s][1])
        print(f"set {s} ({n} images, {data[s][0]}), {args.cores} cores, batch {BATCH}:")
        print(f"  {'method':<13} {'images/s':>9} {'cpu-s/1k':>9} {'ips@cpu':>8} {'p50 ms':>8} {'p99 ms':>8}"
              f" {'p99/p50':>7} {'lat n':>5} {'other%':>6}")
        for m in METHODS_BY_SET[s]:
            if m in results[s]:
                print(fmt_row(m, results[s][m]))
        print()
    print("  images/s: median over rounds of wall-clock throughput; cpu-s/1k: CPU seconds per 1000 images,")
    print(f"  all processes; ips@cpu = {args.cores} cores x 1000 / cpu-s/1k (throughput if the method had the")
    print("  cores to itself and scaled perfectly; robust to other load); other%: the machine's CPU used by")
    print("  OTHER processes during the method's phases (worst round): above ~10% wall-clock ratios are noisy.\n")

    ratios = []
    print("ratios (same run)                                         wall  ips@cpu  target")
    for name, num, den, s, op, target, what in RATIOS:
        res = results.get(s, {})
        proxy = None
        if den in res and "skipped" in res[den] and den in PROXY:
            proxy = PROXY[den]
        row: Dict[str, Any] = {"name": name, "set": s, "target": f"{op} {target}" if op else None}
        d = den if proxy is None else proxy
        want = f"{op} {target}" if op else "-"
        if num in res and d in res and "skipped" not in res[num] and "skipped" not in res[d]:
            if what == "ips":
                v = res[num]["ips"] / res[d]["ips"]
                v_cpu = res[num]["ips_cpu"] / res[d]["ips_cpu"]
            else:  # a CPU ratio is the same either way
                v = v_cpu = res[num]["cpu_per_1k"] / res[d]["cpu_per_1k"]
            label = name if proxy is None else name.replace(den, f"{proxy} [proxy: {den} skipped]")
            row.update(value=v, value_ips_cpu=v_cpu, proxy_for=den if proxy else None)
            if op is None:
                row["met"] = None
                verdict = ""
            else:
                met = v >= target if op == ">=" else v <= target
                row["met"] = met if proxy is None else None
                verdict = ("MET" if met else "MISSED") if proxy is None else ("(would meet)" if met else "(would miss)")
            print(f"  {label:<55} {v:5.2f}  {v_cpu:6.2f}   {want:<7} {verdict}")
        else:
            row.update(value=None, met=None)
            print(f"  {name:<55}   n/a     n/a   {want:<7} (not measured)")
        ratios.append(row)
    for s in sets:
        for m, r in results[s].items():
            if "skipped" in r:
                continue
            ok = r["p99_ms"] <= 2 * r["p50_ms"]
            ratios.append({"name": f"{s} {m} p99/p50", "set": s, "target": "<= 2.0",
                           "value": r["p99_ms"] / r["p50_ms"], "met": ok})
    tails = [r for r in ratios if r["name"].endswith("p99/p50")]
    bad = [f"{r['name'].rsplit(' ', 1)[0]} ({r['value']:.2f})" for r in tails if not r["met"]]
    print(f"  p99 <= 2 x p50: {len(tails) - len(bad)}/{len(tails)} rows meet it"
          + (f"; missed: {', '.join(bad)}" if bad else ""))
    print(f"\ntotal {elapsed:.0f}s")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "results": results, "ratios": ratios,
                                         "elapsed_s": elapsed}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
