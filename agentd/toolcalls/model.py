"""The tool-call engine's state and its pure decisions: the records it keeps (agents, their
tool calls, a placement in flight) and the small choices made about them (which limits a
driver gets, which pending intent applies, what an exit status means, whose process an
exec is, what limits a re-evaluation gives, what to advise on a retry). No kernel, no
clock: every function takes `now` or the facts it needs, and is unit-tested without root.

The engine (agentd.toolcalls.kind) gathers the inputs and carries the answers out through
its actuators; the escalation ladder (escalation.py) and the rules and intents (rules.py)
are the two larger pure modules beside this one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Iterable

from agentd.cgroups import layout
from agentd.cgroups.driver import Limits
from agentd.procfs import ProcInfo
from agentd.units import format_size
from agentd.toolcalls.escalation import LadderState, Sample, v2_grant_target
from agentd.toolcalls.policy import ResourceLimits
from agentd.toolcalls.rules import Clip, Intent, Resolved

# The kernel's OOM killer must take a tool call before an agent's runtime (its LLM loop):
# runtimes get RUNTIME_OOM_SCORE_ADJ (killable only as a last resort; lowering needs
# CAP_SYS_RESOURCE), and each tool call's leader (inherited by its children) a raised score
# by priority, low-priority work first. Raising needs no capability, so the order holds
# even where the runtime cannot be lowered.
RUNTIME_OOM_SCORE_ADJ = -900
TOOLCALL_OOM_SCORE_ADJ = {"high": 100, "normal": 400, "low": 800}
TOOLCALL_OOM_SCORE_ADJ_OTHER = 300  # a priority the table does not name
PENDING_INTENT_TTL_S = 30.0  # an intent declared over the API applies to the next tool call within this time
PENDING_INTENTS_KEPT = 16
EXIT_EVENT_GRACE_S = 5.0  # how long an emptied tool call waits for its leader's exit event (exit code); the event
# normally comes within milliseconds and ends the wait, so only a loaded host ever waits long


@dataclass
class Agent:
    name: str
    uid: int
    main_pid: int
    main_start: int
    policy: str
    cgroup: str  # agents/<name>
    next_seq: int = 1
    state: str = "live"
    created: float = 0.0  # the engine's clock at registration
    ended: float | None = None
    runtime_id: int = 0  # v2 cgroup id of agents/<name>/runtime (the exec gate's key)
    cgroup_id: int = 0  # v2 cgroup id of agents/<name>: who is inside this agent (agent_of_pid)
    pending_intents: list[tuple[float, Intent]] = field(default_factory=list)

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("runtime_id", "cgroup_id", "pending_intents")}


@dataclass
class ToolCall:
    id: str
    agent: str
    seq: int
    name: str
    cgroup: str
    pid: int
    argv: list[str]
    started: float
    resolved: Resolved
    intent: Intent | None
    ladder: LadderState
    state: str = "running"  # running | frozen | done
    ended: float | None = None
    outcome: str | None = None
    reason: str | None = None
    peak_bytes: int = 0
    cpu_s: float = 0.0
    exit_code: int | None = None
    leader_exited: bool = False
    placed_us: float = 0.0  # exec -> in cgroup and continued (gated path)
    priority: str = "normal"
    # What the rule matched on at placement, so a re-evaluation matches with the same facts.
    comm: str = ""
    exe: str | None = None

    def record(self) -> dict:
        return {
            "id": self.id, "agent": self.agent, "seq": self.seq, "name": self.name, "cgroup": self.cgroup,
            "pid": self.pid, "argv": self.argv, "started": self.started, "ended": self.ended, "state": self.state,
            "outcome": self.outcome, "reason": self.reason, "rule": self.resolved.rule,
            "limits": self.resolved.limits.to_json(), "clips": [c.to_json() for c in self.resolved.clips],
            "intent": self.intent.to_json() if self.intent else None, "peak_bytes": self.peak_bytes,
            "cpu_s": round(self.cpu_s, 3), "exit_code": self.exit_code, "ladder": asdict(self.ladder),
        }


@dataclass
class Placement:
    """What place() did for one exec, handed from the tracker's thread to the event loop."""

    agent: str
    pid: int
    info: ProcInfo | None = None
    intent: Intent | None = None
    intent_error: str | None = None
    name: str = ""
    resolved: Resolved | None = None
    seq: int = 0
    rel: str = ""
    moved: bool = False
    gated: bool = False
    placed_us: float = 0.0
    # Exec tracepoint (the BPF event's kernel timestamp, CLOCK_MONOTONIC) -> SIGCONT sent:
    # the whole stop as the tool call lives it, ring buffer and thread wake-up included.
    full_us: float | None = None
    steps_us: dict | None = None  # where place() spent its time: policy, mkdir, limits, move, oom
    priority: str = "normal"
    started: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class Lineage:
    agent: Agent | None
    tool_call: ToolCall | None


