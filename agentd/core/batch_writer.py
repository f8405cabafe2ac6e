"""One writer thread that commits queued items in batches, so the event loop only enqueues.

The caller puts items (never blocks); the thread takes what is queued, waits at most
MAX_WAIT_S for more (up to MAX_ITEMS), and hands the batch to `commit` (the store: one
SQLite transaction per batch). Items are committed in the order they were put.

- Busy: `commit` raising Busy keeps the batch at the head of the queue; the thread retries
  with a growing pause, so later items never overtake it.
- Failure: any other error is retried item by item, so one bad item does not take the
  others with it; the items that still fail are counted (`failed`) and logged.
- A full queue (LIMIT items): a droppable item (a journal event's row) is refused, counted
  in `dropped` and `unreported_drops` (the journal reports them as an event); an item that
  is not droppable (an agent's or a tool call's record) is queued past the limit. Put never
  blocks either way.
- Crash safety: only what is queued or in the batch being committed is lost to a SIGKILL.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("agentd.store")

MAX_ITEMS = 512  # per batch (one transaction)
MAX_WAIT_S = 0.002  # how long a batch waits for more items once it has one
LIMIT = 50_000  # queued items past which droppable ones are refused
RETRY_S = (0.005, 0.05)  # pause between attempts on a busy database, growing


class Busy(Exception):
    """The commit could not take its lock; nothing was written. Try again later."""


class BatchWriter:
    def __init__(self, commit: Callable[[list], None], *, name: str = "agentd-batch-writer",
                 max_items: int = MAX_ITEMS, max_wait_s: float = MAX_WAIT_S, limit: int = LIMIT,
                 on_start: Callable[[], None] | None = None, on_stop: Callable[[], None] | None = None):
        self._commit = commit
        self._on_start, self._on_stop = on_start, on_stop
        self.max_items, self.max_wait_s, self.limit = max_items, max_wait_s, limit
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._put = 0  # items accepted so far
        self._done = 0  # items committed (or failed) so far
        self._urgent = 0  # flushes waiting: cut the batch wait short
        self._closing = False
        self.busy = False  # the last attempt found the database locked
        self.stats = {"batches": 0, "items": 0, "max_batch": 0, "busy_retries": 0, "failed": 0, "dropped": 0}
        self.unreported_drops = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._put - self._done

    def on_writer_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def put(self, item, droppable: bool = False) -> bool:
        """Queue one item; False if it was dropped (a full queue and a droppable item)."""
        with self._cond:
            if self._closing:
                raise RuntimeError("the writer is closed")
            if droppable and len(self._queue) >= self.limit:
                self.stats["dropped"] += 1
                self.unreported_drops += 1
                if self.stats["dropped"] == 1:
                    log.warning("The store's write queue is full (%d items): journal events are dropped from the "
                                "database (counted, and reported in the journal) until it drains.", self.limit)
                return False
            self._queue.append(item)
            self._put += 1
            if len(self._queue) == 1 or self._urgent:
                self._cond.notify_all()
            return True

    def take_unreported_drops(self) -> int:
        with self._cond:
            n, self.unreported_drops = self.unreported_drops, 0
            return n

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything put before this call is committed (True) or timeout (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._put
            if self._done >= target:
                return True
            self._urgent += 1
            self._cond.notify_all()
            try:
                while self._done < target:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._thread.is_alive():
                        return False
                    self._cond.wait(min(left, 0.05))
                return True
            finally:
                self._urgent -= 1

    def close(self, timeout: float = 5.0) -> int:
        """Flush, then stop the thread; returns how many items were left uncommitted."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            return len(self._queue)

    # ------------------------------------------------------------------ the thread
    def _next_batch(self) -> list | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            if len(self._queue) < self.max_items and not self._urgent and not self._closing and self.max_wait_s > 0:
                deadline = time.monotonic() + self.max_wait_s  # let a burst gather into one transaction
                while len(self._queue) < self.max_items and not self._urgent and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            return [self._queue[i] for i in range(min(self.max_items, len(self._queue)))]

    def _run(self) -> None:
        if self._on_start:
            self._on_start()
        pause = RETRY_S[0]
        try:
            while (batch := self._next_batch()) is not None:
                try:
                    self._commit(batch)
                except Busy:
                    self.busy = True
                    self.stats["busy_retries"] += 1
                    with self._cond:  # a close does not wait for a lock that may never be released
                        if self._closing:
                            return
                    time.sleep(pause)
                    pause = min(pause * 2, RETRY_S[1])
                    continue
                except Exception as exc:  # noqa: BLE001 - one bad item must not stop the writer
                    if not self._one_by_one(batch, exc):
                        continue  # busy half way: the rest stays queued, in order
                if self.busy:
                    log.info("The database is free again; the queued writes are in.")
                self.busy, pause = False, RETRY_S[0]
                self._retire(len(batch))
        finally:
            if self._on_stop:
                self._on_stop()

    def _one_by_one(self, batch: list, exc: Exception) -> bool:
        """A batch failed: commit its items alone; count and log those that still fail."""
        for i, item in enumerate(batch):
            try:
                self._commit([item])
            except Busy:
                self._retire(i)
                return False
            except Exception as one:  # noqa: BLE001
                self.stats["failed"] += 1
                log.error("A queued store write failed and is dropped: %s", one)
        return True

    def _retire(self, n: int) -> None:
        with self._cond:
            for _ in range(n):
                self._queue.popleft()
            self._done += n
            self.stats["batches"] += 1 if n else 0
            self.stats["items"] += n
            self.stats["max_batch"] = max(self.stats["max_batch"], n)
            self._cond.notify_all()
