"""Hybrid driver: the v2 hierarchy groups, freezes, kills and reports PSI; v1 controllers limit.

The same relative path exists in every hierarchy, except a tool call's: it is made only in
v2, memory and the v1 hierarchies its limits use (create), often by renaming a spare made
ahead (make_spare / take_spare), since every mkdir and move holds a gated exec stopped.

v1 has no memory.high; instead memory.oom_control=1 pauses a process at its limit (under_oom 1) and an eventfd registered
through cgroup.event_control wakes the daemon, which then grants more, freezes or kills.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading

from agentd.cgroups import fs
from agentd.cgroups.driver import CgroupError, CgroupStats, DriverFeatures, Limits
from agentd.cgroups.parse import format_v2_cpu_max, parse_flat_keyed, parse_size, weight_to_shares
from agentd.cgroups.unified import UnifiedBackedDriver, UnifiedTree

V1_CONTROLLERS = ("memory", "cpu", "cpuset", "pids")


class V1Tree(fs.Hierarchy):
    """One v1 hierarchy (one mount) under its own delegated root."""

    def __init__(self, controller: str, mount: str, root: str):
        super().__init__(mount, root)
        self.controller = controller

    def mkdirs(self, rel: str) -> list[str]:
        created = super().mkdirs(rel)
        if self.controller == "cpuset":
            # A v1 cpuset starts with empty cpus/mems and refuses tasks until both are set.
            # A leaf that already existed may be one a daemon made and died before filling
            # (a crash right after its mkdir): it is filled now, or no task could join it.
            for path in created or [self.dir(rel)]:
                parent = os.path.dirname(path)
                for name in ("cpuset.cpus", "cpuset.mems"):
                    if not fs.read(os.path.join(path, name)).strip():
                        fs.write(os.path.join(path, name), fs.read(os.path.join(parent, name)).strip())
        return created


class HybridDriver(UnifiedBackedDriver):
    kind = "hybrid"
    tool_cgroups_everywhere = False  # True: create(rel, limits) makes rel in every hierarchy (the old way)
    spares = 0  # > 0: keep that many spare v1 tool cgroups per (parent, limits), renamed at placement

    def __init__(self, unified_mount: str, unified_root: str, v1: dict[str, tuple[str, str]], create_root: bool = True):
        """v1 maps a controller name to (mount point, absolute root cgroup path in that hierarchy)."""
        self.tree = UnifiedTree(unified_mount, unified_root)
        self.v1: dict[str, V1Tree] = {}
        seen_dirs: set[str] = set()
        for controller in V1_CONTROLLERS:
            if controller not in v1:
                continue
            mount, root = v1[controller]
            tree = V1Tree(controller, mount, root)
            if tree.root_dir in seen_dirs:  # co-mounted (e.g. cpu,cpuacct) hierarchies share a tree
                continue
            seen_dirs.add(tree.root_dir)
            self.v1[controller] = tree
        # (parent, limits) -> names of spare v1 cgroups made with those limits. v1 cgroups can
        # be renamed within their parent, v2 ones cannot (its kernfs has no rename): a spare
        # saves the v1 mkdirs and limit writes, the v2 mkdir stays on the placement path.
        self._spares: dict[tuple[str, str], list[str]] = {}
        self._spare_seq = itertools.count()
        self._spare_lock = threading.Lock()
        if create_root:
            self.create("")

    def _trees(self) -> list:
        return [*self.v1.values(), self.tree]

    def features(self) -> DriverFeatures:
        f = DriverFeatures(kind=self.kind)
        f.missing["memory_high"] = "cgroup v1 has no memory.high; oom_pause (pause at the limit, daemon decides) stands in"
        mem = self.v1.get("memory")
        if mem is not None and os.path.exists(mem.file("", "memory.oom_control")):
            f.oom_pause = True
        else:
            f.missing["oom_pause"] = "no v1 memory hierarchy with memory.oom_control is mounted"
        for c in V1_CONTROLLERS:
            if c not in self.v1:
                f.missing[c] = f"the v1 {c} controller is not mounted, so its limits are not enforced"
        self._unified_features(f)
        f.swap = bool(mem and os.path.exists(mem.file("", "memory.memsw.limit_in_bytes")) and fs.has_swap())
        if not f.swap:
            f.missing["swap"] = "no swap device or no memsw accounting, so swap_max does nothing"
        return f

    # grouping -------------------------------------------------------------------------

    def create(self, rel: str, limits: Limits | None = None) -> None:
        """With limits (a tool call's cgroup), only the v1 hierarchies those limits use, plus
        memory (its counters are the tool call's record) and v2: each extra v1 mkdir and move
        costs the exec it holds stopped. A hierarchy it is not in leaves it in its parent's
        cgroup there (the agent's limits still hold); apply_limits adds one when needed."""
        rel = fs.validate_rel(rel)
        everywhere = limits is None or self.tool_cgroups_everywhere
        for tree in self._trees() if everywhere else [*self._needed(limits), self.tree]:
            tree.mkdirs(rel)

    def take_spare(self, rel: str, limits: Limits) -> bool:
        rel = fs.validate_rel(rel)
        parent, leaf = os.path.split(rel)
        with self._spare_lock:
            names = self._spares.get((parent, repr(limits)))
            spare = names.pop() if names else None
        if spare is None or self.tool_cgroups_everywhere:
            return False
        for tree in self._needed(limits):
            try:
                fs.rename(tree.dir(f"{parent}/{spare}"), tree.dir(rel))
            except OSError:  # gone with its agent, or a clash: the caller makes rel the usual way
                for t in self._needed(limits):
                    fs.rmdir_tree(t.dir(f"{parent}/{spare}"))
                return False
        self.tree.mkdirs(rel)
        return True

    def make_spare(self, parent: str, limits: Limits) -> None:
        parent = fs.validate_rel(parent)
        key = (parent, repr(limits))
        with self._spare_lock:
            if len(self._spares.get(key, ())) >= self.spares:
                return
        name = f".spare-{next(self._spare_seq)}"  # a dot: never a tool call's <seq>-<tool> name
        for tree in self._needed(limits):
            tree.mkdirs(f"{parent}/{name}")
        self._apply_v1(f"{parent}/{name}", limits)
        with self._spare_lock:
            self._spares.setdefault(key, []).append(name)

    def _forget_spares(self, rel: str) -> None:
        with self._spare_lock:
            for key in [k for k in self._spares if k[0] == rel or k[0].startswith(rel + "/") or not rel]:
                del self._spares[key]

    def _needed(self, limits: Limits) -> list[V1Tree]:
        uses = {"memory": True, "pids": limits.pids_max is not None,
                "cpu": limits.cpu_weight is not None or limits.cpu_max_quota_us is not None,
                "cpuset": limits.cpuset_cpus is not None or limits.cpuset_mems is not None}
        return [tree for controller, tree in self.v1.items() if uses.get(controller, True)]

    def _ensure(self, tree: V1Tree, rel: str) -> bool:
        """rel exists in tree, created now (with the processes of rel's v2 subtree moved in)
        when limits it was created without now need it. False when rel is gone in v2 too."""
        if os.path.isdir(tree.dir(rel)):
            return True
        if not self.tree.exists(rel):
            return False
        tree.mkdirs(rel)
        for pid in fs.subtree_pids(self.tree.dir(rel)):
            fs.write_pid(tree.file(rel, "cgroup.procs"), pid)
        return True

    def remove(self, rel: str) -> None:
        rel = fs.validate_rel(rel)
        # v2 first: it reports which processes still hold the cgroup, before any v1 dir is gone.
        self.tree.remove(rel)
        self._forget_spares(rel)
        for tree in self.v1.values():
            fs.rmdir_tree(tree.dir(rel))

    def move(self, pid: int, rel: str) -> bool:
        rel = fs.validate_rel(rel)
        # Controllers first, so the process is limited before it shows in the v2 grouping.
        for tree in self.v1.values():
            if not fs.isdir(tree.dir(rel)):
                continue  # a tool cgroup made only where its limits need it (create)
            if not fs.write_pid(tree.file(rel, "cgroup.procs"), pid):
                return False
        return self.tree.move(pid, rel)

    # limits ---------------------------------------------------------------------------

    def knob_path(self, rel: str, name: str) -> str:
        rel = fs.validate_rel(rel)
        controller = name.split(".", 1)[0]
        if controller == "cgroup" or name.endswith(".pressure"):  # grouping, freeze, kill, PSI: v2
            return self.tree.file(rel, name)
        tree = self.v1.get(controller) or next(
            (t for t in self.v1.values() if controller in os.path.basename(t.mount).split(",")), None)
        if tree is None:
            raise CgroupError(errno.ENOENT, f"no v1 {controller} hierarchy is mounted, so {name} does not exist here")
        return tree.file(rel, name)

    def apply_limits(self, rel: str, limits: Limits) -> None:
        self._apply_v1(fs.validate_rel(rel), limits)

    def _apply_v1(self, rel: str, limits: Limits) -> None:
        mem = self.v1.get("memory")
        if mem is not None:
            self._apply_memory(mem, rel, limits)
        elif limits.memory_max is not None or limits.oom_pause:
            raise CgroupError(errno.ENOENT, "no v1 memory hierarchy is mounted: cannot apply a memory limit")
        cpu = self.v1.get("cpu")
        wants_cpu = limits.cpu_weight is not None or limits.cpu_max_quota_us is not None
        if cpu is not None and (self._ensure(cpu, rel) if wants_cpu else os.path.isdir(cpu.dir(rel))):
            if limits.cpu_weight is not None:
                fs.write(cpu.file(rel, "cpu.shares"), str(weight_to_shares(limits.cpu_weight)))
            # cpu_max_quota_us None means unlimited (Limits says so), not "untouched".
            format_v2_cpu_max(limits.cpu_max_quota_us, limits.cpu_period_us)  # validates both
            if limits.cpu_max_quota_us is None:
                fs.write(cpu.file(rel, "cpu.cfs_quota_us"), "-1")
            else:
                fs.write(cpu.file(rel, "cpu.cfs_period_us"), str(limits.cpu_period_us))
                fs.write(cpu.file(rel, "cpu.cfs_quota_us"), str(limits.cpu_max_quota_us))
        elif cpu is None and wants_cpu:
            raise CgroupError(errno.ENOENT, "no v1 cpu hierarchy is mounted: cannot apply a cpu limit")
        cpuset = self.v1.get("cpuset")
        if limits.cpuset_cpus is not None or limits.cpuset_mems is not None:
            if cpuset is None:
                raise CgroupError(errno.ENOENT, "no v1 cpuset hierarchy is mounted: cannot pin cpus or mems")
            self._ensure(cpuset, rel)
            if limits.cpuset_cpus is not None:
                fs.write(cpuset.file(rel, "cpuset.cpus"), limits.cpuset_cpus)
            if limits.cpuset_mems is not None:
                fs.write(cpuset.file(rel, "cpuset.mems"), limits.cpuset_mems)
        if limits.pids_max is not None:
            pids = self.v1.get("pids")
            if pids is None:
                raise CgroupError(errno.ENOENT, "no v1 pids hierarchy is mounted: cannot apply pids_max")
            self._ensure(pids, rel)
            fs.write(pids.file(rel, "pids.max"), str(limits.pids_max))

    def _apply_memory(self, mem: V1Tree, rel: str, limits: Limits) -> None:
        fs.write(mem.file(rel, "memory.oom_control"), "1" if limits.oom_pause else "0")
        memsw_file = mem.file(rel, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw_file)
        new_mem = limits.memory_max
        new_memsw = None
        if limits.swap_max is not None and has_memsw:
            base = new_mem if new_mem is not None else parse_size(fs.read(mem.file(rel, "memory.limit_in_bytes")))
            new_memsw = None if base is None else base + limits.swap_max
        if new_mem is None and new_memsw is None:
            return
        # memsw must stay >= the memory limit at every step, so raise memsw first or lower it last.
        cur_memsw = parse_size(fs.read(memsw_file)) if has_memsw else None
        writes: list[tuple[str, str]] = []
        if new_mem is not None:
            writes.append((mem.file(rel, "memory.limit_in_bytes"), str(new_mem)))
        if new_memsw is not None:
            memsw_write = (memsw_file, str(new_memsw))
            if cur_memsw is not None and new_memsw > cur_memsw:
                writes.insert(0, memsw_write)
            else:
                writes.append(memsw_write)
        elif new_mem is not None and cur_memsw is not None and new_mem > cur_memsw:
            raise CgroupError(
                errno.EINVAL,
                f"memory_max {new_mem} exceeds the memory+swap limit {cur_memsw} of {mem.dir(rel)}; "
                "give swap_max as well",
            )
        for path, value in writes:
            try:
                fs.write(path, value)
            except CgroupError as e:
                if e.errno == errno.EBUSY:
                    raise CgroupError(
                        errno.EBUSY,
                        f"{mem.dir(rel)} uses more than {value} bytes and the kernel could not reclaim "
                        "enough to lower its limit",
                    ) from e
                raise

    # control --------------------------------------------------------------------------

    def freeze(self, rel: str) -> None:
        """Freeze rel's subtree. A process paused at its v1 memory limit (under_oom) sleeps in
        the kernel where the freezer cannot reach it: the freeze then stays requested, this
        raises at once, and the process freezes as soon as the limit is raised (or it is killed)."""
        paused = self._under_oom(rel)
        if paused:
            fs.write(self.tree.file(rel, "cgroup.freeze"), "1")
            raise self._paused_error(rel, paused)
        try:
            super().freeze(rel)
        except CgroupError as e:
            paused = self._under_oom(rel) if e.errno == errno.ETIMEDOUT else []
            if not paused:
                raise
            raise self._paused_error(rel, paused) from e

    def _paused_error(self, rel: str, paused: list[str]) -> CgroupError:
        return CgroupError(
            errno.EBUSY,
            f"cannot freeze {self.tree.dir(rel)} yet: {', '.join(paused)} is paused at its memory "
            "limit (under_oom); the freeze stays requested and takes hold once the limit is raised, "
            "or kill it",
        )

    def _under_oom(self, rel: str) -> list[str]:
        mem = self.v1.get("memory")
        if mem is None:
            return []
        out = []
        for dirpath, _, _ in os.walk(mem.dir(rel)):
            try:
                oom = parse_flat_keyed(fs.read(os.path.join(dirpath, "memory.oom_control")))
            except CgroupError:
                continue
            if oom.get("under_oom"):
                out.append(os.path.relpath(dirpath, mem.root_dir))
        return out

    # observation ----------------------------------------------------------------------

    def stats(self, rel: str) -> CgroupStats:
        rel = fs.validate_rel(rel)
        s = CgroupStats()
        mem = self.v1.get("memory")
        if mem is not None:
            s.memory_current = fs.read_int(mem.file(rel, "memory.usage_in_bytes"))
            s.memory_peak = fs.read_int(mem.file(rel, "memory.max_usage_in_bytes"))
            s.memory_limit = parse_size(fs.read(mem.file(rel, "memory.limit_in_bytes")))
            oom = parse_flat_keyed(fs.read(mem.file(rel, "memory.oom_control")))
            s.memory_events = {
                "max": fs.read_int(mem.file(rel, "memory.failcnt")),
                "oom_kill": oom.get("oom_kill", 0),
                "under_oom": oom.get("under_oom", 0),
                "oom_kill_disable": oom.get("oom_kill_disable", 0),
            }
        pids = self.v1.get("pids")
        if pids is not None and os.path.isdir(pids.dir(rel)):  # a tool call without pids_max is not in it
            s.pids_current = fs.read_int(pids.file(rel, "pids.current"))
            s.pids_max_events = parse_flat_keyed(fs.read(pids.file(rel, "pids.events"))).get("max", 0)
        return self._unified_stats(rel, s)

    def final_stats(self, rel: str) -> CgroupStats:
        rel = fs.validate_rel(rel)
        s = CgroupStats()
        mem = self.v1.get("memory")
        if mem is not None:
            s.memory_peak = fs.read_int(mem.file(rel, "memory.max_usage_in_bytes"))
            s.memory_limit = parse_size(fs.read(mem.file(rel, "memory.limit_in_bytes")))
            oom = parse_flat_keyed(fs.read(mem.file(rel, "memory.oom_control")))
            s.memory_events = {"oom_kill": oom.get("oom_kill", 0), "under_oom": oom.get("under_oom", 0)}
        pids = self.v1.get("pids")
        if pids is not None and os.path.isdir(pids.dir(rel)):
            s.pids_max_events = parse_flat_keyed(fs.read(pids.file(rel, "pids.events"))).get("max", 0)
        s.cpu_usage_us = self.tree.cpu_usage_us(rel)
        return s

    def open_oom_watch(self, rel: str) -> int:
        """An eventfd (read it: POLLIN) that the kernel signals when rel hits its memory limit
        and goes under_oom, and also when the cgroup is removed: read stats() to tell which."""
        mem = self.v1.get("memory")
        if mem is None:
            raise CgroupError(errno.ENOENT, "no v1 memory hierarchy is mounted: no OOM notification")
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            ofd = os.open(mem.file(rel, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                fs.write(mem.file(rel, "cgroup.event_control"), f"{efd} {ofd}")
            finally:
                os.close(ofd)
        except (OSError, CgroupError):
            os.close(efd)
            raise
        return efd


