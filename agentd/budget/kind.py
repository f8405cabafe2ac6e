"""The host memory budget as a policy kind: the limit on agents/ from the daemon's
--host-memory-max and the policies' `budget` sections, and on v1 the decision at the
budget (agentd.budget.model) carried out by asking the tool-call engine."""

from __future__ import annotations

from agentd.api.units import format_size
from agentd.budget.actuators import AGENTS, budget_setting
from agentd.budget.model import (
    AgentFacts,
    BudgetSample,
    BudgetSettings,
    BudgetState,
    EndAgentRuntime,
    EndToolCall,
    ToolCallFacts,
    decide,
    settings_from,
)
from agentd.cgroups.driver import CgroupError
from agentd.kinds.contract import Access, Command, Kind


class BudgetKind(Kind):
    name = "budget"
    journal_prefix = "budget"

    def __init__(self):
        self.settings = BudgetSettings(None)
        self.state = BudgetState()
        self.memory_current = 0

    def attach(self, ctx) -> None:
        super().attach(ctx)
        self.setting, self.value_of = budget_setting(ctx.driver)
        ctx.changes.register(self.setting)
        self.flag = ctx.facts.get("host_memory_max")
        self.pauses = ctx.driver.kind != "v2"  # v1: the kernel pauses at the limit and we decide
        if self.pauses and not ctx.driver.features().oom_pause:
            self.pauses = False
            ctx.degrade("no v1 memory.oom_control: at the budget the kernel's OOM killer decides, ordered by oom_score_adj")

    def on_policy(self, sections: dict) -> None:
        wanted = settings_from(self.flag, sections)
        if wanted == self.settings:
            return
        self.settings = wanted
        if wanted.memory_max is None:
            self.ctx.changes.revert_all(reason="no budget in force")
            return
        self.ctx.driver.create(AGENTS)
        self.ctx.changes.apply(self.setting, AGENTS, self.value_of(wanted.memory_max),
                               reason=f"host budget {format_size(wanted.memory_max)} from {wanted.source}")

    def on_tick(self, now: float) -> None:
        if self.settings.memory_max is None:
            return
        try:
            st = self.ctx.driver.stats(AGENTS)
        except (CgroupError, OSError):
            return
        self.memory_current = st.memory_current
        if not self.pauses:
            return
        paused = bool(st.memory_events.get("under_oom"))
        sample = BudgetSample(now, paused, st.memory_current,
                              self._toolcalls() if paused else (), self._agents() if paused else ())
        self.state, actions = decide(self.state, sample, self.settings, fmt=format_size)
        for action in actions:
            if isinstance(action, EndToolCall):
                self.ctx.model.end_toolcall(action.id, action.reason, limit="host_budget", **action.figures)
            elif isinstance(action, EndAgentRuntime):
                self.ctx.model.end_agent_runtime(action.agent, action.reason, limit="host_budget", **action.figures)

    def _toolcalls(self) -> tuple[ToolCallFacts, ...]:
        out = []
        for tc in self.ctx.model.toolcalls().values():
            if tc.state == "done":
                continue
            try:
                now_bytes = self.ctx.driver.stats(tc.cgroup).memory_current
            except (CgroupError, OSError):
                now_bytes = 0
            out.append(ToolCallFacts(tc.id, tc.agent, tc.priority, max(tc.peak_bytes, now_bytes)))
        return tuple(out)

    def _agents(self) -> tuple[AgentFacts, ...]:
        return tuple(AgentFacts(a.name, self.ctx.model.agent_priority(a), a.created)
                     for a in self.ctx.model.agents().values() if a.state == "live")

    def readopt(self) -> dict:
        return {"saved_settings": len(self.ctx.changes.saved())}

    def status(self) -> dict:
        s = self.settings
        return {"memory_max": s.memory_max, "source": s.source or None, "memory_current": self.memory_current,
                "decides_at_budget": self.pauses, "decisions": self.state.decisions}

    def metrics(self) -> dict:
        return {"memory_max_bytes": self.settings.memory_max or 0, "memory_current_bytes": self.memory_current,
                "decisions_total": self.state.decisions}

    def commands(self) -> list[Command]:
        return [Command("show", "GET", Access.ADMIN, lambda caller, query: self.status(), None,
                        "the budget in force, where it comes from, and what agents/ uses now")]

    def stop(self, revert: bool) -> None:
        if revert:
            self.ctx.changes.revert_all(reason="budget kind stopped with revert")


KIND = BudgetKind
