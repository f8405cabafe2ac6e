"""The tool-call engine's kernel-facing effects, one job each, no decisions: make a tool
call's cgroup with its limits, change limits, move a process, freeze, thaw, kill, remove,
and set a process's oom_score_adj. Where the effect replaces a value there is one to give
back (a process's oom_score_adj, the cgroup a process is moved out of) it is returned, so
the engine can restore it: the runtime's oom_score_adj goes back when its agent ends.

Placement calls these on the tracker's thread (agentd.toolcalls.placement); everything
else on the event loop (freeze and kill through run_blocking: they wait for the kernel).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from agentd.cgroups.driver import CgroupDriver, CgroupError, Limits
from agentd.procfs import alive, read_oom_score_adj, set_oom_score_adj
from agentd import procfs


@dataclass(frozen=True)
class OomWrite:
    written: bool | None  # True written, False the process is gone, None refused (lowering needs CAP_SYS_RESOURCE)
    old: int | None  # the value before (None: not read, or the process is gone)


def oom_score_adj(pid: int, value: int, *, keep_old: bool = False) -> OomWrite:
    """Write a process's oom_score_adj; with keep_old, read the value it replaces first
    (the runtime's, to restore at the agent's end; a tool call's leader needs no restore)."""
    old = read_oom_score_adj(pid) if keep_old else None
    return OomWrite(set_oom_score_adj(pid, value), old)


def restore_oom_score_adj(pid: int, start: int, old: int) -> bool:
    """Put a process's oom_score_adj back, only if pid still names the process it was taken
    from (start time): a reused pid is someone else's. True when written."""
    return alive(pid, start) and bool(set_oom_score_adj(pid, old))


class Actuators:
    def __init__(self, driver: CgroupDriver):
        self.driver = driver

    def make_cgroup(self, rel: str, limits: Limits, clock=time.monotonic_ns) -> list[int]:
        """A new tool cgroup with its limits written: a spare renamed (hybrid: made ahead with
        these limits) or made now. Returns the clock after each step (mkdir, limits) for the
        placement's per-step latency. Nothing replaced, so nothing to give back."""
        if self.driver.take_spare(rel, limits):
            return [clock(), clock()]
        self.driver.create(rel, limits)
        marks = [clock()]
        self.driver.apply_limits(rel, limits)
        marks.append(clock())
        return marks

    def make_spare(self, parent: str, limits: Limits) -> None:
        if getattr(self.driver, "spares", 0):
            self.driver.make_spare(parent, limits)

    def create(self, rel: str) -> None:
        self.driver.create(rel)

    def set_limits(self, rel: str, limits: Limits) -> None:
        """The engine keeps the limits it wrote in its records (the old value lives there)."""
        self.driver.apply_limits(rel, limits)

    def set_memory_max(self, rel: str, value: int, swap_max: int | None) -> None:
        """v1 grant: the hard limit (the pause point) raised, still pausing there."""
        self.driver.apply_limits(rel, Limits(memory_max=value, swap_max=swap_max if swap_max is not None else 0, oom_pause=True))

    def set_memory_high(self, rel: str, value: int) -> None:
        self.driver.apply_limits(rel, Limits(memory_high=value))

    def move(self, pid: int, rel: str) -> bool:
        """False when the process is gone. The caller knows where it came from (the runtime)."""
        return self.driver.move(pid, rel)

    def move_back(self, pid: int, rel: str) -> str | None:
        """pid belongs in rel but sits elsewhere: move it back. Returns where it was (the old
        value), or None when it is already there, gone, or could not be moved."""
        current = procfs.read_cgroup_v2(pid)
        if current is None or current.rstrip("/").endswith("/" + rel):
            return None
        return current if self.driver.move(pid, rel) else None

    def move_to_v2_path(self, pid: int, path: str) -> bool:
        """Back to a cgroup the daemon does not manage (a refused registration's original)."""
        try:
            with open(os.path.join(procfs.v2_mount(), path.lstrip("/"), "cgroup.procs"), "w") as f:
                f.write(str(pid))
            return True
        except OSError:
            return False

    def freeze(self, rel: str) -> None:
        self.driver.freeze(rel)

    def thaw(self, rel: str) -> None:
        self.driver.thaw(rel)

    def kill(self, rel: str) -> None:
        self.driver.kill(rel)

    def remove(self, rel: str) -> None:
        self.driver.remove(rel)

    def remove_if_empty(self, rel: str) -> None:
        try:
            if not self.driver.procs(rel):
                self.driver.remove(rel)
        except (CgroupError, OSError):
            pass

    def populated_now(self, rel: str) -> bool:
        """cgroup.events alone (one small read, not a whole sample); gone counts as empty."""
        tree = getattr(self.driver, "tree", None)
        if tree is None or not hasattr(tree, "events"):
            return self.populated(rel)
        try:
            return bool(tree.events(rel).get("populated", 0))
        except (CgroupError, OSError):
            return False

    def populated(self, rel: str) -> bool:
        try:
            return self.driver.stats(rel).populated
        except (CgroupError, OSError):
            return False
