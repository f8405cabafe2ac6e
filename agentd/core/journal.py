"""Every decision is an event: a JSON line with level, kind, the agent and tool call it
concerns, a sentence, and the numbers behind it. The journal stores it (crash-safe), logs
it, and fans it out to API subscribers. Called only from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
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
        self._subscribers: dict[asyncio.Queue, tuple[str | None, int]] = {}
        self.listeners: list[Callable[[dict], None]] = []  # e.g. the demo's live view
        self.counts: dict[str, int] = {}
        self.dropped = 0

    def emit(self, kind: str, message: str, *, level: str = "info", agent: str | None = None,
             tool_call: str | None = None, **data) -> dict:
        event = {"ts": self.clock(), "level": level, "kind": kind, "agent": agent, "tool_call": tool_call,
                 "message": message, "data": data}
        event["seq"] = self.store.append_event(event)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self._jsonl is not None:
            self._write_jsonl(event)
        log.log(LEVELS.get(level, 20), "%s%s", f"[{tool_call or agent}] " if (tool_call or agent) else "", message)
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
        return event

    def _write_jsonl(self, event: dict) -> None:
        try:
            self._jsonl.write(json.dumps(event, default=str) + "\n")
            if self._jsonl.tell() > JSONL_MAX_BYTES:
                self._jsonl.close()
                self.jsonl_path.replace(self.jsonl_path.with_name(self.jsonl_path.name + ".1"))
                self._jsonl = _open_private(self.jsonl_path)
        except OSError as exc:  # a full disk must not stop enforcement
            log.warning("cannot write %s: %s; events stay in the database", self.jsonl_path, exc)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def subscribe(self, agent: str | None = None, min_level: str = "info") -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self._subscribers[queue] = (agent, LEVELS.get(min_level, 20))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.pop(queue, None)
