"""Who a GPU process is: its pids in nested pid namespaces and its agentd unit.

NVML reports host pids. A process in a container has another pid inside; the NSpid line
of /proc/<hostpid>/status lists the pid in every namespace from the host's outward-in
(`NSpid: 4242 17 1`). The unit is the process's cgroup: the v2 line ("0::/...") of
/proc/<pid>/cgroup, or on a hybrid host the v1 memory line, shown relative to agentd's
root when it lies in agentd's layout (agentd.cgroups.layout: e.g. "agents/a1/tools/0003-pytest",
or "jobs/llama-ft" under a root whose path names agentd), else raw.

The proc root is injectable so tests can point at a fixture tree; reading real /proc is
the default. Every reader returns None instead of raising when the process is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

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


def read_ns_pids(pid: int, proc: Path = PROC) -> tuple[int, ...]:
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return tuple(int(x) for x in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


def read_comm(pid: int, proc: Path = PROC) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def read_cgroup(pid: int, proc: Path = PROC) -> str:
    """The v2 cgroup path, or on a hybrid host without one the v1 memory controller's path."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return ""
    v2, mem = "", ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if hid == "0" and ctrls == "":
            v2 = path
        elif "memory" in ctrls.split(","):
            mem = path
    # on a hybrid host the v2 path is "/" when agentd placed the process only in v1
    if v2 and (v2 != "/" or not mem):
        return v2
    return mem or v2


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
    cg = read_cgroup(host_pid, proc)
    return ProcIdentity(host_pid=host_pid, ns_pids=read_ns_pids(host_pid, proc), comm=read_comm(host_pid, proc),
                        cgroup=cg, unit=unit_of(cg) if cg else "")


@dataclass
class IdentityCache:
    """Caches pid namespaces and names by (pid, start time); the cgroup is read every time,
    because agentd moves processes between cgroups."""

    proc: Path = PROC
    _cache: dict = field(default_factory=dict)

    def _start(self, pid: int) -> str:
        try:
            stat = (self.proc / str(pid) / "stat").read_text()
            return stat.rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            return ""

    def get(self, pid: int) -> ProcIdentity:
        key = (pid, self._start(pid))
        ident = self._cache.get(key)
        if ident is None:
            ident = identify(pid, self.proc)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = ident
            return ident
        cg = read_cgroup(pid, self.proc)
        return replace(ident, cgroup=cg, unit=unit_of(cg) if cg else "")
