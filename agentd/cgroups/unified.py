"""One cgroup v2 hierarchy under a delegated root: what both drivers do there.

Grouping, membership, freeze, kill, events, PSI and cgroup ids need no controller, so the
hybrid driver uses this on /sys/fs/cgroup/unified just as the v2 driver does on /sys/fs/cgroup.
"""

from __future__ import annotations

import errno
import os
import signal

from agentd.cgroups import fs
from agentd.cgroups.driver import CgroupDriver, CgroupError, CgroupStats, DriverFeatures, PressureStats
from agentd.cgroups.parse import parse_flat_keyed, parse_psi
from agentd.cgroups.psi import open_trigger

PSI_RESOURCES = ("memory", "cpu", "io")
PSI_KINDS = ("some", "full")
FREEZE_WAIT_S = 3.0  # a task in a memory.high penalty sleep (up to 2 s) freezes only after it
KILL_WAIT_S = 5.0


class UnifiedTree(fs.Hierarchy):
    def __init__(self, mount: str, root: str):
        super().__init__(mount, root)
        self._id_cache: dict[int, str] = {}

    # grouping -------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        return os.path.isdir(self.dir(rel))

    def children(self, rel: str) -> list[str]:
        return fs.child_dirs(self.dir(rel))

    def remove(self, rel: str) -> None:
        fs.rmdir_tree(self.dir(rel))

    def procs(self, rel: str) -> list[int]:
        return fs.read_pids(self.file(rel, "cgroup.procs"))

    def move(self, pid: int, rel: str) -> bool:
        procs = self.file(rel, "cgroup.procs")
        try:
            return fs.write_pid(procs, pid)
        except CgroupError as e:
            if e.errno == errno.EBUSY:
                raise CgroupError(
                    errno.EBUSY,
                    f"cannot put pid {pid} into {self.dir(rel)}: it enables controllers for its "
                    "children, and cgroup v2 keeps processes only in leaves",
                ) from e
            if e.errno == errno.ENOENT:
                raise CgroupError(errno.ENOENT, f"cannot put pid {pid} into {self.dir(rel)}: no such cgroup") from e
            raise

    # state ----------------------------------------------------------------------------

    def events(self, rel: str) -> dict[str, int]:
        return parse_flat_keyed(fs.read(self.file(rel, "cgroup.events")))

    def freeze(self, rel: str, wait_s: float = FREEZE_WAIT_S) -> None:
        """Freeze rel's subtree and wait (bounded) until the kernel reports it frozen."""
        fs.write(self.file(rel, "cgroup.freeze"), "1")
        if fs.wait_events_key(self.file(rel, "cgroup.events"), "frozen", 1, wait_s):
            return
        try:
            cancelled = fs.read(self.file(rel, "cgroup.freeze")).strip() == "0"
        except CgroupError:
            cancelled = True  # the cgroup is gone: nothing is left to freeze
        if not cancelled:  # thawed meanwhile (the decision changed): not a failure
            raise CgroupError(errno.ETIMEDOUT, f"{self.dir(rel)} did not report frozen within {wait_s:.1f} s")

    def thaw(self, rel: str) -> None:
        fs.write(self.file(rel, "cgroup.freeze"), "0")

    def has_kill(self) -> bool:
        return os.path.exists(os.path.join(self.root_dir, "cgroup.kill"))

    def kill(self, rel: str, wait_s: float = KILL_WAIT_S, use_kill_file: bool = True) -> None:
        """SIGKILL the whole subtree, then wait (bounded) for cgroup.events populated 0.
        use_kill_file=False takes the freeze/signal/thaw path of kernels without cgroup.kill."""
        path = self.dir(rel)
        if not os.path.isdir(path):
            return
        kill_file = os.path.join(path, "cgroup.kill")
        if use_kill_file and os.path.exists(kill_file):
            fs.write(kill_file, "1")
        else:
            # No cgroup.kill (kernel < 5.14): freeze so nothing forks between listing and killing.
            fs.write(os.path.join(path, "cgroup.freeze"), "1")
            fs.wait_events_key(os.path.join(path, "cgroup.events"), "frozen", 1, FREEZE_WAIT_S)
            try:
                fs.signal_pids(fs.subtree_pids(path), signal.SIGKILL)
            finally:
                fs.write(os.path.join(path, "cgroup.freeze"), "0")
        if not fs.wait_events_key(os.path.join(path, "cgroup.events"), "populated", 0, wait_s):
            if not os.path.isdir(path):
                return
            left = fs.subtree_pids(path)
            raise CgroupError(
                errno.ETIMEDOUT,
                f"processes {left[:10]} in {path} were sent SIGKILL but still run after {wait_s:.1f} s "
                "(uninterruptible sleep?)",
            )

    def cpu_usage_us(self, rel: str) -> int:
        """cpu.stat usage_usec: the v2 core provides it even with no cpu controller enabled."""
        return parse_flat_keyed(fs.read(self.file(rel, "cpu.stat"))).get("usage_usec", 0)

    def pressure(self, rel: str, resource: str) -> PressureStats:
        try:
            return parse_psi(fs.read(self.file(rel, f"{resource}.pressure")))
        except CgroupError as e:
            if e.errno in (errno.ENOENT, errno.EOPNOTSUPP):
                return PressureStats()
            raise

    def open_psi_trigger(self, rel: str, resource: str, kind: str, stall_us: int, window_us: int) -> int:
        if resource not in PSI_RESOURCES:
            raise ValueError(f"PSI resource must be one of {PSI_RESOURCES}: {resource!r}")
        if kind not in PSI_KINDS:
            raise ValueError(f"PSI kind must be 'some' or 'full': {kind!r}")
        if not 0 < stall_us <= window_us:
            raise ValueError(f"PSI stall ({stall_us} µs) must be positive and at most the window ({window_us} µs)")
        path = self.file(rel, f"{resource}.pressure")
        try:
            return open_trigger(path, kind, stall_us, window_us)
        except FileNotFoundError as e:
            raise CgroupError(e.errno, f"no {path}: no such cgroup, or a kernel without PSI") from e
        except CgroupError as e:
            raise CgroupError(
                e.errno,
                f"{e.strerror} (the window must be 0.5-10 s, a whole multiple of 2 s for processes "
                "the kernel deems unprivileged, and the stall at most the window)",
            ) from e

    def psi_window_multiple_us(self) -> int:
        """Probe: 0 if a 1 s window is accepted, 2_000_000 if only multiples of 2 s are."""
        try:
            fd = self.open_psi_trigger("", "memory", "some", 100_000, 1_000_000)
        except CgroupError as e:
            return 2_000_000 if e.errno == errno.EINVAL else 0
        os.close(fd)
        return 0

    # ids ------------------------------------------------------------------------------

    def cgroup_id(self, rel: str) -> int:
        path = self.dir(rel)
        try:
            ino = os.stat(path).st_ino
        except OSError as e:
            raise CgroupError(e.errno, f"cannot stat cgroup {path}: {os.strerror(e.errno or 0)}") from e
        self._id_cache[ino] = fs.validate_rel(rel)
        return ino

    def path_of_id(self, cgroup_id: int) -> str | None:
        rel = self._id_cache.get(cgroup_id)
        if rel is not None:
            try:
                if os.stat(self.dir(rel)).st_ino == cgroup_id:
                    return rel
            except OSError:
                pass
            del self._id_cache[cgroup_id]
        # Walk the tree: ids are never reused while a cgroup exists, and our tree is small.
        for dirpath, dirnames, _ in os.walk(self.root_dir):
            for d in dirnames:
                full = os.path.join(dirpath, d)
                try:
                    ino = os.stat(full).st_ino
                except OSError:
                    continue
                if ino == cgroup_id:
                    rel = os.path.relpath(full, self.root_dir)
                    self._id_cache[ino] = rel
                    return rel
        try:
            if os.stat(self.root_dir).st_ino == cgroup_id:
                return ""
        except OSError:
            pass
        return None



