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
import time
from collections import deque
from typing import Any, Callable

log = logging.getLogger("agentd")
SETTLE_BUDGET_S = 0.02  # one loop callback settles ends for this long at most


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

    def run_done(self, budget_s: float | None = SETTLE_BUDGET_S) -> None:
        """On the loop: the `then` of finished jobs, in order, for at most budget_s (a
        worker that caught up must not hand the loop one long callback); the rest in the
        next callback. None: all of them."""
        with self._lock:
            done = list(self._done)
            self._done.clear()
        t0 = time.perf_counter()
        for n, (then, value) in enumerate(done):
            if budget_s is not None and n and time.perf_counter() - t0 >= budget_s:
                with self._lock:
                    self._done.extendleft(reversed(done[n:]))
                if self._notify is not None:
                    self._notify(self.run_done)  # still scheduled: the worker does not wake us again
                return
            try:
                then(value)
            except Exception:
                log.exception("settling an ended tool call failed")
        with self._lock:
            if self._done:  # came in meanwhile: its wake-up was skipped, so run again
                wake = True
            else:
                wake, self._scheduled = False, False
        if wake and self._notify is not None:
            self._notify(self.run_done)

    def drain(self) -> None:
        """On the loop: wait for every submitted job and settle them now (an agent's end,
        the daemon's stop: nothing of theirs may be left half done behind them)."""
        if self._queue is not None:
            self._queue.join()
        self._settle_all()

    def close(self) -> None:
        if self._queue is None or self._thread is None:
            return
        self.drain()
        self._queue.put(None)
        self._thread.join(10)
        self._thread = None
        self._queue = None
        self._settle_all()

    def _settle_all(self) -> None:
        with self._lock:
            done = list(self._done)
            self._done.clear()
        for then, value in done:
            try:
                then(value)
            except Exception:
                log.exception("settling an ended tool call failed")
