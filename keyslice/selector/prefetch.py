"""Run a producer a bounded number of items ahead of its consumer, in a background thread.

The data-loader pattern of step 3 on a CPU encoder: while the encoder works on chunk ``i``,
one thread reads and preprocesses chunk ``i + 1`` (file reads, imagecodecs and torch's
kernels release the GIL, so the two run on different cores). At most ``depth`` finished
items wait in the queue, so memory is bounded whatever the length of the series.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterable[T], depth: int, *, name: str = "keyslice-prefetch",
             initializer: Callable[[], None] | None = None) -> Iterator[T]:
    """Yield ``items`` in order, produced by a background thread at most ``depth`` items ahead.

    ``initializer`` runs first in that thread (per-thread settings such as torch's thread count).

    ``depth`` 0 iterates ``items`` in the caller's thread (no overlap). An exception raised
    by the producer is raised in the consumer at the point where the item would have come.
    When the consumer stops early (``break``, an exception, ``close()``), the producer stops
    at its next item, ``items`` is closed in the producer's thread (so its own ``finally``
    clauses run there) and the thread is joined before this generator returns.
    """
    if depth < 0:
        raise ValueError("depth must be >= 0")
    if depth == 0:
        yield from items
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        if initializer is not None:
            initializer()
        it = iter(items)
        try:
            for item in it:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Raised(exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
