"""The one home for reading /proc/<pid>: validated parsers and bounded readers, for the
tool-call engine, the trackers, the API's peer checks, the GPU sampler and the policy kinds.

What a process's /proc files hold is input its owner controls (comm, cmdline, environ, its
own cgroup subtree's names), so every read stops at a size limit (LIMITS) instead of
following a 2 MiB argv into the daemon's memory; a longer file is cut at the limit, and a
parser given a cut file returns what it can or None. Each reader returns None (or an empty
value, as its docstring says) when the process has gone (ENOENT, ESRCH, or the empty file
of a process being reaped): that is normal, not an error. `root` is injectable so the
parsers are tested from fixture text.

psutil is not used: it reads whole files without a bound and has no injectable root.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from agentd import heldsys

PROC = "/proc"
_GONE = (errno.ENOENT, errno.ESRCH)

# The most agentd reads of each file (bytes). The kernel bounds comm (16) and stat; an
# argv or environment can be megabytes, a status line of supplementary groups ~700 KiB
# (65536 groups), a cgroup path ~4 KiB per hierarchy, maps 65530 VMAs (vm.max_map_count).
LIMITS = {
    "comm": 64,
    "stat": 4096,
    "status": 1 << 20,
    "cmdline": 256 << 10,
    "environ": 256 << 10,
    "cgroup": 64 << 10,
    "maps": 16 << 20,
    "numa_maps": 16 << 20,
    "oom_score_adj": 16,
}
ARGV_MAX_ARGS = 256  # argv kept per process (ProcInfo): what policy rules match against
ARGV_MAX_CHARS = 4096  # per argument


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
    groups: frozenset[int] = frozenset()  # supplementary groups


def read_bytes(pid: int | str, name: str, root: str = PROC) -> bytes | None:
    """/proc/<pid>/<name> up to LIMITS[name] bytes; None when the process has gone. Other
    errors (EACCES: another user's file) raise OSError."""
    try:
        if heldsys.active():  # the placement path: one read(2), keeping the GIL (heldsys says why)
            return heldsys.read(f"{root}/{pid}/{name}", LIMITS[name])
        with open(f"{root}/{pid}/{name}", "rb") as f:
            return f.read(LIMITS[name])
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise


def _read(pid: int | str, name: str, root: str, binary: bool = False):
    data = read_bytes(pid, name, root)
    return data if binary or data is None else data.decode(errors="replace")


def read_text(pid: int | str, name: str, root: str = PROC) -> str | None:
    """The bounded text of /proc/<pid>/<name>; None when gone or not readable."""
    try:
        return _read(pid, name, root)
    except OSError:
        return None


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
            groups=parse_status_groups(text),
        )
    except (KeyError, IndexError, ValueError):
        return None


def read_status(pid: int, root: str = PROC) -> ProcStatus | None:
    text = _read(pid, "status", root)
    return parse_status(text) if text else None


def parse_status_groups(text: str) -> frozenset[int]:
    """The supplementary groups of a status text ("Groups:" line); empty when none or cut."""
    for line in text.splitlines():
        if line.startswith("Groups:"):
            try:
                return frozenset(int(g) for g in line.split()[1:])
            except ValueError:
                return frozenset()
    return frozenset()


def read_groups(pid: int, root: str = PROC) -> frozenset[int] | None:
    """The supplementary groups of pid; None when gone or not readable."""
    text = read_text(pid, "status", root)
    return None if text is None else parse_status_groups(text)


def read_ns_pids(pid: int, root: str = PROC) -> tuple[int, ...]:
    """pid in each nested pid namespace, the host's first (the NSpid line); () when unknown."""
    for line in (read_text(pid, "status", root) or "").splitlines():
        if line.startswith("NSpid:"):
            try:
                return tuple(int(x) for x in line.split()[1:])
            except ValueError:
                return ()
    return ()


def read_comm(pid: int, root: str = PROC) -> str:
    """The command name (at most 15 characters, set by the process itself); "" when gone."""
    text = read_text(pid, "comm", root)
    return text.rstrip("\n") if text else ""


