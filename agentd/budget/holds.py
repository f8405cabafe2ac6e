"""Pure decisions ahead of the budget: when all agents together near the host budget, hold
the lowest-priority agents as a whole (a cap at what they use now, so the kernel pauses
their next allocation instead of the OOM killer ending someone), let one of them (the
oldest) use what is left, keep room for the higher-priority agents' bursts, and release
the holds once the burst has passed. Ordering in time instead of killing: AgentCgroup's
observation that agents' peaks rarely coincide (bursts last 1-2 s, 98.5 % inside tool calls).

Everything it needs is learned at run time: each agent's peak so far and its largest
growth between two samples (how far a higher-priority agent may still climb, and how close
to the budget "near" is for the held ones). The policy gives only floors.

End an agent only when waiting cannot help: a held agent whose runtime alone needs more
than the budget leaves beside the least every other agent has needed. "Needs" is what
reclaim cannot free (the kernel's usage less page cache: the caller reads it from
memory.stat), since at a cap or at the budget the kernel reclaims the rest before it
pauses anyone. State + sample in, actions out; no kernel, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

PRIORITY_RANK = {"low": 0, "normal": 1, "high": 2}
MIB = 1 << 20
SLACK = 4 * MIB  # a cap sits this far above what the agent uses, so writing it never has to reclaim


@dataclass(frozen=True)
class HoldSettings:
    enabled: bool = True
    headroom_pct: float = 5.0  # floor of "near": hold when the agents are within this much of the budget
    margin_pct: float = 2.0  # kept free under the budget for what agents/ holds outside agents (page cache, ...)
    patience_s: float = 2.0  # every held agent waiting and the front not growing this long: the front's reserve goes to them


@dataclass(frozen=True)
class AgentUse:
    name: str
    priority: str
    created: float
    bytes: int  # agents/<name> now (runtime and tool calls), as the kernel charges it: page cache included
    runtime_needed: int = 0  # its runtime alone, what reclaim cannot free (anon, shmem, kernel memory)
    waiting: bool = False  # paused at its hold cap (v1 under_oom; v2 memory.high events rising)
    needed: int | None = None  # agents/<name>, what reclaim cannot free; None: not known, all of bytes

    @property
    def needed_bytes(self) -> int:
        return self.bytes if self.needed is None else self.needed


@dataclass
class HoldState:
    held: dict[str, int] = field(default_factory=dict)  # agent -> cap in force
    peaks: dict[str, int] = field(default_factory=dict)  # learned: each agent's largest use so far
    last: dict[str, int] = field(default_factory=dict)  # each agent's use at the previous sample
    bursts: dict[str, int] = field(default_factory=dict)  # learned: each agent's largest growth between samples
    floors: dict[str, int] = field(default_factory=dict)  # learned: the least each agent has needed so far
    stalled_since: float | None = None  # every held agent waiting while the front did not grow
    holds: int = 0
    ended: int = 0


@dataclass(frozen=True)
class Hold:
    agent: str
    cap: int
    reason: str
    figures: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Release:
    agent: str
    reason: str


@dataclass(frozen=True)
class EndHeldAgent:
    agent: str
    reason: str
    figures: dict = field(default_factory=dict)


def _rank(a: AgentUse) -> int:
    return PRIORITY_RANK.get(a.priority, 1)


def split_front_back(agents: tuple[AgentUse, ...]) -> tuple[list[AgentUse], list[AgentUse]]:
    """front: never held (above the lowest priority present; with one priority only, the
    oldest). back: the lowest priority, oldest first."""
    lowest = min(_rank(a) for a in agents)
    front = [a for a in agents if _rank(a) > lowest] or [min(agents, key=lambda a: (a.created, a.name))]
    names = {a.name for a in front}
    back = sorted((a for a in agents if a.name not in names), key=lambda a: (a.created, a.name))
    return front, back


def decide_holds(state: HoldState, agents: tuple[AgentUse, ...], budget: int | None, settings: HoldSettings,
                 now: float, fmt=str) -> tuple[HoldState, list]:
    live = {a.name for a in agents}
    held = {n: c for n, c in state.held.items() if n in live}  # a gone agent's hold went with its cgroup
    peaks = {a.name: max(state.peaks.get(a.name, 0), a.bytes) for a in agents}
    # an agent's first sample is its start, not a burst
    bursts = {a.name: max(state.bursts.get(a.name, 0), a.bytes - state.last[a.name] if a.name in state.last else 0)
              for a in agents}
    floors = {a.name: min(state.floors.get(a.name, a.needed_bytes), a.needed_bytes) for a in agents}
    new = replace(state, held=held, peaks=peaks, bursts=bursts, floors=floors, last={a.name: a.bytes for a in agents})
    if budget is None or not settings.enabled or len(agents) < 2:
        return replace(new, held={}, stalled_since=None), [Release(n, "no budget in force or no one to hold") for n in held]

    front, back = split_front_back(agents)
    total = sum(a.bytes for a in agents)
    line = budget - int(budget * settings.margin_pct / 100)
    # How far two held agents may climb at once, learned: back to the peaks they showed, or
    # by the largest growth seen between two samples, whichever is more.
    climbs = sorted((max(bursts[a.name], peaks[a.name] - a.bytes) for a in back), reverse=True)
    near = max(int(budget * settings.headroom_pct / 100), sum(climbs[:2]))
    # room for the front to climb back to its peaks, or by its largest step, if it is still climbing
    reserve = sum(max(peaks[a.name] - a.bytes, bursts[a.name]) for a in front)
    if total + max(near, reserve) < line:
        reason = (f"all agents together use {fmt(total)}, clear of the budget {fmt(budget)} by more than "
                  f"{fmt(max(near, reserve))}: released")
        return replace(new, held={}, stalled_since=None), [Release(n, reason) for n in held]

    actions: list = []
    # Waiting cannot help: a held agent whose runtime alone does not fit even when everyone
    # else is back at the least they have needed (a burst passing frees no more than that).
    # Both sides without page cache: reclaim frees it before anyone is paused, so counting it
    # would end agents that only had to wait (issue 10).
    least = sum(floors[a.name] for a in agents)
    for a in list(back):
        # + SLACK: a cap sits that far above use, so an agent given all the room waits at
        # room + SLACK; it is not to be ended for what its own cap allowed.
        room = line - (least - floors[a.name]) + SLACK
        if a.waiting and a.runtime_needed > room:
            reason = (f"waiting cannot help: its runtime alone needs {fmt(a.runtime_needed)} that reclaim cannot "
                      f"free, more than the {fmt(max(room, 0))} the budget {fmt(budget)} leaves beside the least "
                      f"the other agents have needed; ended its runtime")
            actions.append(EndHeldAgent(a.name, reason, {"budget": budget, "runtime_needed": a.runtime_needed,
                                                         "room": room}))
            new = replace(new, ended=new.ended + 1)
            back.remove(a)
            held.pop(a.name, None)
    if not back:
        return replace(new, held=held), actions

    # Everyone held is waiting and the front is not climbing: its reserve waits for nothing.
    front_growing = any(a.bytes > state.last.get(a.name, a.bytes) for a in front)
    stalled = all(a.waiting for a in back) and not front_growing
    stalled_since = (state.stalled_since if state.stalled_since is not None else now) if stalled else None
    if stalled_since is not None and now - stalled_since >= settings.patience_s:
        reserve = 0
    spare = max(0, line - total - reserve)
    # One at a time: the spare goes whole to the oldest waiting agent (else the oldest), the
    # others stay where they are. Shared, two bursts would each stop halfway and wait for
    # each other.
    first = next((a for a in back if a.waiting), back[0])
    for a in back:
        old = held.get(a.name)
        # never raised but by the spare (a held agent sits at its cap: bytes + SLACK would creep)
        cap = (a.bytes + SLACK if old is None else min(old, a.bytes + SLACK)) + (spare if a is first else 0)
        if old is not None and abs(old - cap) < SLACK:
            continue
        reason = (f"all agents together use {fmt(total)} of the budget {fmt(budget)} (bursts learned {fmt(near)}, "
                  f"higher-priority agents may climb {fmt(reserve)} back to their peaks): {a.name} may use up to "
                  f"{fmt(cap)}; at it the kernel pauses it (not killed) until there is room again")
        actions.append(Hold(a.name, cap, reason, {"budget": budget, "total": total, "bytes": a.bytes, "near": near,
                                                  "reserve": reserve, "spare": spare}))
        if old is None:
            new = replace(new, holds=new.holds + 1)
        held[a.name] = cap
    return replace(new, held=held, stalled_since=stalled_since), actions
