"""agentd's cgroup layout under its delegated root: the one place its paths are built and
read back. Pure: strings in, strings out.

    agents/                             every agent together (the host budget's limit)
    agents/<agent>                      one agent (its memory cap, a budget hold)
    agents/<agent>/runtime              the agent's own processes
    agents/<agent>/tools/<seq>-<tool>   one tool call, e.g. agents/a1/tools/0003-pytest
    jobs/<name>                         a managed server or training job (colocation, tiers)
    daemon                              agentd itself (cgroup v2's no-internal-process rule)
    holder                              whatever sat in a root agentd does not live in (the
                                        holder of systemd/agentd-tree.service), same rule

Paths are relative to the root (what every CgroupDriver method takes). An absolute cgroup
path, as /proc/<pid>/cgroup gives it, is read with `locate`.
"""

from __future__ import annotations

from dataclasses import dataclass

AGENTS = "agents"
JOBS = "jobs"
DAEMON = "daemon"
HOLDER = "holder"
RUNTIME = "runtime"
TOOLS = "tools"


def agent_rel(agent: str) -> str:
    return f"{AGENTS}/{agent}"


def runtime_rel(agent: str) -> str:
    return f"{AGENTS}/{agent}/{RUNTIME}"


def tools_rel(agent: str) -> str:
    return f"{AGENTS}/{agent}/{TOOLS}"


def tool_leaf(seq: int, tool: str) -> str:
    """A tool call's own cgroup name, which is also the end of its id: 0003-pytest."""
    return f"{seq:04d}-{tool}"


def tool_rel(agent: str, leaf: str) -> str:
    """agents/<agent>/tools/<leaf>; leaf from tool_leaf (or a tool-call id's part after the /)."""
    return f"{AGENTS}/{agent}/{TOOLS}/{leaf}"


def job_rel(name: str) -> str:
    return f"{JOBS}/{name}"


@dataclass(frozen=True)
class Place:
    """Where a path lies in the layout. kind: agents | agent | runtime | tools | toolcall |
    jobs | job | daemon. `rel` is the layout's part of the path (deeper cgroups a process
    made for itself inside a tool call or a job are left out)."""

    kind: str
    rel: str
    agent: str | None = None
    tool: str | None = None  # a tool call's leaf, <seq>-<tool>
    job: str | None = None


def parse_rel(rel: str) -> Place | None:
    """The Place of a path relative to the root; None when it is not agentd's layout."""
    parts = [p for p in rel.split("/") if p]
    if not parts:
        return None
    top, rest = parts[0], parts[1:]
    if top == DAEMON:
        return Place("daemon", DAEMON)
    if top == JOBS:
        return Place("job", job_rel(rest[0]), job=rest[0]) if rest else Place("jobs", JOBS)
    if top != AGENTS:
        return None
    if not rest:
        return Place("agents", AGENTS)
    agent, below = rest[0], rest[1:]
    if not below:
        return Place("agent", agent_rel(agent), agent=agent)
    if below[0] == RUNTIME:
        return Place("runtime", runtime_rel(agent), agent=agent)
    if below[0] != TOOLS:
        return None
    if len(below) == 1:
        return Place("tools", tools_rel(agent), agent=agent)
    return Place("toolcall", tool_rel(agent, below[1]), agent=agent, tool=below[1])


def locate(path: str) -> tuple[str, Place] | None:
    """(the root's path, the Place) of an absolute cgroup path such as
    "/system.slice/agentd-tree.service/agents/a1/runtime"; the first agents/ or jobs/ with a name
    under it decides. None when the path has neither."""
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        if part in (AGENTS, JOBS) and i + 1 < len(parts):
            place = parse_rel("/".join(parts[i:]))
            if place is not None:
                return "/" + "/".join(parts[:i]), place
    return None


def job_of(path: str) -> str | None:
    """The job whose cgroup holds an absolute or relative path: the name under the last jobs/."""
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == JOBS:
            return parts[i + 1]
    return None
