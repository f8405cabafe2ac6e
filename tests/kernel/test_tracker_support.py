"""Shared by the tracker kernel tests (no tests here): an event sink that tests can wait on."""

from __future__ import annotations

import threading
import time


class Recorder:
    """A tracker sink: keeps every event; hooks run in the consumer thread first, as the
    daemon's placement would."""

    def __init__(self):
        self.events = []
        self.hooks = []
        self.cond = threading.Condition()

    def __call__(self, ev):
        for hook in self.hooks:
            hook(ev)
        with self.cond:
            self.events.append(ev)
            self.cond.notify_all()

    def find(self, pred):
        with self.cond:
            return [e for e in self.events if pred(e)]

    def wait(self, pred, timeout=5.0):
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                hits = [e for e in self.events if pred(e)]
                if hits:
                    return hits[0]
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching event within {timeout}s; {len(self.events)} events seen")
                self.cond.wait(left)
