"""A pure process-tree model fed by ProcEvents.

No kernel access of its own: what it needs beyond the event (argv, exe, uid, cgroup after an
exec the event does not describe) comes from an injected reader, so the logic is tested with
fakes. `ppid` is the nearest ancestor still in the tree: when an exited parent is dropped
after its grace period, its children are re-attached to its own parent, so a tool call's
processes stay descendants of their agent even after the intermediate shell is gone (the
kernel would reparent them to init or a subreaper instead).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Protocol

from agentd.events import ProcEvent, ProcEventKind
from agentd import procfs


@dataclass(slots=True)
class ProcInfo:
    pid: int
    ppid: int = 0
    comm: str = ""
    exe: str | None = None
    argv: list[str] = field(default_factory=list)
    uid: int | None = None
    cgroup_id: int = 0  # 0 = unknown
    start_ticks: int = 0
    exec_ns: int = 0  # kernel time of its last exec event (0: none seen)
    exited_at: float | None = None  # clock() when its exit event arrived
    exit_code: int | None = None
    oom_victim: bool = False


class ProcReader(Protocol):
    def describe(self, pid: int) -> ProcInfo | None:
        """What /proc says about pid now; None when it has gone."""


class ProcfsReader:
    """The real reader: /proc (or a fixture root) and the v2 cgroup mount."""

    def __init__(self, root: str = procfs.PROC, cgroup_mount: str | None = None) -> None:
        self.root = root
        self.cgroup_mount = cgroup_mount

    def describe(self, pid: int) -> ProcInfo | None:
        stat = procfs.read_stat(pid, self.root)
        if stat is None:
            return None
        status = procfs.read_status(pid, self.root)
        cg_path = procfs.read_cgroup_v2(pid, self.root)
        cg_id = procfs.cgroup_id_of(cg_path, self.cgroup_mount) if cg_path else None
        return ProcInfo(
            pid=pid,
            ppid=stat.ppid,
            comm=stat.comm,
            exe=procfs.read_exe(pid, self.root),
            argv=procfs.read_cmdline(pid, self.root) or [],
            uid=status.uid_real if status else None,
            cgroup_id=cg_id or 0,
            start_ticks=stat.start_ticks,
        )

    def pids(self) -> list[int]:
        return procfs.list_pids(self.root)


class ProcTree:
    def __init__(
        self,
        reader: ProcReader | None = None,
        *,
        exit_grace_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader
        self.exit_grace_s = exit_grace_s
        self.clock = clock
        self._procs: dict[int, ProcInfo] = {}
        self._children: dict[int, set[int]] = {}
        self._last_expire = float("-inf")

    # -- queries ----------------------------------------------------------------------

    def __contains__(self, pid: int) -> bool:
        return pid in self._procs

    def __len__(self) -> int:
        return len(self._procs)

    def get(self, pid: int) -> ProcInfo | None:
        return self._procs.get(pid)

    def children(self, pid: int) -> list[int]:
        return sorted(self._children.get(pid, ()))

    def ancestors(self, pid: int) -> list[int]:
        """Parent first, up to the oldest ancestor in the tree (only pids in the tree)."""
        out: list[int] = []
        seen = {pid}
        info = self._procs.get(pid)
        while info is not None and info.ppid in self._procs and info.ppid not in seen:
            out.append(info.ppid)
            seen.add(info.ppid)
            info = self._procs[info.ppid]
        return out

    def descendants(self, pid: int) -> list[int]:
        """Breadth first, pid itself excluded."""
        out: list[int] = []
        queue = list(self.children(pid))
        seen = {pid}
        while queue:
            p = queue.pop(0)
            if p in seen:
                continue
            seen.add(p)
            out.append(p)
            queue.extend(self.children(p))
        return out

    def is_descendant(self, pid: int, ancestor: int) -> bool:
        return ancestor in self.ancestors(pid)

    def pids_in_cgroup(self, cgroup_id: int) -> list[int]:
        return sorted(p for p, i in self._procs.items() if i.cgroup_id == cgroup_id and i.exited_at is None)

    # -- updates ----------------------------------------------------------------------

    def apply(self, ev: ProcEvent) -> ProcInfo | None:
        """Update from one event; returns the entry it touched (None if nothing)."""
        now = self.clock()
        if now - self._last_expire >= self.exit_grace_s / 2:  # a scan of the whole tree: not per event
            self.expire(now)
        if ev.kind is ProcEventKind.FORK:
            return self._fork(ev)
        if ev.kind is ProcEventKind.EXEC:
            return self._exec(ev)
        if ev.kind is ProcEventKind.EXIT:
            info = self._procs.get(ev.pid)
            if info is not None and info.exited_at is None:
                info.exited_at = self.clock()
                info.exit_code = ev.exit_code if ev.exit_code_known else None
            return info
        if ev.kind is ProcEventKind.OOM_VICTIM:
            info = self._procs.get(ev.pid)
            if info is not None:
                info.oom_victim = True
            return info
        if ev.kind is ProcEventKind.CGROUP_ATTACH:
            info = self._procs.get(ev.pid)
            if info is not None and ev.cgroup_id:
                info.cgroup_id = ev.cgroup_id
            return info
        return None

    def _fork(self, ev: ProcEvent) -> ProcInfo:
        parent = self._procs.get(ev.ppid)
        known = self._procs.get(ev.pid)
        if known is not None and known.exited_at is None and ev.ts_ns and ev.ts_ns <= known.exec_ns:
            # Its exec was heard first (gated execs come through their own ring buffer):
            # this is the same process's birth, late. Keep what the exec told us.
            self._relink(known, ev.ppid)
            return known
        if known is not None:  # pid reused, or a duplicate: the newest birth wins
            self._remove(ev.pid)
        if parent is not None:
            child = replace(parent, pid=ev.pid, ppid=ev.ppid, argv=list(parent.argv), exited_at=None,
                            exit_code=None, oom_victim=False, start_ticks=0)
        else:
            child = ProcInfo(pid=ev.pid, ppid=ev.ppid)
        if ev.comm:
            child.comm = ev.comm
        if ev.cgroup_id:  # the parent's cgroup at fork, which the child is born in
            child.cgroup_id = ev.cgroup_id
        self._add(child)
        return child

    def _exec(self, ev: ProcEvent) -> ProcInfo:
        info = self._procs.get(ev.pid)
        fresh = self.reader.describe(ev.pid) if self.reader is not None else None
        if info is None:  # born before we looked (missed fork or seeding race)
            info = fresh or ProcInfo(pid=ev.pid, ppid=ev.ppid)
            self._add(info)
        elif fresh is not None:
            info.exe, info.argv, info.uid = fresh.exe, fresh.argv, fresh.uid
            info.start_ticks = fresh.start_ticks or info.start_ticks
        else:  # gone already: what it inherited at fork describes the old image, not this one
            info.exe, info.argv = None, []
        if ev.comm:
            info.comm = ev.comm
        if ev.filename and (fresh is None or fresh.exe is None):
            info.exe = ev.filename
        if ev.cgroup_id:
            info.cgroup_id = ev.cgroup_id
        info.exec_ns = max(info.exec_ns, ev.ts_ns)
        return info

    def expire(self, now: float | None = None) -> list[int]:
        """Drop processes that exited more than exit_grace_s ago."""
        now = self.clock() if now is None else now
        self._last_expire = now
        gone = [p for p, i in self._procs.items() if i.exited_at is not None and now - i.exited_at >= self.exit_grace_s]
        for p in gone:
            self._remove(p)
        return gone

    def seed_from_proc(self, reader: ProcfsReader | None = None) -> int:
        """Fill the tree from /proc at start-up; returns how many processes were added."""
        reader = reader or (self.reader if isinstance(self.reader, ProcfsReader) else ProcfsReader())
        self.seed(reader.describe(p) for p in reader.pids())
        return len(self._procs)

    def seed(self, infos: Iterable[ProcInfo | None]) -> None:
        for info in infos:
            if info is not None and info.pid not in self._procs:
                self._add(info)

    # -- internals --------------------------------------------------------------------

    def _add(self, info: ProcInfo) -> None:
        self._procs[info.pid] = info
        self._children.setdefault(info.ppid, set()).add(info.pid)

    def _relink(self, info: ProcInfo, ppid: int) -> None:
        siblings = self._children.get(info.ppid)
        if siblings is not None:
            siblings.discard(info.pid)
            if not siblings:
                del self._children[info.ppid]
        info.ppid = ppid
        self._children.setdefault(ppid, set()).add(info.pid)

    def _remove(self, pid: int) -> None:
        info = self._procs.pop(pid)
        siblings = self._children.get(info.ppid)
        if siblings is not None:
            siblings.discard(pid)
            if not siblings:
                del self._children[info.ppid]
        # Lineage: orphans hang from the removed process's parent.
        for child in self._children.pop(pid, set()):
            c = self._procs.get(child)
            if c is not None:
                c.ppid = info.ppid
                self._children.setdefault(info.ppid, set()).add(child)
