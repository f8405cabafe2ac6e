"""Host memory budget: all agents together (agents/) may use a set number of bytes. The
first policy kind moved out of the tool-call engine into the kind contract's shape.

On hybrid hosts (v1 memory controller) the budget is agents/'s limit with the OOM killer
disabled, so the kernel pauses every allocation at it and agentd decides what to end: a
tool call, lowest priority and largest first, never an agent's runtime while a tool call is
left (AgentCgroup's finding: kill the tool, not the agent). On v2 the budget is agents/'s
memory.max and the kernel's OOM killer acts, ordered by the tool-call engine's
oom_score_adj (tool calls first, low priority first).

Reads from the shared model: live tool calls (priority, cgroup), live agents (policy
priority, age). Asks the tool-call engine to end a tool call or an agent's runtime; never
changes its records itself.
"""
