"""Every decision is an event: a JSON line with level, kind, the agent and tool call it
concerns, a sentence, and the numbers behind it. The journal stores it (crash-safe), logs
it, and fans it out to API subscribers. Called only from the event loop's thread.

With a batched store (the daemon's default) the loop only enqueues: the event's row and its
JSONL line are written by the store's writer thread, after the batch that holds the row is
committed (so the JSONL file never shows an event the database lost), and its log line is
written by that thread as it takes the event (before the commit, so a database locked by
another process does not hold the log back). The fan-out to subscribers and listeners stays
on the loop; an event whose row the store dropped is logged on the loop. Rows the store dropped on a full queue are
reported by a `journal.dropped` event once the queue takes events again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from agentd.core.store import Store

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}
SUBSCRIBER_QUEUE = 1000
JSONL_MAX_BYTES = 64 << 20  # journal.jsonl is rotated to journal.jsonl.1 past this size

log = logging.getLogger("agentd")


def _open_private(path: Path):
    """Append-only, 0600 whatever the umask: events carry agents' argv."""
    return open(path, "a", buffering=1, opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW, 0o600))


class Journal:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time, jsonl: Path | None = None):
        self.store = store
        self.clock = clock
        self.jsonl_path = jsonl  # one JSON line per event, for `tail -f` and log shippers
        self._jsonl = _open_private(jsonl) if jsonl else None
        self._jsonl_lock = threading.Lock()  # the writer thread writes, the loop closes
        if store.batched:
            store.on_events_committed = self._write_jsonl_lines
            store.on_events_taken = self._log_events
        self._subscribers: dict[asyncio.Queue, tuple[str | None, int]] = {}
        self.listeners: list[Callable[[dict], None]] = []  # e.g. the demo's live view
        self.counts: dict[str, int] = {}
        self.dropped = 0

    def emit(self, kind: str, message: str, *, level: str = "info", agent: str | None = None,
             tool_call: str | None = None, **data) -> dict:
        event = {"ts": self.clock(), "level": level, "kind": kind, "agent": agent, "tool_call": tool_call,
                 "message": message, "data": data}
        batcher = self.store.batcher
        drops = batcher.stats["dropped"] if batcher is not None else 0
        event["seq"] = self.store.append_event(event)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if batcher is None:
            if self._jsonl is not None:
                self._write_jsonl_lines([event])
            self._log_events([event])
        elif batcher.stats["dropped"] != drops:  # its row was refused: the writer will not log it
            self._log_events([event])
        for queue, (want_agent, min_level) in list(self._subscribers.items()):
            if want_agent and want_agent != agent:
                continue
            if LEVELS.get(level, 20) < min_level:
                continue
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped += 1
        for listener in self.listeners:
            listener(event)
        if self.store.batched and self.store.batcher.unreported_drops and kind != "journal.dropped":
            self._report_drops()
        return event

    def _report_drops(self) -> None:
        """Rows the store refused on a full queue: said in the journal once it takes events again."""
        if self.store.batcher.pending >= self.store.batcher.limit:
            return  # still full: this event would be dropped too; the next emit tries again
        n = self.store.take_unreported_drops()
        self.emit("journal.dropped", f"{n} journal events were not stored (the store's write queue was full); "
                  "subscribers and the log got them", level="error", dropped=n, total=self.store.batcher.stats["dropped"])

    @staticmethod
    def _log_events(events: list[dict]) -> None:
        for ev in events:
            number = LEVELS.get(ev["level"], 20)
            if log.isEnabledFor(number):  # no formatting for a level that is off (debug, per event)
                who = ev["tool_call"] or ev["agent"]
                log.log(number, "%s%s", f"[{who}] " if who else "", ev["message"])

    def _write_jsonl_lines(self, events: list[dict]) -> None:
        with self._jsonl_lock:
            if self._jsonl is None:
                return
            self._write_jsonl("".join(json.dumps(e, default=str) + "\n" for e in events))

    def _write_jsonl(self, text: str) -> None:
        try:
            self._jsonl.write(text)
            if self._jsonl.tell() > JSONL_MAX_BYTES:
                self._jsonl.close()
                self.jsonl_path.replace(self.jsonl_path.with_name(self.jsonl_path.name + ".1"))
                self._jsonl = _open_private(self.jsonl_path)
        except OSError as exc:  # a full disk must not stop enforcement
            log.warning("cannot write %s: %s; events stay in the database", self.jsonl_path, exc)

    def close(self) -> None:
        if self.store.batched:
            self.store.flush(timeout=5.0)  # the queued events' lines first
        with self._jsonl_lock:
            if self._jsonl is not None:
                self._jsonl.close()
                self._jsonl = None

    def subscribe(self, agent: str | None = None, min_level: str = "info") -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self._subscribers[queue] = (agent, LEVELS.get(min_level, 20))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.pop(queue, None)
