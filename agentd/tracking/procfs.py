"""Validated readers of /proc/<pid>. Each returns None when the process has gone (ENOENT,
ESRCH, or the empty file of a process being reaped): that is normal, not an error. `root`
is injectable so the parsers are tested from fixture text."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

PROC = "/proc"
_GONE = (errno.ENOENT, errno.ESRCH)


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    comm: str
    state: str  # R S D T t Z X I ...
    ppid: int
    start_ticks: int  # field 22: clock ticks after boot (SC_CLK_TCK)


@dataclass(frozen=True, slots=True)
class ProcStatus:
    name: str
    tgid: int
    uid_real: int
    uid_effective: int
    nspid: tuple[int, ...]  # outermost (host) first, own namespace last


def _read(pid: int, name: str, root: str, binary: bool = False):
    try:
        with open(f"{root}/{pid}/{name}", "rb") as f:
            data = f.read()
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise
    return data if binary else data.decode(errors="replace")


def parse_stat(text: str) -> ProcStat | None:
    """comm sits between the first '(' and the LAST ')': it may hold spaces and parens."""
    text = text.strip()
    lp, rp = text.find("("), text.rfind(")")
    if lp <= 0 or rp < lp:
        return None
    rest = text[rp + 1 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    if len(rest) < 20:
        return None
    try:
        pid = int(text[:lp])
        ppid = int(rest[1])
        start = int(rest[19])
    except ValueError:
        return None
    state = rest[0]
    if pid <= 0 or ppid < 0 or len(state) != 1:
        return None
    return ProcStat(pid=pid, comm=text[lp + 1 : rp], state=state, ppid=ppid, start_ticks=start)


def read_stat(pid: int, root: str = PROC) -> ProcStat | None:
    text = _read(pid, "stat", root)
    return parse_stat(text) if text else None


def parse_status(text: str) -> ProcStatus | None:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    try:
        uids = fields["Uid"].split()
        nspid = tuple(int(x) for x in fields.get("NSpid", fields.get("Pid", "0")).split())
        return ProcStatus(
            name=fields.get("Name", ""),
            tgid=int(fields["Tgid"]),
            uid_real=int(uids[0]),
            uid_effective=int(uids[1]),
            nspid=nspid,
        )
    except (KeyError, IndexError, ValueError):
        return None


def read_status(pid: int, root: str = PROC) -> ProcStatus | None:
    text = _read(pid, "status", root)
    return parse_status(text) if text else None


def parse_cmdline(data: bytes) -> list[str]:
    """argv split on NUL; a process that rewrote its argv into one string comes back as one."""
    if not data:
        return []
    if data.endswith(b"\0"):
        data = data[:-1]
    return [a.decode(errors="replace") for a in data.split(b"\0")]


def read_cmdline(pid: int, root: str = PROC) -> list[str] | None:
    """[] for kernel threads and zombies, None when the process has gone."""
    data = _read(pid, "cmdline", root, binary=True)
    return None if data is None else parse_cmdline(data)


def read_exe(pid: int, root: str = PROC) -> str | None:
    """The executable's path; None when gone, a kernel thread, or not readable."""
    try:
        return os.readlink(f"{root}/{pid}/exe")
    except OSError:
        return None


def parse_cgroup_v2(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def read_cgroup_v2(pid: int, root: str = PROC) -> str | None:
    """The v2 ("0::") cgroup path, e.g. "/agentd/agents/a1/runtime"; None when gone."""
    text = _read(pid, "cgroup", root)
    return parse_cgroup_v2(text) if text else None


def v2_mount() -> str:
    """Where the v2 hierarchy is mounted: /sys/fs/cgroup (pure v2) or .../unified (hybrid)."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "/sys/fs/cgroup"
    return "/sys/fs/cgroup/unified"


def cgroup_id_of(v2_path: str, mount: str | None = None) -> int | None:
    """The v2 cgroup id (inode of its directory), what bpf_get_current_cgroup_id returns."""
    try:
        return os.stat(os.path.join(mount or v2_mount(), v2_path.lstrip("/"))).st_ino
    except OSError:
        return None


def read_task_cpu_ticks(pid: int, tid: int, root: str = PROC) -> int | None:
    """utime + stime of one thread, in clock ticks."""
    text = _read(tid, "stat", f"{root}/{pid}/task")
    if not text:
        return None
    rest = text[text.rfind(")") + 1 :].split()
    try:
        return int(rest[11]) + int(rest[12])  # fields 14 and 15
    except (IndexError, ValueError):
        return None


def list_pids(root: str = PROC) -> list[int]:
    return sorted(int(n) for n in os.listdir(root) if n.isdigit())


def clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")
