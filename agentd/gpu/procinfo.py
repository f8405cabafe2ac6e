"""Who a GPU process is: its pids in nested pid namespaces and its agentd unit.

NVML reports host pids. A process in a container has another pid inside; the NSpid line
of /proc/<hostpid>/status lists the pid in every namespace from the host's outward-in
(`NSpid: 4242 17 1`). The unit is the process's cgroup: the v2 line ("0::/...") of
/proc/<pid>/cgroup, or on a hybrid host the v1 memory line, shown relative to agentd's
root when it lies in agentd's layout (agentd.cgroups.layout: e.g. "agents/a1/tools/0003-pytest",
or "jobs/llama-ft" under a root whose path names agentd), else raw.

The reading itself is agentd.procfs's (bounded); the proc root is injectable so tests can
point at a fixture tree. Every reader returns an empty value instead of raising when the
process is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from agentd import procfs
from agentd.cgroups import layout

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcIdentity:
    host_pid: int
    ns_pids: tuple[int, ...] = ()  # from the host's namespace inward; () if unknown
    comm: str = ""
    cgroup: str = ""  # raw cgroup path
    unit: str = ""  # path relative to agentd's root, or the raw path

    @property
    def container_pid(self) -> int | None:
        """The pid in the innermost namespace when it differs from the host's."""
        if len(self.ns_pids) > 1:
            return self.ns_pids[-1]
        return None

    def to_json(self) -> dict:
        return {"host_pid": self.host_pid, "ns_pids": list(self.ns_pids), "container_pid": self.container_pid,
                "comm": self.comm, "cgroup": self.cgroup, "unit": self.unit}


def unit_of(cgroup_path: str) -> str:
    """The layout's part of a cgroup path (agents/<agent>/..., or jobs/<name> under a root whose
    path names agentd: jobs/ alone is too common a name to claim), else the raw path."""
    found = layout.locate(cgroup_path)
    if found is None:
        return cgroup_path
    root, place = found
    if place.agent is None and "agentd" not in root:
        return cgroup_path
    return place.rel


def identify(host_pid: int, proc: Path = PROC) -> ProcIdentity:
    root = str(proc)
    cg = procfs.read_cgroup(host_pid, root)
    return ProcIdentity(host_pid=host_pid, ns_pids=procfs.read_ns_pids(host_pid, root),
                        comm=procfs.read_comm(host_pid, root), cgroup=cg, unit=unit_of(cg) if cg else "")


@dataclass
class IdentityCache:
    """Caches pid namespaces and names by (pid, start time); the cgroup is read every time,
    because agentd moves processes between cgroups."""

    proc: Path = PROC
    _cache: dict = field(default_factory=dict)

    def _start(self, pid: int) -> str:
        try:
            stat = procfs.read_stat(pid, str(self.proc))
        except OSError:
            return ""
        return str(stat.start_ticks) if stat is not None else ""

    def get(self, pid: int) -> ProcIdentity:
        key = (pid, self._start(pid))
        ident = self._cache.get(key)
        if ident is None:
            ident = identify(pid, self.proc)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = ident
            return ident
        cg = procfs.read_cgroup(pid, str(self.proc))
        return replace(ident, cgroup=cg, unit=unit_of(cg) if cg else "")
