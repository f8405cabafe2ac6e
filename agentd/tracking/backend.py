"""The interface both tracker backends (BCC, cn_proc) implement."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

from agentd.events import ProcEvent

EventSink = Callable[[ProcEvent], None]


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this host; str(exc) says why in one line."""


class TrackerBackend(ABC):
    name: str  # "bpf" or "cn_proc"
    can_gate: bool  # True when execs in gated cgroups are stopped in the kernel (SIGSTOP)

    def load(self) -> None:
        """Acquire the kernel side now (compile/attach, open sockets) so that a failure shows
        before start(); start() calls it if needed. Raises BackendUnavailable. Idempotent."""

    @abstractmethod
    def start(self, sink: EventSink) -> None:
        """Load/attach and start a consumer thread that calls sink(event) for each event.
        sink is called from that thread; it must only hand the event over (e.g.
        loop.call_soon_threadsafe). Raises BackendUnavailable with a one-line reason."""

    @abstractmethod
    def stop(self) -> None:
        """Detach everything and join the consumer thread. Idempotent."""

    @abstractmethod
    def lost_events(self) -> int:
        """Events the kernel could not deliver (ring buffer full), since start."""

    def set_gated_cgroups(self, cgroup_ids: set[int]) -> None:
        """Execs of tasks in these v2 cgroups are stopped (SIGSTOP) until the daemon places them."""
        if cgroup_ids:
            raise NotImplementedError(f"{self.name} backend cannot gate execs")

    def release(self, pid: int) -> bool:
        """Send SIGCONT to a gated pid once it is placed. False when the pid is gone or this
        backend never stops anything."""
        return False

    def stats(self) -> dict[str, int]:
        """Counters for metrics and `agentctl status`; always includes "lost"."""
        return {"lost": self.lost_events()}
