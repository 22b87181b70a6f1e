"""Caffe's prefetching (base_data_layer.cpp): one background thread loads the
next batches while the current one trains.

The thread calls `load()` and puts each result on a queue of `depth` batches
(Caffe's data_param.prefetch, default 4); `pop()` takes the oldest. An error in
the thread is handed over and raised by `pop()` in the caller's thread. The
thread holds no reference to the layer, so a layer that is dropped stops its
thread (weakref.finalize); `stop()` does it explicitly.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any


def _run(load: Callable[[], Any], q: queue.Queue[Any], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            item: Any = load()
        except BaseException as e:  # handed to the consumer
            item = e
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                break
            except queue.Full:
                continue
        if isinstance(item, BaseException):
            return


def _stop(stop: threading.Event, thread: threading.Thread) -> None:
    stop.set()
    if thread is not threading.current_thread():
        thread.join()


class Prefetcher:
    """A background thread running `load` ahead of `pop`, `depth` batches deep."""

    def __init__(self, owner: object, load: Callable[[], Any], depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_run,
            args=(load, self._queue, self._stop),
            name="caffesolve-prefetch",
            daemon=True,
        )
        self._thread.start()
        self._finalizer = weakref.finalize(owner, _stop, self._stop, self._thread)

    def pop(self) -> Any:
        """The next batch (waits for it); re-raises an error of the thread."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.stop()
            raise item
        return item

    def stop(self) -> None:
        """Stop the thread and drop what it had loaded."""
        self._finalizer()
