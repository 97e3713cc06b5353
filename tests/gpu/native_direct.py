"""In-process engine to GPU: a page-locked output block goes to the device with no staging copy.

Part of the GPU check (tests/gpu/run.sh; needs torch, CUDA and the
pixelfeed_native wheel). Streams the images through ``pixelfeed.Engine``
(pinned pool) into ``TorchLoader`` on CUDA and requires:

- every batch uploaded straight from its block (``loader.direct_uploads``),
  since the pool is pinned and each message is one whole piece;
- the GPU tensors equal, byte for byte, the same batches made by a second
  engine with a pageable pool (an independent run of the same engine code,
  so the check is about the copy path: a block given back before its copy
  finished would show the next batch's pixels). The consumer keeps no
  batch alive, so only the loader's own hold protects the blocks;

- ``preprocess_batch(..., device="cuda")``, whose loader ends after one
  batch, to give its block back only once the copy is done: each call is
  followed at once by another on other images, which refills that block;

then times both paths (images/s, the pageable one through staging).
"""

import argparse
import pathlib
import sys
import time

import torch

import pixelfeed
from pixelfeed.torch import TorchLoader, preprocess_batch, to_torch

SPEC = {"preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": None}


def batches(images, batch, count):
    # Each batch a different rotation of the images, so a mixed-up block shows.
    for i in range(count):
        k = (i * 7) % len(images)
        rotated = images[k:] + images[:k]
        yield [rotated[j % len(rotated)] for j in range(batch)]


def run(engine, images, batch, count, reference=None):
    loader = TorchLoader(engine.stream(batches(images, batch, count), prefetch=2), device="cuda")
    mismatched = 0
    n = 0
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i, x in enumerate(loader):
        if reference is not None and not torch.equal(x, reference[i]):
            mismatched += 1
        n += x.shape[0]
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0), loader.direct_uploads, mismatched


def teardown_mismatches(images, batch, rounds, reference_engine):
    bad = 0
    for group in batches(images, batch, rounds):
        x = preprocess_batch(group, SPEC, device="cuda")
        preprocess_batch(group[::-1], SPEC, device="cuda")  # reuses the block x was copied from
        if not torch.equal(x, to_torch(reference_engine.process(group)).cuda()):
            bad += 1
    return bad


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--count", type=int, default=60)
    args = ap.parse_args()
    paths = sorted(p for p in pathlib.Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = [p.read_bytes() for p in paths]

    pageable = pixelfeed.Engine(SPEC, pinned=False)
    reference = [to_torch(b).cuda() for b in pageable.stream(batches(images, args.batch, args.count))]
    pinned = pixelfeed.Engine(SPEC)
    mode = pinned.stats()["pool"]["mode"]
    print(f"pinned engine's pool: {mode}")

    ips_direct, direct, bad = run(pinned, images, args.batch, args.count, reference)
    ips_staged, staged_direct, bad_staged = run(pageable, images, args.batch, args.count, reference)
    print(f"direct from pinned blocks: {ips_direct:8,.0f} img/s, {direct}/{args.count} direct, {bad} mismatched")
    print(f"pageable through staging:  {ips_staged:8,.0f} img/s, {staged_direct}/{args.count} direct, "
          f"{bad_staged} mismatched")
    print(f"direct / staged: {ips_direct / ips_staged:.2f}x")
    bad_teardown = teardown_mismatches(images, args.batch, 20, pageable)
    print(f"preprocess_batch on CUDA, block reused at once: {bad_teardown}/20 mismatched")
    ok = (mode == "pinned" and direct == args.count and bad == 0 and staged_direct == 0 and bad_staged == 0
          and bad_teardown == 0)
    print("native_direct:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
