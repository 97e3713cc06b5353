"""The parts of :class:`pixelfeed.torch.TorchLoader` that need no PyTorch.

- :func:`regroup`: cut output batches into groups of whole rows of exactly
  ``batch_size`` (the last may be short), as zero-copy slices;
- :class:`Prefetcher`: run a function over an iterable on one background
  thread, at most ``depth`` results ahead of the consumer, results in order,
  errors raised where they happened, cancellation that stops the thread;
- :func:`parse_normalize`: the ``normalize=`` argument as (mean, std).

They are here, not in ``pixelfeed.torch``, so the ordering, queueing and
cancellation logic is tested where torch is not installed.

**Architecture invariant:** the prefetch thread is the only thread that
advances the source iterator (a :meth:`pixelfeed.Client.preprocess`
iteration, itself consumed by one thread at a time) and the only one that
closes it; the consumer stops it through the source's thread-safe
``cancel()`` and by joining the thread.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Deque, Generic, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, \
    TypeVar, Union

import pyarrow as pa

__all__ = ["regroup", "Prefetcher", "parse_normalize"]

T = TypeVar("T")
R = TypeVar("R")

#: Seconds :meth:`Prefetcher.close` waits for the thread.
_JOIN_SECONDS = 30.0


def regroup(batches: Iterable[pa.RecordBatch], batch_size: Optional[int]) -> Iterator[List[pa.RecordBatch]]:
    """Consecutive zero-copy row slices of ``batches``, grouped into ``batch_size`` rows each.

    ``None``: each batch alone. The last group may be short. When the
    generator is closed early it closes ``batches`` too (when it can be).
    """
    try:
        if batch_size is None:
            for batch in batches:
                yield [batch]
            return
        group: List[pa.RecordBatch] = []
        rows = 0
        for batch in batches:
            offset = 0
            while offset < batch.num_rows:
                take = min(batch_size - rows, batch.num_rows - offset)
                group.append(batch.slice(offset, take))
                rows += take
                offset += take
                if rows == batch_size:
                    yield group
                    group, rows = [], 0
        if group:
            yield group
    except GeneratorExit:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        raise


class _Shared:
    """What the prefetch thread shares with the consumer (the thread never holds the :class:`Prefetcher`,
    so dropping that lets it be collected, which stops the thread)."""

    def __init__(self, items: Iterable[Any], fn: Callable[[Any], Any], depth: int) -> None:
        self.items, self.fn, self.depth = items, fn, depth
        self.cond = threading.Condition()
        self.buffer: Deque[Tuple[str, Any]] = deque()
        self.stopped = False

    def put(self, kind: str, value: Any) -> bool:
        """Queue one result, waiting while ``depth`` are queued; ``False`` once stopped."""
        with self.cond:
            while kind == "item" and not self.stopped and len(self.buffer) >= self.depth:
                self.cond.wait()
            if self.stopped:
                return False
            self.buffer.append((kind, value))
            self.cond.notify_all()
            return True

    def main(self) -> None:
        """The prefetch thread."""
        it = iter(self.items)
        self.items = None  # the iterator is all the thread needs
        ended = False
        try:
            for item in it:
                if self.stopped or not self.put("item", self.fn(item)):
                    break
            else:
                ended = True
                self.put("end", None)
        except BaseException as e:  # noqa: BLE001 - raised by the consumer's next()
            ended = True  # an iterator that raised is finished
            self.put("error", e)
        finally:
            if not ended:
                close = getattr(it, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:  # noqa: BLE001 - stopping anyway
                        pass


class Prefetcher(Generic[T, R]):
    """``fn(item)`` for each item of ``items``, computed on one background thread, yielded in order.

    At most ``depth`` results wait ahead of the consumer. An exception from
    ``items`` or ``fn`` is raised by ``next()`` after the results before it.
    :meth:`close` (also at the end, on an error, on ``with``-exit, and when
    the prefetcher is garbage collected) stops the thread: it calls
    ``cancel`` (if given: a thread-safe way to end a blocking
    ``next(items)``, e.g. :meth:`pixelfeed.StreamedBatches.cancel`), then
    waits for the thread, which closes ``items`` on its way out. ``fn`` and
    ``items`` only ever run on that one thread.
    """

    def __init__(self, items: Iterable[T], fn: Callable[[T], R], depth: int = 2, *,
                 cancel: Optional[Callable[[], None]] = None, name: str = "pixelfeed-prefetch") -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._shared = _Shared(items, fn, depth)
        self._cancel = cancel
        self._closed = False
        self._thread = threading.Thread(target=self._shared.main, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        """The background thread (for tests and debugging)."""
        return self._thread

    def __iter__(self) -> "Prefetcher[T, R]":
        return self

    def __next__(self) -> R:
        shared = self._shared
        with shared.cond:
            while not shared.buffer and not self._closed:
                shared.cond.wait()
            if self._closed:
                raise StopIteration
            kind, value = shared.buffer.popleft()
            shared.cond.notify_all()
        if kind == "item":
            return value
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the thread and wait for it (idempotent)."""
        shared = self._shared
        with shared.cond:
            if self._closed:
                return
            self._closed = True
            shared.stopped = True
            shared.buffer.clear()
            shared.cond.notify_all()
        if self._cancel is not None and self._thread.is_alive():
            self._cancel()
        if self._thread is not threading.current_thread():
            self._thread.join(_JOIN_SECONDS)

    def __enter__(self) -> "Prefetcher[T, R]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


NormalizeLike = Union[None, Mapping[str, Sequence[float]], Tuple[Sequence[float], Sequence[float]]]


def parse_normalize(normalize: NormalizeLike) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
    """``(mean, std)`` from ``(mean, std)`` or a spec's ``{"mean": [...], "std": [...]}``; ``None`` for none.

    Values on the 0-1 scale, one per channel, as torchvision's ``Normalize``
    and the spec's ``normalize`` field take them.
    """
    if normalize is None:
        return None
    if isinstance(normalize, Mapping):
        if set(normalize) != {"mean", "std"}:
            raise ValueError(f"normalize needs exactly 'mean' and 'std', got {sorted(normalize)}")
        mean, std = normalize["mean"], normalize["std"]
    else:
        try:
            mean, std = normalize
        except (TypeError, ValueError):
            raise TypeError("normalize must be (mean, std) or {'mean': [...], 'std': [...]}") from None
    mean_t = tuple(float(m) for m in mean)
    std_t = tuple(float(s) for s in std)
    if not mean_t or len(mean_t) != len(std_t):
        raise ValueError(f"normalize: mean and std need one value per channel, got {mean_t} and {std_t}")
    if any(s <= 0 for s in std_t):
        raise ValueError(f"normalize: std must be positive, got {std_t}")
    return mean_t, std_t
