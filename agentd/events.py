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

    pid/tgid are pids as the daemon's pid namespace numbers them (host pids in the init
    namespace; see agentd/tracking/pidns.py). For FORK, `ppid` is the parent tgid and `pid` the child.
    `cgroup_id` is the v2 (default hierarchy) cgroup id of the task when the event fired,
    0 when the backend cannot tell (cn_proc). `gated` is True when the BPF exec hook
    stopped the task with SIGSTOP and the daemon owes it a SIGCONT after placement.

    Added fields (all optional): `exit_code` is a wait(2) status ((code & 0xff) << 8, or the
    terminating signal number) and is meaningful only when `exit_code_known`; `old_pid` is the
    pid before exec (differs from `pid` when a non-leader thread exec'd); `filename` is the
    exec'd path as the kernel saw it; `cgroup_path` is the destination of a CGROUP_ATTACH (v2
    path relative to the v2 mount) and `cgroup_id` its id there; `self_move` marks an attach
    the moved process did itself.

    Per kind (bpf backend; cn_proc gives FORK/EXEC/EXIT only, cgroup_id 0, comm read from
    /proc and "" when the process had already gone):
      FORK           pid = child, ppid = tgid = parent's tgid, comm, cgroup_id = the parent's
                     (the child's at birth). Threads are never reported.
      EXEC           pid (the tgid), old_pid, comm (new image), filename, cgroup_id, gated.
      EXIT           pid = tgid, once per process (last thread), comm; exit_code when
                     exit_code_known: always where the kernel has BTF (bpf reads
                     task_struct.exit_code) and with cn_proc; without BTF, signal deaths
                     always, voluntary exits only with the bpf option exit_code=True.
      OOM_VICTIM     pid = victim, comm; tgid/cgroup_id are those of the task that hit OOM.
      CGROUP_ATTACH  pid = moved task (per thread), cgroup_id/cgroup_path = destination (v2
                     only), tgid = the writer, self_move when the writer is the moved task.
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
    exit_code_known: bool = False
    old_pid: int = 0
    filename: str = ""
    cgroup_path: str = ""
    self_move: bool = False
