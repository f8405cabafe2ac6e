"""The tool-call engine: agents and their tool calls. What it decides: which agent an exec
belongs to, the tool call's name, rule and limits (policy defaults, the tool's rule, the
agent's intent within the ceiling), its own cgroup (placed while the exec is stopped at the
gate), and the burst ladder (throttle at memory_high, grant once, freeze on sustained
PSI stall, kill at the end; the agent's runtime never), then the outcome and the result
the agent reads.

Seed papers: AgentCgroup (tool calls as the unit of control; kill the tool, not the agent),
and the kernel's own PSI and memory.high throttling (Weiner et al., cgroup v2).

It owns the shared model the other kinds read (agents, tool calls, the process tree, the
cgroup layout agents/<agent>/{runtime,tools/<seq>-<tool>}); see kind.py for why it is a
special room and how the daemon drives it.
"""
