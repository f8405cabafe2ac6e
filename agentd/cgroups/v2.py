"""cgroup v2 driver: one unified hierarchy with memory, cpu, cpuset, io and pids controllers.

Controllers are enabled in cgroup.subtree_control of every ancestor of a cgroup, from the
delegated root down. A cgroup that enables controllers for its children cannot hold
processes (the no-internal-process rule), so agentd keeps processes only in leaves
(daemon, agents/<a>/runtime, agents/<a>/tools/<seq>-<tool>) and this driver never moves a
process into a cgroup whose subtree_control is set.
"""

from __future__ import annotations

import errno
import os
import select

from agentd.cgroups import fs
from agentd.cgroups.driver import CgroupError, CgroupStats, DriverFeatures, Limits
from agentd.cgroups.parse import format_v2_cpu_max, format_v2_max, parse_flat_keyed, parse_size
from agentd.cgroups.unified import UnifiedBackedDriver, UnifiedTree

WANTED_CONTROLLERS = ("memory", "cpu", "pids", "cpuset", "io")



# stats(): file -> (CgroupStats field, parser)
_STAT_FILES = {
    "memory.current": ("memory_current", int),
    "memory.peak": ("memory_peak", int),
    "memory.max": ("memory_limit", parse_size),
    "memory.high": ("memory_high", parse_size),
    "memory.events": ("memory_events", parse_flat_keyed),
    "pids.current": ("pids_current", int),
    "pids.events": ("pids_max_events", lambda text: parse_flat_keyed(text).get("max", 0)),
}

