"""GPU handoff helpers on CPU: ``pixelfeed.interop`` (DLPack) and ``pixelfeed.torch``.

The CUDA paths are exercised by ``tests/gpu/run.sh`` on a GPU machine; here
we prove the CPU handoffs copy nothing. ``pixelfeed.torch`` needs PyTorch,
which the CI venv does not install (PyPI only has multi-GB CUDA wheels), so
those tests skip visibly without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pixelfeed
from pixelfeed.interop import dlpack_values

DATA = Path(__file__).resolve().parents[1] / "data" / "images"
SMALL = {"resize": {"mode": "exact", "height": 24, "width": 32}, "dtype": "float32", "layout": "chw"}


def _batches(client, n=6, batch_size=4):
    images = [(DATA / "pillow_hopper.jpg").read_bytes()] * (n - 1) + [b"not an image"]
    return list(client.preprocess(images, spec=SMALL, batch_size=batch_size))


def _ptr(x: np.ndarray) -> int:
    return x.__array_interface__["data"][0]


def test_dlpack_values_are_the_arrow_buffer(client):
    batches = _batches(client)
    assert sum(b.num_rows for b in batches) == 6
    for batch in batches:
        flat = np.from_dlpack(dlpack_values(batch))
        view = pixelfeed.tensors(batch)
        assert flat.shape == (batch.num_rows * 3 * 24 * 32,)
        assert _ptr(flat) == _ptr(view), "DLPack export must alias the Arrow values buffer"
        np.testing.assert_array_equal(flat.reshape(view.shape), view)


def test_dlpack_values_of_a_sliced_batch_start_at_its_rows(client):
    batch = _batches(client, n=8, batch_size=8)[0]
    tail = batch.slice(3)
    flat = np.from_dlpack(dlpack_values(tail))
    np.testing.assert_array_equal(flat.reshape(pixelfeed.tensors(tail).shape), pixelfeed.tensors(batch)[3:])


def test_torch_cpu_loader_is_zero_copy(client):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: pixelfeed.torch untested here (run tests/gpu/run.sh)")
    from pixelfeed.torch import TorchLoader

    batches = _batches(client)
    got = list(TorchLoader(iter(batches), device="cpu", with_batch=True))
    assert len(got) == len(batches)
    for x, batch in got:
        view = pixelfeed.tensors(batch)
        assert isinstance(x, torch.Tensor) and x.device.type == "cpu"
        assert x.data_ptr() == _ptr(view), "CPU tensors must alias the Arrow buffer"
        np.testing.assert_array_equal(x.numpy(), view)
    kept = list(TorchLoader(iter(batches), valid_only=True))
    assert sum(t.shape[0] for t in kept) == 5


def test_torch_loader_regroups_message_pieces_into_full_batches(client):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: pixelfeed.torch untested here (run tests/gpu/run.sh)")
    from pixelfeed.torch import TorchLoader

    batches = _batches(client, n=10, batch_size=3)  # rows 3,3,3,1; the last row failed
    expected = np.concatenate([pixelfeed.tensors(b) for b in batches])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        got = list(TorchLoader(iter(batches), device=device, batch_size=4, with_batch=True))
        assert [x.shape[0] for x, _ in got] == [4, 4, 2]
        assert [b.num_rows for _, b in got] == [4, 4, 2]
        np.testing.assert_array_equal(torch.cat([x.cpu() for x, _ in got]).numpy(), expected)
        assert pixelfeed.errors(got[-1][1])[-1] is not None, "row metadata must follow its tensor"


def test_torch_bfloat16_is_torchs_own_rounding(client):
    """A bfloat16 spec gives a torch.bfloat16 tensor equal to torch's rounding of the float32 output."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed: pixelfeed.torch untested here (run tests/gpu/run.sh)")
    from pixelfeed.torch import to_torch

    images = [(DATA / "pillow_hopper.jpg").read_bytes()] * 2
    f32 = next(iter(client.preprocess(images, spec=SMALL)))
    bf16 = next(iter(client.preprocess(images, spec=dict(SMALL, dtype="bfloat16"))))
    x = to_torch(bf16)
    assert x.dtype == torch.bfloat16 and tuple(x.shape) == (2, 3, 24, 32)
    assert x.data_ptr() == _ptr(pixelfeed.tensors(bf16)), "bfloat16 view must stay zero-copy"
    want = to_torch(f32).to(torch.bfloat16)
    assert torch.equal(x, want)


