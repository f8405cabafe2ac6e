"""Thin kernel-facing effects of the colocation kind, one each. Nothing here blocks: a
freeze is requested by writing cgroup.freeze (the kind reads cgroup.events later), signals
go to the pids in the job's cgroup, moves are one write per hierarchy."""

from __future__ import annotations

import os
import signal

from agentd.cgroups import fs
from agentd.cgroups.driver import CgroupDriver
from agentd.cgroups.parse import weight_to_shares
from agentd import procfs


class CpuWeight:
    """cpu.weight of a cgroup (v2), or cpu.shares on a hybrid host's v1 cpu hierarchy, in
    the v2 scale either way (systemd's mapping: 100 <-> 1024 shares)."""

    name = "cgroup:cpu.weight"

    def __init__(self, driver: CgroupDriver):
        self.driver = driver

    def _v2(self, target: str) -> str | None:
        try:
            path = self.driver.knob_path(target, "cpu.weight")
        except OSError:
            return None
        return path if os.path.exists(path) else None

    def read(self, target: str) -> str:
        path = self._v2(target)
        if path:
            return fs.read(path).strip()
        shares = int(fs.read(self.driver.knob_path(target, "cpu.shares")).strip())
        return str(max(1, min(10_000, round(shares * 100 / 1024))))

    def write(self, target: str, value: str) -> None:
        path = self._v2(target)
        if path:
            fs.write(path, str(value))
        else:
            fs.write(self.driver.knob_path(target, "cpu.shares"), str(weight_to_shares(int(value))))


def request_freeze(driver: CgroupDriver, rel: str, frozen: bool) -> None:
    fs.write(driver.knob_path(rel, "cgroup.freeze"), "1" if frozen else "0")


def is_frozen(driver: CgroupDriver, rel: str) -> bool | None:
    """cgroup.events "frozen" (None when the cgroup is gone)."""
    try:
        text = fs.read(driver.knob_path(rel, "cgroup.events"))
    except OSError:
        return None
    return any(line.split() == ["frozen", "1"] for line in text.splitlines())


def signal_job(driver: CgroupDriver, rel: str, sig: int) -> list[int]:
    """Send sig to every process directly in the job's cgroup; the pids signalled."""
    done = []
    for pid in driver.procs(rel) if driver.exists(rel) else []:
        try:
            os.kill(pid, sig)
            done.append(pid)
        except ProcessLookupError:
            pass
    return done


def process_identity(pid: int, proc: str = procfs.PROC) -> tuple[int, int] | None:
    """(start ticks, real uid) of a live process, or None when it is gone or a zombie."""
    st = procfs.read_stat(pid, proc)
    status = procfs.read_status(pid, proc)
    if st is None or status is None or st.state in ("Z", "X"):
        return None
    return st.start_ticks, status.uid_real


def move_checked(driver: CgroupDriver, pid: int, start_ticks: int, rel: str, proc: str = procfs.PROC) -> bool:
    """Move pid into rel only if it is still the process that asked (same start time)."""
    ident = process_identity(pid, proc)
    if ident is None or ident[0] != start_ticks:
        return False
    return driver.move(pid, rel)


SIGTERM, SIGKILL = signal.SIGTERM, signal.SIGKILL
