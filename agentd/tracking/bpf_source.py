"""The tracker's BPF program text and the event layout it shares with Python.

`render_program(opts, template, facts)` is pure: checked options and the running kernel's
facts (tracepoint layouts from tracefs, struct offsets from BTF; see `kernel_facts`) in, C
text and the tracepoints to attach out. The C template (bpf/tracker.bpf.c) asserts at
compile time that its `struct event_head` and `struct event` have the sizes of the ctypes
`RawHead` and `RawEvent` below, so the two sides cannot drift apart silently.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from agentd.events import ProcEventKind
from agentd.tracking import btf, pidns
from agentd.tracking.pidns import PidNamespace
from agentd.tracking.tp_format import Layout, read_format, render_layouts

PATH_LEN = 256
COMM_LEN = 16

# Kind numbers used in the C file (AGENTD_FORK ...).
KIND_BY_NUMBER: dict[int, ProcEventKind] = {
    1: ProcEventKind.FORK,
    2: ProcEventKind.EXEC,
    3: ProcEventKind.EXIT,
    4: ProcEventKind.OOM_VICTIM,
    5: ProcEventKind.CGROUP_ATTACH,
}

F_GATED = 1
F_EXIT_CODE = 2
F_SELF_MOVE = 4

# Slots of the per-CPU `stats` array.
STAT_LOST = 0
STAT_GATE_SKIPPED = 1
STAT_EMITTED = 2
STAT_THREADS = 3
STAT_SIGNAL_FAILED = 4
STAT_PIDNS_UNSEEN = 5
STAT_NAMES = {
    STAT_LOST: "lost",
    STAT_GATE_SKIPPED: "gate_skipped",
    STAT_EMITTED: "emitted",
    STAT_THREADS: "threads_filtered",
    STAT_SIGNAL_FAILED: "signal_failed",
    STAT_PIDNS_UNSEEN: "pidns_unseen",
}

V2_HIERARCHY_ID = 0  # the "0::" line of /proc/<pid>/cgroup


class RawHead(ctypes.Structure):
    """struct event_head: every record starts with it; FORK/EXIT/OOM_VICTIM are only this."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("exit_code", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


class RawEvent(ctypes.Structure):
    """struct event: the head and a path (EXEC filename, CGROUP_ATTACH destination)."""

    _fields_ = [("h", RawHead), ("path", ctypes.c_char * PATH_LEN)]


