"""The agent registry: who is an agent (registered over the API, launched by `agentctl run`,
or claimed by a policy's agent rule), under which name and uid, in which cgroups, and who a
process or a cgroup belongs to (by cgroup id, never by a path anyone could make).

A mixin of the engine (agentd.toolcalls.kind.ToolCallEngine): it reads and writes the
engine's `agents`, `by_runtime_id` and `toolcalls`, and carries out through `act`.
"""

from __future__ import annotations

import re

from agentd.cgroups import layout
from agentd.cgroups.driver import CgroupError
from agentd.core.pidfd import PeerProcess
from agentd.procfs import alive, read_proc
from agentd.policy.schema import valid_name
from agentd.toolcalls import model
from agentd.toolcalls.actuators import oom_score_adj, restore_oom_score_adj
from agentd.toolcalls.model import Agent, Lineage, find_lineage
from agentd.toolcalls.rules import Intent, resolve_limits, rule_matches, tool_name
from agentd import procfs

FINISHED_AGENT_KEEP = 200
MAX_CGROUP_DEPTH = 64  # ancestors looked at when finding a caller's agent
_OOM_KEY = "runtime_oom:"  # engine state: the runtime's oom_score_adj before registration


class NameTaken(FileExistsError):
    """The agent name is owned by another uid."""


