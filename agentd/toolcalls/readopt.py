"""Re-adoption after a restart or a crash: take back every agent and tool call the store
knows, check them against the kernel, and leave nothing stopped, frozen or orphaned.

A crash can fall between a decision the old daemon carried out in the kernel and the record
of it (or the other way round). Each such gap is closed here so that every tool call held or
frozen when the daemon died is decided by the new one, never left held or frozen:
- the record says killed but processes remain: the kill is carried out again;
- the kernel has the tool call frozen but its record does not: thawed, and the ladder decides
  again from fresh samples (held or frozen with a record: the ladder resumes at its stage and
  kills when the grace that started before the crash runs out);
- a policy applied just before the crash, its file written but live tool calls not yet
  re-evaluated: every tool call gets the limits the policies on disk give it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentd.cgroups import layout
from agentd.cgroups import fs
from agentd.cgroups.driver import CgroupError
from agentd.procfs import alive, is_stopped, read_proc
from agentd.policy.schema import ResourceLimits
from agentd.toolcalls.escalation import LadderState
from agentd.toolcalls.model import Agent, ToolCall, toolcall_from_note
from agentd.toolcalls.rules import Clip, Intent, Resolved, resolve_limits
from agentd import procfs

if TYPE_CHECKING:
    from agentd.toolcalls.kind import ToolCallEngine


def readopt(engine: "ToolCallEngine") -> dict:
    """After a restart (or a crash): take back every agent and tool call the store knows,
    check them against the kernel, and leave nothing stopped, frozen or orphaned."""
    counts = {"agents": 0, "toolcalls": 0, "finished_while_down": 0, "orphan_cgroups": 0, "released": 0,
              "adopted_unplaced": 0, "agents_ended": 0,
              "held": 0, "kills_resumed": 0, "thawed_unrecorded": 0, "limits_updated": 0, "records_restored": 0}
    driver = engine.driver
    for rec in engine.store.agents(live_only=True):
        agent = Agent(**{k: rec[k] for k in ("name", "uid", "main_pid", "main_start", "policy", "cgroup", "next_seq", "state", "created", "ended")})
        runtime = layout.runtime_rel(agent.name)
        if not driver.exists(runtime):
            engine.act.create(runtime)
            engine.act.create(layout.tools_rel(agent.name))
        agent.next_seq = max(agent.next_seq, engine.store.max_seq(agent.name) + 1)  # next_seq is not written per tool call
        engine.adopt_agent(agent)
        counts["agents"] += 1
    for rec in engine.store.toolcalls(live_only=True, limit=100_000):
        clips = tuple(Clip(**c) for c in rec["clips"] or ())
        resolved = Resolved(ResourceLimits(**rec["limits"]), rec["rule"] or "defaults", clips)
        ladder = LadderState(**rec["ladder"]) if rec.get("ladder") else LadderState(started=rec["started"])
        tc = ToolCall(rec["id"], rec["agent"], rec["seq"], rec["name"], rec["cgroup"], rec["pid"], rec["argv"], rec["started"],
                      resolved, Intent(**rec["intent"]) if rec["intent"] else None, ladder, state=rec["state"],
                      peak_bytes=rec["peak_bytes"], cpu_s=rec["cpu_s"])
        if rec["agent"] not in engine.agents or not driver.exists(tc.cgroup) or not engine.act.populated(tc.cgroup):
            counts["finished_while_down"] += 1
            engine.adopt_toolcall(tc)
            engine.finish(tc, engine.clock(), exit_seen=False)
            continue
        engine.adopt_toolcall(tc)
        counts["toolcalls"] += 1
        _close_gap(engine, tc, counts)
    busy: list[str] = []
    notes: dict[str, dict] | None = None  # read once, only if a populated tool cgroup has no record
    for agent in list(engine.agents.values()):
        known = {tc.cgroup for tc in engine.toolcalls.values() if tc.agent == agent.name}
        tools = layout.tools_rel(agent.name)
        for child in driver.children(tools) if driver.exists(tools) else []:
            rel = f"{tools}/{child}"
            if rel in known:
                continue
            counts["orphan_cgroups"] += 1
            pids = driver.procs(rel)
            if not pids:
                try:
                    engine.act.remove(rel)
                except (CgroupError, OSError):
                    # A process still in its v1 dirs: the old daemon died between the v1
                    # and v2 moves. It runs in the runtime, is placed anew below, then this goes.
                    busy.append(rel)
                continue
            # Placed just before the crash, its record not yet in the store: rebuilt from the
            # note placement wrote before the SIGCONT, else adopted as it is.
            if notes is None:
                notes = engine.notes.by_cgroup() if engine.notes is not None else {}
            tc = _from_note(notes.get(rel), agent, pids)
            if tc is not None:
                counts["records_restored"] += 1
            else:
                seq_text, _, name = child.partition("-")
                now = engine.clock()
                policy = engine.policy_for(agent.policy)
                tc = ToolCall(f"{agent.name}/{child}", agent.name, int(seq_text) if seq_text.isdigit() else 0, name or child,
                              rel, pids[0], [], now, resolve_limits(policy, None, None), None, LadderState(started=now))
            engine.act.thaw(rel)
            for pid in pids:  # moved, then the old daemon died before its SIGCONT (and the guard with it)
                if is_stopped(pid):
                    engine.release(pid)
            engine.adopt_toolcall(tc)
            engine.store.put_toolcall(tc.record())
            agent.next_seq = max(agent.next_seq, tc.seq + 1)
        # A gated exec the old daemon stopped but never placed, or a tool call the agent
        # started while no daemon watched, or one the gate guard continued when the old
        # daemon died: it exec'd, so its program or its command line differs from the
        # runtime's own (a forked, not exec'd child shares both; a python tool of a python
        # agent shares the program only).
        main_exe, main_argv = procfs.read_exe(agent.main_pid), procfs.read_cmdline(agent.main_pid)
        for pid in sorted(driver.procs(layout.runtime_rel(agent.name))):
            if pid == agent.main_pid:
                continue
            if is_stopped(pid):
                counts["released"] += 1
                _place(engine, agent, pid, gated=True)
            elif _execd(pid, main_exe, main_argv):
                counts["adopted_unplaced"] += 1
                _place(engine, agent, pid, gated=False)
        counts["orphan_cgroups"] += _remove_partial(driver, layout.tools_rel(agent.name))
        if not alive(agent.main_pid, agent.main_start):
            counts["agents_ended"] += 1
            engine.end_agent(agent, "its main process exited while agentd was down")
    for rel in busy:
        try:
            engine.act.remove(rel)
        except (CgroupError, OSError) as exc:
            engine.journal.emit("cgroup.error", f"could not remove {rel} at re-adoption: {exc}", level="warn")
    engine.update_gate()
    counts["limits_updated"] = engine.reevaluate()
    return counts


def _place(engine: "ToolCallEngine", agent: Agent, pid: int, *, gated: bool) -> None:
    """One process that cannot be placed must not keep the daemon from starting: it is
    continued where it is, and said so."""
    try:
        engine.start_tool_call(agent, pid, gated=gated)
    except (CgroupError, OSError) as exc:
        engine.counters["placement_errors"] += 1
        engine.journal.emit("toolcall.error", f"re-adoption could not place pid {pid} in a tool-call cgroup: {exc}; "
                             "it runs on in the agent's runtime", level="error", agent=agent.name, pid=pid)
        if gated:
            engine.release(pid)


def _from_note(note: dict | None, agent: Agent, pids: list[int]) -> ToolCall | None:
    """The record placement would have written, if its note names this agent and a leader
    still in the cgroup that is the very process placed (pid and start time)."""
    if not note or note.get("agent") != agent.name or note.get("pid") not in pids:
        return None
    info = read_proc(note["pid"])
    if info is None or info.start != note.get("start"):
        return None
    try:
        return toolcall_from_note(note, info.argv, info.comm, info.exe)
    except (KeyError, TypeError, ValueError):
        return None  # not a note this daemon wrote


def _remove_partial(driver, tools: str) -> int:
    """Tool cgroups in v1 hierarchies only (the old daemon died between the mkdirs of one
    tool cgroup, before the v2 one that lists it): removed, or they would stay forever, and
    one that the new numbering reuses would be a half-made cpuset. A process in one (died
    between the v1 and v2 moves) was placed anew above, so they are empty by now."""
    listed = set(driver.children(tools)) if driver.exists(tools) else set()
    removed = 0
    for tree in getattr(driver, "v1", {}).values():
        for child in fs.child_dirs(tree.dir(tools)):
            if child in listed:
                continue
            try:
                fs.rmdir_tree(tree.dir(f"{tools}/{child}"))
                removed += not child.startswith(".")  # a spare the old daemon made ahead is no orphan
            except OSError:
                pass  # still in use: the next restart tries again
    return removed


def _execd(pid: int, main_exe: str | None, main_argv: list[str] | None) -> bool:
    exe, argv = procfs.read_exe(pid), procfs.read_cmdline(pid)
    if exe is None or argv is None:
        return False  # gone, or a kernel thread
    return exe != main_exe or (main_argv is not None and argv != main_argv)


def _close_gap(engine: "ToolCallEngine", tc: ToolCall, counts: dict) -> None:
    """The kernel state of a re-adopted tool call against its record (see the module doc)."""
    if tc.ladder.stage == "killed":
        counts["kills_resumed"] += 1
        engine.act.kill(tc.cgroup)  # the tick then finishes it once its cgroup is empty
    elif tc.ladder.stage == "frozen":
        counts["held"] += 1  # the ladder resumes: thaw on relief, kill when its grace runs out
    elif _freeze_requested(engine, tc.cgroup):
        counts["thawed_unrecorded"] += 1
        engine.act.thaw(tc.cgroup)


def _freeze_requested(engine: "ToolCallEngine", rel: str) -> bool:
    """cgroup.freeze, not cgroup.events frozen: on hybrid a freeze written while a process is
    paused at its v1 limit stays requested and takes hold later."""
    try:
        return fs.read(engine.driver.knob_path(rel, "cgroup.freeze")).strip() == "1"
    except (CgroupError, OSError):
        return False
