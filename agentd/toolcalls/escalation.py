"""The burst ladder for one tool call, as a pure state machine: throttle -> freeze -> kill.

`step(state, sample, limits, escalation, now)` returns the new state and the actions to
take. The daemon feeds it a Sample of the tool call's cgroup every tick and carries out the
actions; nothing here touches the kernel, so every path is unit-tested with a fake clock.

cgroup v2: the kernel throttles at memory.high; agentd watches the tool call's PSI memory
`full` share. The first time it stays above the threshold for `sustain_s`, agentd grants
headroom once (memory.high raised toward memory_max); the next time it freezes the tool
call, then kills it if it is still stuck `freeze_s` later (or thaws it if the agent raised
its limit). A frozen tool call counts as relieved only against the limit it is held at:
memory.high on v2 (it never gets near memory.max there), the hard limit on v1.
cgroup v1 (hybrid): no memory.high. The limit starts at memory_high with oom_kill_disable,
so the kernel pauses the tool call there (under_oom); agentd grants headroom up to
memory_max once, and at memory_max freezes, then kills.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field, replace

from agentd.toolcalls.policy import Escalation, ResourceLimits
from agentd.units import format_size


@dataclass(frozen=True)
class Sample:
    now: float
    memory_current: int
    memory_peak: int
    memory_limit: int | None  # the hard limit in force (v1: the pause point)
    memory_high: int | None = None  # v2: memory.high in force (the throttle point); None on v1 or unlimited
    high_events: int = 0  # v2 memory.events high (cumulative)
    oom_kill_events: int = 0  # memory.events oom_kill (cumulative)
    under_oom: bool = False  # v1: paused at the limit
    psi_full_total_us: int = 0  # cumulative memory full stall time
    populated: bool = True
    pids_max_events: int = 0  # forks refused at pids.max (cumulative)
    pids_current: int = 0


@dataclass(frozen=True)
class Action:
    kind: str  # "journal", "set_memory_limit" (v1), "set_memory_high" (v2), "freeze", "hold" (v1: the kernel holds it), "thaw", "kill"
    reason: str = ""
    value: int | None = None
    level: str = "info"
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LadderState:
    started: float
    stage: str = "running"  # running | frozen | killed | done
    throttled: bool = False
    over_since: float | None = None  # when PSI full went above the threshold
    frozen_at: float | None = None
    granted: bool = False  # the one-time grant was used (v1: limit raised; v2: memory.high raised)
    held_at: int | None = None  # the limit the tool call was held at when it was frozen
    last_psi_us: int | None = None
    last_now: float | None = None
    high_seen: int = 0
    oom_seen: int = 0
    pids_seen: int = 0
    limit: str = ""  # the limit that decided the outcome: memory_high, memory_max, timeout_s, pids_max
    outcome: str | None = None  # ok | throttled | frozen | killed | failed
    reason: str = ""


def _journal(kind: str, message: str, level: str = "info", **data) -> Action:
    return Action("journal", reason=kind, level=level, data={"message": message, **data})


def held_limit(s: Sample, *, v1: bool) -> int | None:
    """The limit that holds the tool call back: memory.high on v2 (the kernel throttles
    there, far below memory.max), the hard limit (the pause point) on v1."""
    if not v1 and s.memory_high is not None:
        return s.memory_high
    return s.memory_limit


def v2_grant_target(limits: ResourceLimits) -> int | None:
    """Where the one-time v2 grant moves memory.high: seven eighths of the way from
    memory_high to memory_max, so a runaway is throttled (and then frozen) again below the
    hard limit instead of meeting the kernel's OOM killer there. None: nothing to grant."""
    high, top = limits.memory_high, limits.memory_max
    if high is None or top is None or top <= high:
        return None
    return high + (top - high) * 7 // 8


