"""Placement notes: what a placement decided, made durable before the exec is continued.

The tool call's record reaches the store on the event loop, after the SIGCONT (placement
runs on the tracker's thread, and a store write there would add SQLite's latency, or a busy
database's wait, to every tool call's start). A daemon SIGKILLed in between, or one whose
queued store writes are lost with it (the store defers writes while another process holds
its lock), used to leave a running tool call with no record: re-adoption then made one up
(the policy's defaults, no argv, no intent, started at the restart, so a timeout restarted
too). So placement first appends one line here: the tool call's id, cgroup, leader (pid and
start time), start, rule, resolved limits, clips, intent and priority. It is one write(2) to
the page cache (a few µs; survives the process, like WAL's synchronous=NORMAL, not a power
loss, which takes the cgroups too), done while the exec is still stopped.

Re-adoption reads a note only for a tool cgroup it finds populated without a record, and
rebuilds exactly the record placement would have written. Two generations of at most
MAX_BYTES each are kept: a note is needed only until its record is in the store
(milliseconds, or as long as the database stays locked).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from agentd import heldsys

log = logging.getLogger("agentd.toolcalls")

MAX_BYTES = 1 << 20  # per generation (~4,000 notes)
MAX_LINE = 16 * 1024  # a longer line is not a note of ours


class PlacementNotes:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.old = self.path.with_name(self.path.name + ".1")
        self._lock = threading.Lock()  # rotation against a note being written
        self._fd = self._open()
        self.failed = 0

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)

    def write(self, note: dict) -> bool:
        """One line, one write(2); thread-safe. A failed write never fails the placement."""
        line = (json.dumps(note, separators=(",", ":"), default=str) + "\n").encode()
        try:
            with self._lock:  # on the gated path, without giving up the GIL (agentd.heldsys)
                (heldsys.write_fd if heldsys.active() else os.write)(self._fd, line)
            return True
        except OSError as exc:
            self.failed += 1
            if self.failed == 1:
                log.warning("could not write a placement note to %s: %s", self.path, exc)
            return False

    def rotate_if_large(self) -> bool:
        """On the loop: past MAX_BYTES the current file becomes the old generation."""
        try:
            if os.fstat(self._fd).st_size < MAX_BYTES:
                return False
            with self._lock:
                os.replace(self.path, self.old)
                fd, self._fd = self._fd, self._open()
            os.close(fd)
            return True
        except OSError as exc:
            log.warning("could not rotate %s: %s", self.path, exc)
            return False

    def by_cgroup(self) -> dict[str, dict]:
        """Every note, newest last wins, keyed by the tool cgroup it names."""
        out: dict[str, dict] = {}
        for path in (self.old, self.path):
            try:
                with open(path, "rb") as f:
                    for raw in f:
                        if len(raw) > MAX_LINE or not raw.endswith(b"\n"):
                            continue  # a line cut short by a crash in the middle of a write
                        try:
                            note = json.loads(raw)
                        except ValueError:
                            continue
                        if isinstance(note, dict) and isinstance(note.get("cgroup"), str):
                            out[note["cgroup"]] = note
            except FileNotFoundError:
                continue
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