def parse_cmdline(data: bytes) -> list[str]:
    """argv split on NUL; a process that rewrote its argv into one string comes back as one."""
    if not data:
        return []
    if data.endswith(b"\0"):
        data = data[:-1]
    return [a.decode(errors="replace") for a in data.split(b"\0")]


def read_cmdline(pid: int, root: str = PROC) -> list[str] | None:
    """[] for kernel threads and zombies, None when the process has gone. An argv longer
    than LIMITS["cmdline"] is cut there."""
    data = _read(pid, "cmdline", root, binary=True)
    return None if data is None else parse_cmdline(data)


def read_environ(pid: int, root: str = PROC) -> bytes:
    """The NUL-separated environment, cut at LIMITS["environ"]; b"" when gone or not ours."""
    try:
        return read_bytes(pid, "environ", root) or b""
    except OSError:
        return b""


def read_exe(pid: int, root: str = PROC) -> str | None:
    """The executable's path; None when gone, a kernel thread, or not readable."""
    try:
        return (heldsys.readlink if heldsys.active() else os.readlink)(f"{root}/{pid}/exe")
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


def parse_cgroup_unit(text: str) -> str:
    """The v2 path, or on a hybrid host where v2 says "/" (agentd placed the process only in
    v1) the v1 memory controller's path; "" when neither."""
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
    if v2 and (v2 != "/" or not mem):
        return v2
    return mem or v2


def read_cgroup(pid: int, root: str = PROC) -> str:
    """parse_cgroup_unit of pid's cgroup file; "" when gone or not readable."""
    text = read_text(pid, "cgroup", root)
    return parse_cgroup_unit(text) if text else ""


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


# --- one process as the tool-call engine sees it -----------------------------------------


@dataclass
class ProcInfo:
    pid: int
    ppid: int
    comm: str
    exe: str | None
    argv: list[str]
    uid: int
    start: int  # /proc/<pid>/stat start time in clock ticks: tells a reused pid from ours


def read_proc(pid: int, root: str = PROC) -> ProcInfo | None:
    """What /proc says about pid (argv bounded by ARGV_MAX_ARGS and ARGV_MAX_CHARS); None
    when it is gone (normal, not an error)."""
    stat = read_stat(pid, root)
    status = read_bytes(pid, "status", root) if stat else None
    uid = parse_uid_real(status) if status else None  # the one line needed: placement reads this per exec
    argv = read_cmdline(pid, root) if uid is not None else None
    if stat is None or uid is None or argv is None:
        return None
    return ProcInfo(pid, stat.ppid, stat.comm[:16], read_exe(pid, root),
                    [a[:ARGV_MAX_CHARS] for a in argv[:ARGV_MAX_ARGS]], uid, stat.start_ticks)


def parse_uid_real(status: bytes) -> int | None:
    """The real uid of a /proc/<pid>/status text (its "Uid:" line), None when absent or cut."""
    start = status.find(b"\nUid:")
    end = status.find(b"\n", start + 1) if start >= 0 else -1
    if end < 0:
        return None
    try:
        return int(status[start + 5:end].split()[0])
    except (IndexError, ValueError):
        return None


def is_stopped(pid: int, root: str = PROC) -> bool:
    """State T: stopped by a signal (a gated exec not yet continued)."""
    stat = read_stat(pid, root)
    return stat is not None and stat.state in ("T", "t")


def alive(pid: int, start: int, root: str = PROC) -> bool:
    """pid still runs the process that started at `start` (not a reused pid)."""
    info = read_proc(pid, root)
    return info is not None and info.start == start


def read_oom_score_adj(pid: int, root: str = PROC) -> int | None:
    text = read_text(pid, "oom_score_adj", root)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def set_oom_score_adj(pid: int, value: int, root: str = PROC) -> bool | None:
    """True when written, False when the pid is gone, None when the kernel refused (EACCES:
    lowering a score needs CAP_SYS_RESOURCE)."""
    try:
        if heldsys.active():  # the placement path (heldsys)
            heldsys.write(f"{root}/{pid}/oom_score_adj", str(value).encode())
            return True
        with open(f"{root}/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
        return True
    except (ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return None
