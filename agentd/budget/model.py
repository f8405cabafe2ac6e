"""Pure decisions of the host memory budget: which limit applies, and what to end when the
kernel holds every agent paused at it (v1). State + sample in, actions out; no kernel."""

from __future__ import annotations

from dataclasses import dataclass, field

from agentd.budget.holds import HoldSettings

PRIORITY_RANK = {"low": 0, "normal": 1, "high": 2}
DEFAULT_GRACE_S = 2.0


@dataclass(frozen=True)
class BudgetSettings:
    memory_max: int | None  # None: no budget
    grace_s: float = DEFAULT_GRACE_S
    source: str = ""  # "--host-memory-max" or "policy <name>"
    hold: HoldSettings = HoldSettings()


def settings_from(flag_bytes: int | None, sections: dict[str, dict]) -> BudgetSettings:
    """The smallest budget wins: the daemon's flag and every policy's `budget` section."""
    options = [BudgetSettings(flag_bytes, DEFAULT_GRACE_S, "--host-memory-max")] if flag_bytes else []
    for name, sec in sorted(sections.items()):
        hold = HoldSettings(**{k: v for k, v in (sec.get("hold") or {}).items() if v is not None})
        options.append(BudgetSettings(sec["memory_max"], sec.get("grace_s") or DEFAULT_GRACE_S, f"policy {name}", hold))
    if not options:
        return BudgetSettings(None)
    return min(options, key=lambda s: s.memory_max)


@dataclass(frozen=True)
class ToolCallFacts:
    id: str
    agent: str
    priority: str
    bytes: int  # its memory now (or its peak, whichever is larger)


@dataclass(frozen=True)
class AgentFacts:
    name: str
    priority: str
    created: float


@dataclass(frozen=True)
class BudgetSample:
    now: float
    paused: bool  # the kernel holds agents/ at its limit (v1 under_oom)
    memory_current: int
    toolcalls: tuple[ToolCallFacts, ...] = ()
    agents: tuple[AgentFacts, ...] = ()


@dataclass
class BudgetState:
    paused_since: float | None = None
    decisions: int = 0


@dataclass(frozen=True)
class EndToolCall:
    id: str
    agent: str
    reason: str
    figures: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EndAgentRuntime:
    agent: str
    reason: str
    figures: dict = field(default_factory=dict)


def decide(state: BudgetState, sample: BudgetSample, settings: BudgetSettings, fmt=str) -> tuple[BudgetState, list]:
    """At the budget (paused): first give freeing processes one tick, then end the
    lowest-priority, largest tool call; with none left and still paused after grace_s,
    end the newest lowest-priority agent's runtime."""
    if settings.memory_max is None or not sample.paused:
        return BudgetState(None, state.decisions), []
    if state.paused_since is None:
        return BudgetState(sample.now, state.decisions), []
    figures = {"budget": settings.memory_max, "memory_current": sample.memory_current, "source": settings.source}
    if sample.toolcalls:
        victim = min(sample.toolcalls, key=lambda t: (PRIORITY_RANK.get(t.priority, 1), -t.bytes))
        reason = (f"all agents together reached the host budget {fmt(settings.memory_max)} and were paused; "
                  f"ended {victim.priority}-priority tool call {victim.id} ({fmt(victim.bytes)}) so the agents can go on")
        return BudgetState(None, state.decisions + 1), [EndToolCall(victim.id, victim.agent, reason,
                                                                    {**figures, "priority": victim.priority})]
    if sample.now - state.paused_since < settings.grace_s or not sample.agents:
        return state, []
    victim_agent = min(sample.agents, key=lambda a: (PRIORITY_RANK.get(a.priority, 1), -a.created))
    reason = (f"the agents' runtimes alone exceed the host budget {fmt(settings.memory_max)} and no tool call is left "
              f"to end; ended the newest lowest-priority agent {victim_agent.name}")
    return BudgetState(None, state.decisions + 1), [EndAgentRuntime(victim_agent.name, reason, figures)]
