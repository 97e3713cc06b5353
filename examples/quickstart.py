#!/usr/bin/env python3
"""pixelfeed quick start: send images to a running server, print what comes back,
then compare three ways of turning them into tensors on this machine.

    python examples/quickstart.py --server grpc://127.0.0.1:8815
    python examples/quickstart.py --corpus --seconds 10

It sends the sample images in ``tests/data/images/`` (plus the JPEG/PNG files
in ``../shared/corpus/real/`` with ``--corpus``), prints one line per image
(tensor shape, dtype, source size, or the error), then, from one run, the
images/s of the same images and spec through:

- Pillow in a pool of one process per core (torchvision's eval transform:
  shorter side 256 bilinear, center crop 224, float32 CHW, normalised), the
  usual Python data loader;
- the pixelfeed server over Flight (``Client.preprocess``);
- the pixelfeed engine in this process (``pixelfeed.Engine``; needs the
  native module, which ``scripts/demo.sh`` builds), same cores.

Each runs for ``--seconds`` on the image list repeated, batches of 32.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import pyarrow as pa

import pixelfeed

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "images"
CORPUS_REAL = REPO.parent / "shared" / "corpus" / "real"


def is_image(path: Path) -> bool:
    """JPEG or PNG by magic bytes (the server sniffs the same way)."""
    with open(path, "rb") as f:
        head = f.read(8)
    return head[:3] == b"\xff\xd8\xff" or head == b"\x89PNG\r\n\x1a\n"


def load_images(with_corpus: bool) -> List[Tuple[str, bytes]]:
    """(name, bytes) for every sample image (and corpus image if asked)."""
    folders = [SAMPLES]
    if with_corpus:
        if CORPUS_REAL.is_dir():
            folders.append(CORPUS_REAL)
        else:
            print(f"note: {CORPUS_REAL} not found, using the bundled samples only", file=sys.stderr)
    out = []
    for folder in folders:
        for p in sorted(folder.iterdir()):
            if p.is_file() and is_image(p):
                out.append((f"{folder.name}/{p.name}", p.read_bytes()))
    return out


def parse_spec(text: str):
    """A preset name or a JSON object."""
    return json.loads(text) if text.lstrip().startswith("{") else text


def show_results(client: pixelfeed.Client, images: List[Tuple[str, bytes]], spec, batch_size: int) -> int:
    """One pass with names attached; prints a line per image; returns the failure count."""
    table = pa.table(
        {
            "name": pa.array([n for n, _ in images], pa.string()),
            "image": pa.array([d for _, d in images], pa.binary()),
        }
    )
    failures = 0
    width = max(len(n) for n, _ in images)
    print(f"  {'image':<{width}}  {'src WxH':>9}    tensor")
    for batch in client.preprocess(table, spec=spec, batch_size=batch_size):
        x = pixelfeed.tensors(batch)
        ok = pixelfeed.valid(batch)
        errs = pixelfeed.errors(batch)
        hs = batch.column("height").to_pylist()
        ws = batch.column("width").to_pylist()
        for i, name in enumerate(batch.column("name").to_pylist()):
            if ok[i]:
                size = f"{ws[i]}x{hs[i]}"
                print(f"  {name:<{width}}  {size:>9} -> shape {tuple(x.shape[1:])} {x.dtype}"
                      f"  mean {float(x[i].mean()):+.3f}")
            else:
                failures += 1
                print(f"  {name:<{width}}  ERROR {errs[i]}")
    return failures


BATCH = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pillow_one(data: bytes):
    """torchvision's eval transform on one image with Pillow + NumPy (float32 CHW, normalised)."""
    import numpy as np
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = int(round((w - 224) / 2.0)), int(round((h - 224) / 2.0))
    x = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def _pillow_batch(batch: List[bytes]) -> int:
    import numpy as np

    return len(np.stack([_pillow_one(d) for d in batch]))


