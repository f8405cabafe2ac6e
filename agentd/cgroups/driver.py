"""The one interface both cgroup drivers implement.

Every path is relative to the delegated root (e.g. "agents/a1/tools/0003-pytest"), the same
in every hierarchy. Decision code speaks only this interface; the drivers are the thin code
that touches cgroupfs. A missing pid (ESRCH) is normal and never an error.
"""

from __future__ import annotations

import os
import select
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


class CgroupError(OSError):
    """A cgroupfs operation failed for a reason other than a vanished process."""


@dataclass
class PressureStats:
    """One PSI line pair (some/full) for a resource: avg10 in percent, total in µs."""

    some_avg10: float = 0.0
    full_avg10: float = 0.0
    some_total_us: int = 0
    full_total_us: int = 0


@dataclass
class CgroupStats:
    memory_current: int = 0
    memory_peak: int = 0  # memory.peak (v2) or memory.max_usage_in_bytes (v1); 0 if unknown
    memory_limit: int | None = None  # hard limit in force, None for unlimited
    memory_high: int | None = None  # v2 memory.high in force (the throttle point), None for unlimited or v1
    memory_events: dict[str, int] = field(default_factory=dict)  # v2 memory.events; v1: oom/oom_kill/max from failcnt/oom_control
    cpu_usage_us: int = 0
    pids_current: int = 0
    pids_max_events: int = 0  # forks refused at pids.max (pids.events "max")
    memory_pressure: PressureStats = field(default_factory=PressureStats)
    frozen: bool = False
    populated: bool = False


@dataclass
class DriverFeatures:
    """What this kernel and mount layout offer; `missing` explains each absent feature in a line."""

    kind: str  # "v2" or "hybrid"
    memory_high: bool = False  # v2 only
    oom_pause: bool = False  # v1 memory.oom_control + eventfd: pause at the limit, daemon decides
    psi_triggers: bool = False
    cgroup_kill: bool = False
    freeze: bool = False
    swap: bool = False
    missing: dict[str, str] = field(default_factory=dict)
    # Added: 0 when any PSI window of 0.5-10 s is accepted; 2_000_000 when the kernel treats
    # this process as unprivileged for PSI (no CAP_SYS_RESOURCE in its eyes) and wants whole 2 s.
    psi_window_multiple_us: int = 0


@dataclass
class Limits:
    """Resource bounds for one cgroup; None leaves a knob untouched (unlimited at creation)."""

    memory_high: int | None = None  # bytes; v2 throttle point (ignored by hybrid)
    memory_max: int | None = None  # bytes; hard limit
    swap_max: int | None = None  # bytes
    cpu_weight: int | None = None  # 1..10000 (v2 scale; hybrid maps to cpu.shares)
    cpu_max_quota_us: int | None = None  # per cpu_period_us; None = unlimited
    cpu_period_us: int = 100_000
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    pids_max: int | None = None
    oom_pause: bool = False  # hybrid: memory.oom_control=1 so the daemon decides at the limit


