"""The pixelfeed engine in this process: no server, the same spec, the same pixels.

Needs the optional native module ``pixelfeed_native`` (package
``pixelfeed-native``, built from ``native/`` in the repository with maturin;
README "In-process engine")::

    engine = pixelfeed.Engine("imagenet", threads=8)
    batch = engine.process([jpeg_bytes, png_bytes])   # pyarrow.RecordBatch
    x = pixelfeed.tensors(batch)                      # (2, 3, 224, 224) float32, zero-copy
    for out in engine.stream(batches, prefetch=2):    # batch N+1 runs while you use N
        ...

The output batch has exactly the server's ``DoExchange`` output schema
(tensor, ``error``, ``warning``, ``height``, ``width``, ``geometry`` and the
input's other columns) and the same bytes: both run the same Rust engine on
the same spec, and rows without a ``seed`` column key their random draws by
their position in the stream, as a server call does.

Decoding runs on the engine's own threads with the GIL released, so other
Python threads keep running, and several threads may call one engine at
once. The tensor buffer is a block of the engine's output pool, handed to
pyarrow without a copy (page-locked when CUDA is present) and returned to
the pool when the last reference to the batch is dropped.
"""

from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Deque, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

import pyarrow as pa

from ._contract import SpecLike, encode_spec

__all__ = ["Engine", "ImagesLike", "available"]

#: What :meth:`Engine.process` takes: encoded images (``bytes``, ``None`` for
#: a missing one), or a batch/table with an ``image`` binary column (its
#: other columns come back unchanged, as over Flight).
ImagesLike = Union[Sequence[Optional[bytes]], pa.Array, pa.ChunkedArray, pa.RecordBatch, pa.Table]

_MISSING = (
    "pixelfeed.Engine needs the native module 'pixelfeed_native', which is not installed. "
    "Build it from the repository with maturin (a Rust toolchain, cmake and nasm): "
    "pip install maturin && maturin develop --release -m native/Cargo.toml "
    "(or build a wheel: maturin build --release -m native/Cargo.toml). "
    "Without it, use a server: pixelfeed.connect(...)."
)


def available() -> bool:
    """Whether the native module can be imported."""
    try:
        import pixelfeed_native  # noqa: F401
    except ImportError:
        return False
    return True


def _native() -> Any:
    try:
        import pixelfeed_native
    except ImportError as e:
        raise ImportError(_MISSING) from e
    return pixelfeed_native


def as_batch(images: ImagesLike) -> pa.RecordBatch:
    """``images`` as one record batch with an ``image`` column (no copy for a batch or a one-chunk table)."""
    if isinstance(images, pa.RecordBatch):
        return images
    if isinstance(images, pa.Table):
        if images.num_rows == 0:
            return pa.RecordBatch.from_pylist([], schema=images.schema)
        return images.combine_chunks().to_batches(max_chunksize=images.num_rows)[0]
    if isinstance(images, pa.ChunkedArray):
        images = images.combine_chunks()
    if isinstance(images, pa.Array):
        return pa.record_batch({"image": images})
    if isinstance(images, (bytes, bytearray, memoryview, str)):
        raise TypeError("give a list of encoded images, not one image")
    return pa.record_batch({"image": pa.array(list(images), pa.binary())})