def step(state: LadderState, s: Sample, limits: ResourceLimits, esc: Escalation, *, v1: bool) -> tuple[LadderState, list[Action]]:
    if state.stage in ("killed", "done"):
        return state, []
    actions: list[Action] = []
    psi_pct = 0.0
    if state.last_psi_us is not None and state.last_now is not None and s.now > state.last_now:
        psi_pct = max(0.0, (s.psi_full_total_us - state.last_psi_us) / ((s.now - state.last_now) * 1e6) * 100)
    state = replace(state, last_psi_us=s.psi_full_total_us, last_now=s.now)
    figures = {
        "memory_current": s.memory_current,
        "memory_peak": s.memory_peak,
        "memory_high": limits.memory_high,
        "memory_max": limits.memory_max,
        "psi_full_pct": round(psi_pct, 1),
    }

    # The kernel already killed inside the tool call (memory.max on v2).
    if s.oom_kill_events > state.oom_seen:
        state = replace(state, oom_seen=s.oom_kill_events, stage="killed", outcome="killed", limit="memory_max",
                        reason=f"the kernel OOM-killed the tool call at its memory_max {format_size(limits.memory_max)} (peak {format_size(s.memory_peak)})")
        actions.append(_journal("toolcall.killed", state.reason, "warn", limit="memory_max", **figures))
        actions.append(Action("kill", reason=state.reason))
        return state, actions

    timeout = limits.timeout_s
    if timeout is not None and s.now - state.started > timeout:
        reason = f"ran past its timeout of {timeout:g} s; every process of the tool call was ended"
        state = replace(state, stage="killed", outcome="killed", reason=reason, limit="timeout_s")
        return state, [_journal("toolcall.killed", reason, "warn", limit="timeout_s", elapsed_s=round(s.now - state.started, 2), **figures), Action("kill", reason=reason)]

    if state.stage == "frozen":
        # Thaw when the limit was raised above what the tool call uses (the agent asked
        # for more within the ceiling); kill when the grace ran out.
        held = held_limit(s, v1=v1)
        relieved = held is None or (s.memory_current < held * 0.95 and (state.held_at is None or held > state.held_at))
        if relieved and not s.under_oom:
            state = replace(state, stage="running", frozen_at=None, over_since=None, held_at=None)
            return state, [_journal("toolcall.thawed", "the tool call's limit was raised; thawed it", **figures), Action("thaw")]
        if s.now - (state.frozen_at or s.now) >= esc.freeze_s:
            reason = (f"held for {esc.freeze_s:g} s at {format_size(s.memory_current)} of its "
                      f"{format_size(held)} limit with no relief; killed the tool call (the agent keeps running)")
            state = replace(state, stage="killed", outcome="killed", reason=reason, limit=state.limit or "memory_max")
            return state, [_journal("toolcall.killed", reason, "warn", limit=state.limit, **figures), Action("kill", reason=reason)]
        return state, []

    if s.pids_max_events > state.pids_seen:
        if state.pids_seen == 0:
            reason = f"the kernel refused forks at its pids_max {limits.pids_max} (fork-storm guard); the tool call goes on with what it has"
            actions.append(_journal("toolcall.throttled", reason, "warn", limit="pids_max", pids_current=s.pids_current,
                                    refused=s.pids_max_events, **figures))
            state = replace(state, throttled=True, reason=reason, limit="pids_max")
        state = replace(state, pids_seen=s.pids_max_events)

    if s.high_events > state.high_seen:
        if not state.throttled:
            actions.append(_journal("toolcall.throttled",
                                    f"memory reached its memory_high {format_size(limits.memory_high)}; the kernel is throttling the burst",
                                    limit="memory_high", **figures))
        state = replace(state, high_seen=s.high_events, throttled=True, limit=state.limit or "memory_high",
                        reason=state.reason or f"completed; its burst was throttled at memory_high {format_size(limits.memory_high)}")

    if v1 and s.under_oom:
        top = limits.memory_max or s.memory_limit or 0
        if s.memory_limit is not None and s.memory_limit < top and not state.granted:
            state = replace(state, throttled=True, granted=True, limit="memory_high",
                            reason=f"completed; paused at memory_high {format_size(s.memory_limit)} and granted up to memory_max {format_size(top)}")
            actions.append(_journal("toolcall.throttled",
                                    f"paused at its memory_high {format_size(s.memory_limit)}; granted headroom up to its memory_max {format_size(top)}",
                                    limit="memory_high", granted=top, **figures))
            actions.append(Action("set_memory_limit", value=top))
            return state, actions
        reason = (f"held by the kernel at its memory_max {format_size(s.memory_limit)}; "
                  f"it will be killed in {esc.freeze_s:g} s unless its limit is raised")
        state = replace(state, stage="frozen", frozen_at=s.now, throttled=True, outcome="frozen", reason=reason, limit="memory_max",
                        held_at=s.memory_limit)
        actions.append(_journal("toolcall.frozen", reason, "warn", limit="memory_max", **figures))
        actions.append(Action("hold"))
        return state, actions

    if psi_pct >= esc.psi_full_pct:
        over_since = state.over_since if state.over_since is not None else s.now
        state = replace(state, over_since=over_since)
        target = v2_grant_target(limits) if not v1 else None
        held = held_limit(s, v1=v1)
        if s.now - over_since >= esc.sustain_s and not state.granted and target is not None and (held is None or held < target):
            # v2's counterpart of the v1 grant: one raise of memory.high toward memory_max.
            state = replace(state, throttled=True, granted=True, over_since=None, limit="memory_high",
                            reason=f"completed; throttled at memory_high {format_size(held)} and granted up to {format_size(target)}")
            actions.append(_journal("toolcall.throttled",
                                    f"memory stalled {psi_pct:.0f}% of the time (PSI full) at its memory_high {format_size(held)}; "
                                    f"granted headroom up to {format_size(target)} (its memory_max is {format_size(limits.memory_max)})",
                                    limit="memory_high", granted=target, **figures))
            actions.append(Action("set_memory_high", value=target))
        elif s.now - over_since >= esc.sustain_s:
            reason = (f"memory stalled {psi_pct:.0f}% of the time (PSI full) for {s.now - over_since:.1f} s; "
                      f"froze the tool call and will kill it in {esc.freeze_s:g} s unless its limit is raised")
            state = replace(state, stage="frozen", frozen_at=s.now, outcome="frozen", reason=reason, limit="memory_high",
                            held_at=held)
            actions.append(_journal("toolcall.frozen", reason, "warn", limit="memory_high", **figures))
            actions.append(Action("freeze"))
    elif state.over_since is not None:
        state = replace(state, over_since=None)
    return state, actions


