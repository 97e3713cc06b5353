"""Feed a ResNet-50 from a pixelfeed server and measure how long the GPU waits.

Part of the GPU check (tests/gpu/run.sh). The model has random weights (no
download). Prints images/s end to end, host->device GB/s, the GPU's busy time
(CUDA events around each forward pass) and the fraction of wall time the GPU
was NOT busy, i.e. waited for data. A model-only run on a resident batch gives
the ceiling the data path is compared with.
"""

import argparse
import pathlib
import time

import torch
import torchvision

import pixelfeed
from pixelfeed.torch import TorchLoader, to_torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument(
        "--u8",
        action="store_true",
        help="ship uint8 HWC (4x fewer bytes) and normalise on the GPU instead of float32 CHW",
    )
    args = ap.parse_args()
    spec = {"preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": None} if args.u8 else "imagenet"
    mean = torch.tensor([0.485, 0.456, 0.406], device="cuda").view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device="cuda").view(1, 3, 1, 1) * 255

    paths = sorted(p for p in pathlib.Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = [p.read_bytes() for p in paths] * args.repeat
    client = pixelfeed.connect(args.server)

    # CPU zero-copy check: the torch tensor aliases the Arrow buffer.
    first = next(iter(client.preprocess(images[: args.batch_size], spec="imagenet", batch_size=args.batch_size)))
    cpu = to_torch(first)
    assert cpu.data_ptr() == pixelfeed.tensors(first).__array_interface__["data"][0], "CPU handoff copied"

    model = torchvision.models.resnet50(weights=None).cuda().eval().to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        x = torch.randn(args.batch_size, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
        for _ in range(5):
            model(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        steps = 20
        for _ in range(steps):
            model(x)
        torch.cuda.synchronize()
        ceiling = steps * args.batch_size / (time.perf_counter() - t)
    print(f"model-only ceiling (resident batch of {args.batch_size}): {ceiling:,.0f} images/s")

    # The server splits each 128-row float32 batch into ~4 MiB messages
    # (--target-message-bytes);
    # the loader regroups them so the model sees full batches.
    loader = TorchLoader(
        client.preprocess(images, spec=spec, batch_size=args.batch_size), device="cuda", batch_size=args.batch_size
    )
    spans = []
    n = 0
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        t0 = time.perf_counter()
        for x in loader:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            if args.u8:
                # NHWC uint8 viewed as NCHW is already channels_last in memory.
                x = (x.permute(0, 3, 1, 2).float() - mean) / std
            model(x.contiguous(memory_format=torch.channels_last))
            end.record()
            spans.append((start, end))
            n += x.shape[0]
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    busy = sum(s.elapsed_time(e) for s, e in spans) / 1000.0
    print(f"spec: {'uint8 HWC, normalised on GPU' if args.u8 else 'float32 CHW (imagenet preset)'}")
    print(f"images: {n}  wall: {wall:.2f} s  -> {n / wall:,.0f} images/s through pixelfeed + ResNet-50 bf16")
    print(f"H2D: {loader.h2d_bytes / 1e9:.2f} GB at {loader.h2d_bytes / wall / 1e9:.2f} GB/s (wall average)")
    print(f"GPU busy {busy:.2f} s of {wall:.2f} s; fraction of time the GPU waited on data: {1 - busy / wall:.1%}")


if __name__ == "__main__":
    main()