class V2Driver(UnifiedBackedDriver):
    kind = "v2"

    def __init__(self, mount: str = "/sys/fs/cgroup", root: str = "/agentd", create_root: bool = True):
        self.tree = UnifiedTree(mount, root)
        if create_root:
            self.tree.mkdirs("")

    # controllers ----------------------------------------------------------------------

    def available_controllers(self) -> list[str]:
        """Controllers the delegated root may hand to its children (its cgroup.controllers)."""
        try:
            have = fs.read(self.tree.file("", "cgroup.controllers")).split()
        except CgroupError:
            return []
        return [c for c in WANTED_CONTROLLERS if c in have]

    def enabled_controllers(self, rel: str) -> list[str]:
        return fs.read(self.tree.file(rel, "cgroup.subtree_control")).split()

    def make_dirs(self, rel: str) -> None:
        """mkdir rel (and parents) without enabling controllers anywhere."""
        self.tree.mkdirs(rel)

    def enable_controllers(self, rel: str) -> None:
        """Enable the available controllers in subtree_control of the root and every ancestor
        of rel (not rel itself, which stays a leaf that may hold processes)."""
        rel = fs.validate_rel(rel)
        parts = rel.split("/") if rel else []
        want = self.available_controllers()
        if not want or not parts:
            return
        for i in range(len(parts)):
            anc = "/".join(parts[:i])
            have = set(self.enabled_controllers(anc))
            missing = [c for c in want if c not in have]
            if not missing:
                continue
            try:
                fs.write(self.tree.file(anc, "cgroup.subtree_control"), " ".join(f"+{c}" for c in missing))
            except CgroupError as e:
                if e.errno == errno.EBUSY:
                    pids = self.tree.procs(anc)
                    raise CgroupError(
                        errno.EBUSY,
                        f"cannot enable {' '.join(missing)} for the children of {self.tree.dir(anc)}: "
                        f"processes {pids[:10]} sit in it (cgroup v2 no-internal-process rule); "
                        "move them to a leaf such as 'daemon' first",
                    ) from e
                raise

    def features(self) -> DriverFeatures:
        f = DriverFeatures(kind=self.kind)
        avail = self.available_controllers()
        for c in WANTED_CONTROLLERS:
            if c not in avail:
                f.missing[c] = f"the {c} controller is not available in {self.tree.root_dir}/cgroup.controllers"
        f.memory_high = "memory" in avail
        f.missing["oom_pause"] = "cgroup v2 has no oom_kill_disable; memory.high throttles instead"
        self._unified_features(f)
        f.swap = "memory" in avail and fs.has_swap()
        if not f.swap:
            f.missing["swap"] = "no swap device or no memory controller, so swap_max does nothing"
        return f

    # grouping -------------------------------------------------------------------------

    def create(self, rel: str, limits: Limits | None = None) -> None:
        self.tree.mkdirs(rel)
        self.enable_controllers(rel)

    def remove(self, rel: str) -> None:
        self.tree.remove(rel)

    def move(self, pid: int, rel: str) -> bool:
        return self.tree.move(pid, rel)

    # limits ---------------------------------------------------------------------------

    def knob_path(self, rel: str, name: str) -> str:
        return self.tree.file(fs.validate_rel(rel), name)

    def apply_limits(self, rel: str, limits: Limits) -> None:
        rel = fs.validate_rel(rel)
        writes: list[tuple[str, str]] = []
        if limits.memory_max is not None:
            writes.append(("memory.max", format_v2_max(limits.memory_max)))
        if limits.memory_high is not None:
            writes.append(("memory.high", format_v2_max(limits.memory_high)))
        if limits.swap_max is not None:
            writes.append(("memory.swap.max", format_v2_max(limits.swap_max)))
        if limits.cpu_weight is not None:
            if not 1 <= limits.cpu_weight <= 10_000:
                raise ValueError(f"cpu weight must be within 1..10000: {limits.cpu_weight}")
            writes.append(("cpu.weight", str(limits.cpu_weight)))
        # cpu_max_quota_us None means unlimited (Limits says so), not "untouched".
        writes.append(("cpu.max", format_v2_cpu_max(limits.cpu_max_quota_us, limits.cpu_period_us)))
        if limits.cpuset_cpus is not None:
            writes.append(("cpuset.cpus", limits.cpuset_cpus))
        if limits.cpuset_mems is not None:
            writes.append(("cpuset.mems", limits.cpuset_mems))
        if limits.pids_max is not None:
            writes.append(("pids.max", format_v2_max(limits.pids_max)))
        for name, value in writes:
            path = self.tree.file(rel, name)
            if not os.path.exists(path):
                if name == "cpu.max" and limits.cpu_max_quota_us is None:
                    continue  # nothing to undo where there is no cpu controller
                controller = name.split(".", 1)[0]
                raise CgroupError(
                    errno.ENOENT,
                    f"cannot set {name} on {self.tree.dir(rel)}: the {controller} controller is not "
                    "enabled there (create() enables it from the root down)",
                )
            fs.write(path, value)

    # control --------------------------------------------------------------------------

    # observation ----------------------------------------------------------------------

    def _read_stats(self, rel: str, names: tuple[str, ...]) -> CgroupStats:
        """The named files of one cgroup into a CgroupStats; a file the kernel lacks stays unset."""
        rel = fs.validate_rel(rel)
        s = CgroupStats()
        d = self.tree.dir(rel)
        for name in names:
            try:
                text = fs.read(os.path.join(d, name))
            except CgroupError as e:
                if e.errno == errno.ENOENT:
                    continue
                raise
            attr, parse = _STAT_FILES[name]
            setattr(s, attr, parse(text))
        return s

    def stats(self, rel: str) -> CgroupStats:
        return self._unified_stats(rel, self._read_stats(rel, tuple(_STAT_FILES)))

    def final_stats(self, rel: str) -> CgroupStats:
        """An emptied cgroup's end: no current usage to read, only peaks, limits and events."""
        s = self._read_stats(rel, ("memory.peak", "memory.max", "memory.high", "memory.events", "pids.events"))
        s.cpu_usage_us = self.tree.cpu_usage_us(rel)
        return s

    def open_oom_watch(self, rel: str) -> int:
        """memory.events opened read-only: kernfs signals POLLPRI (and POLLERR) each time a
        counter in it changes (high, max, oom, oom_kill). Call read_oom_watch after each wake."""
        path = self.tree.file(rel, "memory.events")
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise CgroupError(
                e.errno, f"cannot watch {path}: {os.strerror(e.errno or 0)} (memory controller not enabled?)"
            ) from e

    def oom_watch_poll_mask(self) -> int:
        return select.POLLPRI

    def read_oom_watch(self, fd: int) -> int:
        """Re-read memory.events (kernfs re-arms the POLLPRI notification on read); returns oom_kill."""
        return parse_flat_keyed(os.pread(fd, 4096, 0).decode()).get("oom_kill", 0)