class CgroupDriver(ABC):
    kind: str

    @abstractmethod
    def features(self) -> DriverFeatures: ...

    @abstractmethod
    def create(self, rel: str, limits: "Limits | None" = None) -> None:
        """Create rel (and parents), enabling controllers down the path. Idempotent. With
        limits, a driver may create it only in the hierarchies those limits need (a tool
        call's cgroup); without, in every hierarchy."""

    @abstractmethod
    def remove(self, rel: str) -> None:
        """Remove rel and any empty descendants; the caller kills processes first. Missing is fine."""

    @abstractmethod
    def exists(self, rel: str) -> bool: ...

    @abstractmethod
    def children(self, rel: str) -> list[str]:
        """Names of the direct child cgroups of rel."""

    @abstractmethod
    def move(self, pid: int, rel: str) -> bool:
        """Move pid into rel in every hierarchy. False when the pid is gone (ESRCH)."""

    @abstractmethod
    def procs(self, rel: str) -> list[int]:
        """Pids directly in rel (v2 hierarchy's view)."""

    @abstractmethod
    def apply_limits(self, rel: str, limits: Limits) -> None: ...

    def take_spare(self, rel: str, limits: Limits) -> bool:
        """Make rel from a spare cgroup made ahead with exactly these limits (make_spare),
        limits included. False when there is none: the caller creates and limits rel itself."""
        return False

    def make_spare(self, parent: str, limits: Limits) -> None:
        """Prepare a spare under parent for the next take_spare with these limits (off the
        placement path). A driver that cannot rename cgroups keeps none."""

    def knob_path(self, rel: str, name: str) -> str:
        """The file that holds knob `name` (e.g. "cpuset.mems", "memory.reclaim", "cpu.weight")
        for rel, in whichever hierarchy owns its controller: what a policy kind's actuator
        reads and writes. CgroupError(ENOENT) when no mounted hierarchy has that controller."""
        raise CgroupError(2, f"{type(self).__name__} cannot locate {name}")

    @abstractmethod
    def freeze(self, rel: str) -> None: ...

    @abstractmethod
    def thaw(self, rel: str) -> None: ...

    @abstractmethod
    def kill(self, rel: str) -> None:
        """End every process in rel's subtree (cgroup.kill on v2; freeze, SIGKILL, thaw otherwise)."""

    @abstractmethod
    def stats(self, rel: str) -> CgroupStats: ...

    def final_stats(self, rel: str) -> CgroupStats:
        """An emptied cgroup's last figures: what its end needs (peak, limits, OOM kills,
        refused forks, CPU), not what a running one is sampled for (usage, pressure, pids
        now, populated: reported as 0/empty). Drivers read less; this default reads all."""
        return self.stats(rel)

    @abstractmethod
    def cgroup_id(self, rel: str) -> int:
        """The v2 cgroup id (inode of the v2 directory), what bpf_get_current_cgroup_id returns."""

    @abstractmethod
    def path_of_id(self, cgroup_id: int) -> str | None:
        """Reverse of cgroup_id for cgroups under the root; None when not ours."""

    @abstractmethod
    def open_oom_watch(self, rel: str) -> int:
        """An fd that becomes readable on an OOM event in rel: v1 eventfd via
        cgroup.event_control on memory.oom_control, v2 an inotify-free poll on memory.events
        (POLLPRI). The caller closes it."""

    @abstractmethod
    def open_psi_trigger(self, rel: str, resource: str, kind: str, stall_us: int, window_us: int) -> int:
        """An fd with a PSI trigger ("full 150000 1000000") on <resource>.pressure; poll POLLPRI."""

    # Optional methods (added after the first interface; concrete so fakes need not define them).

    def memory_stat(self, rel: str) -> dict[str, int]:
        """rel's memory.stat, hierarchical (its whole subtree: v1's total_* keys, named as on
        v2), or {} when no mounted hierarchy has the memory controller. What of the usage
        reclaim could free: agentd.cgroups.parse.unreclaimable_bytes."""
        from agentd.cgroups import fs  # both import this module
        from agentd.cgroups.parse import hierarchical_memory_stat, parse_flat_keyed

        try:
            path = self.knob_path(rel, "memory.stat")
        except CgroupError:
            return {}
        return hierarchical_memory_stat(parse_flat_keyed(fs.read(path)))

    def oom_watch_poll_mask(self) -> int:
        """What to poll the open_oom_watch fd for: POLLIN for the v1 eventfd (asyncio
        add_reader works), POLLPRI for the v2 memory.events fd (use agentd.cgroups.psi)."""
        return select.POLLIN

    def read_oom_watch(self, fd: int) -> int:
        """Consume one notification so the fd can signal again (eventfd: the count; v2: re-read)."""
        try:
            return os.eventfd_read(fd)
        except BlockingIOError:
            return 0
