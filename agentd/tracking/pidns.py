"""The daemon's own pid namespace, for a tracker whose kernel events carry init-namespace pids.

In a child pid namespace (systemd in nspawn/LXC, a container, `unshare --pid`) the host's
pid of a task means nothing to the daemon: /proc, kill(2) and cgroup.procs all speak the
namespace's numbers. The BPF program is then built to read pids in this namespace
(bpf_get_ns_current_pid_tgid, given st_dev/st_ino of /proc/self/ns/pid).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


# The init pid namespace's inode number is fixed in the kernel (PROC_PID_INIT_INO, since 3.8).
# /proc/self/status's NSpid cannot tell: it lists pids from the namespace /proc was mounted
# in, so a container's own /proc shows one entry there too.
PROC_PID_INIT_INO = 0xEFFFFFFC


@dataclass(frozen=True)
class PidNamespace:
    dev: int  # st_dev of /proc/self/ns/pid (the nsfs device)
    ino: int  # st_ino: the namespace's inode number

    @property
    def is_child(self) -> bool:
        return self.ino != PROC_PID_INIT_INO


def current(proc: str = "/proc") -> PidNamespace:
    """The pid namespace this process lives in (the /proc/self/ns/pid link is the process's
    own whichever namespace /proc was mounted in)."""
    st = os.stat(f"{proc}/self/ns/pid")
    return PidNamespace(dev=st.st_dev, ino=st.st_ino)


def degraded_line(ns: PidNamespace, forks: bool) -> str:
    """The one line the daemon says at start-up and in `agentctl status` (degraded); forks:
    whether fork events are reported there (the child's pid read through BTF)."""
    lost = "OOM victims and moves of one process by another" if forks else "forks, OOM victims and moves of one process by another"
    return (f"tracker: in a child pid namespace (pid:[{ns.ino}]); the BPF tracker reads pids in it, "
            "so processes outside it or in pid namespaces below it are neither seen nor gated, and "
            f"{lost} are not reported")
