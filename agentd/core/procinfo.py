"""What agentd reads from and writes to /proc for one process: validated, and None/False
when the process is gone (normal, never an error)."""

from __future__ import annotations

from dataclasses import dataclass

from agentd.tracking import procfs

@dataclass
class ProcInfo:
    pid: int
    ppid: int
    comm: str
    exe: str | None
    argv: list[str]
    uid: int
    start: int  # /proc/<pid>/stat start time in clock ticks: tells a reused pid from ours


def read_proc(pid: int) -> ProcInfo | None:
    """What /proc says about pid; None when it is gone (normal, not an error)."""
    stat = procfs.read_stat(pid)
    status = procfs.read_status(pid) if stat else None
    argv = procfs.read_cmdline(pid) if status else None
    if stat is None or status is None or argv is None:
        return None
    return ProcInfo(pid, stat.ppid, stat.comm[:16], procfs.read_exe(pid), [a[:4096] for a in argv[:256]], status.uid_real,
                    stat.start_ticks)


def set_oom_score_adj(pid: int, value: int) -> bool | None:
    """True when written, False when the pid is gone, None when the kernel refused (EACCES:
    lowering a score needs CAP_SYS_RESOURCE)."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
        return True
    except (ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return None


def read_environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read(256 * 1024)
    except OSError:
        return b""


def is_stopped(pid: int) -> bool:
    """State T: stopped by a signal (a gated exec not yet continued)."""
    stat = procfs.read_stat(pid)
    return stat is not None and stat.state in ("T", "t")


def alive(pid: int, start: int) -> bool:
    """pid still runs the process that started at `start` (not a reused pid)."""
    info = read_proc(pid)
    return info is not None and info.start == start
