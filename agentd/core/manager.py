"""Agents and their tool calls: the state the daemon owns, driven by tracker events and a
tick, carried out through the cgroup driver, recorded in the store and the journal.

Runs only on the event loop's thread. The decisions themselves live in pure modules
(toolcall_rules, escalation); this module gathers their inputs and applies their outputs.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Callable

from agentd.cgroups.driver import CgroupDriver, CgroupError, Limits
from agentd.core import escalation
from agentd.core.escalation import LadderState, Sample
from agentd.core.journal import Journal
from agentd.core.model import Agent, Placement, ToolCall
from agentd.core.pidfd import PeerProcess
from agentd.core.procinfo import ProcInfo, alive, read_environ, read_proc, set_oom_score_adj
from agentd.core.results import ResultsDir, ResultsDirError
from agentd.core.store import Store
from agentd.core.toolcall_rules import (
    Intent,
    IntentInvalid,
    find_tool_rule,
    parse_intent_env,
    resolve_limits,
    rule_matches,
    tool_name,
)
from agentd.events import ProcEvent, ProcEventKind
from agentd.policy.schema import Policy, ResourceLimits, valid_name
from agentd.api.units import format_size
from agentd.tracking import procfs
from agentd.tracking.backend import TrackerBackend
from agentd.tracking.proctree import ProcTree

log = logging.getLogger(__name__)

# The kernel's OOM killer must take a tool call before an agent's runtime (its LLM loop):
# runtimes get RUNTIME_OOM_SCORE_ADJ (killable only as a last resort; lowering needs
# CAP_SYS_RESOURCE), and each tool call's leader (inherited by its children) a raised score
# by priority, low-priority work first. Raising needs no capability, so the order holds
# even where the runtime cannot be lowered.
RUNTIME_OOM_SCORE_ADJ = -900
TOOLCALL_OOM_SCORE_ADJ = {"high": 100, "normal": 400, "low": 800}
PENDING_INTENT_TTL_S = 30.0  # an intent declared over the API applies to the next tool call within this time
FINISHED_AGENT_KEEP = 200
MAX_CGROUP_DEPTH = 64  # ancestors looked at when finding a caller's agent
EXIT_EVENT_GRACE_S = 5.0  # how long an emptied tool call waits for its leader's exit event (exit code); the event
# normally comes within milliseconds and ends the wait, so only a loaded host ever waits long


class NameTaken(FileExistsError):
    """The agent name is owned by another uid."""


@dataclass(frozen=True)
class Lineage:
    agent: Agent | None
    tool_call: ToolCall | None


def tool_limits_for_driver(limits: ResourceLimits, kind: str) -> Limits:
    """Policy limits -> driver knobs. On hybrid (v1 memory) there is no memory.high: the
    hard limit starts at memory_high with oom_kill_disable so the kernel pauses the tool call
    there and the ladder decides (grant up to memory_max, then freeze, then kill)."""
    quota = int(limits.cpu_max * 100_000) if limits.cpu_max else None
    if kind == "hybrid":
        return Limits(memory_max=limits.memory_high or limits.memory_max, swap_max=limits.swap_max,
                      cpu_weight=limits.cpu_weight, cpu_max_quota_us=quota, pids_max=limits.pids_max,
                      oom_pause=limits.memory_high is not None or limits.memory_max is not None)
    return Limits(memory_high=limits.memory_high, memory_max=limits.memory_max, swap_max=limits.swap_max,
                  cpu_weight=limits.cpu_weight, cpu_max_quota_us=quota, pids_max=limits.pids_max)


class Manager:
    def __init__(self, driver: CgroupDriver, store: Store, journal: Journal, policy_for: Callable[[str], Policy],
                 tracker: TrackerBackend | None = None, results: ResultsDir | None = None,
                 clock: Callable[[], float] = time.time, all_policies: Callable[[], list[Policy]] = list):
        self.driver = driver
        self.v1 = driver.kind == "hybrid"
        self.store = store
        self.journal = journal
        self.policy_for = policy_for
        self.all_policies = all_policies  # for agent rules
        self.tracker = tracker
        self.results = results  # where agents find a result file per tool call; None: no files
        self.clock = clock
        self.agents: dict[str, Agent] = {}
        # Fed by every tracker event (no /proc reads per event): who descends from whom.
        self.tree = ProcTree()
        self.toolcalls: dict[str, ToolCall] = {}  # live only
        self.by_runtime_id: dict[int, str] = {}
        self.counters = {"toolcalls_started": 0, "toolcalls_finished": 0, "toolcalls_killed": 0, "toolcalls_frozen": 0,
                         "toolcalls_throttled": 0, "moved_back": 0, "placement_errors": 0, "intents_rejected": 0,
                         "agents_registered": 0, "events_handled": 0}
        self.placement_us: deque[float] = deque(maxlen=10_000)  # recent gated placement latencies
        # The same placements from the exec tracepoint's kernel timestamp to SIGCONT (BPF only).
        self.placement_full_us: deque[float] = deque(maxlen=10_000)
        self.placement_steps_us: dict[str, deque[float]] = {}  # step -> recent durations
        self.runtime_shield_refused = False
        # freeze and kill wait for the kernel (up to seconds): the daemon runs them off the
        # event loop so a slow kill never delays the next exec's placement.
        self.run_blocking: Callable = lambda fn, *args: fn(*args)
        # Guards what the tracker's thread (place_gated) and the loop both change:
        # next_seq and pending intents.
        self.lock = threading.Lock()
        # tool call id (or "agent:<name>") -> when its cgroup (or main process) was first seen gone
        self._empty_since: dict[str, float] = {}

    # ------------------------------------------------------------------ agents
    def register_agent(self, pid: int, uid: int, name: str | None, policy: str | None,
                       peer: PeerProcess | None = None) -> Agent:
        """Manage pid as agent `name`. With `peer` (the API caller held by a pidfd), only
        that very process is taken: if it exited and its pid now names another process,
        the registration is refused instead of moving someone else's process."""
        info = read_proc(pid)
        if info is None or (peer is not None and not (peer.alive() and peer.start == info.start)):
            raise ProcessLookupError(f"process {pid} is gone" if peer is None else
                                     f"process {pid} that sent this request has exited; its pid may name another process by now")
        if name is None:
            name = self._free_name(re.sub(r"[^A-Za-z0-9._-]", "_", f"{info.comm}-{pid}").lstrip(".")[:56], uid)
        if not valid_name(name):
            raise ValueError(f"agent name {name!r}: expected 1-64 characters of A-Z a-z 0-9 . _ -")
        if name in self.agents and self.agents[name].state == "live":
            raise FileExistsError(f"an agent named {name!r} is already running")
        # A name belongs to the uid that first used it, for good: its history (tool calls
        # with their argv, events) stays that uid's, and its record is never overwritten by
        # another owner. The same uid may run it again: the new run continues the numbering.
        owner = self.store.agent_uid(name)
        if owner is not None and owner != uid:
            raise NameTaken(f"the agent name {name!r} belongs to uid {owner} (an ended agent keeps its history "
                            "under it); choose another name")
        policy_obj = self.policy_for(policy or "default")
        cgroup = f"agents/{name}"
        self.driver.create(f"{cgroup}/runtime")
        self.driver.create(f"{cgroup}/tools")
        agent_limits = policy_obj.agent
        if self.v1:
            agent_limits_d = Limits(memory_max=agent_limits.memory_max, pids_max=agent_limits.pids_max)
        else:
            agent_limits_d = tool_limits_for_driver(agent_limits, self.driver.kind)
        self.driver.apply_limits(cgroup, agent_limits_d)
        # A name used before keeps counting, so no old tool-call record is overwritten.
        agent = Agent(name, uid, pid, info.start, policy_obj.name, cgroup, next_seq=self.store.max_seq(name) + 1,
                      created=self.clock())
        agent.runtime_id = self.driver.cgroup_id(f"{cgroup}/runtime")
        agent.cgroup_id = self.driver.cgroup_id(cgroup)
        self.agents[name] = agent
        self.by_runtime_id[agent.runtime_id] = name
        before = procfs.read_cgroup_v2(pid) if peer is not None else None
        if not self.driver.move(pid, f"{cgroup}/runtime"):
            raise ProcessLookupError(f"process {pid} exited before it could be placed")
        if peer is not None and not peer.alive():
            self._undo_registration(agent, pid, before)
            raise ProcessLookupError(f"process {pid} that sent this request exited while it was being placed")
        if set_oom_score_adj(pid, RUNTIME_OOM_SCORE_ADJ) is None and not self.runtime_shield_refused:
            self.runtime_shield_refused = True
            self.journal.emit("oom.shield_unavailable", "cannot lower agent runtimes' oom_score_adj (no CAP_SYS_RESOURCE); "
                              "tool calls are raised instead so the OOM killer still takes them first", level="warn")
        self._update_gate()
        self.store.put_agent(agent.record())
        self.counters["agents_registered"] += 1
        self.journal.emit("agent.registered", f"agent {name} (pid {pid}, uid {uid}) is managed under {cgroup} with policy {policy_obj.name}; "
                          "the OOM killer takes its tool calls before its runtime",
                          agent=name, pid=pid, uid=uid, policy=policy_obj.name, agent_limits=agent_limits.to_json())
        return agent

    def _undo_registration(self, agent: Agent, pid: int, before: str | None) -> None:
        """The caller exited between its pidfd check and the move: whatever holds its pid now
        (another process, in a microsecond window) goes back where it was, then the agent's
        cgroups go."""
        self.agents.pop(agent.name, None)
        self.by_runtime_id.pop(agent.runtime_id, None)
        if before is not None:
            try:
                with open(os.path.join(procfs.v2_mount(), before.lstrip("/"), "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except OSError:
                pass
        for rel in (f"{agent.cgroup}/runtime", f"{agent.cgroup}/tools", agent.cgroup):
            try:
                if not self.driver.procs(rel):
                    self.driver.remove(rel)
            except (CgroupError, OSError):
                pass
        self.journal.emit("agent.refused", f"pid {pid} changed hands while it was registered as agent {agent.name}; "
                          "nothing was registered", level="warn", pid=pid)

    def _free_name(self, base: str, uid: int) -> str:
        """A chosen-for-you name that no other uid owns: base, else base-2, base-3, ..."""
        name, n = base, 1
        while self.store.agent_uid(name) not in (None, uid):
            n += 1
            name = f"{base}-{n}"
        return name

    def _match_agent_rules(self, pid: int) -> Agent | None:
        """An exec outside any agent: does a policy's agent rule claim it?"""
        rules = [(p, rule) for p in self.all_policies() for rule in p.agents]
        if not rules:
            return None
        info = read_proc(pid)
        cgroup = procfs.read_cgroup_v2(pid)
        if info is None or cgroup is None or self.agent_of_cgroup(cgroup) is not None:
            return None  # gone, or already inside one of our agents
        for policy, rule in rules:
            if rule_matches(rule.match, name=tool_name(info.argv, info.exe, info.comm), comm=info.comm, exe=info.exe,
                            argv=info.argv, uid=info.uid, cgroup=cgroup):
                name = f"{rule.name}-{pid}"
                try:
                    agent = self.register_agent(pid, info.uid, name, policy.name)
                except (ProcessLookupError, FileExistsError, ValueError, CgroupError) as exc:
                    self.journal.emit("agent.match_failed", f"pid {pid} matched agent rule {rule.name} of policy {policy.name} "
                                      f"but could not be managed: {exc}", level="warn", pid=pid)
                    return None
                self.journal.emit("agent.matched", f"pid {pid} ({info.comm}) matched agent rule {rule.name} of policy {policy.name}",
                                  agent=name, pid=pid, rule=rule.name)
                return agent
        return None

    def prepare_agent_cgroup(self, name: str) -> str:
        """For a cooperative launch: the runtime cgroup the child joins before exec."""
        rel = f"agents/{name}/runtime"
        self.driver.create(rel)
        return rel

    def _update_gate(self) -> None:
        if self.tracker is not None and self.tracker.can_gate:
            self.tracker.set_gated_cgroups({a.runtime_id for a in self.agents.values() if a.state == "live"})

    def agent_of_pid(self, pid: int) -> str | None:
        """The live agent whose runtime or tool calls hold pid (from the kernel's view)."""
        path = procfs.read_cgroup_v2(pid)
        return self.agent_of_cgroup(path) if path is not None else None

    def agent_of_cgroup(self, path: str) -> str | None:
        """The live agent whose cgroup is `path` or one of its ancestors, compared by cgroup
        id with the cgroup this daemon created for it: a path that merely reads
        .../agents/<name>/... (any user with a delegated cgroup can make one) is nobody."""
        ids = {a.cgroup_id: a.name for a in self.agents.values() if a.state == "live" and a.cgroup_id}
        parts = [p for p in path.split("/") if p]
        if not ids or "agents" not in parts:
            return None
        mount = procfs.v2_mount()
        # Every agent cgroup is <root>/agents/<name>: only such ancestors are looked up (a
        # stat each, ~10 µs on cgroupfs), deepest first; the id decides.
        for depth in range(len(parts), 1, -1)[:MAX_CGROUP_DEPTH]:
            if parts[depth - 2] != "agents":
                continue
            name = ids.get(procfs.cgroup_id_of("/".join(parts[:depth]), mount))
            if name is not None:
                return name
        return None

    def declare_intent(self, agent_name: str, intent: Intent) -> dict:
        agent = self.agents[agent_name]
        now = self.clock()
        with self.lock:
            agent.pending_intents = [(t, i) for t, i in agent.pending_intents if now - t < PENDING_INTENT_TTL_S][-15:]
            agent.pending_intents.append((now, intent))
        policy = self.policy_for(agent.policy)
        resolved = resolve_limits(policy, None, intent)
        self._emit_clips(resolved, agent_name)
        return {"agent": agent_name, "intent": intent.to_json(), "granted": resolved.limits.to_json(),
                "clips": [c.to_json() for c in resolved.clips], "applies_to": "the next tool call started within 30 s"}

    # ------------------------------------------------------------------ tracker events
    def on_event(self, ev: ProcEvent) -> None:
        self.counters["events_handled"] += 1
        self.tree.apply(ev)
        if ev.kind == ProcEventKind.EXEC:
            self._on_exec(ev)
        elif ev.kind == ProcEventKind.EXIT:
            self._on_exit(ev)
        elif ev.kind == ProcEventKind.CGROUP_ATTACH:
            self._on_attach(ev)
        elif ev.kind == ProcEventKind.OOM_VICTIM:
            tc = self._toolcall_of_pid(ev.pid)
            self.journal.emit("kernel.oom_victim", f"the kernel's OOM killer chose pid {ev.pid} ({ev.comm})"
                              + (f" inside tool call {tc.id}" if tc else ""), level="warn",
                              agent=tc.agent if tc else None, tool_call=tc.id if tc else None, pid=ev.pid)

    def _agent_for_exec(self, ev: ProcEvent) -> Agent | None:
        if ev.cgroup_id:
            name = self.by_runtime_id.get(ev.cgroup_id)
            return self.agents.get(name) if name else None
        # cn_proc has no cgroup ids: the process tree says whose runtime the exec came from.
        lineage = self._lineage(ev.pid)
        if lineage.tool_call is not None:
            return None
        return lineage.agent

    def _on_exec(self, ev: ProcEvent) -> None:
        agent = self._agent_for_exec(ev)
        if agent is None and not ev.gated:
            self._match_agent_rules(ev.pid)
            return
        if agent is None or agent.state != "live" or ev.pid == agent.main_pid:
            if ev.gated:
                self._release(ev.pid)
            return
        t0 = time.monotonic()
        try:
            self.start_tool_call(agent, ev.pid, gated=ev.gated, t0=t0)
        except Exception as exc:  # never leave a gated process stopped (the tracker path normally places gated execs)
            self.counters["placement_errors"] += 1
            self.journal.emit("toolcall.error", f"could not place pid {ev.pid} in a tool-call cgroup: {exc}", level="error",
                              agent=agent.name, pid=ev.pid)
            if ev.gated:
                self._release(ev.pid)

    def _release(self, pid: int) -> None:
        if self.tracker is not None and self.tracker.release(pid):
            return
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def start_tool_call(self, agent: Agent, pid: int, *, gated: bool, t0: float | None = None) -> ToolCall | None:
        placement = self.place(agent, pid, gated=gated, t0=t0)
        return self.record_placement(placement) if placement is not None else None

    def place_gated(self, ev: ProcEvent) -> "Placement | None":
        """Called on the tracker's thread for a gated exec: place it and let it run right
        away, without waiting for the event loop. The bookkeeping follows on the loop
        (record_placement). Never leaves the process stopped."""
        t0 = time.monotonic()
        name = self.by_runtime_id.get(ev.cgroup_id)
        agent = self.agents.get(name) if name else None
        if agent is None or agent.state != "live" or ev.pid == agent.main_pid:
            self._release(ev.pid)
            return None
        try:
            return self.place(agent, ev.pid, gated=True, t0=t0, exec_ns=ev.ts_ns)
        except Exception as exc:
            self._release(ev.pid)
            return Placement(agent=agent.name, pid=ev.pid, error=str(exc))

    def place(self, agent: Agent, pid: int, *, gated: bool, t0: float | None = None,
              exec_ns: int = 0) -> "Placement | None":
        """The kernel-facing half of a tool call's start: name it, resolve its limits,
        create its cgroup with them, move it there, continue it if gated. Thread-safe.
        exec_ns: the exec's kernel timestamp (CLOCK_MONOTONIC), for the full-path latency."""
        clock = time.monotonic_ns
        t_start = clock()
        info = read_proc(pid)
        if info is None:
            if gated:
                self._release(pid)
            return None  # exited already: nothing to place
        intent, intent_error = None, None
        try:
            intent = parse_intent_env(read_environ(pid))
        except IntentInvalid as exc:
            intent_error = str(exc)
        now = self.clock()
        with self.lock:
            if intent is None:
                fresh = [(t, i) for t, i in agent.pending_intents if now - t < PENDING_INTENT_TTL_S]
                if fresh:
                    intent = fresh[0][1]
                    agent.pending_intents.remove(fresh[0])
            seq = agent.next_seq
            agent.next_seq += 1
        name = (intent.tool if intent and intent.tool else None) or tool_name(info.argv, info.exe, info.comm)
        policy = self.policy_for(agent.policy)
        rule = find_tool_rule(policy, name=name, comm=info.comm, exe=info.exe, argv=info.argv, uid=info.uid)
        resolved = resolve_limits(policy, rule, intent)
        rel = f"{agent.cgroup}/tools/{seq:04d}-{name}"
        limits = tool_limits_for_driver(resolved.limits, self.driver.kind)
        marks = [clock()]
        cont_ns = 0
        try:
            if self.driver.take_spare(rel, limits):  # hybrid: v1 cgroups made ahead with these limits, renamed
                marks += [clock(), clock()]
            else:
                self.driver.create(rel, limits)
                marks.append(clock())
                self.driver.apply_limits(rel, limits)
                marks.append(clock())
            moved = self.driver.move(pid, rel)
            marks.append(clock())
            priority = (intent.priority if intent and intent.priority else None) or policy.priority
            set_oom_score_adj(pid, TOOLCALL_OOM_SCORE_ADJ.get(priority, 300))
            marks.append(clock())
        finally:
            if gated:
                cont_ns = clock()
                self._release(pid)
        placed_us = (time.monotonic() - t0) * 1e6 if t0 is not None else 0.0
        if gated and moved:
            self._refill_spare(rel, limits)
        full_us = (cont_ns - exec_ns) / 1e3 if gated and exec_ns and cont_ns > exec_ns else None
        steps_us = {step: (b - a) / 1e3 for step, a, b in
                    zip(("policy", "mkdir", "limits", "move", "oom_adj"), [t_start, *marks], marks)}
        if not moved:
            self.driver.remove(rel)
        return Placement(agent=agent.name, pid=pid, info=info, intent=intent, intent_error=intent_error, name=name,
                         resolved=resolved, seq=seq, rel=rel, moved=moved, gated=gated, placed_us=placed_us,
                         full_us=full_us, steps_us=steps_us, priority=priority, started=now)

    def record_placement(self, p: "Placement") -> ToolCall | None:
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
        tc = ToolCall(f"{agent.name}/{p.seq:04d}-{p.name}", agent.name, p.seq, p.name, p.rel, p.pid, p.info.argv, p.started,
                      p.resolved, p.intent, LadderState(started=p.started), placed_us=p.placed_us, priority=p.priority,
                      comm=p.info.comm, exe=p.info.exe)
        if not p.moved:
            tc.state, tc.ended, tc.outcome, tc.reason = "done", p.started, "ok", "exited before it could be placed"
            self._finish_record(tc)
            return tc
        self.toolcalls[tc.id] = tc
        self.counters["toolcalls_started"] += 1
        with self.store.transaction():
            self.store.put_toolcall(tc.record())
            self._emit_start(tc, agent, p.info, p.pid, p.gated, p.placed_us, p.intent_error, p.full_us, p.steps_us)
        return tc

    def _refill_spare(self, rel: str, limits: Limits) -> None:
        """A spare tool cgroup for the agent's next exec with the same limits, made right
        after this one was continued (on the tracker's thread: the loop may lag behind a
        burst of execs), so that the next placement renames it instead of making it."""
        if not getattr(self.driver, "spares", 0):
            return
        try:
            self.driver.make_spare(os.path.dirname(rel), limits)
        except (CgroupError, OSError) as exc:  # not on the loop: no journal here
            log.warning("could not prepare a spare tool cgroup beside %s: %s", rel, exc)

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
        self._emit_clips(resolved, agent.name, tc.id)
        if intent_error:
            self.counters["intents_rejected"] += 1
            self.journal.emit("intent.rejected", f"ignored the tool call's AGENTD_INTENT: {intent_error}", level="warn",
                              agent=agent.name, tool_call=tc.id)

    def _emit_clips(self, resolved, agent: str, tool_call: str | None = None) -> None:
        for clip in resolved.clips:
            self.journal.emit("intent.clipped", f"intent {clip.field}={clip.requested:g} is above the policy ceiling; granted {clip.granted:g}",
                              level="warn", agent=agent, tool_call=tool_call, **clip.to_json())

    def _on_exit(self, ev: ProcEvent) -> None:
        for tc in self.toolcalls.values():
            if tc.pid == ev.pid:
                tc.leader_exited = True
                if ev.exit_code_known:
                    status = ev.exit_code
                    tc.exit_code = (status >> 8) & 0xFF if status & 0x7F == 0 else -(status & 0x7F)
        for agent in list(self.agents.values()):
            if agent.main_pid == ev.pid and agent.state == "live":
                self.end_agent(agent, "its main process exited")

    def _on_attach(self, ev: ProcEvent) -> None:
        tc = self._lineage(ev.pid).tool_call
        if tc is not None and tc.state != "done":
            self._put_back(tc, ev.pid)

    def _put_back(self, tc: ToolCall, pid: int) -> bool:
        """pid belongs to tc but sits elsewhere (it moved itself): move it back, say so."""
        current = procfs.read_cgroup_v2(pid)
        if current is None or current.rstrip("/").endswith("/" + tc.cgroup):
            return False
        if not self.driver.move(pid, tc.cgroup):
            return False
        self.counters["moved_back"] += 1
        self.journal.emit("toolcall.moved_back", f"pid {pid} left its tool-call cgroup for {current}; put it back in {tc.cgroup}",
                          level="warn", agent=tc.agent, tool_call=tc.id, pid=pid, escaped_to=current)
        return True

    def _toolcall_of_pid(self, pid: int) -> ToolCall | None:
        path = procfs.read_cgroup_v2(pid) or ""
        for tc in self.toolcalls.values():
            if path.rstrip("/").endswith("/" + tc.cgroup):
                return tc
        return None

    def _lineage(self, pid: int) -> Lineage:
        """The nearest live tool-call leader or agent runtime among pid and its ancestors
        (from the process tree, so a process that moved itself out is still known)."""
        leaders = {tc.pid: tc for tc in self.toolcalls.values()}
        mains = {a.main_pid: a for a in self.agents.values() if a.state == "live"}
        for p in [pid, *self.tree.ancestors(pid)]:
            if p in leaders:
                tc = leaders[p]
                return Lineage(self.agents.get(tc.agent), tc)
            if p in mains:
                return Lineage(mains[p], None)
        return Lineage(None, None)

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
            knobs = tool_limits_for_driver(resolved.limits, self.driver.kind)
            if self.v1 and tc.ladder.granted:
                knobs.memory_max = resolved.limits.memory_max  # already past memory_high: keep the grant's meaning
            elif tc.ladder.granted and knobs.memory_high is not None:
                knobs.memory_high = max(knobs.memory_high, escalation.v2_grant_target(resolved.limits) or 0)  # keep the v2 grant
            try:
                self.driver.apply_limits(tc.cgroup, knobs)
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

    # ------------------------------------------------------------------ the tick
    def tick(self) -> None:
        now = self.clock()
        for tc in list(self.toolcalls.values()):
            self._tick_toolcall(tc, now)
        for agent in list(self.agents.values()):
            if agent.state == "live" and not alive(agent.main_pid, agent.main_start):
                # /proc can say so before the tracker has delivered the exits queued ahead of
                # the main process's own (its tool calls' exit codes): wait for that event.
                key = f"agent:{agent.name}"
                first = self._empty_since.setdefault(key, now)
                if self.tracker is not None and now - first < EXIT_EVENT_GRACE_S:
                    continue
                self._empty_since.pop(key, None)
                self.end_agent(agent, "its main process is gone")

    def _tick_toolcall(self, tc: ToolCall, now: float, final: bool = False) -> None:
        try:
            st = self.driver.stats(tc.cgroup)
        except (CgroupError, OSError):
            self._finish(tc, now)
            return
        tc.peak_bytes = max(tc.peak_bytes, st.memory_peak, st.memory_current)
        tc.cpu_s = max(tc.cpu_s, st.cpu_usage_us / 1e6)
        sample = Sample(now=now, memory_current=st.memory_current, memory_peak=tc.peak_bytes, memory_limit=st.memory_limit,
                        memory_high=st.memory_high,
                        pids_max_events=st.pids_max_events, pids_current=st.pids_current,
                        high_events=st.memory_events.get("high", 0), oom_kill_events=st.memory_events.get("oom_kill", 0),
                        under_oom=bool(st.memory_events.get("under_oom", 0)),
                        psi_full_total_us=st.memory_pressure.full_total_us, populated=st.populated)
        policy = self.policy_for(self.agents[tc.agent].policy)
        before = tc.ladder
        tc.ladder, actions = escalation.step(tc.ladder, sample, tc.resolved.limits, policy.toolcalls.escalation, v1=self.v1)
        for action in actions:
            self._apply(tc, action)
        if not final and not st.populated and not tc.leader_exited and self._put_back(tc, tc.pid):
            return  # empty only because its leader moved itself out (the attach event may still be queued)
        if not final and not st.populated and not tc.leader_exited and self.tracker is not None:
            # The leader's exit event (its exit code) may still be on its way from the tracker.
            first = self._empty_since.setdefault(tc.id, now)
            if now - first < EXIT_EVENT_GRACE_S:
                return
        self._empty_since.pop(tc.id, None)
        if final or not st.populated:  # the last sample still counted its events; now settle it
            self._finish(tc, now, populated=st.populated)
            return
        if tc.ladder.stage != before.stage or tc.ladder.throttled != before.throttled:
            tc.state = "frozen" if tc.ladder.stage == "frozen" else tc.state
            self.store.put_toolcall(tc.record())

    def _apply(self, tc: ToolCall, action: escalation.Action) -> None:
        if action.kind == "journal":
            data = dict(action.data)
            message = data.pop("message")
            self.journal.emit(action.reason, message, level=action.level, agent=tc.agent, tool_call=tc.id, **data)
            counter = {"toolcall.throttled": "toolcalls_throttled", "toolcall.frozen": "toolcalls_frozen",
                       "toolcall.killed": "toolcalls_killed"}.get(action.reason)
            if counter:
                self.counters[counter] += 1
        elif action.kind == "set_memory_limit":
            swap = tc.resolved.limits.swap_max
            self.driver.apply_limits(tc.cgroup, Limits(memory_max=action.value, swap_max=swap if swap is not None else 0, oom_pause=True))
        elif action.kind == "set_memory_high":
            self.driver.apply_limits(tc.cgroup, Limits(memory_high=action.value))
        elif action.kind == "hold":
            tc.state = "frozen"  # v1: the kernel already holds it at its limit (under_oom); the freezer cannot take it
        elif action.kind == "freeze":
            tc.state = "frozen"
            self.run_blocking(self.driver.freeze, tc.cgroup)
        elif action.kind == "thaw":
            self.driver.thaw(tc.cgroup)
            tc.state = "running"
        elif action.kind == "kill":
            self.run_blocking(self.driver.kill, tc.cgroup)  # the tick finishes it once its cgroup is empty

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
        self.run_blocking(self.driver.kill, tc.cgroup)
        return tc

    def end_agent_runtime(self, name: str, reason: str, *, limit: str | None = None, **figures) -> None:
        """End an agent's own process (its LLM loop), at a policy kind's request; the agent
        then ends as usual when the tick sees its main process gone."""
        agent = self.agents[name]
        self.journal.emit("agent.killed", reason, level="error", agent=name, **({"limit": limit} if limit else {}), **figures)
        self.driver.kill(f"{agent.cgroup}/runtime")

    def agent_priority(self, agent: Agent) -> str:
        return self.policy_for(agent.policy).priority

    def _finish(self, tc: ToolCall, now: float, populated: bool = True) -> None:
        tc.ladder = escalation.finish(tc.ladder, tc.exit_code)
        tc.state, tc.ended, tc.outcome, tc.reason = "done", now, tc.ladder.outcome, tc.ladder.reason
        try:
            if populated:
                self.driver.kill(tc.cgroup)  # stragglers of a finished tool call would be orphans
            self.driver.remove(tc.cgroup)
        except (CgroupError, OSError) as exc:
            self.journal.emit("cgroup.error", f"could not remove {tc.cgroup}: {exc}", level="warn", tool_call=tc.id)
        self.toolcalls.pop(tc.id, None)
        self.counters["toolcalls_finished"] += 1
        with self.store.transaction():
            self._finish_record(tc)
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
        if tc.ladder.limit == "timeout_s":
            took = (tc.ended or self.clock()) - tc.started
            return {"intent": {"duration_s": round(took * 2, 1), "tool": tc.name},
                    "advice": f"it was still running after {took:.0f} s: declare duration_s={took * 2:.0f} or run it in the background"}
        ceiling = self.policy_for(self.agents[tc.agent].policy).toolcalls.ceiling if tc.agent in self.agents else ResourceLimits()
        want = int(tc.peak_bytes * 1.5)
        top = ceiling.memory_high or ceiling.memory_max
        if top and want > top:
            return {"advice": "the tool call needs more memory than the policy allows; run a smaller workload"}
        return {"intent": {"memory": want, "tool": tc.name}, "advice": f"declare memory={format_size(want)} before retrying"}

    def _finish_record(self, tc: ToolCall) -> None:
        self.store.put_toolcall(tc.record())
        self._write_result(tc)

    def _write_result(self, tc: ToolCall) -> None:
        """The structured result for agents that cannot read the event stream:
        <results root>/<agent>/<pid>.json, readable by the agent's uid only (results.py)."""
        if self.results is None:
            return
        agent = self.agents.get(tc.agent)
        owner = agent.uid if agent is not None else self.store.agent_uid(tc.agent)
        if owner is None:
            return
        result = {"tool_call": tc.id, "pid": tc.pid, "outcome": tc.outcome, "reason": tc.reason, "peak_bytes": tc.peak_bytes,
                  "limits": tc.resolved.limits.to_json(), "exit_code": tc.exit_code, "retry_with": self.retry_hint(tc)}
        try:
            self.results.write(tc.agent, owner, tc.pid, result)
        except (OSError, ValueError, ResultsDirError) as exc:
            self.journal.emit("result.error", f"could not write the result file for {tc.id}: {exc}", level="warn", tool_call=tc.id)

    def end_agent(self, agent: Agent, why: str) -> None:
        self._empty_since.pop(f"agent:{agent.name}", None)
        for tc in [t for t in self.toolcalls.values() if t.agent == agent.name]:
            if populated(self.driver, tc.cgroup):
                self.journal.emit("toolcall.orphans", f"agent {agent.name} ended ({why}) while tool call {tc.id} still ran; ended it",
                                  level="warn", agent=agent.name, tool_call=tc.id)
                self.driver.kill(tc.cgroup)
            self._tick_toolcall(tc, self.clock(), final=True)
        agent.state, agent.ended = "done", self.clock()
        try:
            self.driver.kill(f"{agent.cgroup}/runtime")
            for child in self.driver.children(f"{agent.cgroup}/tools"):
                self.driver.kill(f"{agent.cgroup}/tools/{child}")
            self.driver.remove(agent.cgroup)
        except (CgroupError, OSError) as exc:
            self.journal.emit("cgroup.error", f"could not remove {agent.cgroup}: {exc}", level="warn", agent=agent.name)
        self.by_runtime_id.pop(agent.runtime_id, None)
        self._update_gate()
        if self.results is not None:
            self.results.forget(agent.name)
        self.store.put_agent(agent.record())
        self.journal.emit("agent.ended", f"agent {agent.name} ended: {why}", agent=agent.name)
        done = [a for a in self.agents.values() if a.state == "done"]
        for old in done[:-FINISHED_AGENT_KEEP]:
            self.agents.pop(old.name, None)


def populated(driver: CgroupDriver, rel: str) -> bool:
    try:
        return driver.stats(rel).populated
    except (CgroupError, OSError):
        return False
