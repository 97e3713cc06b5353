"""PyTorch handoff: iterate output batches as ``torch.Tensor``\\ s on CPU or GPU.

``torch`` is an optional dependency: importing this module without it raises
``ImportError`` with a hint; the rest of :mod:`pixelfeed` never imports it.

- On CPU, :func:`to_torch` wraps the Arrow values buffer with no copy
  (``torch.from_numpy`` on the zero-copy view from :func:`pixelfeed.tensors`).
  The tensor shares read-only Arrow memory: do not write to it in place.
- On CUDA, :class:`TorchLoader` copies each batch into one of two reused
  page-locked (``pin_memory``) host tensors and issues
  ``.to(device, non_blocking=True)`` on a side stream, one batch ahead of the
  consumer, so the host→device copy of batch N+1 overlaps the model's work on
  batch N. The consumer's stream waits on an event before it sees a batch, so
  the tensors it gets are always complete.

Example::

    loader = TorchLoader(client.preprocess(images, spec="imagenet"), device="cuda")
    for x in loader:               # (N, 3, 224, 224) float32 on cuda
        logits = model(x)
"""

from __future__ import annotations

import warnings
from typing import Iterable, Iterator, Optional, Tuple, Union

import pyarrow as pa

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised where torch is absent
    raise ImportError("pixelfeed.torch needs PyTorch: pip install torch") from exc

from .arrays import tensors, valid

__all__ = ["to_torch", "TorchLoader"]


def to_torch(batch: Union[pa.RecordBatch, pa.Table]) -> "torch.Tensor":
    """Return the batch's tensors as a CPU ``torch.Tensor`` of shape ``(N, *shape)``, zero-copy.

    The tensor aliases the Arrow buffer (read-only memory): treat it as
    read-only, or ``.clone()`` it before in-place operations.
    """
    view = tensors(batch)
    with warnings.catch_warnings():
        # Arrow buffers are immutable, so NumPy marks the view read-only and
        # torch warns that it cannot enforce that. Sharing is the point here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(view)


class TorchLoader:
    """Iterate ``torch.Tensor`` batches from pixelfeed output batches.

    Args:
        batches: output record batches, e.g. ``client.preprocess(...)``.
        device: ``"cpu"`` (default) or a CUDA device; ``None`` picks
            ``"cuda"`` when available.
        with_batch: also yield the source ``RecordBatch`` (for ids, labels,
            errors) as ``(tensor, batch)`` pairs.
        valid_only: drop rows whose image failed (the tensor then has fewer
            rows than the batch; use ``with_batch`` and :func:`pixelfeed.valid`
            to map them back). On CPU this costs a copy of the kept rows.
    """

    def __init__(
        self,
        batches: Iterable[pa.RecordBatch],
        device: Optional[Union[str, "torch.device"]] = "cpu",
        with_batch: bool = False,
        valid_only: bool = False,
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.batches = batches
        self.with_batch = with_batch
        self.valid_only = valid_only
        #: Bytes copied host -> device so far (CUDA only).
        self.h2d_bytes = 0

    def __iter__(self) -> Iterator[Union["torch.Tensor", Tuple["torch.Tensor", pa.RecordBatch]]]:
        if self.device.type == "cuda":
            yield from self._iter_cuda()
        else:
            for batch in self.batches:
                yield self._emit(self._select(to_torch(batch), batch), batch)

    def _select(self, x: "torch.Tensor", batch: pa.RecordBatch) -> "torch.Tensor":
        if not self.valid_only:
            return x
        mask = torch.from_numpy(valid(batch))
        if bool(mask.all()):
            return x
        return x[mask.to(x.device)]

    def _emit(self, x: "torch.Tensor", batch: pa.RecordBatch):
        return (x, batch) if self.with_batch else x

    def _iter_cuda(self):
        device = self.device
        copy_stream = torch.cuda.Stream(device=device)
        staging = [None, None]  # reused pinned host tensors
        staged_events = [None, None]  # copy-done events guarding each staging slot
        pending = None  # (device tensor, ready event, batch) one ahead
        slot = 0
        for batch in self.batches:
            host = to_torch(batch)
            flat = host.reshape(-1)
            buf = staging[slot]
            if buf is None or buf.numel() < flat.numel() or buf.dtype != flat.dtype:
                if staged_events[slot] is not None:
                    staged_events[slot].synchronize()
                buf = torch.empty(flat.numel(), dtype=flat.dtype, pin_memory=True)
                staging[slot] = buf
            elif staged_events[slot] is not None:
                # The copy from this slot two batches ago must be done before
                # the CPU overwrites it.
                staged_events[slot].synchronize()
            pinned = buf[: flat.numel()]
            pinned.copy_(flat)
            with torch.cuda.stream(copy_stream):
                dev = pinned.to(device, non_blocking=True).view(host.shape)
                ready = torch.cuda.Event()
                ready.record(copy_stream)
            staged_events[slot] = ready
            self.h2d_bytes += pinned.numel() * pinned.element_size()
            slot ^= 1
            if pending is not None:
                yield self._hand_over(*pending)
            pending = (dev, ready, batch)
        if pending is not None:
            yield self._hand_over(*pending)

    def _hand_over(self, dev: "torch.Tensor", ready: "torch.cuda.Event", batch: pa.RecordBatch):
        consumer = torch.cuda.current_stream(dev.device)
        consumer.wait_event(ready)
        # The tensor was allocated on the copy stream; tell the caching
        # allocator the consumer's stream uses it too.
        dev.record_stream(consumer)
        return self._emit(self._select(dev, batch), batch)
