"""PyTorch handoff: iterate output batches as ``torch.Tensor``\\ s on CPU or GPU.

``torch`` is an optional dependency: importing this module without it raises
``ImportError`` with a hint; the rest of :mod:`pixelfeed` never imports it.

- On CPU, :func:`to_torch` wraps the Arrow values buffer with no copy
  (``torch.from_numpy`` on the zero-copy view from :func:`pixelfeed.tensors`).
  The tensor shares read-only Arrow memory: do not write to it in place.
- On CUDA, :class:`TorchLoader` hands the batches to a staging thread of its
  own. For each batch that thread copies the rows once into one of two
  reused page-locked (``pin_memory``) host buffers, issues the host→device
  copy on a side CUDA stream and, when asked (``normalize``,
  ``channels_last``), converts the batch on the GPU on that same stream;
  then it records an event. Up to ``prefetch`` batches wait ready on the
  GPU. The caller's thread only makes its current stream wait on the event
  (no host synchronisation) and takes the tensor, so the copies and the
  conversion of the next batches overlap the model's work on this one; the
  tensors it gets are complete when its stream uses them, and each is its
  own allocation, never reused for a later batch while the caller's stream
  may still read it (``record_stream``).
- ``uint8`` specs (e.g. ``raw_u8``) ship 4× fewer bytes than ``float32``;
  ``normalize=(mean, std)`` then computes torchvision's
  ``(x / 255 - mean) / std`` in float32 on the device (``dtype`` to cast the
  result) and ``channels_last=True`` gives the ``(N, C, H, W)`` tensor in
  channels-last memory, which an HWC batch already is (no copy).

Example::

    loader = TorchLoader.from_client(client, images, {"preset": "raw_u8"}, batch_size=256,
                                     streams=4, device="cuda",
                                     normalize=([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                                     channels_last=True)
    for x in loader:               # (256, 3, 224, 224) float32, channels_last, on cuda
        logits = model(x)

**Architecture invariant:** the staging thread is the only thread that
advances the batch iterator and the only one that touches the staging
buffers; a staging buffer is overwritten only after the event of its last
host→device copy completed.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised where torch is absent
    raise ImportError("pixelfeed.torch needs PyTorch: pip install torch") from exc

from ._contract import SpecLike, encode_spec
from ._loader import NormalizeLike, Prefetcher, parse_normalize, regroup
from .arrays import batch_spec, errors, tensor_dtype, tensors, valid
from .client import connect
from .datasets import assign_shards

__all__ = ["to_torch", "TorchLoader", "ShardedDataset", "preprocess_batch"]


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


class _Convert:
    """``normalize`` / ``dtype`` / ``channels_last`` on a batch tensor, on whatever device it is."""

    def __init__(self, normalize: NormalizeLike, channels_last: bool, dtype: Optional["torch.dtype"]) -> None:
        self.normalize = parse_normalize(normalize)
        self.channels_last = channels_last
        self.dtype = dtype
        self._constants: dict = {}

    @property
    def active(self) -> bool:
        """Whether the batches are changed at all (else the server's layout and dtype as they are)."""
        return self.normalize is not None or self.channels_last

    def __call__(self, x: "torch.Tensor", batch: pa.RecordBatch) -> "torch.Tensor":
        """``x`` (the batch's rows, server layout) as ``(N, C, H, W)``, normalised and laid out as asked."""
        if not self.active:
            return x
        spec = batch_spec(batch)
        if x.dim() != 4:
            raise ValueError(f"normalize/channels_last need image tensors (N, C, H, W); got shape {tuple(x.shape)}")
        if spec.get("layout") == "hwc":
            x = x.permute(0, 3, 1, 2)  # a view; NHWC memory is channels_last NCHW
        if self.normalize is not None:
            if tensor_dtype(batch) != "uint8":
                raise ValueError(
                    f"normalize= runs on uint8 specs; this batch is {tensor_dtype(batch)} "
                    "(normalise on the server with the spec's 'normalize' instead)"
                )
            mean, std = self._mean_std(x.device, x.shape[1])
            x = x.to(torch.float32)  # keeps the memory format of a permuted batch
            x.div_(255.0).sub_(mean).div_(std)
            if self.dtype is not None and self.dtype != torch.float32:
                x = x.to(self.dtype)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def _mean_std(self, device: "torch.device", channels: int) -> Tuple["torch.Tensor", "torch.Tensor"]:
        assert self.normalize is not None
        mean, std = self.normalize
        if len(mean) != channels:
            raise ValueError(f"normalize has {len(mean)} values per channel for {channels} channels")
        key = str(device)
        if key not in self._constants:
            self._constants[key] = tuple(
                torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1) for v in (mean, std)
            )
        return self._constants[key]


