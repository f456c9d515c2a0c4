"""Work off the GUI thread, results back on it.

Slow work (uploading a volume, waiting for an answer, starting an engine) runs in a
daemon thread; everything that touches the MRML scene or widgets runs on the main
thread. Worker threads never call into Qt or MRML: they post callables to a
:class:`MainThreadQueue`, which the GUI drains from a timer (``qt.QTimer``) and
scripts or tests drain by hand.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any


class MainThreadQueue:
    """Callables posted from any thread, run by :meth:`drain` on the main thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple, dict]] = queue.SimpleQueue()

    def post(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._queue.put((function, args, kwargs))

    def drain(self, limit: int = 1000) -> int:
        """Run what is queued (at most ``limit`` calls); returns how many ran."""
        count = 0
        while count < limit:
            try:
                function, args, kwargs = self._queue.get_nowait()
            except queue.Empty:
                break
            count += 1
            try:
                function(*args, **kwargs)
            except Exception:  # one failing callback must not stop the others
                logging.exception("MedSegR: a main-thread callback failed")
        return count

    def empty(self) -> bool:
        return self._queue.empty()


class BackgroundTask:
    """Run ``work(cancel_event)`` in a daemon thread; ``on_done(result)`` or
    ``on_error(exception)`` are posted to ``dispatch`` when it ends."""

    def __init__(self, work: Callable[[threading.Event], Any],
                 on_done: Callable[[Any], None], on_error: Callable[[BaseException], None],
                 dispatch: Callable[..., None], name: str = "medsegr-request") -> None:
        self.cancel_event = threading.Event()
        self._work, self._on_done, self._on_error, self._dispatch = work, on_done, on_error, dispatch
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.finished = threading.Event()

    def start(self) -> "BackgroundTask":
        self._thread.start()
        return self

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            result = self._work(self.cancel_event)
        except BaseException as exc:  # noqa: BLE001 - handed to the GUI, never lost
            self._dispatch(self._finish, self._on_error, exc)
        else:
            self._dispatch(self._finish, self._on_done, result)

    def _finish(self, callback: Callable[[Any], None], value: Any) -> None:
        self.finished.set()
        callback(value)


def wait_for(condition: Callable[[], bool], main_queue: MainThreadQueue, timeout: float = 60.0,
             poll_s: float = 0.01) -> bool:
    """Drain ``main_queue`` until ``condition()`` holds (scripts and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        main_queue.drain()
        if condition():
            return True
        time.sleep(poll_s)
    main_queue.drain()
    return condition()
