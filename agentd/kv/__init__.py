"""KV-cache pinning for multi-turn agents (issue 14): when an agent's LLM turn ends in a tool
call, should the inference engine keep that program's KV cache on the GPU, demote it to host
memory and prefetch it back when the tool ends, or free it?

Seed paper: Continuum (Li et al., 2025, "Efficient and Robust Multi-Turn LLM Agent Scheduling
with KV Cache Time-to-Live"): pin with a TTL chosen from the tool-duration distribution. agentd
sees every tool call start and end in the kernel, so it decides on the *conditional* remaining
time given how long the tool has run, and learns durations per tool, command shape and agent.

Reads from the shared model: tool calls (agent, pid, intent), agents (owner uid), the
agent of a pid; from the journal: toolcall.start / toolcall.end. Modules: durations (the
duration model), model (the pin decision), ledger (live pins and budget), engines (engine
records and input checks), hints (SGLang / vLLM hint forms), kind (the wiring and /v1/kv/),
client (a Python client for engines), vllm_adapter (vLLM KV-connector translation).
"""