class _CudaStager:
    """Runs on the staging thread: one group of output pieces → its tensor on the GPU, and an event.

    A group that is one piece in page-locked memory (a block of
    :class:`pixelfeed.Engine`'s pinned pool) is copied to the GPU straight
    from it, with no staging copy; the piece is then held until that copy is
    done, since dropping it returns the block to the engine for the next
    batch. Anything else (Flight output in gRPC's pageable buffers, several
    pieces to gather, failed rows to leave out) is gathered into reused
    pinned staging buffers.
    """

    def __init__(self, device: "torch.device", convert: _Convert, valid_only: bool) -> None:
        self.device = device
        self.convert = convert
        self.valid_only = valid_only
        self.stream = torch.cuda.Stream(device=device)
        self.staging: List[Optional["torch.Tensor"]] = [None, None]  # reused pinned host buffers
        self.copied: List[Optional["torch.cuda.Event"]] = [None, None]  # H2D copy done, per buffer
        self.held: List[Optional[List[pa.RecordBatch]]] = [None, None]  # pieces copied from directly, per slot
        self.slot = 0
        self.direct_uploads = 0  # groups copied straight from page-locked output

    def __call__(self, group: List[pa.RecordBatch]) -> Tuple["torch.Tensor", "torch.cuda.Event", pa.RecordBatch, int]:
        batch = _merge(group)
        hosts = [to_torch(piece) for piece in group]
        keep = [valid(piece) if self.valid_only else None for piece in group]
        rows = sum(h.shape[0] if k is None else int(k.sum()) for h, k in zip(hosts, keep))
        row_shape = tuple(hosts[0].shape[1:])
        dtype = hosts[0].dtype
        numel = rows * math.prod(row_shape)
        slot = self.slot
        self.slot ^= 1
        if self.copied[slot] is not None:
            # The copy out of this slot two batches ago must be done before
            # the CPU overwrites its staging buffer or gives back its pieces.
            self.copied[slot].synchronize()
        self.held[slot] = None
        whole = keep[0] is None or bool(keep[0].all())
        if len(hosts) == 1 and whole and hosts[0].is_pinned():
            pinned = hosts[0]
            self.held[slot] = group
            self.direct_uploads += 1
        else:
            buf = self.staging[slot]
            if buf is None or buf.numel() < numel or buf.dtype != dtype:
                buf = torch.empty(max(numel, 1), dtype=dtype, pin_memory=True)
                self.staging[slot] = buf
            pinned = buf[:numel].view(rows, *row_shape)
            offset = 0
            for h, k in zip(hosts, keep):  # gather the pieces: the one CPU copy of this path
                if k is None or k.all():
                    pinned[offset : offset + h.shape[0]].copy_(h)
                    offset += h.shape[0]
                else:
                    rows_kept = np.flatnonzero(k)
                    torch.index_select(h, 0, torch.from_numpy(rows_kept), out=pinned[offset : offset + rows_kept.size])
                    offset += rows_kept.size
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            dev = torch.empty((rows, *row_shape), dtype=dtype, device=self.device)
            dev.copy_(pinned, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self.stream)
            self.copied[slot] = copied
            out = self.convert(dev, batch)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return out, ready, batch, numel * pinned.element_size()

    def release(self) -> None:
        """Wait for the copies still in flight, then give back the pieces they read.

        Called when the loader ends (early or not) and on garbage collection
        (the staging thread may outlive the loader's close): a piece given
        back earlier could have its block refilled by the engine while the
        GPU still reads it.
        """
        for slot, copied in enumerate(self.copied):
            if copied is not None and self.held[slot] is not None:
                copied.synchronize()
            self.held[slot] = None

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown: CUDA may be gone
            pass