@dataclass(frozen=True)
class TrackerOptions:
    """Everything that is fixed in the program before load."""

    ringbuf_pages: int = 512  # 2 MiB: ~32,000 fork/exit records (64 B) or ~6,500 with a path
    gate_ringbuf_pages: int = 64  # 256 KiB for gated execs only: ~800 stopped execs in flight
    gate: bool = True
    # Where the kernel has BTF, every exit's code is read from task_struct.exit_code and
    # this option does nothing. Without BTF, voluntary exit codes need a syscall tracepoint
    # (exit_group), which slows every syscall on the host while loaded; signal deaths are
    # known without it.
    exit_code: bool = False
    watch_subtree: bool = False  # fork/exec/exit only under one cgroup (set after load)
    # Wake the consumer every Nth ordinary event per CPU; the rest wait for its poll
    # timeout. Gated execs always wake it. 1 = wake for every event (lowest latency).
    wake_every: int = 32

    def check(self) -> None:
        for name in ("ringbuf_pages", "gate_ringbuf_pages"):
            p = getattr(self, name)
            if not isinstance(p, int) or isinstance(p, bool) or p < 1 or p > 1 << 16 or p & (p - 1):
                raise ValueError(f"{name} must be a power of two in 1..65536, not {p!r}")
        w = self.wake_every
        if not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= 4096:
            raise ValueError(f"wake_every must be an int in 1..4096, not {w!r}")
        for name in ("gate", "exit_code", "watch_subtree"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, not {getattr(self, name)!r}")


def source_path() -> Path:
    """bpf/tracker.bpf.c: $AGENTD_BPF_DIR, else the source tree, else the package data."""
    env = os.environ.get("AGENTD_BPF_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [here.parents[2] / "bpf", here.parents[1] / "bpf"]
    for d in candidates:
        if (d / "tracker.bpf.c").is_file():
            return d / "tracker.bpf.c"
    raise FileNotFoundError("tracker.bpf.c not found in " + ", ".join(map(str, candidates)))


class KernelMismatch(ValueError):
    """The running kernel lacks a tracepoint or field the tracker cannot do without."""


@dataclass(frozen=True)
class Tracepoint:
    category: str
    event: str
    fields: tuple[str, ...]  # the fields the program reads (all must be present)

    @property
    def fn_name(self) -> str:
        return f"agentd__{self.event}"


# Always attached (the tracker is useless without them) ...
CORE_TRACEPOINTS = (
    Tracepoint("task", "task_newtask", ("pid", "clone_flags")),
    Tracepoint("sched", "sched_process_fork", ("child_pid", "child_comm")),
    Tracepoint("sched", "sched_process_exec", ("pid", "old_pid", "filename")),
    Tracepoint("sched", "sched_process_exit", ()),
    Tracepoint("cgroup", "cgroup_attach_task", ("dst_root", "dst_id", "pid", "dst_path", "comm")),
)
OOM_TRACEPOINT = Tracepoint("oom", "mark_victim", ("pid",))  # attached when the kernel has it
# ... and, only where BTF gives no task_struct.exit_code, the exit code pieced together:
SIGNAL_TRACEPOINTS = (
    Tracepoint("signal", "signal_generate", ("sig", "pid", "result")),
    Tracepoint("signal", "signal_deliver", ("sig", "sa_handler")),
)
EXIT_GROUP_TRACEPOINT = Tracepoint("syscalls", "sys_enter_exit_group", ("error_code",))
ALL_TRACEPOINTS = (*CORE_TRACEPOINTS, OOM_TRACEPOINT, *SIGNAL_TRACEPOINTS, EXIT_GROUP_TRACEPOINT)

BTF_WANTED = {
    "task_struct": {"exit_code", "signal", "children", "sibling", "pid", "thread_pid"},
    "signal_struct": {"live"},
    # In a child pid namespace, a forked child's pid there: task->thread_pid->numbers[level].
    "pid": {"level", "numbers"},
    "upid": {"nr", "ns", btf.SIZE},
}
# bpf_source name -> (struct, member): offsets the fork program needs in a child pid namespace.
PIDNS_FORK_OFFSETS = {
    "children": ("task_struct", "children"), "sibling": ("task_struct", "sibling"),
    "task_pid": ("task_struct", "pid"), "thread_pid": ("task_struct", "thread_pid"),
    "pid_level": ("pid", "level"), "pid_numbers": ("pid", "numbers"),
    "upid_nr": ("upid", "nr"), "upid_ns": ("upid", "ns"), "upid_size": ("upid", btf.SIZE),
}


@dataclass(frozen=True)
class KernelFacts:
    """What the program must fit: tracepoint layouts by event name, and byte offsets of
    task_struct.exit_code / task_struct.signal / signal_struct.live where BTF has them;
    pid_ns: the daemon's pid namespace when it is a child one (None: the init namespace)."""

    layouts: dict[str, Layout]
    offsets: dict[str, int]
    pid_ns: PidNamespace | None = None


def kernel_facts() -> KernelFacts:
    """Read the running kernel's tracefs format files and BTF (tens of milliseconds)."""
    layouts = {}
    for tp in ALL_TRACEPOINTS:
        layout = read_format(tp.category, tp.event)
        if layout is not None:
            layouts[tp.event] = layout
    found = btf.read_member_offsets(BTF_WANTED) or {}
    task, sig = found.get("task_struct", {}), found.get("signal_struct", {})
    offsets = {}
    if "exit_code" in task:
        offsets["exit_code"] = task["exit_code"]
    if "signal" in task and "live" in sig:
        offsets["signal"], offsets["live"] = task["signal"], sig["live"]
    fork = {k: found.get(st, {}).get(m) for k, (st, m) in PIDNS_FORK_OFFSETS.items()}
    if all(v is not None for v in fork.values()):
        offsets.update(fork)
    ns = pidns.current()
    return KernelFacts(layouts, offsets, ns if ns.is_child else None)


@dataclass(frozen=True)
class Program:
    text: str
    tracepoints: tuple[Tracepoint, ...]  # attach each: tp "category:event" -> fn_name
    exit_codes: str  # "task" (every exit, from task_struct.exit_code), "signals", "signals+exit_group"
    group_exit: str  # how the last thread's exit is known: "tracepoint", "signal_live", "leader"
    pid_ns: PidNamespace | None = None  # pids are read in this (child) namespace
    pidns_forks: bool = False  # with pid_ns: fork events too (the child's pid from BTF)


def plan_tracepoints(opts: TrackerOptions, facts: KernelFacts) -> tuple[tuple[Tracepoint, ...], str, str]:
    """Which tracepoints to attach and how exits are read, or KernelMismatch naming what is missing."""
    chosen = list(CORE_TRACEPOINTS)
    if OOM_TRACEPOINT.event in facts.layouts:
        chosen.append(OOM_TRACEPOINT)
    if "exit_code" in facts.offsets:
        exit_codes = "task"
    else:
        chosen += SIGNAL_TRACEPOINTS
        exit_codes = "signals"
        if opts.exit_code and EXIT_GROUP_TRACEPOINT.event in facts.layouts:
            chosen.append(EXIT_GROUP_TRACEPOINT)
            exit_codes = "signals+exit_group"
    for tp in chosen:
        layout = facts.layouts.get(tp.event)
        if layout is None:
            raise KernelMismatch(f"the kernel has no tracepoint {tp.category}:{tp.event} (no format file in tracefs)")
        missing = [f for f in tp.fields if layout.field(f) is None]
        if missing:
            raise KernelMismatch(f"tracepoint {tp.category}:{tp.event} has no field {', '.join(missing)} on this kernel")
    exit_layout = facts.layouts["sched_process_exit"]
    if exit_layout.field("group_dead") is not None:
        group_exit = "tracepoint"
    elif "signal" in facts.offsets:
        group_exit = "signal_live"
    else:
        group_exit = "leader"
    return tuple(chosen), exit_codes, group_exit


def render_program(opts: TrackerOptions, template: str, facts: KernelFacts) -> Program:
    """The C text for this kernel and the tracepoints it attaches to (pure)."""
    tracepoints, exit_codes, group_exit = plan_tracepoints(opts, facts)
    kernel = {
        "AGENTD_TASK_EXIT_CODE_OFF": facts.offsets.get("exit_code", -1) if exit_codes == "task" else -1,
        "AGENTD_TASK_SIGNAL_OFF": facts.offsets.get("signal", -1) if group_exit == "signal_live" else -1,
        "AGENTD_SIGNAL_LIVE_OFF": facts.offsets.get("live", -1) if group_exit == "signal_live" else -1,
        "AGENTD_GROUP_DEAD_FIELD": int(group_exit == "tracepoint"),
        "AGENTD_SIGNAL_EXIT_CODES": int(exit_codes != "task"),
        "AGENTD_EXIT_GROUP_CODES": int(exit_codes == "signals+exit_group"),
        "AGENTD_PIDNS": int(facts.pid_ns is not None),
        "AGENTD_PIDNS_DEV": facts.pid_ns.dev if facts.pid_ns else 0,
        "AGENTD_PIDNS_INO": facts.pid_ns.ino if facts.pid_ns else 0,
    }
    # A child pid namespace's fork events: the child's pid there, read through BTF (all or none).
    fork_ns = facts.pid_ns is not None and all(k in facts.offsets for k in PIDNS_FORK_OFFSETS)
    for k in PIDNS_FORK_OFFSETS:
        kernel[f"AGENTD_OFF_{k.upper()}"] = facts.offsets[k] if fork_ns else -1
    head = "".join(f"#define {k} {int(v)}\n" for k, v in kernel.items())
    head += "".join(f"#define AGENTD_ATTACH_{tp.event} 1\n" for tp in tracepoints)
    head += render_layouts([facts.layouts[tp.event] for tp in tracepoints])
    return Program(render_tracker_source(opts, head + template), tracepoints, exit_codes, group_exit, facts.pid_ns,
                   fork_ns)


def render_tracker_source(opts: TrackerOptions, template: str) -> str:
    """The C text BCC compiles: checked #defines followed by the template."""
    opts.check()
    defines = {
        "AGENTD_RINGBUF_PAGES": opts.ringbuf_pages,
        "AGENTD_GATE_RINGBUF_PAGES": opts.gate_ringbuf_pages,
        "AGENTD_HEAD_SIZE": ctypes.sizeof(RawHead),
        "AGENTD_EVENT_SIZE": ctypes.sizeof(RawEvent),
        "AGENTD_GATE": int(opts.gate),
        "AGENTD_EXIT_CODE": int(opts.exit_code),
        "AGENTD_WATCH_SUBTREE": int(opts.watch_subtree),
        "AGENTD_V2_ROOT": V2_HIERARCHY_ID,
        "AGENTD_WAKE_EVERY": opts.wake_every,
    }
    head = "".join(f"#define {k} {int(v)}\n" for k, v in defines.items())
    return head + template


def load_template() -> str:
    return source_path().read_text()
