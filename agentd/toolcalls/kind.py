"""The tool-call engine as a room of the house: the Kind whose hooks the daemon calls like
every other kind's, over the state the other kinds read (agents, tool calls, the process
tree) as the shared model.

Why a special room, not one more line in agentd.kinds.registry.KINDS:
- every other kind reads the model this one keeps (KindContext.model is built from it), so
  it exists before them, whatever kinds a daemon is configured with (config.kinds may be any
  subset, a test's probe kind alone), and it is stopped after them;
- its order matters: its hooks run first (re-adoption before the others get their
  sections; its tick settles tool calls before the budget looks at them; its view of an
  event before theirs);
- its hooks are not isolated the way KindHost isolates the others': a half-updated model
  is not something the others can go on from, so its failures reach the daemon as before
  (re-adoption that fails stops start-up; a failing tick or event is logged there);
- the daemon hands it what no kind context carries: the store of agent and tool-call
  records, the journal, the policy set (it reads whole policies: priority, agents, agent,
  toolcalls), the results directory, the placement notes and the tracker.
So the daemon builds it (ToolCallEngine(...)) and hands it to KindHost(engine=...), which
attaches it with a KindContext like the others' and calls the same hooks (readopt_engine,
on_policy, on_kernel_event, on_tick, stop) in that order. The one hook outside the host is
gated placement, on the tracker's thread (placement.py says why: latency). Its status and
metrics stay the daemon's top-level `counters`, `tracker` and `agentd_<counter>_total`.

The parts: agents.py (registry, names, identity), placement.py (gated placement),
ladder.py (the ladder carried out, endings, re-evaluation), readopt.py (after a restart),
notes.py (placements made durable before SIGCONT), endwork.py (the slow half of an end,
off the loop), model.py + escalation.py + rules.py (pure), actuators.py (kernel effects),
results.py (result files), policy.py (the `toolcalls` section). The engine is one object over one state (below); agents, placement
and ladder are its jobs, one mixin module each, all carried out through `self.act`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from typing import Callable

from agentd.cgroups import layout
from agentd.cgroups.driver import CgroupDriver
from agentd.core.journal import Journal
from agentd.procfs import is_stopped
from agentd.core.store import Store
from agentd.events import ProcEvent, ProcEventKind
from agentd.kinds.context import SharedModel
from agentd.kinds.contract import Kind
from agentd.policy.schema import Policy
from agentd.toolcalls.actuators import Actuators
from agentd.toolcalls.agents import AgentRegistry
from agentd.toolcalls.endwork import EndWork
from agentd.toolcalls.ladder import Ladder
from agentd.toolcalls.model import Agent, LiveToolCalls, ToolCall
from agentd.toolcalls.notes import PlacementNotes
from agentd.toolcalls.placement import GatedPlacement
from agentd.toolcalls.results import ResultsDir
from agentd.tracking.backend import TrackerBackend
from agentd.tracking.proctree import ProcTree

COUNTERS = ("toolcalls_started", "toolcalls_finished", "toolcalls_killed", "toolcalls_frozen", "toolcalls_throttled",
            "moved_back", "placement_errors", "intents_rejected", "agents_registered", "events_handled",
            "oom_victims_unmanaged")

TICK_BUDGET_S = 0.02  # one tick's samples stay this short; the rest wait for the next tick


class ToolCallEngine(AgentRegistry, GatedPlacement, Ladder, Kind):
    name = "toolcalls"
    journal_prefix = "toolcall"  # also agent.*, intent.*, kernel.oom_victim, policy.reevaluate_failed, cgroup/result.error

    def __init__(self, driver: CgroupDriver, store: Store, journal: Journal, policy_for: Callable[[str], Policy],
                 tracker: TrackerBackend | None = None, results: ResultsDir | None = None,
                 clock: Callable[[], float] = time.time, all_policies: Callable[[], list[Policy]] = list,
                 notes: PlacementNotes | None = None):
        self.driver = driver
        self.act = Actuators(driver)
        self.v1 = driver.kind == "hybrid"
        self.store = store
        self.journal = journal
        self.policy_for = policy_for
        self.all_policies = all_policies  # for agent rules
        self.tracker = tracker
        self.results = results  # where agents find a result file per tool call; None: no files
        self.notes = notes  # placements made durable before SIGCONT (notes.py); None: none kept
        self.clock = clock  # decisions' clock (wall time: records and the ladder's grace); injectable
        self.saved = None  # KindState (attach): the runtimes' oom_score_adj from before registration
        self.agents: dict[str, Agent] = {}
        # Fed by every tracker event (no /proc reads per event): who descends from whom.
        self.tree = ProcTree()
        self.toolcalls = LiveToolCalls()  # live only; by_pid: leader pid -> tool call
        self.by_runtime_id: dict[int, str] = {}
        self.counters = {k: 0 for k in COUNTERS}
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
        # Ends are decided by exit events (ladder.settle_exited): tool call id -> when its
        # leader's exit arrived, until its cgroup is seen empty.
        self._leader_gone: dict[str, float] = {}
        # The tick samples live tool calls round-robin, this long at most per tick.
        self._tick_queue: deque[str] = deque()
        self.tick_budget_s = TICK_BUDGET_S
        # Cgroup removal and result files, off the loop once the daemon starts it (endwork.py).
        self.ends = EndWork()
        # The final reads of emptied cgroups, off the loop too (a thread of their own, so
        # they do not wait behind the ends' rmdirs and files); ids with one in flight.
        self.reads = EndWork()
        self._final_reads: set[str] = set()

    # ------------------------------------------------------------------ the Kind hooks
    def attach(self, ctx) -> None:
        super().attach(ctx)
        self.saved = ctx.state
        # run_blocking stays synchronous until the daemon hands it its thread after
        # re-adoption: what re-adoption kills is gone before the exec gate opens.

    def shared_model(self) -> SharedModel:
        """What every other kind reads (and the two requests it may make of the engine)."""
        return SharedModel(agents=lambda: self.agents, toolcalls=lambda: self.toolcalls, tree=self.tree,
                           agent_of_pid=self.agent_of_pid, agent_priority=self.agent_priority,
                           end_toolcall=self.end_toolcall, end_agent_runtime=self.end_agent_runtime)

    def readopt(self) -> dict[str, int]:
        from agentd.toolcalls.readopt import readopt

        return readopt(self)

    def on_event(self, event) -> None:
        """A kernel process event; journal records (dicts) are the engine's own."""
        if not isinstance(event, ProcEvent):
            return
        self.counters["events_handled"] += 1
        self.tree.apply(event)
        if event.kind == ProcEventKind.EXEC:
            self.on_exec(event)
        elif event.kind == ProcEventKind.EXIT:
            self.on_exit(event)
        elif event.kind == ProcEventKind.CGROUP_ATTACH:
            self.on_attach(event)
        elif event.kind == ProcEventKind.OOM_VICTIM:
            self.on_oom_victim(event)

    def on_oom_victim(self, event) -> None:
        """The tracker sees every OOM kill on the host; only those of agentd's agents and
        tool calls are journaled (the rest are counted): another service's OOM kill is not
        an agent's story, and a host under pressure must not flood the journal."""
        tc = self.toolcall_of_pid(event.pid)
        agent = tc.agent if tc else self.agent_of_pid(event.pid)
        if agent is None:
            self.counters["oom_victims_unmanaged"] += 1
            return
        where = f"inside tool call {tc.id}" if tc else f"in agent {agent}'s runtime"
        self.journal.emit("kernel.oom_victim", f"the kernel's OOM killer chose pid {event.pid} ({event.comm}) {where}",
                          level="warn", agent=agent, tool_call=tc.id if tc else None, pid=event.pid)

    def on_tick(self, now: float) -> None:
        self.tick()  # the engine's own clock (self.clock), so a test's fake clock drives the ladder
        if self.notes is not None:
            self.notes.rotate_if_large()

    def on_policy(self, sections: dict) -> int:
        """The policy set changed: live tool calls get the limits it now gives them. The
        engine reads whole policies through policy_for, not only its section. Returns how
        many changed (the daemon reports it)."""
        return self.reevaluate()

    def status(self) -> dict:
        live = sum(1 for a in self.agents.values() if a.state == "live")
        return {"agents_live": live, "toolcalls_live": len(self.toolcalls), "counters": dict(self.counters)}

    def metrics(self) -> dict[str, float]:
        return {f"{k}_total": float(v) for k, v in self.counters.items()}

    def stop(self, revert: bool) -> None:
        """Agents and tool calls run on for the next daemon to re-adopt; only a gated exec
        still waiting for placement must not stay stopped without us. Ends already decided
        are settled first (their records, result files and toolcall.end)."""
        self.reads.close()
        self.ends.close()
        for agent in self.agents.values():
            for pid in self.driver.procs(layout.runtime_rel(agent.name)) if agent.state == "live" else []:
                if is_stopped(pid):
                    try:
                        os.kill(pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass

    # ------------------------------------------------------------------ for re-adoption
    def adopt_toolcall(self, tc: ToolCall) -> None:
        self.toolcalls[tc.id] = tc


KIND = ToolCallEngine
