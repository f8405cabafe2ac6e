"""A decision in the forms engines are adopting, so an engine can use agentd without an adapter.

- SGLang / Dynamo: Anthropic-style `cache_control: {"type": "ephemeral", "ttl": "<N>s"}` (SGLang PR
  18941's TTL pinning for HiRadixCache, later reverted there in PR 21884; Dynamo PR 6213's
  nvext.cache_control, whose TTL parser takes "<N>s", "5m", "1h"). Only a keep has one.
- vLLM: the signals of the proposed hint envelope (RFC 57103): the program is waiting on a
  tool, and when it is expected to resume; plus what agentd advises for its KV blocks.
  Field names follow the RFC's signal names; the RFC is a proposal, not a merged API.
"""

from __future__ import annotations

import math


def ttl_text(seconds: float) -> str:
    """'<N>s', whole seconds rounded up (a TTL that ends early costs a re-prefill)."""
    return f"{max(1, math.ceil(seconds))}s"


def sglang(decision: dict) -> dict | None:
    if decision.get("action") != "keep":
        return None
    return {"cache_control": {"type": "ephemeral", "ttl": ttl_text(decision["ttl_s"])}}


def vllm(decision: dict, program: str, tool_running: bool) -> dict:
    return {"session_id": program,
            "tool_waiting": tool_running,
            "estimated_resume_s": round(decision.get("expected_resume_s", 0.0), 3),
            "kv_retention": {"keep": "retain", "demote": "offload", "free": "release"}[decision["action"]],
            "ttl_s": round(decision.get("ttl_s", 0.0), 3)}


def hints(decision: dict, program: str, tool_running: bool) -> dict:
    return {"sglang": sglang(decision), "vllm": vllm(decision, program, tool_running)}