class UnifiedBackedDriver(CgroupDriver):
    """What both drivers do the same way, in the v2 hierarchy held in self.tree."""

    tree: UnifiedTree

    def _unified_features(self, f: DriverFeatures) -> None:
        f.psi_triggers = os.path.exists(self.tree.file("", "memory.pressure"))
        if f.psi_triggers:
            f.psi_window_multiple_us = self.tree.psi_window_multiple_us()
        else:
            f.missing["psi_triggers"] = "no memory.pressure in the v2 hierarchy (kernel without PSI or psi=0)"
        f.cgroup_kill = self.tree.has_kill()
        if not f.cgroup_kill:
            f.missing["cgroup_kill"] = "no cgroup.kill (kernel < 5.14): kill freezes, signals every pid, thaws"
        f.freeze = os.path.exists(self.tree.file("", "cgroup.freeze"))
        if not f.freeze:
            f.missing["freeze"] = "no cgroup.freeze in the v2 hierarchy (kernel < 5.2)"

    def _unified_stats(self, rel: str, s: CgroupStats) -> CgroupStats:
        s.cpu_usage_us = self.tree.cpu_usage_us(rel)
        s.memory_pressure = self.tree.pressure(rel, "memory")
        ev = self.tree.events(rel)
        s.frozen = bool(ev.get("frozen", 0))
        s.populated = bool(ev.get("populated", 0))
        return s

    def exists(self, rel: str) -> bool:
        return self.tree.exists(rel)

    def children(self, rel: str) -> list[str]:
        return self.tree.children(rel)

    def procs(self, rel: str) -> list[int]:
        return self.tree.procs(rel)

    def freeze(self, rel: str) -> None:
        self.tree.freeze(rel)

    def thaw(self, rel: str) -> None:
        self.tree.thaw(rel)

    def kill(self, rel: str) -> None:
        self.tree.kill(rel)

    def cgroup_id(self, rel: str) -> int:
        return self.tree.cgroup_id(rel)

    def path_of_id(self, cgroup_id: int) -> str | None:
        return self.tree.path_of_id(cgroup_id)

    def open_psi_trigger(self, rel: str, resource: str, kind: str, stall_us: int, window_us: int) -> int:
        return self.tree.open_psi_trigger(rel, resource, kind, stall_us, window_us)
