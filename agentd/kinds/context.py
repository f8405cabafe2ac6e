"""What the daemon hands every kind: the shared model (agents, tool calls, their cgroups, the
process tree), the journal, an injectable clock, persisted state and saved values, and a
way to run slow work off the event loop. Kinds read the model; they change only their own
cgroups and settings, through their actuators and `changes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from agentd.cgroups import layout
from agentd.kinds.changes import ChangeLog
from agentd.kinds.state import KindState

if TYPE_CHECKING:
    from agentd.cgroups.driver import CgroupDriver


def _refuse(*args, **kw):
    raise RuntimeError("this model has no tool-call engine to ask")


class SharedModel:
    """A read-only view of what the tool-call engine keeps: agents and tool calls by name/id
    (the live records: do not change them), the process tree, and the cgroup layout; and the
    two requests a kind may make of the engine, which then journals and records them as its
    own decisions: end a tool call, end an agent's runtime.

    The cgroup layout under the delegated root (agents/<agent>/runtime,
    agents/<agent>/tools/<seq>-<tool>, jobs/<name>) is agentd.cgroups.layout's."""

    JOBS = layout.JOBS
    AGENTS = layout.AGENTS

    def __init__(self, agents: Callable[[], Mapping[str, Any]] = dict, toolcalls: Callable[[], Mapping[str, Any]] = dict,
                 tree: Any = None, agent_of_pid: Callable[[int], str | None] = lambda pid: None,
                 agent_priority: Callable[[Any], str] = lambda agent: "normal",
                 end_toolcall: Callable[..., Any] = _refuse, end_agent_runtime: Callable[..., Any] = _refuse):
        self._agents = agents
        self._toolcalls = toolcalls
        self.tree = tree  # agentd.tracking.proctree.ProcTree, or None in unit tests
        self.agent_of_pid = agent_of_pid
        self.agent_priority = agent_priority  # low | normal | high, from the agent's policy
        self.end_toolcall = end_toolcall  # (id, reason, limit=..., **figures)
        self.end_agent_runtime = end_agent_runtime  # (agent name, reason, limit=..., **figures)

    def agents(self) -> Mapping[str, Any]:
        return MappingProxyType(self._agents())

    def toolcalls(self) -> Mapping[str, Any]:
        return MappingProxyType(self._toolcalls())

    job_cgroup = staticmethod(layout.job_rel)


@dataclass
class KindContext:
    name: str
    prefix: str  # journal prefix: events are "<prefix>.<what>"
    driver: "CgroupDriver | None"
    model: SharedModel
    state: KindState
    changes: ChangeLog
    journal_emit: Callable[..., dict]
    clock: Callable[[], float] = time.time
    run_blocking: Callable[..., Any] = lambda fn, *args: fn(*args)  # the daemon runs it in a thread
    degraded: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # kernel facts: cgroup driver kind, gpu, swap, ...

    def emit(self, what: str, message: str, **data) -> dict:
        """Journal "<prefix>.<what>" with the numbers behind it (level=, agent=, tool_call= as in Journal.emit)."""
        return self.journal_emit(f"{self.prefix}.{what}", message, **data)

    def degrade(self, line: str) -> None:
        """A feature this kind cannot use here: one line, shown at start-up and in status."""
        if line not in self.degraded:
            self.degraded.append(line)
