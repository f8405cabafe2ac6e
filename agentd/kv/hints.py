"""A decision in the forms engines are adopting, so an engine can use agentd without an adapter.

- SGLang / Dynamo: Anthropic-style `cache_control: {"type": "ephemeral", "ttl": "<N>s"}` (SGLang PR
  18941's TTL pinning for HiRadixCache, later reverted there in PR 21884; Dynamo PR 6213's
  nvext.cache_control, whose TTL parser takes "<N>s", "5m", "1h"). Only a keep has one.
- vLLM: the signals of the proposed hint envelope (RFC 57103): the program is waiting on a
  tool, and when it is expected to resume; plus what agentd advises for its KV blocks.
  Field names follow the RFC's signal names; the RFC is a proposal, not a merged API.
- vLLM 0.33's `vllm.v1.kv_hints.KvHintsEnvelope` (what AsyncLLM/LLMEngine.add_request take as
  `kv_hints` and pass to the KV offloading tier on on_new_request): {protocol_version,
  message_id, actions: [{action_id, action_type, action_version, payload}]}. vLLM defines the
  envelope, not the action types: agentd's is "agentd.kv_retention" v1 with the signals above
  as its payload. vLLM's OpenAI server does not take it from a request body in 0.33.
"""

from __future__ import annotations

import math
import uuid


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


ENVELOPE_PROTOCOL = "1"
ACTION_TYPE, ACTION_VERSION = "agentd.kv_retention", "1"


def vllm_envelope(decision: dict, program: str, tool_running: bool) -> dict:
    """The decision as vLLM 0.33's KvHintsEnvelope (msgspec.convert(d, KvHintsEnvelope) takes it)."""
    mid = uuid.uuid4().hex
    return {"protocol_version": ENVELOPE_PROTOCOL, "message_id": mid,
            "actions": [{"action_id": f"{mid}-0", "action_type": ACTION_TYPE, "action_version": ACTION_VERSION,
                         "payload": vllm(decision, program, tool_running)}]}


def hints(decision: dict, program: str, tool_running: bool) -> dict:
    return {"sglang": sglang(decision), "vllm": vllm(decision, program, tool_running),
            "vllm_envelope": vllm_envelope(decision, program, tool_running)}