# ----------------------------------------------------------------------------- decisions


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


def agent_limits_for_driver(limits: ResourceLimits, kind: str) -> Limits:
    """An agent as a whole: on v1 only its hard memory limit and pids (no pause there: the
    ladder decides for tool calls, the budget kind for agents)."""
    if kind == "hybrid":
        return Limits(memory_max=limits.memory_max, pids_max=limits.pids_max)
    return tool_limits_for_driver(limits, kind)


def toolcall_oom_score_adj(priority: str) -> int:
    return TOOLCALL_OOM_SCORE_ADJ.get(priority, TOOLCALL_OOM_SCORE_ADJ_OTHER)


def fresh_intents(pending: list[tuple[float, Intent]], now: float) -> list[tuple[float, Intent]]:
    """Intents declared within the TTL, the newest PENDING_INTENTS_KEPT - 1 (room for one more)."""
    return [(t, i) for t, i in pending if now - t < PENDING_INTENT_TTL_S][-(PENDING_INTENTS_KEPT - 1):]


def take_pending_intent(pending: list[tuple[float, Intent]], now: float) -> tuple[Intent | None, list[tuple[float, Intent]]]:
    """The oldest intent still fresh applies to this tool call; returns it and what remains."""
    fresh = [(t, i) for t, i in pending if now - t < PENDING_INTENT_TTL_S]
    if not fresh:
        return None, pending
    rest = list(pending)
    rest.remove(fresh[0])
    return fresh[0][1], rest


def toolcall_id(agent: str, seq: int, name: str) -> str:
    return f"{agent}/{layout.tool_leaf(seq, name)}"


def exit_code_of(status: int) -> int:
    """A wait status -> the engine's exit code: >= 0 an exit status, < 0 minus the signal."""
    return (status >> 8) & 0xFF if status & 0x7F == 0 else -(status & 0x7F)


class LiveToolCalls(dict):
    """The live tool calls by id, with `by_pid` (leader pid -> tool call) kept along: an
    exit or exec event finds its tool call in one lookup, not by a scan of every live one."""

    def __init__(self) -> None:
        super().__init__()
        self.by_pid: dict[int, ToolCall] = {}

    def __setitem__(self, ident: str, tc: ToolCall) -> None:
        old = self.get(ident)
        if old is not None and self.by_pid.get(old.pid) is old:
            del self.by_pid[old.pid]
        super().__setitem__(ident, tc)
        self.by_pid[tc.pid] = tc

    def pop(self, ident: str, *default):
        tc = super().pop(ident, *default)
        if tc is not None and self.by_pid.get(tc.pid) is tc:
            del self.by_pid[tc.pid]
        return tc

    def __delitem__(self, ident: str) -> None:
        self.pop(ident)


def find_lineage(pid: int, ancestors: Iterable[int], leaders: dict[int, ToolCall], mains: dict[int, Agent],
                 agents: dict[str, Agent]) -> Lineage:
    """The nearest live tool-call leader or agent runtime among pid and its ancestors."""
    for p in [pid, *ancestors]:
        if p in leaders:
            tc = leaders[p]
            return Lineage(agents.get(tc.agent), tc)
        if p in mains:
            return Lineage(mains[p], None)
    return Lineage(None, None)


