"""Gated placement: an agent's exec, stopped by the tracker's exec gate, gets its tool-call
cgroup (named, its limits resolved and written), is moved there and continued.

Why a hook on the tracker's thread and not on the event loop: the exec stays stopped (its
process sits in state T) until it is placed, so every microsecond here is latency the tool
call lives. A hop through the loop would add whatever the loop is doing (a tick, a policy
reload, a burst of API requests: milliseconds) to every tool call's start. So `place_gated`
runs on the tracker's thread and touches only what is thread-safe (the cgroup driver, /proc,
the engine's lock for next_seq and pending intents); the bookkeeping (record, journal,
counters) follows on the loop in `record_placement`. It never leaves a process stopped.
Its syscalls keep the GIL (agentd.heldsys): a thread that gives the GIL up at each syscall
waits for the busy loop to hand it back, dozens of times per exec.

A mixin of the engine (agentd.toolcalls.kind.ToolCallEngine).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque

from agentd import heldsys
from agentd.cgroups import layout
from agentd.units import format_size
from agentd.cgroups.driver import CgroupError, Limits
from agentd.procfs import ProcInfo, read_environ, read_proc
from agentd.events import ProcEvent
from agentd.toolcalls import model
from agentd.toolcalls.actuators import oom_score_adj
from agentd.toolcalls.escalation import LadderState
from agentd.toolcalls.model import Agent, Placement, ToolCall
from agentd.toolcalls.rules import IntentInvalid, find_tool_rule, parse_intent_env, resolve_limits, tool_name

log = logging.getLogger("agentd.toolcalls")


class GatedPlacement:
    # ------------------------------------------------------------------ an exec (the loop)
    def _agent_for_exec(self, ev: ProcEvent) -> Agent | None:
        if ev.cgroup_id:
            name = self.by_runtime_id.get(ev.cgroup_id)
            return self.agents.get(name) if name else None
        # cn_proc has no cgroup ids: the process tree says whose runtime the exec came from.
        lineage = self.lineage(ev.pid)
        if lineage.tool_call is not None:
            return None
        return lineage.agent

    def on_exec(self, ev: ProcEvent) -> None:
        """An exec the tracker's thread did not place (cn_proc, or a gated exec handed over)."""
        agent = self._agent_for_exec(ev)
        if agent is None and not ev.gated:
            self.match_agent_rules(ev.pid)
            return
        if agent is None or agent.state != "live" or ev.pid == agent.main_pid:
            if ev.gated:
                self.release(ev.pid)
            return
        t0 = time.monotonic()
        try:
            self.start_tool_call(agent, ev.pid, gated=ev.gated, t0=t0)
        except Exception as exc:  # never leave a gated process stopped (the tracker path normally places gated execs)
            self.counters["placement_errors"] += 1
            self.journal.emit("toolcall.error", f"could not place pid {ev.pid} in a tool-call cgroup: {exc}", level="error",
                              agent=agent.name, pid=ev.pid)
            if ev.gated:
                self.release(ev.pid)

    def release(self, pid: int) -> None:
        """Continue a stopped exec (through the tracker's guard when it has one)."""
        if self.tracker is not None and self.tracker.release(pid):
            return
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def start_tool_call(self, agent: Agent, pid: int, *, gated: bool, t0: float | None = None) -> ToolCall | None:
        placement = self.place(agent, pid, gated=gated, t0=t0)
        return self.record_placement(placement) if placement is not None else None

    # ------------------------------------------------------------------ the tracker's thread
    def place_gated(self, ev: ProcEvent) -> Placement | None:
        """Called on the tracker's thread for a gated exec: place it and let it run right
        away, without waiting for the event loop. The bookkeeping follows on the loop
        (record_placement). Never leaves the process stopped."""
        t0 = time.monotonic()
        name = self.by_runtime_id.get(ev.cgroup_id)
        agent = self.agents.get(name) if name else None
        if agent is None or agent.state != "live" or ev.pid == agent.main_pid:
            self.release(ev.pid)
            return None
        try:
            with heldsys.holding():  # no GIL hand-over at each syscall while it is stopped (heldsys)
                return self.place(agent, ev.pid, gated=True, t0=t0, exec_ns=ev.ts_ns)
        except Exception as exc:
            self.release(ev.pid)
            return Placement(agent=agent.name, pid=ev.pid, error=str(exc))

    def place(self, agent: Agent, pid: int, *, gated: bool, t0: float | None = None,
              exec_ns: int = 0) -> Placement | None:
        """The kernel-facing half of a tool call's start: name it, resolve its limits,
        create its cgroup with them, move it there, continue it if gated. Thread-safe.
        exec_ns: the exec's kernel timestamp (CLOCK_MONOTONIC), for the full-path latency."""
        clock = time.monotonic_ns  # latency measurement only; decisions take self.clock()
        t_start = clock()
        info = read_proc(pid)
        if info is None:
            if gated:
                self.release(pid)
            return None  # exited already: nothing to place
        intent, intent_error = None, None
        try:
            intent = parse_intent_env(read_environ(pid))
        except IntentInvalid as exc:
            intent_error = str(exc)
        now = self.clock()
        with self.lock:
            if intent is None:
                intent, agent.pending_intents = model.take_pending_intent(agent.pending_intents, now)
            seq = agent.next_seq
            agent.next_seq += 1
        name = (intent.tool if intent and intent.tool else None) or tool_name(info.argv, info.exe, info.comm)
        policy = self.policy_for(agent.policy)
        rule = find_tool_rule(policy, name=name, comm=info.comm, exe=info.exe, argv=info.argv, uid=info.uid)
        resolved = resolve_limits(policy, rule, intent)
        rel = layout.tool_rel(agent.name, layout.tool_leaf(seq, name))
        limits = model.tool_limits_for_driver(resolved.limits, self.driver.kind)
        priority = (intent.priority if intent and intent.priority else None) or policy.priority
        marks = [clock()]
        cont_ns = 0
        moved = False
        try:
            marks += self.act.make_cgroup(rel, limits, clock)
            moved = self.act.move(pid, rel)
            marks.append(clock())
            oom_score_adj(pid, model.toolcall_oom_score_adj(priority))
            marks.append(clock())
            if moved and self.notes is not None:  # durable before it runs (notes.py)
                self.notes.write(model.placement_note(agent.name, seq, name, rel, pid, info.start, now, resolved,
                                                      intent, priority))
            marks.append(clock())
        finally:
            if gated:
                cont_ns = clock()
                self.release(pid)
        placed_us = (time.monotonic() - t0) * 1e6 if t0 is not None else 0.0
        if gated and moved:
            self._refill_spare(rel, limits)
        full_us = (cont_ns - exec_ns) / 1e3 if gated and exec_ns and cont_ns > exec_ns else None
        steps_us = {step: (b - a) / 1e3 for step, a, b in
                    zip(("policy", "mkdir", "limits", "move", "oom_adj", "note"), [t_start, *marks], marks)}
        if not moved:
            self.act.remove(rel)
        return Placement(agent=agent.name, pid=pid, info=info, intent=intent, intent_error=intent_error, name=name,
                         resolved=resolved, seq=seq, rel=rel, moved=moved, gated=gated, placed_us=placed_us,
                         full_us=full_us, steps_us=steps_us, priority=priority, started=now)

    def _refill_spare(self, rel: str, limits: Limits) -> None:
        """A spare tool cgroup for the agent's next exec with the same limits, made right
        after this one was continued (on the tracker's thread: the loop may lag behind a
        burst of execs), so that the next placement renames it instead of making it."""
        try:
            self.act.make_spare(os.path.dirname(rel), limits)
        except (CgroupError, OSError) as exc:  # not on the loop: no journal here
            log.warning("could not prepare a spare tool cgroup beside %s: %s", rel, exc)

    # ------------------------------------------------------------------ back on the loop
    def record_placement(self, p: Placement) -> ToolCall | None:
        """The event-loop half: the record, the journal, the counters."""
        agent = self.agents.get(p.agent)
        if p.error is not None or agent is None:
            self.counters["placement_errors"] += 1
            self.journal.emit("toolcall.error", f"could not place pid {p.pid} in a tool-call cgroup: {p.error}", level="error",
                              agent=p.agent, pid=p.pid)
            return None
        if p.gated:
            self.placement_us.append(p.placed_us)
            if p.full_us is not None:
                self.placement_full_us.append(p.full_us)
            for step, us in (p.steps_us or {}).items():
                self.placement_steps_us.setdefault(step, deque(maxlen=10_000)).append(us)
        tc = ToolCall(model.toolcall_id(agent.name, p.seq, p.name), agent.name, p.seq, p.name, p.rel, p.pid, p.info.argv,
                      p.started, p.resolved, p.intent, LadderState(started=p.started), placed_us=p.placed_us,
                      priority=p.priority, comm=p.info.comm, exe=p.info.exe)
        if not p.moved:
            tc.state, tc.ended, tc.outcome, tc.reason = "done", p.started, "ok", "exited before it could be placed"
            self.finish_record(tc)
            return tc
        self.toolcalls[tc.id] = tc
        self.counters["toolcalls_started"] += 1
        with self.store.transaction():
            self.store.put_toolcall(tc.record())
            self._emit_start(tc, agent, p.info, p.pid, p.gated, p.placed_us, p.intent_error, p.full_us, p.steps_us)
        return tc

    def _emit_start(self, tc: ToolCall, agent: Agent, info: ProcInfo, pid: int, gated: bool, placed_us: float,
                    intent_error: str | None, full_us: float | None = None, steps_us: dict | None = None) -> None:
        resolved = tc.resolved
        lim = resolved.limits
        self.journal.emit("toolcall.start",
                          f"tool call {tc.id} started: {' '.join(info.argv)[:120]} (memory high {format_size(lim.memory_high)}, "
                          f"max {format_size(lim.memory_max)}, pids {lim.pids_max}, timeout {lim.timeout_s if lim.timeout_s is not None else 'none'} s; rule {resolved.rule})",
                          agent=agent.name, tool_call=tc.id, pid=pid, argv=info.argv[:32], limits=lim.to_json(),
                          rule=resolved.rule, gated=gated, placed_us=round(placed_us, 1),
                          **({"full_us": round(full_us, 1)} if full_us is not None else {}),
                          **({"steps_us": {k: round(v, 1) for k, v in steps_us.items()}} if gated and steps_us else {}),
                          clips=[c.to_json() for c in resolved.clips])
        self.emit_clips(resolved, agent.name, tc.id)
        if intent_error:
            self.counters["intents_rejected"] += 1
            self.journal.emit("intent.rejected", f"ignored the tool call's AGENTD_INTENT: {intent_error}", level="warn",
                              agent=agent.name, tool_call=tc.id)

    def emit_clips(self, resolved, agent: str, tool_call: str | None = None) -> None:
        for clip in resolved.clips:
            self.journal.emit("intent.clipped", f"intent {clip.field}={clip.requested:g} is above the policy ceiling; granted {clip.granted:g}",
                              level="warn", agent=agent, tool_call=tool_call, **clip.to_json())

    # ------------------------------------------------------------------ escapes
    def on_attach(self, ev: ProcEvent) -> None:
        tc = self.lineage(ev.pid).tool_call
        if tc is not None and tc.state != "done":
            self.put_back(tc, ev.pid)

    def put_back(self, tc: ToolCall, pid: int) -> bool:
        """pid belongs to tc but sits elsewhere (it moved itself): move it back, say so."""
        escaped_to = self.act.move_back(pid, tc.cgroup)
        if escaped_to is None:
            return False
        self.counters["moved_back"] += 1
        self.journal.emit("toolcall.moved_back", f"pid {pid} left its tool-call cgroup for {escaped_to}; put it back in {tc.cgroup}",
                          level="warn", agent=tc.agent, tool_call=tc.id, pid=pid, escaped_to=escaped_to)
        return True
