"""The slow half of a tool call's end, off the event loop: its cgroup killed (stragglers) and
removed, its result file written. One worker thread, in submission order, so an agent's
result directory is never written and forgotten at once; each job's `then` runs back on the
loop (journal and store are the loop's), batched into one callback per wake-up.

Until start() (unit tests, re-adoption before the loop runs) a job and its `then` run at
once on the caller, as before.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from typing import Any, Callable

log = logging.getLogger("agentd")


class EndWork:
    def __init__(self) -> None:
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._notify: Callable[[Callable[[], None]], Any] | None = None
        self._done: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    @property
    def threaded(self) -> bool:
        return self._thread is not None

    def start(self, notify: Callable[[Callable[[], None]], Any]) -> None:
        """notify(fn) runs fn on the loop later (loop.call_soon_threadsafe)."""
        if self._thread is not None:
            return
        self._queue = queue.Queue()
        self._notify = notify
        self._thread = threading.Thread(target=self._run, name="agentd-ends", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any], then: Callable[[Any], None]) -> None:
        if self._queue is None:
            then(job())
            return
        self._queue.put((job, then))

    def pending(self) -> int:
        return (self._queue.unfinished_tasks if self._queue is not None else 0) + len(self._done)

    def _run(self) -> None:
        assert self._queue is not None and self._notify is not None
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            job, then = item
            try:
                value = job()
            except Exception as exc:  # a bug in a job must not stop every later end
                log.exception("tool-call end work failed")
                value = exc
            with self._lock:
                self._done.append((then, value))
                wake = not self._scheduled
                self._scheduled = True
            self._queue.task_done()
            if wake:
                try:
                    self._notify(self.run_done)
                except RuntimeError:  # the loop is closed: close() runs what is left
                    pass

    def run_done(self) -> None:
        """On the loop: the `then` of every finished job, in order."""
        with self._lock:
            done = list(self._done)
            self._done.clear()
            self._scheduled = False
        for then, value in done:
            try:
                then(value)
            except Exception:
                log.exception("settling an ended tool call failed")

    def drain(self) -> None:
        """On the loop: wait for every submitted job and settle them now (an agent's end,
        the daemon's stop: nothing of theirs may be left half done behind them)."""
        if self._queue is not None:
            self._queue.join()
        self.run_done()

    def close(self) -> None:
        if self._queue is None or self._thread is None:
            return
        self.drain()
        self._queue.put(None)
        self._thread.join(10)
        self._thread = None
        self._queue = None
        self.run_done()