class Engine:
    """The pixelfeed engine in this process, with one spec and its own threads.

    Args:
        spec: as :meth:`pixelfeed.Client.preprocess`: a preset name
            (``"imagenet"``), a dict or JSON text; ``None`` is the imagenet
            preset. A bad spec raises ``ValueError`` naming the field.
        threads: engine threads (default: one per core).
        max_pixels, max_aspect_ratio, max_image_bytes, max_metadata_bytes:
            the server's limits (``--max-pixels`` ...), same defaults; an
            image over one is an error row.
        pool_bytes: cap on output tensor memory alive at once (default as
            ``--pinned-pool-bytes``: 1 GiB, or RAM/4 if smaller). Batches you
            keep hold their block; at the cap, ``process`` waits up to
            ``pool_wait_seconds`` for one to be dropped, then raises
            ``MemoryError``.
        pinned: page-lock the pool through CUDA when libcuda and a device
            are present; ``False`` never touches CUDA.
        cuda_device: the device whose context owns pinned memory.

    An engine belongs to the process that made it: its threads do not
    survive ``fork`` (a DataLoader worker must make its own).

    Raises:
        ImportError: the native module is not installed (says how to build it).
        ValueError: a bad spec or limit.
    """

    def __init__(
        self,
        spec: SpecLike = None,
        *,
        threads: Optional[int] = None,
        max_pixels: Optional[int] = None,
        max_aspect_ratio: Optional[float] = None,
        max_image_bytes: Optional[int] = None,
        max_metadata_bytes: Optional[int] = None,
        pool_bytes: Optional[int] = None,
        pinned: bool = True,
        cuda_device: int = 0,
        pool_wait_seconds: float = 10.0,
    ) -> None:
        if threads is not None and threads < 1:
            raise ValueError("threads must be at least 1")
        self._engine = _native().Engine(
            encode_spec(spec).decode(),
            threads=threads,
            max_pixels=max_pixels,
            max_aspect_ratio=max_aspect_ratio,
            max_image_bytes=max_image_bytes,
            max_metadata_bytes=max_metadata_bytes,
            pool_bytes=pool_bytes,
            pinned=pinned,
            cuda_device=cuda_device,
            pool_wait_seconds=pool_wait_seconds,
        )
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"pixelfeed.Engine(spec={self.spec!r}, threads={self.threads})"

    @property
    def threads(self) -> int:
        """Engine threads."""
        return self._engine.threads

    @property
    def spec(self) -> Dict[str, Any]:
        """The validated spec with its preset expanded."""
        return json.loads(self._engine.spec_json)

    def stats(self) -> Dict[str, Any]:
        """The server's ``stats`` figures for this engine: ``pool`` (blocks and bytes in use, pinned or
        pageable), ``threads``, ``decoders``."""
        return json.loads(self._engine.stats_json())

    def process(self, images: ImagesLike, *, first_row: int = 0) -> pa.RecordBatch:
        """Preprocess one batch: one output row per input row, in order.

        ``images``: a list of encoded images (``bytes``; ``None`` is a
        missing image, an error row), a binary ``pyarrow.Array``, or a
        ``RecordBatch``/``Table`` with an ``image`` column (other columns
        are passed through). Tensor rows of images that fail are zeros with
        the reason in ``error`` (read them with :func:`pixelfeed.valid` /
        :func:`pixelfeed.errors`); a bad image never raises.

        ``first_row``: the position of the first row in its stream, which keys
        random transforms of rows without a ``seed`` column (0 = a new stream).

        Raises ``ValueError`` for a batch that breaks the contract (no
        ``image`` column, a passthrough column named like an output column)
        and ``MemoryError`` when the pool stays full (see ``pool_bytes``).
        """
        if first_row < 0:
            raise ValueError("first_row must be >= 0")
        if os.getpid() != self._pid:
            # Its rayon threads stayed in the parent: the call would wait forever.
            raise RuntimeError("this pixelfeed.Engine was made before a fork; make one in this process")
        return self._engine.process(as_batch(images), first_row)

    def stream(self, batches: Iterable[ImagesLike], *, prefetch: int = 2) -> Iterator[pa.RecordBatch]:
        """Preprocess ``batches`` in order, up to ``prefetch`` of them running ahead of the caller.

        While the caller uses batch N, batches N+1 ... N+prefetch run on the
        engine's threads (several at once, so the tail of one overlaps the
        start of the next). Rows are keyed as one stream (``first_row`` runs
        on across batches), so the bytes equal one Flight call over the same
        batches. The input is pulled on the caller's thread. An exception
        (from the input or a contract error) is raised in order, after the
        batches before it; closing the iterator early waits only for the
        batches already running and drops them.
        """
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        return _Stream(self, iter(batches), prefetch)


class _Stream:
    """The iterator :meth:`Engine.stream` returns; ``close()`` stops it early."""

    def __init__(self, engine: Engine, batches: Iterator[ImagesLike], prefetch: int) -> None:
        self._engine = engine
        self._batches = batches
        self._prefetch = prefetch
        self._pool = ThreadPoolExecutor(max_workers=prefetch + 1, thread_name_prefix="pixelfeed-stream")
        self._pending: Deque[Future] = deque()
        self._next_row = 0
        self._exhausted = False

    def __iter__(self) -> "_Stream":
        return self

    def _fill(self) -> None:
        # One for the caller's next batch plus `prefetch` running behind it.
        while not self._exhausted and len(self._pending) <= self._prefetch:
            try:
                batch = as_batch(next(self._batches))
            except StopIteration:
                self._exhausted = True
                return
            except Exception as e:  # the caller's input failed: raise it in order
                self._exhausted = True
                failed: Future = Future()
                failed.set_exception(e)
                self._pending.append(failed)
                return
            self._pending.append(self._pool.submit(self._engine.process, batch, first_row=self._next_row))
            self._next_row += batch.num_rows

    def __next__(self) -> pa.RecordBatch:
        # No output batch is ever a local here: an input error's traceback
        # keeps this frame (through `_fill`) alive, and with it any local,
        # which would hold that batch's pool block.
        self._fill()
        if not self._pending:
            self.close()
            raise StopIteration
        try:
            return self._pending.popleft().result()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop: drop batches not started, wait for the running ones, free their blocks, close the input."""
        self._exhausted = True
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)
        close_input = getattr(self._batches, "close", None)
        if close_input is not None:
            close_input()

    def __enter__(self) -> "_Stream":
        return self

    def __exit__(self, *exc: Tuple[Any, ...]) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._pool.shutdown(wait=False, cancel_futures=True)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
