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
from typing import Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised where torch is absent
    raise ImportError("pixelfeed.torch needs PyTorch: pip install torch") from exc

from .arrays import tensor_dtype, tensors, valid
from .client import connect
from .datasets import assign_shards

__all__ = ["to_torch", "TorchLoader", "ShardedDataset"]


def _merge(group: List[pa.RecordBatch]) -> pa.RecordBatch:
    """One record batch holding the rows of ``group`` (a copy only when it has several pieces)."""
    if len(group) == 1:
        return group[0]
    return pa.Table.from_batches(group).combine_chunks().to_batches()[0]


def to_torch(batch: Union[pa.RecordBatch, pa.Table]) -> "torch.Tensor":
    """Return the batch's tensors as a CPU ``torch.Tensor`` of shape ``(N, *shape)``, zero-copy.

    The tensor aliases the Arrow buffer (read-only memory): treat it as
    read-only, or ``.clone()`` it before in-place operations. A ``bfloat16``
    spec gives a ``torch.bfloat16`` tensor (the ``uint16`` bits reinterpreted,
    still zero-copy).
    """
    view = tensors(batch)
    bf16 = tensor_dtype(batch) == "bfloat16"
    if bf16:
        # torch.from_numpy has no uint16 before torch 2.3; int16 has the same bits.
        view = view.view(np.int16)
    with warnings.catch_warnings():
        # Arrow buffers are immutable, so NumPy marks the view read-only and
        # torch warns that it cannot enforce that. Sharing is the point here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        out = torch.from_numpy(view)
    return out.view(torch.bfloat16) if bf16 else out


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
        batch_size: regroup rows into batches of exactly this many (the last
            may be short). The server may answer one input batch with several
            smaller messages; a model wants the batch size it was tuned for.
            On CUDA the regrouping is free (pieces are gathered into the
            pinned staging buffer that is copied anyway); on CPU a batch made
            of several pieces costs one copy. ``None`` yields each message as
            it arrives.
    """

    def __init__(
        self,
        batches: Iterable[pa.RecordBatch],
        device: Optional[Union[str, "torch.device"]] = "cpu",
        with_batch: bool = False,
        valid_only: bool = False,
        batch_size: Optional[int] = None,
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.device = torch.device(device)
        self.batches = batches
        self.with_batch = with_batch
        self.valid_only = valid_only
        self.batch_size = batch_size
        #: Bytes copied host -> device so far (CUDA only).
        self.h2d_bytes = 0

    def __iter__(self) -> Iterator[Union["torch.Tensor", Tuple["torch.Tensor", pa.RecordBatch]]]:
        if self.device.type == "cuda":
            yield from self._iter_cuda()
        else:
            for group in self._groups():
                if len(group) == 1:
                    x = to_torch(group[0])
                else:
                    x = torch.cat([to_torch(piece) for piece in group])
                batch = _merge(group)
                yield self._emit(self._select(x, batch), batch)

    def _groups(self) -> Iterator[List[pa.RecordBatch]]:
        """Consecutive row slices (zero-copy) forming each yielded batch."""
        if self.batch_size is None:
            for batch in self.batches:
                yield [batch]
            return
        group: List[pa.RecordBatch] = []
        rows = 0
        for batch in self.batches:
            offset = 0
            while offset < batch.num_rows:
                take = min(self.batch_size - rows, batch.num_rows - offset)
                group.append(batch.slice(offset, take))
                rows += take
                offset += take
                if rows == self.batch_size:
                    yield group
                    group, rows = [], 0
        if group:
            yield group

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
        for group in self._groups():
            hosts = [to_torch(piece) for piece in group]
            rows = sum(h.shape[0] for h in hosts)
            shape = (rows, *hosts[0].shape[1:])
            numel = sum(h.numel() for h in hosts)
            dtype = hosts[0].dtype
            if staged_events[slot] is not None:
                # The copy out of this slot two batches ago must be done
                # before the CPU overwrites (or frees) it.
                staged_events[slot].synchronize()
            buf = staging[slot]
            if buf is None or buf.numel() < numel or buf.dtype != dtype:
                buf = torch.empty(numel, dtype=dtype, pin_memory=True)
                staging[slot] = buf
            pinned = buf[:numel]
            offset = 0
            for h in hosts:  # gather the pieces: the one CPU copy of this path
                pinned[offset : offset + h.numel()].copy_(h.reshape(-1))
                offset += h.numel()
            with torch.cuda.stream(copy_stream):
                dev = pinned.to(device, non_blocking=True).view(shape)
                ready = torch.cuda.Event()
                ready.record(copy_stream)
            staged_events[slot] = ready
            self.h2d_bytes += pinned.numel() * pinned.element_size()
            slot ^= 1
            if pending is not None:
                yield self._hand_over(*pending)
            pending = (dev, ready, _merge(group))
        if pending is not None:
            yield self._hand_over(*pending)

    def _hand_over(self, dev: "torch.Tensor", ready: "torch.cuda.Event", batch: pa.RecordBatch):
        consumer = torch.cuda.current_stream(dev.device)
        consumer.wait_event(ready)
        # The tensor was allocated on the copy stream; tell the caching
        # allocator the consumer's stream uses it too.
        dev.record_stream(consumer)
        return self._emit(self._select(dev, batch), batch)


class ShardedDataset(torch.utils.data.IterableDataset):
    """A server-side dataset as an ``IterableDataset`` of output record batches.

    The dataset is cut into ``shards`` shards (default: one per reader); each
    DataLoader worker of each ``torch.distributed`` rank reads the shards
    :func:`pixelfeed.datasets.assign_shards` gives it, so no row is read
    twice. Pass ``batch_size=None`` to the DataLoader (items are batches);
    turn them into tensors with :func:`to_torch`. The client is reconnected
    in each worker (``location``), as Flight clients do not survive ``fork``.
    """

    def __init__(self, location: str, name: str, spec=None, shards: Optional[int] = None,
                 rank: Optional[int] = None, world_size: Optional[int] = None) -> None:
        """Read dataset ``name`` from the server at ``location`` with ``spec``."""
        super().__init__()
        self.location, self.name, self.spec, self.shards = location, name, spec, shards
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        """Yield this reader's shards' batches, in shard order."""
        dist = torch.distributed
        on = dist.is_available() and dist.is_initialized()
        rank = self.rank if self.rank is not None else (dist.get_rank() if on else 0)
        world = self.world_size if self.world_size is not None else (dist.get_world_size() if on else 1)
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        with connect(self.location) as client:
            endpoints = client.dataset(self.name, self.spec).shards(self.shards or world * workers)
            for i in assign_shards(len(endpoints), rank, world, worker, workers):
                yield from client.read(endpoints[i])