class AgentRegistry:
    # ------------------------------------------------------------------ registration
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
        cgroup = layout.agent_rel(name)
        self.act.create(layout.runtime_rel(name))
        self.act.create(layout.tools_rel(name))
        agent_limits = policy_obj.agent
        self.act.set_limits(cgroup, model.agent_limits_for_driver(agent_limits, self.driver.kind))
        # A name used before keeps counting, so no old tool-call record is overwritten.
        agent = Agent(name, uid, pid, info.start, policy_obj.name, cgroup, next_seq=self.store.max_seq(name) + 1,
                      created=self.clock())
        self.adopt_agent(agent)
        before = procfs.read_cgroup_v2(pid) if peer is not None else None
        if not self.act.move(pid, layout.runtime_rel(name)):
            raise ProcessLookupError(f"process {pid} exited before it could be placed")
        if peer is not None and not peer.alive():
            self._undo_registration(agent, pid, before)
            raise ProcessLookupError(f"process {pid} that sent this request exited while it was being placed")
        shield = oom_score_adj(pid, model.RUNTIME_OOM_SCORE_ADJ, keep_old=True)
        if shield.written and shield.old is not None and self.saved is not None:
            self.saved.put(_OOM_KEY + name, {"pid": pid, "start": info.start, "old": shield.old})
        if shield.written is None and not self.runtime_shield_refused:
            self.runtime_shield_refused = True
            self.journal.emit("oom.shield_unavailable", "cannot lower agent runtimes' oom_score_adj (no CAP_SYS_RESOURCE); "
                              "tool calls are raised instead so the OOM killer still takes them first", level="warn")
        self.update_gate()
        self.store.put_agent(agent.record())
        self.counters["agents_registered"] += 1
        self.journal.emit("agent.registered", f"agent {name} (pid {pid}, uid {uid}) is managed under {cgroup} with policy {policy_obj.name}; "
                          "the OOM killer takes its tool calls before its runtime",
                          agent=name, pid=pid, uid=uid, policy=policy_obj.name, agent_limits=agent_limits.to_json())
        return agent

    def adopt_agent(self, agent: Agent) -> None:
        """Known from now on (a registration, or re-adoption after a restart): its cgroup ids
        decide who is inside it and whose execs the gate stops."""
        agent.runtime_id = self.driver.cgroup_id(layout.runtime_rel(agent.name))
        agent.cgroup_id = self.driver.cgroup_id(agent.cgroup)
        self.agents[agent.name] = agent
        self.by_runtime_id[agent.runtime_id] = agent.name

    def _undo_registration(self, agent: Agent, pid: int, before: str | None) -> None:
        """The caller exited between its pidfd check and the move: whatever holds its pid now
        (another process, in a microsecond window) goes back where it was, then the agent's
        cgroups go."""
        self.agents.pop(agent.name, None)
        self.by_runtime_id.pop(agent.runtime_id, None)
        if before is not None:
            self.act.move_to_v2_path(pid, before)
        for rel in (layout.runtime_rel(agent.name), layout.tools_rel(agent.name), agent.cgroup):
            self.act.remove_if_empty(rel)
        self.journal.emit("agent.refused", f"pid {pid} changed hands while it was registered as agent {agent.name}; "
                          "nothing was registered", level="warn", pid=pid)

    def _free_name(self, base: str, uid: int) -> str:
        """A chosen-for-you name that no other uid owns: base, else base-2, base-3, ..."""
        name, n = base, 1
        while self.store.agent_uid(name) not in (None, uid):
            n += 1
            name = f"{base}-{n}"
        return name

    def match_agent_rules(self, pid: int) -> Agent | None:
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
        rel = layout.runtime_rel(name)
        self.act.create(rel)
        return rel

    def update_gate(self) -> None:
        """The exec gate stops execs in exactly the live agents' runtimes."""
        if self.tracker is not None and self.tracker.can_gate:
            self.tracker.set_gated_cgroups({a.runtime_id for a in self.agents.values() if a.state == "live"})

    # ------------------------------------------------------------------ who is who
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

    def lineage(self, pid: int) -> Lineage:
        """The nearest live tool-call leader or agent runtime among pid and its ancestors
        (from the process tree, so a process that moved itself out is still known)."""
        leaders = self.toolcalls.by_pid.copy()  # one C-level copy: the tracker's thread reads it too
        mains = {a.main_pid: a for a in self.agents.values() if a.state == "live"}
        return find_lineage(pid, self.tree.ancestors(pid), leaders, mains, self.agents)

    def agent_priority(self, agent: Agent) -> str:
        return self.policy_for(agent.policy).priority

    # ------------------------------------------------------------------ intents
    def declare_intent(self, agent_name: str, intent: Intent) -> dict:
        agent = self.agents[agent_name]
        now = self.clock()
        with self.lock:
            agent.pending_intents = model.fresh_intents(agent.pending_intents, now)
            agent.pending_intents.append((now, intent))
        policy = self.policy_for(agent.policy)
        resolved = resolve_limits(policy, None, intent)
        self.emit_clips(resolved, agent_name)
        return {"agent": agent_name, "intent": intent.to_json(), "granted": resolved.limits.to_json(),
                "clips": [c.to_json() for c in resolved.clips], "applies_to": "the next tool call started within 30 s"}

    # ------------------------------------------------------------------ the end
    def end_agent_runtime(self, name: str, reason: str, *, limit: str | None = None, **figures) -> None:
        """End an agent's own process (its LLM loop), at a policy kind's request; the agent
        then ends as usual when the tick sees its main process gone."""
        agent = self.agents[name]
        self.journal.emit("agent.killed", reason, level="error", agent=name, **({"limit": limit} if limit else {}), **figures)
        self.act.kill(layout.runtime_rel(agent.name))

    def end_agent(self, agent: Agent, why: str) -> None:
        self._empty_since.pop(f"agent:{agent.name}", None)
        for tc in [t for t in self.toolcalls.values() if t.agent == agent.name]:
            if self.act.populated(tc.cgroup):
                self.journal.emit("toolcall.orphans", f"agent {agent.name} ended ({why}) while tool call {tc.id} still ran; ended it",
                                  level="warn", agent=agent.name, tool_call=tc.id)
                self.act.kill(tc.cgroup)
            self.tick_toolcall(tc, self.clock(), final=True)
        self.reads.drain()
        self.ends.drain()  # its tool calls' cgroups gone and results written before its own go
        agent.state, agent.ended = "done", self.clock()
        self.restore_runtime_oom(agent)
        try:
            self.act.kill(layout.runtime_rel(agent.name))
            for child in self.driver.children(layout.tools_rel(agent.name)):
                self.act.kill(layout.tool_rel(agent.name, child))
            self.act.remove(agent.cgroup)
        except (CgroupError, OSError) as exc:
            self.journal.emit("cgroup.error", f"could not remove {agent.cgroup}: {exc}", level="warn", agent=agent.name)
        self.by_runtime_id.pop(agent.runtime_id, None)
        self.update_gate()
        if self.results is not None:
            self.results.forget(agent.name)
        self.store.put_agent(agent.record())
        self.journal.emit("agent.ended", f"agent {agent.name} ended: {why}", agent=agent.name)
        done = [a for a in self.agents.values() if a.state == "done"]
        for old in done[:-FINISHED_AGENT_KEEP]:
            self.agents.pop(old.name, None)

    def restore_runtime_oom(self, agent: Agent) -> bool:
        """The runtime's oom_score_adj from before registration goes back (if its main
        process still runs: the same pid and start time); the saved value is dropped."""
        if self.saved is None:
            return False
        saved = self.saved.get(_OOM_KEY + agent.name)
        if saved is None:
            return False
        self.saved.delete(_OOM_KEY + agent.name)
        if saved["pid"] != agent.main_pid or saved["start"] != agent.main_start:
            return False
        return restore_oom_score_adj(agent.main_pid, agent.main_start, saved["old"])

    def main_alive(self, agent: Agent) -> bool:
        return alive(agent.main_pid, agent.main_start)
