"""Carrying out the ladder: every tick, each live tool call's cgroup figures go to the pure
escalation.step, and its actions (journal, grant, hold, freeze, thaw, kill) are carried
out here; a tool call whose cgroup emptied is settled (outcome, record, result file,
toolcall.end). Also the other ways a tool call ends (a cancel, a policy kind's request) and
a policy change's re-evaluation of live tool calls' limits.

A mixin of the engine (agentd.toolcalls.kind.ToolCallEngine), on the event loop's thread.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from agentd.units import format_size
from agentd.cgroups.driver import CgroupError
from agentd.procfs import read_proc
from agentd.events import ProcEvent
from agentd.policy.schema import ResourceLimits
from agentd.toolcalls import escalation, model
from agentd.toolcalls.escalation import LadderState
from agentd.toolcalls.model import ToolCall
from agentd.toolcalls.results import ResultsDirError
from agentd.toolcalls.rules import find_tool_rule, resolve_limits
from agentd import procfs

_COUNTER_OF = {"toolcall.throttled": "toolcalls_throttled", "toolcall.frozen": "toolcalls_frozen",
               "toolcall.killed": "toolcalls_killed"}
RECHECK_ON_EXIT_S = 1.0  # how long later exits look again at a tool call whose leader exited (then: the tick)


class Ladder:
    # ------------------------------------------------------------------ the tick
    def tick(self) -> None:
        """The ladder's samples of tool calls that still run, a bounded chunk per tick (one
        loop callback stays short); the next tick goes on where this one stopped. Ends are
        decided by exit events (settle_exited); the samples find the rest (a leader that
        moved itself out, no tracker, a tool call killed by the ladder)."""
        now = self.clock()
        self.settle_exited(now)
        if not self._tick_queue:
            self._tick_queue.extend(self.toolcalls)
        t0 = time.perf_counter()
        while self._tick_queue:  # at least one, however short the budget
            tc = self.toolcalls.get(self._tick_queue.popleft())
            if tc is not None:
                self.tick_toolcall(tc, now)
                if time.perf_counter() - t0 >= self.tick_budget_s:
                    break
        for agent in list(self.agents.values()):
            if agent.state == "live" and not self.main_alive(agent):
                # /proc can say so before the tracker has delivered the exits queued ahead of
                # the main process's own (its tool calls' exit codes): wait for that event.
                key = f"agent:{agent.name}"
                first = self._empty_since.setdefault(key, now)
                if self.tracker is not None and model.waiting_for_exit_event(first, now):
                    continue
                self._empty_since.pop(key, None)
                self.end_agent(agent, "its main process is gone")

    def settle_exited(self, now: float) -> None:
        """Tool calls whose leader exited end as soon as their cgroup is empty: one cheap
        cgroup.events read each, then one final read (the sample that counts its last
        events). A leader that left children behind is looked at again on later exits for
        a while (the kernel leaves the cgroup just after the exit event), then by the tick."""
        for ident, since in list(self._leader_gone.items()):
            tc = self.toolcalls.get(ident)
            if tc is None:
                self._leader_gone.pop(ident, None)
                continue
            if now - since > RECHECK_ON_EXIT_S or ident in self._final_reads:
                continue
            if self.reads.threaded:  # the reads off the loop too; the ladder step back on it
                self._final_reads.add(ident)
                self.reads.submit(lambda rel=tc.cgroup: self._final_read(rel), lambda st, tc=tc: self._on_final_read(tc, st))
                continue
            st = self._final_read(tc.cgroup)
            if st is not None:
                self.tick_toolcall(tc, now, stats=st)
            if ident not in self.toolcalls:
                self._leader_gone.pop(ident, None)

    def _final_read(self, rel: str):
        """None while processes remain (one cgroup.events read); else the one read an end
        needs (driver.final_stats), or the error that says the cgroup is gone."""
        if self.act.populated_now(rel):
            return None
        try:
            return self.driver.final_stats(rel)
        except (CgroupError, OSError) as exc:
            return exc

    def _on_final_read(self, tc: ToolCall, st) -> None:
        self._final_reads.discard(tc.id)
        if st is None or self.toolcalls.get(tc.id) is not tc:
            return  # still running (a later exit or the tick looks again), or already settled
        self.tick_toolcall(tc, self.clock(), stats=st)
        if tc.id not in self.toolcalls:
            self._leader_gone.pop(tc.id, None)

    def tick_toolcall(self, tc: ToolCall, now: float, final: bool = False, stats=None) -> None:
        """One sample through the ladder; `stats`: already read (an emptied cgroup's final
        read, or the error reading it), else read now."""
        try:
            if isinstance(stats, Exception):
                raise stats
            st = stats if stats is not None else self.driver.stats(tc.cgroup)
        except (CgroupError, OSError):
            self.finish(tc, now)
            return
        tc.peak_bytes = max(tc.peak_bytes, st.memory_peak, st.memory_current)
        tc.cpu_s = max(tc.cpu_s, st.cpu_usage_us / 1e6)
        sample = model.sample_of(st, now, tc.peak_bytes)
        policy = self.policy_for(self.agents[tc.agent].policy)
        before = tc.ladder
        tc.ladder, actions = escalation.step(tc.ladder, sample, tc.resolved.limits, policy.toolcalls.escalation, v1=self.v1)
        for action in actions:
            self._apply(tc, action)
        if not final and not st.populated and not tc.leader_exited and self.put_back(tc, tc.pid):
            return  # empty only because its leader moved itself out (the attach event may still be queued)
        if not final and not st.populated and not tc.leader_exited and self.tracker is not None:
            # The leader's exit event (its exit code) may still be on its way from the tracker.
            first = self._empty_since.setdefault(tc.id, now)
            if model.waiting_for_exit_event(first, now):
                return
        self._empty_since.pop(tc.id, None)
        if final or not st.populated:  # the last sample still counted its events; now settle it
            self.finish(tc, now, populated=st.populated)
            return
        if tc.ladder.stage != before.stage or tc.ladder.throttled != before.throttled:
            tc.state = "frozen" if tc.ladder.stage == "frozen" else tc.state
            self.store.put_toolcall(tc.record())

    def _apply(self, tc: ToolCall, action: escalation.Action) -> None:
        if action.kind == "journal":
            data = dict(action.data)
            message = data.pop("message")
            self.journal.emit(action.reason, message, level=action.level, agent=tc.agent, tool_call=tc.id, **data)
            counter = _COUNTER_OF.get(action.reason)
            if counter:
                self.counters[counter] += 1
        elif action.kind == "set_memory_limit":
            self.act.set_memory_max(tc.cgroup, action.value, tc.resolved.limits.swap_max)
        elif action.kind == "set_memory_high":
            self.act.set_memory_high(tc.cgroup, action.value)
        elif action.kind == "hold":
            tc.state = "frozen"  # v1: the kernel already holds it at its limit (under_oom); the freezer cannot take it
        elif action.kind == "freeze":
            tc.state = "frozen"
            self.run_blocking(self.act.freeze, tc.cgroup)
        elif action.kind == "thaw":
            self.act.thaw(tc.cgroup)
            tc.state = "running"
        elif action.kind == "kill":
            self.run_blocking(self.act.kill, tc.cgroup)  # the tick finishes it once its cgroup is empty

    # ------------------------------------------------------------------ kernel events
    def on_exit(self, ev: ProcEvent) -> None:
        tc = self.toolcalls.by_pid.get(ev.pid)
        if tc is not None:
            tc.leader_exited = True
            if ev.exit_code_known:
                tc.exit_code = model.exit_code_of(ev.exit_code)
            self._leader_gone[tc.id] = self.clock()
        if self._leader_gone:
            self.settle_exited(self.clock())
        for agent in list(self.agents.values()):
            if agent.main_pid == ev.pid and agent.state == "live":
                self.end_agent(agent, "its main process exited")

    def toolcall_of_pid(self, pid: int) -> ToolCall | None:
        path = procfs.read_cgroup_v2(pid) or ""
        for tc in self.toolcalls.values():
            if path.rstrip("/").endswith("/" + tc.cgroup):
                return tc
        return None

    # ------------------------------------------------------------------ policy changes
    def reevaluate(self) -> int:
        """A policy changed: give every live tool call the limits its policy now says, in
        place (no process restarts). Returns how many changed."""
        changed = 0
        for tc in list(self.toolcalls.values()):
            agent = self.agents.get(tc.agent)
            if agent is None or tc.state == "done":
                continue
            policy = self.policy_for(agent.policy)
            if not tc.comm:  # re-adopted: the record does not keep comm/exe; the leader still has them
                info = read_proc(tc.pid)
                tc.comm, tc.exe = (info.comm, info.exe) if info else ("", None)
            rule = find_tool_rule(policy, name=tc.name, comm=tc.comm, exe=tc.exe, argv=tc.argv, uid=agent.uid)
            resolved = resolve_limits(policy, rule, tc.intent)
            if resolved.limits == tc.resolved.limits:
                continue
            try:
                self.act.set_limits(tc.cgroup, model.reevaluated_knobs(resolved.limits, tc.ladder, self.driver.kind))
            except (CgroupError, OSError) as exc:
                self.journal.emit("policy.reevaluate_failed", f"could not give {tc.id} its new limits: {exc}", level="warn",
                                  agent=tc.agent, tool_call=tc.id)
                continue
            old = tc.resolved.limits.to_json()
            tc.resolved = resolved
            self.store.put_toolcall(tc.record())
            self.journal.emit("toolcall.limits_changed", f"policy {policy.name} changed: {tc.id} now runs with {resolved.limits.to_json()}",
                              agent=tc.agent, tool_call=tc.id, old=old, new=resolved.limits.to_json())
            changed += 1
        return changed

    # ------------------------------------------------------------------ endings
    def cancel(self, ident: str, reason: str) -> ToolCall:
        return self.end_toolcall(ident, f"cancelled: {reason}", message=f"cancelled: {reason}; ending every process of the tool call")

    def end_toolcall(self, ident: str, reason: str, *, limit: str | None = None, message: str | None = None,
                     **figures) -> ToolCall:
        """End a live tool call's whole tree for `reason` (a cancel, or a policy kind's
        request through the shared model, e.g. the host budget); journaled as toolcall.killed."""
        tc = self.toolcalls[ident]
        ladder = {**asdict(tc.ladder), "stage": "killed", "outcome": "killed", "reason": reason}
        if limit is not None:
            ladder["limit"] = limit
            figures["limit"] = limit
        tc.ladder = LadderState(**ladder)
        figures.setdefault("priority", tc.priority)
        self.journal.emit("toolcall.killed", message or reason, level="warn", agent=tc.agent, tool_call=tc.id, **figures)
        self.counters["toolcalls_killed"] += 1
        self.run_blocking(self.act.kill, tc.cgroup)
        return tc

    def finish(self, tc: ToolCall, now: float, populated: bool = True, exit_seen: bool = True) -> None:
        """Settle a tool call whose processes are gone (or must go): its outcome now; its
        cgroup killed and removed and its result file written off the loop (endwork.py);
        then, back on the loop, its record and toolcall.end in one store transaction, so
        an agent told of the end (or reading the record) finds its result file already."""
        tc.ladder = escalation.finish(tc.ladder, tc.exit_code, exit_seen)
        tc.state, tc.ended, tc.outcome, tc.reason = "done", now, tc.ladder.outcome, tc.ladder.reason
        self.toolcalls.pop(tc.id, None)
        self._leader_gone.pop(tc.id, None)
        self._empty_since.pop(tc.id, None)
        self.counters["toolcalls_finished"] += 1
        result = self._result_of(tc)
        self.ends.submit(lambda: self._end_work(tc.id, tc.cgroup, populated, result), lambda problems: self._settled(tc, problems))

    def _end_work(self, ident: str, rel: str, populated: bool, result: tuple | None) -> list[tuple[str, str]]:
        """On the end worker: no journal or store here, only what went wrong, for _settled."""
        problems = []
        try:
            if populated:
                self.act.kill(rel)  # stragglers of a finished tool call would be orphans
            self.act.remove(rel)
        except (CgroupError, OSError) as exc:
            problems.append(("cgroup.error", f"could not remove {rel}: {exc}"))
        if result is not None and self.results is not None:
            try:
                self.results.write(*result)
            except (OSError, ValueError, ResultsDirError) as exc:
                problems.append(("result.error", f"could not write the result file for {ident}: {exc}"))
        return problems

    def _settled(self, tc: ToolCall, problems: list[tuple[str, str]]) -> None:
        for kind, message in problems:
            self.journal.emit(kind, message, level="warn", tool_call=tc.id)
        with self.store.transaction():
            self.store.put_toolcall(tc.record())
            self._emit_end(tc)

    def _emit_end(self, tc: ToolCall) -> None:
        level = "warn" if tc.outcome in ("killed", "frozen") else "info"
        self.journal.emit("toolcall.end", f"tool call {tc.id} ended: {tc.outcome} ({tc.reason}); peak {format_size(tc.peak_bytes)}, "
                          f"cpu {tc.cpu_s:.2f} s, wall {tc.ended - tc.started:.2f} s", level=level, agent=tc.agent, tool_call=tc.id,
                          outcome=tc.outcome, peak_bytes=tc.peak_bytes, cpu_s=round(tc.cpu_s, 3), wall_s=round(tc.ended - tc.started, 3),
                          exit_code=tc.exit_code, retry_with=self.retry_hint(tc))

    def retry_hint(self, tc: ToolCall) -> dict | None:
        """What the agent may ask for on a retry, within the policy's ceiling."""
        if tc.outcome not in ("killed", "frozen"):
            return None
        agent = self.agents.get(tc.agent)
        ceiling = self.policy_for(agent.policy).toolcalls.ceiling if agent is not None else ResourceLimits()
        return model.retry_hint(tc, ceiling, self.clock())

    def finish_record(self, tc: ToolCall) -> None:
        self.store.put_toolcall(tc.record())
        self._write_result(tc)

    def _write_result(self, tc: ToolCall) -> None:
        """The structured result for agents that cannot read the event stream:
        <results root>/<agent>/<pid>.json, readable by the agent's uid only (results.py)."""
        result = self._result_of(tc)
        if result is None:
            return
        try:
            self.results.write(*result)
        except (OSError, ValueError, ResultsDirError) as exc:
            self.journal.emit("result.error", f"could not write the result file for {tc.id}: {exc}", level="warn", tool_call=tc.id)

    def _result_of(self, tc: ToolCall) -> tuple | None:
        """results.write's arguments (agent, owner uid, pid, result), decided on the loop."""
        if self.results is None:
            return None
        agent = self.agents.get(tc.agent)
        owner = agent.uid if agent is not None else self.store.agent_uid(tc.agent)
        if owner is None:
            return None
        return tc.agent, owner, tc.pid, model.result_of(tc, self.retry_hint(tc))