def describe_exit(exit_code: int) -> str:
    """exit_code as the engine keeps it: >= 0 an exit status, < 0 minus the signal number."""
    if exit_code >= 0:
        return f"exited with status {exit_code}"
    try:
        name = signal.Signals(-exit_code).name
    except ValueError:
        name = f"signal {-exit_code}"
    return f"ended by {name} (signal {-exit_code}), not by agentd"


def finish(state: LadderState, exit_code: int | None, exit_seen: bool = True) -> LadderState:
    """The tool call's last process exited: settle its outcome. A non-zero exit (or a signal
    agentd did not send) inside its limits is `failed`, even after a throttled burst: the
    agent needs to know its command did not succeed. exit_seen False: it ended while no
    daemon watched (its exit event died with the old daemon), so nothing says it succeeded:
    `unknown`, never `ok`."""
    if state.stage == "killed":
        return replace(state, stage="done")
    if not exit_seen and exit_code is None:
        return replace(state, stage="done", outcome="unknown",
                       reason="ended while agentd was down: its exit status was not seen")
    if exit_code not in (None, 0):
        reason = describe_exit(exit_code)
        if state.throttled:
            reason += f" ({state.reason or 'after its memory burst was throttled'})"
        outcome = "failed"
    elif state.throttled:
        outcome, reason = "throttled", state.reason or "completed after its memory burst was throttled"
    else:
        outcome, reason = "ok", "completed within its limits"
    return replace(state, stage="done", outcome=outcome, reason=reason)
