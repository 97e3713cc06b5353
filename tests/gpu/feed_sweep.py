"""Issue #18's GPU measurement: does one host keep its GPU fed?

Part of the GPU check (tests/gpu/run.sh; bounded to about 6 minutes). On
the same box and the same images it prints one table:

- the in-process engine at all cores (``engine_bench``, uint8 HWC spec),
  with one batch and with two batches in flight (the straggler cost);
- one ``TorchLoader`` (uint8 on the wire, normalised on the GPU) with
  K = 1, 2, 4, 8 streams over TCP, and K = 4 over a Unix socket: images/s
  delivered as CUDA tensors, and that over the engine's images/s;
- issue #19's DataLoader-style comparison on CPU: ``pixelfeed.Engine`` in
  this process with ``cores`` threads against torchvision ``decode_jpeg`` +
  v2 in ``DataLoader(num_workers=cores)``: images/s and CPU-seconds per
  1000 images (targets: >= 2x images/s, <= 0.5x CPU);
- a ResNet-50 training step (bf16 autocast, channels_last, batch 256,
  SGD) fed by pixelfeed: images/s and the fraction of wall time the GPU
  waited for data (CUDA events around each step), and the model alone on a
  resident batch (its ceiling);
- the same training step fed by the two torchvision baselines on this box:
  ``DataLoader(num_workers=cores)`` with ``decode_jpeg`` + v2 on CPU, and
  ``torchvision.io.decode_jpeg(device="cuda")`` batched + v2 on the GPU.

Targets (issue #18): one loader >= 0.85 x the engine; the training step
waits < 5 % whenever the cores can supply its rate; pixelfeed-fed training
images/s >= both baselines'.

    python3 tests/gpu/feed_sweep.py --tcp grpc://127.0.0.1:PORT \\
        --unix grpc+unix:///tmp/pf.sock --images .gpu/images --engine-bench .gpu/bin/engine_bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import pathlib
import subprocess
import time
from typing import Any, Callable, Dict, Iterable, List

import torch
import torchvision
from torchvision.transforms import v2

import pixelfeed
import pixelfeed.native
from pixelfeed.torch import TorchLoader

SPEC_U8 = {"preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": None}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TRAIN_BATCH = 256


def engine(bench: str, images: str, cores: int, concurrent: int, batch: int, seconds: float) -> float:
    """images/s of the in-process engine (engine_bench) at ``cores`` threads."""
    out = subprocess.run(
        [bench, "--dir", images, "--spec", json.dumps(SPEC_U8), "--threads", str(cores), "--batch", str(batch),
         "--concurrent", str(concurrent), "--min-seconds", str(seconds)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    return json.loads(out.stdout)["images_per_s"]


def loader(location: str, images: List[bytes], streams: int, batch: int) -> TorchLoader:
    client = pixelfeed.connect(location)
    return TorchLoader(
        client.preprocess(images, spec=SPEC_U8, batch_size=batch, streams=streams),
        device="cuda", batch_size=batch, normalize=(MEAN, STD), channels_last=True, dtype=torch.bfloat16,
    )


def drain(batches: Iterable[torch.Tensor]) -> float:
    """images/s of CUDA tensors delivered (each synchronised, nothing else done)."""
    n, t0 = 0, time.perf_counter()
    for x in batches:
        torch.cuda.current_stream().synchronize()
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def train(batches: Iterable[torch.Tensor], model, opt, steps: int) -> Dict[str, float]:
    """Runs up to ``steps`` SGD steps on ``batches``; images/s and the GPU's idle fraction."""
    loss_fn = torch.nn.CrossEntropyLoss()
    spans, n = [], 0
    t0 = None
    for i, x in enumerate(batches):
        if i == 2:  # the first steps include cuDNN autotuning and the pipeline filling
            torch.cuda.synchronize()
            t0, spans, n = time.perf_counter(), [], 0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = model(x)
            loss = loss_fn(y.float(), torch.zeros(x.shape[0], dtype=torch.long, device="cuda"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        end.record()
        spans.append((start, end))
        n += x.shape[0]
        if i + 1 >= steps:
            break
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    busy = sum(s.elapsed_time(e) for s, e in spans) / 1000.0
    return {"ips": n / wall, "gpu_wait": max(0.0, 1 - busy / wall)}


def resident(model, opt, steps: int) -> Dict[str, float]:
    x = torch.randn(TRAIN_BATCH, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    return train((x for _ in range(steps + 2)), model, opt, steps + 2)


class _Files(torch.utils.data.Dataset):
    """Encoded JPEGs -> torchvision decode_jpeg + v2 eval transform on CPU (uint8 CHW)."""

    def __init__(self, images: List[bytes]):
        self.images = images
        self.tf = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        data = torch.frombuffer(bytearray(self.images[i]), dtype=torch.uint8)
        return self.tf(torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB))


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def decode_only(batches: Iterable, count: Callable[[Any], int]) -> Dict[str, float]:
    """images/s and CPU-s per 1000 images of iterating ``batches`` on CPU."""
    cpu0, t0, n = cpu_seconds(), time.perf_counter(), 0
    for b in batches:
        n += count(b)
    wall = time.perf_counter() - t0
    return {"ips": n / wall, "cpu_per_1k": (cpu_seconds() - cpu0) * 1000 / n}


def _normalised(batches: Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    mean = torch.tensor(MEAN, device="cuda").view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device="cuda").view(1, 3, 1, 1) * 255
    for x in batches:
        x = x.cuda(non_blocking=True).float()
        yield ((x - mean) / std).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def torchvision_cpu(images: List[bytes], cores: int) -> Iterable[torch.Tensor]:
    dl = torch.utils.data.DataLoader(_Files(images), batch_size=TRAIN_BATCH, num_workers=cores,
                                     pin_memory=True, prefetch_factor=2, persistent_workers=False)
    return _normalised(dl)


def torchvision_gpu(images: List[bytes]) -> Iterable[torch.Tensor]:
    tf = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])
    for i in range(0, len(images) - TRAIN_BATCH + 1, TRAIN_BATCH):
        datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in images[i:i + TRAIN_BATCH]]
        decoded = torchvision.io.decode_jpeg(datas, mode=torchvision.io.ImageReadMode.RGB, device="cuda")
        yield from _normalised([torch.stack([tf(img) for img in decoded])])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tcp", required=True)
    ap.add_argument("--unix")
    ap.add_argument("--images", required=True)
    ap.add_argument("--engine-bench", required=True)
    ap.add_argument("--images-per-run", type=int, default=12800)
    ap.add_argument("--train-steps", type=int, default=40)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    paths = sorted(p for p in pathlib.Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    one = [p.read_bytes() for p in paths]
    images = (one * (args.images_per_run // len(one) + 1))[: args.images_per_run]
    rows: List[str] = []

    def row(name: str, value: str) -> None:
        rows.append(f"{name:<58} {value}")
        print(rows[-1], flush=True)

    # -- the engine alone, and the straggler cost per batch size.
    engine_ips = {}
    for batch in (32, 64, 128, 256):
        one_in_flight = engine(args.engine_bench, args.images, cores, 1, batch, 4)
        two_in_flight = engine(args.engine_bench, args.images, cores, 2, batch, 4)
        engine_ips[batch] = max(one_in_flight, two_in_flight)
        row(f"engine {cores} threads, batch {batch}: 1 / 2 batches in flight",
            f"{one_in_flight:8,.0f} / {two_in_flight:8,.0f} img/s  straggler cost {1 - one_in_flight / two_in_flight:5.1%}")
    ref = engine_ips[128]

    # -- one loader, K streams, CUDA tensors delivered.
    for k in (1, 2, 4, 8):
        ips = drain(loader(args.tcp, images, k, 128))
        row(f"TorchLoader K={k} over TCP, batch 128, uint8 -> bf16 on GPU", f"{ips:8,.0f} img/s  {ips / ref:5.2f} x engine")
    if args.unix:
        ips = drain(loader(args.unix, images, 4, 128))
        row("TorchLoader K=4 over a Unix socket", f"{ips:8,.0f} img/s  {ips / ref:5.2f} x engine")

    # -- in process on CPU: pixelfeed.Engine vs torchvision in a DataLoader (issue #19).
    if pixelfeed.native.available():
        spec_u8 = {**SPEC_U8}
        engine_native = pixelfeed.Engine(spec_u8, threads=cores)
        chunks = [images[i:i + TRAIN_BATCH] for i in range(0, len(images), TRAIN_BATCH)]
        native = decode_only(engine_native.stream(chunks), lambda b: b.num_rows)
        dl = torch.utils.data.DataLoader(_Files(images), batch_size=TRAIN_BATCH, num_workers=cores,
                                         prefetch_factor=2, persistent_workers=False)
        tv = decode_only(dl, lambda b: b.shape[0])
        row(f"pixelfeed.Engine {cores} threads, uint8 224 (CPU only)",
            f"{native['ips']:8,.0f} img/s  {native['cpu_per_1k']:.2f} cpu-s/1k")
        row(f"torchvision DataLoader({cores} workers) decode_jpeg+v2 (CPU only)",
            f"{tv['ips']:8,.0f} img/s  {tv['cpu_per_1k']:.2f} cpu-s/1k")
        row("  native / DataLoader", f"{native['ips'] / tv['ips']:5.2f}x images/s, "
            f"{native['cpu_per_1k'] / tv['cpu_per_1k']:5.2f}x CPU per image (targets >= 2, <= 0.5)")
    else:
        row("pixelfeed.Engine in process", "skipped: pixelfeed_native not installed (tests/gpu/prepare.sh stages it)")

    # -- training step: model alone, pixelfeed, the two torchvision baselines.
    model = torchvision.models.resnet50(weights=None).cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = args.train_steps
    feeds: Dict[str, Callable[[], Iterable[torch.Tensor]]] = {
        "pixelfeed TorchLoader K=4 (uint8 wire, GPU normalise)": lambda: loader(args.tcp, images, 4, TRAIN_BATCH),
        f"torchvision DataLoader(num_workers={cores}) decode_jpeg+v2 CPU": lambda: torchvision_cpu(images, cores),
        "torchvision decode_jpeg(device='cuda') batched + v2 GPU": lambda: torchvision_gpu(images),
    }
    ceiling = resident(model, opt, steps)
    row("ResNet-50 train step bf16 channels_last b256, resident batch", f"{ceiling['ips']:8,.0f} img/s (ceiling)")
    for name, feed in feeds.items():
        try:
            r = train(feed(), model, opt, steps)
            row(f"train fed by {name}", f"{r['ips']:8,.0f} img/s  GPU waits {r['gpu_wait']:5.1%}")
        except Exception as e:  # noqa: BLE001 - one baseline failing must not hide the others
            row(f"train fed by {name}", f"failed: {e!r}")
    print("\n".join(["", "summary:"] + rows))


if __name__ == "__main__":
    main()
