"""The host memory budget as a policy kind: the limit on agents/ from the daemon's
--host-memory-max and the policies' `budget` sections; ahead of it, the lowest-priority
agents held as a whole near it (agentd.budget.holds: a cap on agents/<name>, saved and
reverted through ctx.changes); and on v1 the decision at the budget (agentd.budget.model)
carried out by asking the tool-call engine."""

from __future__ import annotations

from agentd.units import format_size
from agentd.budget.actuators import budget_setting, hold_setting
from agentd.budget.holds import AgentUse, EndHeldAgent, Hold, HoldState, Release, decide_holds
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
from agentd.cgroups import layout
from agentd.cgroups.driver import CgroupError
from agentd.cgroups.parse import unreclaimable_bytes
from agentd.kinds.contract import Access, Command, Kind


class BudgetKind(Kind):
    name = "budget"
    journal_prefix = "budget"

    def __init__(self):
        self.settings = BudgetSettings(None)
        self.state = BudgetState()
        self.memory_current = 0
        self.holds = HoldState()
        self.high_seen: dict[str, int] = {}  # v2: memory.high events per agent at the previous tick

    def attach(self, ctx) -> None:
        super().attach(ctx)
        self.setting, self.value_of = budget_setting(ctx.driver)
        self.hold, self.hold_value = hold_setting(ctx.driver)
        ctx.changes.register(self.setting, self.hold)
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
            self.holds = HoldState()
            return
        self.ctx.driver.create(layout.AGENTS)
        self.ctx.changes.apply(self.setting, layout.AGENTS, self.value_of(wanted.memory_max),
                               reason=f"host budget {format_size(wanted.memory_max)} from {wanted.source}")

    def on_tick(self, now: float) -> None:
        if self.settings.memory_max is None:
            return
        try:
            st = self.ctx.driver.stats(layout.AGENTS)
        except (CgroupError, OSError):
            return
        self.memory_current = st.memory_current
        paused = self.pauses and bool(st.memory_events.get("under_oom"))
        if not paused:  # at the budget itself the decision below goes first
            self._hold_tick(now)
        if not self.pauses:
            return
        sample = BudgetSample(now, paused, st.memory_current,
                              self._toolcalls() if paused else (), self._agents() if paused else ())
        self.state, actions = decide(self.state, sample, self.settings, fmt=format_size)
        for action in actions:
            if isinstance(action, EndToolCall):
                self.ctx.model.end_toolcall(action.id, action.reason, limit="host_budget", **action.figures)
            elif isinstance(action, EndAgentRuntime):
                self.ctx.model.end_agent_runtime(action.agent, action.reason, limit="host_budget", **action.figures)

    # ------------------------------------------------------------------ ahead of the budget
    def _hold_tick(self, now: float) -> None:
        uses = []
        for a in self.ctx.model.agents().values():
            if a.state != "live":
                continue
            try:
                st = self.ctx.driver.stats(a.cgroup)
                runtime = self.ctx.driver.stats(layout.runtime_rel(a.name)).memory_current
            except (CgroupError, OSError):
                continue
            needed, runtime_needed = self._needed(a.cgroup, st.memory_current), self._needed(f"{a.cgroup}/runtime", runtime)
            if self.ctx.driver.kind == "v2":
                high = st.memory_events.get("high", 0)
                waiting = high > self.high_seen.get(a.name, high)
                self.high_seen[a.name] = high
            else:
                waiting = bool(st.memory_events.get("under_oom"))
            uses.append(AgentUse(a.name, self.ctx.model.agent_priority(a), a.created, st.memory_current,
                                 runtime_needed=runtime_needed, waiting=waiting, needed=needed))
        before = dict(self.holds.held)
        self.holds, actions = decide_holds(self.holds, tuple(uses), self.settings.memory_max, self.settings.hold, now,
                                           fmt=format_size)
        live = {u.name for u in uses}
        for name in set(before) - live:  # its cgroup went with it: nothing to put back
            self._forget(name, live)
        for action in actions:
            target = layout.agent_rel(action.agent)
            if isinstance(action, Hold):
                try:
                    self.ctx.changes.apply(self.hold, target, self.hold_value(action.cap), reason=action.reason)
                except OSError:  # it grew past the cap since the sample (v1 refuses a limit below use): next tick
                    self.holds.held.pop(action.agent, None)
                    continue
                if action.agent not in before:
                    self.ctx.emit("held", f"held agent {action.agent}: {action.reason}", agent=action.agent,
                                  cap=action.cap, **action.figures)
            elif isinstance(action, Release):
                self._release(target, action.agent, action.reason, live)
            elif isinstance(action, EndHeldAgent):
                self._release(target, action.agent, "its runtime is ended", live)
                self.ctx.emit("ended", f"ended agent {action.agent}'s runtime: {action.reason}", level="warn",
                              agent=action.agent, **action.figures)
                self.ctx.model.end_agent_runtime(action.agent, action.reason, limit="host_budget", **action.figures)

    def _needed(self, rel: str, memory_current: int) -> int:
        """What of rel's usage reclaim cannot free (page cache left out); all of it when its
        memory.stat cannot be read."""
        try:
            return unreclaimable_bytes(memory_current, self.ctx.driver.memory_stat(rel))
        except (CgroupError, OSError):
            return memory_current

    def _release(self, target: str, agent: str, reason: str, live: set[str]) -> None:
        try:
            self.ctx.changes.revert(self.hold.name, target, reason)
        except OSError:
            self._forget(agent, live)
            return
        self.ctx.emit("released", f"released agent {agent}: {reason}", agent=agent)

    def _forget(self, agent: str, live: set[str]) -> None:
        # forget() takes a prefix: leave it while a live agent's name extends this one
        target = layout.agent_rel(agent)
        if not any(layout.agent_rel(other).startswith(target) for other in live):
            self.ctx.changes.forget(target)

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
        """Holds from before a restart are put back; the model decides again from live figures."""
        released = 0
        for change in self.ctx.changes.saved():
            place = layout.parse_rel(change.target)
            if place is not None and place.kind == "agent":  # a hold (the budget itself is agents/)
                try:
                    self.ctx.changes.revert(change.setting, change.target, "re-decided after a restart")
                    released += 1
                except OSError:
                    self.ctx.changes.forget(change.target)
        return {"saved_settings": len(self.ctx.changes.saved()), "holds_released": released}

    def status(self) -> dict:
        s = self.settings
        return {"memory_max": s.memory_max, "source": s.source or None, "memory_current": self.memory_current,
                "decides_at_budget": self.pauses, "decisions": self.state.decisions,
                "held": {name: cap for name, cap in sorted(self.holds.held.items())}, "holds": self.holds.holds,
                "ended_waiting_cannot_help": self.holds.ended}

    def metrics(self) -> dict:
        return {"memory_max_bytes": self.settings.memory_max or 0, "memory_current_bytes": self.memory_current,
                "decisions_total": self.state.decisions, "agents_held": len(self.holds.held),
                "holds_total": self.holds.holds, "held_agents_ended_total": self.holds.ended}

    def commands(self) -> list[Command]:
        return [Command("show", "GET", Access.ADMIN, lambda caller, query: self.status(), None,
                        "the budget in force, where it comes from, and what agents/ uses now")]

    def stop(self, revert: bool) -> None:
        if revert:
            self.ctx.changes.revert_all(reason="budget kind stopped with revert")


KIND = BudgetKind
