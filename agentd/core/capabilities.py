"""Which capabilities the daemon holds, and what each one is for (`agentctl status`).

systemd/agentd.service keeps exactly the capabilities in REASONS (its
CapabilityBoundingSet); each reason names the call that fails without it
(agentd/core/capprobe.py makes those calls; tests/kernel/test_unit_capabilities.py checks
them). Run as plain root the daemon holds every capability: the line then says so.
"""

from __future__ import annotations

# The unit's set, in its order; bit numbers from linux/capability.h.
REASONS: dict[str, tuple[int, str]] = {
    "CAP_BPF": (39, "BPF maps and the tracker's programs"),
    "CAP_PERFMON": (38, "tracepoint programs (exec gate) and perf_event_open to attach them"),
    "CAP_NET_ADMIN": (12, "the proc connector on kernels before 6.6 (cn_proc tracker)"),
    "CAP_KILL": (5, "stop, continue and kill other users' agents and tool calls"),
    "CAP_SYS_PTRACE": (19, "/proc/<pid>/exe of other users' processes"),
    "CAP_DAC_READ_SEARCH": (2, "/proc/<pid>/environ of other users' processes (intent hints)"),
    "CAP_SYS_NICE": (23, "nice -10 for the tracker's consumer thread"),
    "CAP_SYS_RESOURCE": (24, "a lower oom_score_adj for root-launched agent runtimes (the OOM shield)"),
    "CAP_CHOWN": (0, "result files handed to the agent's uid; the socket's group"),
    "CAP_SYS_ADMIN": (21, "perf_event_open of the tracepoints where kernel.perf_event_paranoid=3 (Debian, Ubuntu: "
                          "EACCES without it); nothing else"),
}
ALL_CAPS = 41  # CAP_CHECKPOINT_RESTORE (40) is the last one on the kernels agentd supports


def effective(status_text: str | None = None) -> int:
    """CapEff of this process (from /proc/self/status, or the text given)."""
    if status_text is None:
        with open("/proc/self/status", encoding="ascii") as f:
            status_text = f.read()
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split(":", 1)[1], 16)
    return 0


def summary(cap_eff: int) -> dict:
    """{"held": [...], "missing": [...], "line": one line for status}. A capability this
    kernel does not ask for (CAP_NET_ADMIN from 6.6, CAP_SYS_ADMIN where
    perf_event_paranoid <= 2) is not missing when it is not held."""
    from agentd.core.capprobe import needed_here

    held = [name for name, (bit, _) in REASONS.items() if cap_eff >> bit & 1]
    missing = [name for name in REASONS if name not in held and needed_here(name)[0]]
    full = all(cap_eff >> bit & 1 for bit in range(ALL_CAPS))
    if full:
        line = "capabilities: all (plain root; the unit keeps only " + ", ".join(REASONS) + ")"
    else:
        line = "capabilities: " + ", ".join(held) + " (the unit's set)"
        if missing:
            line += "; missing " + ", ".join(f"{n} ({REASONS[n][1]})" for n in missing)
    return {"held": held, "missing": missing, "all": full, "why": {n: r for n, (_, r) in REASONS.items()}, "line": line}
