"""The policy file format: the typed model and its spec (one source of truth for validation
and the published JSON Schema).

A policy file (YAML):

    version: 1
    name: default
    priority: normal        # low | normal | high (whose tool calls go first under host memory pressure)
    agents:                 # agents matched by rule (besides those launched by `agentctl run`)
      - name: claude-code
        match: {comm: "^claude$", uid: 1000}
    agent:                  # bounds for an agent as a whole (runtime + all its tool calls)
      memory_max: 8G
    toolcalls:
      defaults: {memory_high: 512M, memory_max: 1G, cpu_max: 2, pids_max: 512, timeout_s: 600}
      ceiling:  {memory_max: 4G, cpu_max: 4, pids_max: 4096, timeout_s: 3600}
      escalation: {psi_full_pct: 40, sustain_s: 2, freeze_s: 5}
      tools:
        - name: pytest
          match: {argv: "(^|/)pytest\\b"}
          limits: {memory_high: 768M, memory_max: 1536M, pids_max: 1024}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentd.kinds.registry import policy_sections
from agentd.policy.spec import ListOf, Mapping, Scalar
# The tool-call engine's section and the limits and matches every layer shares live in its
# package (agentd/toolcalls/policy.py); re-exported here, where the rest of agentd finds them.
from agentd.toolcalls.policy import (  # noqa: F401
    LIMIT_KEYS,
    MATCH,
    SPEC as TOOLCALLS_SPEC,
    Escalation,
    Match,
    ResourceLimits,
    ToolCallPolicy,
    ToolRule,
    limits_spec,
    name_problems as _valid_name,
    valid_name,
)


@dataclass(frozen=True)
class AgentRule:
    name: str
    match: Match


@dataclass(frozen=True)
class Policy:
    name: str
    version: int = 1
    priority: str = "normal"  # low | normal | high: whose tool calls the kernel's OOM killer takes first
    agents: tuple[AgentRule, ...] = ()
    agent: ResourceLimits = ResourceLimits()
    toolcalls: ToolCallPolicy = ToolCallPolicy()
    source: str = ""  # file it came from
    text: str = field(default="", compare=False, repr=False)
    # the policy kinds' sections (agentd.kinds.registry), by kind name, as their specs built them
    sections: dict = field(default_factory=dict, compare=False)


# ----------------------------------------------------------------------------- the spec


_AGENT_RULE = Mapping(
    {"name": Scalar("str", max_len=64), "match": MATCH},
    required=("name", "match"),
    build=lambda v: AgentRule(v["name"], v["match"]),
    extra=[lambda v: _valid_name(v["name"], "name")],
)

POLICY_SPEC = Mapping(
    {
        "version": Scalar("int", minimum=1, maximum=1),
        "name": Scalar("str", max_len=64),
        "priority": Scalar("enum", choices=("low", "normal", "high"),
                           description="agents under this policy: low-priority tool calls are the kernel OOM killer's first choice"),
        "agents": ListOf(_AGENT_RULE, max_items=500),
        "agent": limits_spec("bounds for an agent as a whole"),
        "toolcalls": TOOLCALLS_SPEC,
    },
    required=("version", "name"),
    description="agentd policy file",
    extra=[lambda v: _valid_name(v["name"], "name")],
)
# Each policy kind adds its own top-level section (agentd/<kind>/policy.py).
_KIND_SPECS = policy_sections()
KIND_SECTIONS = tuple(_KIND_SPECS)
POLICY_SPEC.fields.update(_KIND_SPECS)


def json_schema() -> dict:
    """The JSON Schema of policy files, generated from the same spec the loader checks."""
    schema = POLICY_SPEC.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "agentd policy"
    return schema
