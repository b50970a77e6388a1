"""Host work ahead of the device: a producer thread filling a bounded queue.

The training and embedding loops call a ``produce`` function (next windows, step arrays) in a
background thread while the device runs the current step; numpy releases the GIL in much of that
work and the loop's thread mostly waits on the device. Items come out in production order; an
exception in ``produce`` is raised in the consuming thread (the same exception object, message
and all); :meth:`Prefetcher.close` stops the thread without waiting for the queue to drain.

Why not ``grain``: its loaders parallelise *independent* records (random access, or iterators
split over worker processes) and checkpoint per-worker iterator states. A bilm-tf window stream
is one sequential, stateful process (every row's unfinished sentence depends on all sentences
before it) with its own exactly resumable position, so there is nothing for workers to split;
what remains is read-ahead with the position carried alongside each item, which a thread and a
queue give without a dependency.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Generic[T]):
    """Iterate over ``produce()`` results computed up to ``depth`` items ahead in a thread.

    ``produce`` raising StopIteration ends the iteration. Use as a context manager (or call
    :meth:`close`) so the thread stops when the consumer stops early.
    """

    def __init__(self, produce: Callable[[], T], depth: int = 2, name: str = "elmojax-prefetch"):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, found {depth}")
        self._produce = produce
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._produce()
            except StopIteration:
                self._put(_DONE)
                return
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, who raises it
                self._put(_Failure(e))
                return
            if not self._put(item):
                return

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.error
        return item

    def close(self, timeout: float = 10.0) -> None:
        """Stop the producer (its current ``produce()`` call finishes first) and drop what is queued."""
        self._stop.set()
        self._finished = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
