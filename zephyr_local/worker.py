"""One dedicated thread for all MLX work of an engine.

Since mlx 0.31.2 streams are thread-local: arrays made on one thread's stream
cannot be evaluated from another. Every MLX call of a model therefore runs on
the thread that loaded it; other threads (the CLI, the TUI) submit work here.
"""

from __future__ import annotations

import atexit
import queue
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

_DONE = object()
_LIVE: weakref.WeakSet[MLXThread] = weakref.WeakSet()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


class MLXThread:
    """A single worker thread that runs submitted calls in order."""

    def __init__(self, name: str = "zephyr-mlx"):
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        _LIVE.add(self)

    def _loop(self) -> None:
        try:
            self._serve()
        finally:
            _release_streams()

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, kwargs, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the caller, never lost
                future.set_exception(exc)

    @property
    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        future: Future = Future()
        if self.is_current:  # re-entrant: already on the MLX thread
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)
            return future
        self._jobs.put((fn, args, kwargs, future))
        return future

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        """Run `fn` on the MLX thread and return its result (or raise its error)."""
        return self.submit(fn, *args, **kwargs).result()

    def stream(self, gen_fn: Callable[..., Iterator], *args,
               cancel: threading.Event | None = None) -> Iterator:
        """Run generator `gen_fn(*args)` on the MLX thread; iterate its items here.

        Items are handed over through a queue, so the MLX thread never waits for
        the consumer. If the consumer stops early, `cancel` is set and the
        generator is drained so the thread is free for the next call.
        """
        items: queue.Queue = queue.Queue()

        def pump() -> None:
            try:
                for item in gen_fn(*args):
                    items.put(item)
            except BaseException as exc:
                items.put(_Raised(exc))
            finally:
                items.put(_DONE)

        self.submit(pump)
        finished = False
        try:
            while True:
                item = items.get()
                if item is _DONE:
                    finished = True
                    return
                if isinstance(item, _Raised):
                    finished = True
                    raise item.exc
                yield item
        finally:
            if not finished:
                if cancel is not None:
                    cancel.set()
                while items.get() is not _DONE:
                    pass

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish queued work, then stop and join the thread.

        Joining matters: a thread that still holds MLX streams when the
        interpreter exits makes the C++ runtime abort ("terminate called
        without an active exception", exit code 134).
        """
        if self._thread.is_alive() and not self.is_current:
            self._jobs.put(None)
            self._thread.join(timeout)


def _release_streams() -> None:
    """Finish pending work and destroy this thread's MLX streams before it ends.

    Without this, a process that used MLX on a second thread aborts at exit from
    time to time with "terminate called without an active exception" (exit code
    134; ml-explore/mlx#3126).
    """
    mx = sys.modules.get("mlx.core")
    if mx is not None:
        mx.synchronize()
        mx.clear_streams()


@atexit.register
def _close_all() -> None:
    for worker in list(_LIVE):
        worker.close(timeout=5.0)
