"""The tracker's BPF program text and the event layout it shares with Python.

`render_tracker_source(opts)` is pure: checked options in, C text out. The C template
(bpf/tracker.bpf.c) asserts at compile time that its `struct event_head` and `struct event`
have the sizes of the ctypes `RawHead` and `RawEvent` below, so the two sides cannot drift
apart silently.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from agentd.events import ProcEventKind

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
STAT_NAMES = {
    STAT_LOST: "lost",
    STAT_GATE_SKIPPED: "gate_skipped",
    STAT_EMITTED: "emitted",
    STAT_THREADS: "threads_filtered",
    STAT_SIGNAL_FAILED: "signal_failed",
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
    # Voluntary exit codes need a syscall tracepoint (exit_group), which slows every
    # syscall on the host while loaded; signal deaths are known without it.
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