def _timed(run: Callable[[Iterator[List[bytes]]], Iterator[int]], datas: List[bytes], seconds: float) -> float:
    """images/s of ``run`` fed batches of the image list, repeated, for ``seconds``."""
    start = time.perf_counter()

    def batches() -> Iterator[List[bytes]]:
        i = 0
        while time.perf_counter() - start < seconds:
            yield [datas[(i + k) % len(datas)] for k in range(BATCH)]
            i += BATCH

    rows = sum(run(batches()))
    return rows / (time.perf_counter() - start)


def compare(client: pixelfeed.Client, images: List[Tuple[str, bytes]], seconds: float) -> None:
    """Pillow, Flight and in-process images/s on the same images, imagenet preset, this machine's cores."""
    datas = [d for _, d in images]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"\nthroughput, imagenet preset (float32 CHW), {cores} cores, {seconds:.0f} s each, batches of {BATCH}:")
    results: List[Tuple[str, Optional[float], str]] = []

    try:
        with mp.get_context("spawn").Pool(cores) as pool:
            pool.map(_pillow_batch, [datas[:2]] * cores)  # start the workers
            ips = _timed(lambda bs: pool.imap(_pillow_batch, bs), datas, seconds)
        results.append((f"Pillow, {cores} processes", ips, ""))
    except ImportError:
        results.append(("Pillow", None, "Pillow is not installed"))

    def flight(bs: Iterator[List[bytes]]) -> Iterator[int]:
        for out in client.preprocess((b for batch in bs for b in batch), spec="imagenet", batch_size=BATCH):
            pixelfeed.tensors(out).flat[0]  # noqa: B018 - touch the tensors
            yield out.num_rows

    results.append(("pixelfeed server over Flight", _timed(flight, datas, seconds), ""))

    try:
        engine = pixelfeed.Engine("imagenet", threads=cores)

        def native(bs: Iterator[List[bytes]]) -> Iterator[int]:
            for out in engine.stream(bs):
                pixelfeed.tensors(out).flat[0]  # noqa: B018
                yield out.num_rows

        results.append(("pixelfeed.Engine in this process", _timed(native, datas, seconds), ""))
    except ImportError:
        results.append(("pixelfeed.Engine in this process", None,
                        "native module not built (maturin develop --release -m native/Cargo.toml)"))

    base = results[0][1]
    for name, ips, why in results:
        if ips is None:
            print(f"  {name:<34} skipped: {why}")
        else:
            ratio = f"{ips / base:5.1f}x Pillow" if base else ""
            print(f"  {name:<34} {ips:8.1f} images/s  {ratio}")


def main(argv=None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default="grpc://127.0.0.1:8815", help="Flight location of a running server")
    ap.add_argument("--corpus", action="store_true", help="also send ../shared/corpus/real images if present")
    ap.add_argument("--seconds", type=float, default=3.0, help="how long each throughput measurement runs")
    ap.add_argument("--spec", default="imagenet", help='preset name or JSON spec, e.g. \'{"preset":"imagenet","dtype":"uint8"}\'')
    ap.add_argument("--batch-size", type=int, default=64, help="rows per request batch")
    args = ap.parse_args(argv)

    images = load_images(args.corpus)
    spec = parse_spec(args.spec)
    print(f"pixelfeed quickstart: {len(images)} images -> {args.server} (spec {json.dumps(spec)})")
    with pixelfeed.connect(args.server, timeout=600) as client:
        try:
            presets = client.presets()
        except Exception as e:  # noqa: BLE001 - the usual first-run problem: nothing listening
            print(f"error: cannot reach a pixelfeed server at {args.server}: {e}", file=sys.stderr)
            return 2
        print(f"server presets: {', '.join(sorted(presets))}")
        failures = show_results(client, images, spec, args.batch_size)
        print(f"{len(images) - failures} ok, {failures} failed")
        compare(client, images, max(0.5, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