def waiting_for_exit_event(first_seen: float, now: float) -> bool:
    """An emptied tool call (or a gone agent) waits this long for the tracker's exit event."""
    return now - first_seen < EXIT_EVENT_GRACE_S


def reevaluated_knobs(limits: ResourceLimits, ladder: LadderState, kind: str) -> Limits:
    """The knobs a live tool call gets when its policy changes to `limits`, keeping the
    meaning of a grant the ladder already made (v1: past memory_high; v2: the raised high)."""
    knobs = tool_limits_for_driver(limits, kind)
    if kind == "hybrid" and ladder.granted:
        knobs = replace(knobs, memory_max=limits.memory_max)
    elif ladder.granted and knobs.memory_high is not None:
        knobs = replace(knobs, memory_high=max(knobs.memory_high, v2_grant_target(limits) or 0))
    return knobs


def sample_of(stats, now: float, peak: int) -> Sample:
    """A tool call's cgroup figures (agentd.cgroups.driver.CgroupStats) as the ladder's input."""
    return Sample(now=now, memory_current=stats.memory_current, memory_peak=peak, memory_limit=stats.memory_limit,
                  memory_high=stats.memory_high, pids_max_events=stats.pids_max_events, pids_current=stats.pids_current,
                  high_events=stats.memory_events.get("high", 0), oom_kill_events=stats.memory_events.get("oom_kill", 0),
                  under_oom=bool(stats.memory_events.get("under_oom", 0)),
                  psi_full_total_us=stats.memory_pressure.full_total_us, populated=stats.populated)


def retry_hint(tc: ToolCall, ceiling: ResourceLimits, now: float) -> dict | None:
    """What the agent may ask for on a retry, within the policy's ceiling."""
    if tc.outcome not in ("killed", "frozen"):
        return None
    if tc.ladder.limit == "timeout_s":
        took = (tc.ended or now) - tc.started
        return {"intent": {"duration_s": round(took * 2, 1), "tool": tc.name},
                "advice": f"it was still running after {took:.0f} s: declare duration_s={took * 2:.0f} or run it in the background"}
    want = int(tc.peak_bytes * 1.5)
    top = ceiling.memory_high or ceiling.memory_max
    if top and want > top:
        return {"advice": "the tool call needs more memory than the policy allows; run a smaller workload"}
    return {"intent": {"memory": want, "tool": tc.name}, "advice": f"declare memory={format_size(want)} before retrying"}


def result_of(tc: ToolCall, retry: dict | None) -> dict:
    """The structured result an agent reads from its results directory."""
    return {"tool_call": tc.id, "pid": tc.pid, "outcome": tc.outcome, "reason": tc.reason, "peak_bytes": tc.peak_bytes,
            "limits": tc.resolved.limits.to_json(), "exit_code": tc.exit_code, "retry_with": retry}


def placement_note(agent: str, seq: int, name: str, rel: str, pid: int, start: int, started: float, resolved: Resolved,
                   intent: Intent | None, priority: str) -> dict:
    """What placement decided, for agentd.toolcalls.notes (written before the SIGCONT)."""
    return {"id": toolcall_id(agent, seq, name), "agent": agent, "seq": seq, "name": name, "cgroup": rel, "pid": pid,
            "start": start, "started": started, "rule": resolved.rule, "limits": resolved.limits.to_json(),
            "clips": [c.to_json() for c in resolved.clips], "intent": intent.to_json() if intent else None,
            "priority": priority}


def toolcall_from_note(note: dict, argv: list[str], comm: str = "", exe: str | None = None) -> ToolCall:
    """The record placement would have written, rebuilt from its note (re-adoption)."""
    resolved = Resolved(ResourceLimits(**note["limits"]), note["rule"], tuple(Clip(**c) for c in note["clips"]))
    return ToolCall(note["id"], note["agent"], note["seq"], note["name"], note["cgroup"], note["pid"], argv, note["started"],
                    resolved, Intent(**note["intent"]) if note["intent"] else None, LadderState(started=note["started"]),
                    priority=note["priority"], comm=comm, exe=exe)