U8_HWC = {"preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": None}
IMAGENET_NORMALIZE = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _mixed_table(n=21):
    """``n`` rows of the bundled images (one broken) with an ``id`` column."""
    import pyarrow as pa

    names = ["pillow_hopper.jpg", "china_progressive_420_q90.jpg", "pillow_hopper_orientation_6.jpg", "pillow_hopper.png"]
    images = [(DATA / names[i % len(names)]).read_bytes() for i in range(n)]
    images[5] = b"not an image"
    return pa.table({"id": pa.array(range(n), pa.int64()), "image": pa.array(images, pa.binary())})


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_torch_loader_normalises_uint8_like_the_server_does_float32(client, device):
    """``normalize=`` on uint8 HWC gives the server's float32 CHW imagenet tensors, in order, complete."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed: pixelfeed.torch untested here (run tests/gpu/run.sh)")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from pixelfeed.torch import TorchLoader

    table = _mixed_table()
    reference = list(client.preprocess(table, spec="imagenet", batch_size=64))
    want = np.concatenate([pixelfeed.tensors(b) for b in reference])
    ok = np.concatenate([pixelfeed.valid(b) for b in reference])
    assert not ok.all()  # a failed row: zeros on both sides, not compared
    loader = TorchLoader.from_client(client, table, U8_HWC, batch_size=4, streams=3, device=device,
                                     with_batch=True, normalize=IMAGENET_NORMALIZE, channels_last=True)
    got = list(loader)  # every tensor kept: a later batch must not have overwritten an earlier one
    if device == "cuda":
        torch.cuda.synchronize()
    assert [x.shape[0] for x, _ in got] == [4, 4, 4, 4, 4, 1]
    assert [i for _, b in got for i in b.column("id").to_pylist()] == list(range(table.num_rows))
    for x, _ in got:
        assert x.dtype == torch.float32 and x.device.type == device
        assert x.is_contiguous(memory_format=torch.channels_last)
    x = torch.cat([x.cpu() for x, _ in got]).contiguous().numpy()
    assert x.shape == want.shape == (table.num_rows, 3, 224, 224)
    diff = float(np.abs(x[ok] - want[ok]).max())
    assert diff <= 1e-5, f"max |GPU-normalised - server float32| = {diff}"
    if device == "cuda":
        assert loader.h2d_bytes == table.num_rows * 224 * 224 * 3  # uint8 on the wire and over PCIe


def test_torch_cuda_loader_valid_only_bf16_contiguous(client):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: pixelfeed.torch untested here (run tests/gpu/run.sh)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from pixelfeed.torch import TorchLoader

    table = _mixed_table()
    loader = TorchLoader(client.preprocess(table, spec=U8_HWC, batch_size=8, streams=2), device="cuda",
                         batch_size=8, valid_only=True, normalize=IMAGENET_NORMALIZE, dtype=torch.bfloat16)
    got = list(loader)
    assert [x.shape for x in got][0] == (7, 3, 224, 224)  # row 5 failed
    assert all(x.dtype == torch.bfloat16 and x.is_contiguous() for x in got)
    assert sum(x.shape[0] for x in got) == table.num_rows - 1


def test_torch_cuda_loader_closed_early_frees_the_servers_blocks(client):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: pixelfeed.torch untested here (run tests/gpu/run.sh)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import threading
    import time

    from pixelfeed.torch import TorchLoader

    images = [(DATA / "pillow_hopper.jpg").read_bytes()] * 4000
    loader = TorchLoader.from_client(client, images, U8_HWC, batch_size=32, streams=3, device="cuda")
    it = iter(loader)
    next(it)
    it.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(("pixelfeed-stream", "pixelfeed-cuda"))]
    deadline = time.monotonic() + 20
    while client.stats()["pool"]["blocks_in_use"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.stats()["pool"]["blocks_in_use"] == 0
