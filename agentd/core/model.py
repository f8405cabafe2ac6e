"""The records the daemon keeps: agents, their tool calls, and a placement in flight."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from agentd.core.escalation import LadderState
from agentd.procfs import ProcInfo
from agentd.core.toolcall_rules import Intent, Resolved

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
    created: float = field(default_factory=time.time)
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