class TorchLoader:
    """Iterate ``torch.Tensor`` batches from pixelfeed output batches.

    Args:
        batches: output record batches, e.g. ``client.preprocess(...)``
            (see :meth:`from_client` to have the loader call it).
        device: ``"cpu"`` (default) or a CUDA device; ``None`` picks
            ``"cuda"`` when available.
        with_batch: also yield the source ``RecordBatch`` (for ids, labels,
            errors) as ``(tensor, batch)`` pairs.
        valid_only: drop rows whose image failed (the tensor then has fewer
            rows than the batch; use ``with_batch`` and :func:`pixelfeed.valid`
            to map them back). On CPU this costs a copy of the kept rows; on
            CUDA failed rows are left out of the staging copy.
        batch_size: regroup rows into batches of exactly this many (the last
            may be short). The server may answer one input batch with several
            smaller messages; a model wants the batch size it was tuned for.
            On CUDA the regrouping is free (pieces are gathered into the
            pinned staging buffer that is copied anyway); on CPU a batch made
            of several pieces costs one copy. ``None`` yields each message as
            it arrives.
        normalize: ``(mean, std)`` (or a spec's ``{"mean": [...], "std":
            [...]}``), one value per channel on the 0–1 scale: for ``uint8``
            specs, compute ``(x / 255 - mean) / std`` in float32 on the
            device (torchvision's ``ToTensor`` + ``Normalize``), so the wire
            carries 1 byte per value instead of 4. A float spec raises
            ``ValueError`` (the server normalises those).
        channels_last: yield ``(N, C, H, W)`` tensors in channels-last
            memory (free for ``hwc`` specs: NHWC bytes are that layout).
            With ``normalize`` but not ``channels_last`` the result is a
            contiguous ``(N, C, H, W)``; with neither, tensors keep the
            spec's shape (``(N, H, W, C)`` for ``hwc``) and dtype.
        dtype: the dtype of normalised tensors (default ``torch.float32``;
            e.g. ``torch.bfloat16``); only with ``normalize``.
        prefetch: on CUDA, batches staged on the device ahead of the caller
            (each holds its GPU memory until taken). Default 2.
    """

    def __init__(
        self,
        batches: Iterable[pa.RecordBatch],
        device: Optional[Union[str, "torch.device"]] = "cpu",
        with_batch: bool = False,
        valid_only: bool = False,
        batch_size: Optional[int] = None,
        *,
        normalize: NormalizeLike = None,
        channels_last: bool = False,
        dtype: Optional["torch.dtype"] = None,
        prefetch: int = 2,
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if dtype is not None and normalize is None:
            raise ValueError("dtype= is the dtype of normalised tensors: give normalize= too")
        self.device = torch.device(device)
        self.batches = batches
        self.with_batch = with_batch
        self.valid_only = valid_only
        self.batch_size = batch_size
        self.prefetch = prefetch
        self._convert = _Convert(normalize, channels_last, dtype)
        #: Bytes copied host -> device so far (CUDA only).
        self.h2d_bytes = 0
        #: Batches copied to the device straight from page-locked output
        #: (an in-process :class:`pixelfeed.Engine`'s pinned pool), with no
        #: staging copy (CUDA only).
        self.direct_uploads = 0

    @classmethod
    def from_client(
        cls,
        client: Any,
        images: Any,
        spec: Any = None,
        batch_size: int = 64,
        *,
        streams: Optional[int] = None,
        timeout: Optional[float] = None,
        **loader_kwargs: Any,
    ) -> "TorchLoader":
        """A loader over ``client.preprocess(images, spec, batch_size, streams=streams)``.

        Input batches of ``batch_size`` rows go to the server over ``streams``
        calls (default: :meth:`pixelfeed.Client.default_streams`), and the
        loader yields tensors of ``batch_size`` rows. Other keyword arguments
        go to :class:`TorchLoader` (``device``, ``normalize``, ``channels_last``,
        ``dtype``, ``valid_only``, ``with_batch``, ``prefetch``).
        """
        batches = client.preprocess(images, spec, batch_size, timeout=timeout, streams=streams)
        return cls(batches, batch_size=batch_size, **loader_kwargs)

    def __iter__(self) -> Iterator[Union["torch.Tensor", Tuple["torch.Tensor", pa.RecordBatch]]]:
        if self.device.type == "cuda":
            yield from self._iter_cuda()
            return
        for group in regroup(self.batches, self.batch_size):
            if len(group) == 1:
                x = to_torch(group[0])
            else:
                x = torch.cat([to_torch(piece) for piece in group])
            batch = _merge(group)
            if self.valid_only:
                mask = torch.from_numpy(valid(batch))
                if not bool(mask.all()):
                    x = x[mask]
            yield self._emit(self._convert(x, batch), batch)

    def _emit(self, x: "torch.Tensor", batch: pa.RecordBatch) -> Any:
        return (x, batch) if self.with_batch else x

    def _iter_cuda(self) -> Iterator[Any]:
        device = self.device
        if device.index is None:  # the caller's current device, not the staging thread's
            device = torch.device("cuda", torch.cuda.current_device())
        stager = _CudaStager(device, self._convert, self.valid_only)
        staged = Prefetcher(
            regroup(self.batches, self.batch_size),
            stager,
            self.prefetch,
            cancel=getattr(self.batches, "cancel", None),
            name="pixelfeed-cuda-staging",
        )
        try:
            for dev, ready, batch, nbytes in staged:
                self.direct_uploads = stager.direct_uploads
                consumer = torch.cuda.current_stream(dev.device)
                consumer.wait_event(ready)
                # The tensor was allocated on the copy stream; tell the caching
                # allocator the consumer's stream uses it too.
                dev.record_stream(consumer)
                self.h2d_bytes += nbytes
                yield self._emit(dev, batch)
        finally:
            staged.close()
            # A staging thread still running (its join timed out) keeps the
            # stager alive, and its __del__ releases once the thread is done.
            if not staged.thread.is_alive():
                stager.release()


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


#: One engine per (spec, threads) for :func:`preprocess_batch`, made on first use.
_ENGINES: Dict[Tuple[bytes, Optional[int]], Any] = {}
_ENGINES_LOCK = threading.Lock()
# A forked child (a DataLoader worker) makes its own: engines' threads stay in the parent.
os.register_at_fork(after_in_child=_ENGINES.clear)


def preprocess_batch(
    images: Any,
    spec: SpecLike = None,
    *,
    device: Union[str, "torch.device"] = "cpu",
    threads: Optional[int] = None,
    return_batch: bool = False,
) -> Any:
    """Encoded images in, one ``torch.Tensor`` out, in this process: ``(N, *spec shape)``.

    The one-call form of :class:`pixelfeed.Engine` (which needs the native
    module): the engine for ``(spec, threads)`` is made once per process and
    kept. On CPU the tensor is a zero-copy view of the engine's output block
    (read-only memory: ``.clone()`` before in-place changes); on CUDA it is
    copied to ``device`` by :class:`TorchLoader`: straight from the output
    block when the engine's pool is page-locked (CUDA present, the default),
    else through its pinned staging (one loader per call: for a stream of
    batches, use ``TorchLoader`` over :meth:`pixelfeed.Engine.stream`
    instead).

    A row whose image fails would be zeros, so by default any failed row
    raises ``ValueError`` naming the rows and why; with
    ``return_batch=True`` nothing is raised and ``(tensor, batch)`` comes
    back, the batch's ``error`` column (:func:`pixelfeed.errors`) saying
    which rows are zeros.
    """
    from .native import Engine

    key = (encode_spec(spec), threads)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = Engine(key[0], threads=threads)
    batch = engine.process(images)
    if not return_batch:
        failed = [(i, e) for i, e in enumerate(errors(batch)) if e is not None]
        if failed:
            shown = "; ".join(f"row {i}: {e}" for i, e in failed[:5])
            more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
            raise ValueError(f"{len(failed)} of {batch.num_rows} images failed: {shown}{more}")
    dev = torch.device(device)
    x = to_torch(batch) if dev.type == "cpu" else next(iter(TorchLoader([batch], device=dev)))
    return (x, batch) if return_batch else x
