"""The one event envelope every tracker backend emits (BCC ring buffer or cn_proc)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ProcEventKind(str, Enum):
    FORK = "fork"
    EXEC = "exec"
    EXIT = "exit"
    OOM_VICTIM = "oom_victim"
    CGROUP_ATTACH = "cgroup_attach"


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """A process event from the kernel.

    pid/tgid are host pids. For FORK, `ppid` is the parent tgid and `pid` the child.
    `cgroup_id` is the v2 (default hierarchy) cgroup id of the task when the event fired,
    0 when the backend cannot tell (cn_proc). `gated` is True when the BPF exec hook
    stopped the task with SIGSTOP and the daemon owes it a SIGCONT after placement.
    """

    kind: ProcEventKind
    pid: int
    tgid: int = 0
    ppid: int = 0
    comm: str = ""
    cgroup_id: int = 0
    ts_ns: int = 0
    exit_code: int = 0
    gated: bool = False
