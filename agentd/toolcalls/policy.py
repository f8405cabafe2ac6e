"""The `toolcalls` policy section (the tool-call engine's rules) and the limits every layer
of a policy shares: defaults, ceiling, escalation and per-tool rules, each a typed value
built by the spec that checks it. Pure: only agentd.policy.spec is imported, so
`agentctl policy validate` reads it without the daemon.

    toolcalls:
      defaults: {memory_high: 512M, memory_max: 1G, cpu_max: 2, pids_max: 512, timeout_s: 600}
      ceiling:  {memory_max: 4G, cpu_max: 4, pids_max: 4096, timeout_s: 3600}
      escalation: {psi_full_pct: 40, sustain_s: 2, freeze_s: 5}
      tools:
        - name: pytest
          match: {argv: "(^|/)pytest\\b"}
          limits: {memory_high: 768M, memory_max: 1536M, pids_max: 1024}

The engine also reads the policy's top-level `priority`, `agents` and `agent` keys (the
agent registry's); those stay in agentd.policy.schema beside the Policy they build.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from agentd.policy.spec import ListOf, Mapping, Scalar

LIMIT_KEYS = ("memory_high", "memory_max", "swap_max", "cpu_weight", "cpu_max", "pids_max", "timeout_s")


@dataclass(frozen=True)
class ResourceLimits:
    """Bounds for one cgroup. None = not set at this layer (falls through to the next)."""

    memory_high: int | None = None  # bytes: throttle point (v2) / early-warning point (v1)
    memory_max: int | None = None  # bytes: hard limit
    swap_max: int | None = None  # bytes
    cpu_weight: int | None = None  # 1..10000
    cpu_max: float | None = None  # CPUs (2.0 = two full CPUs)
    pids_max: int | None = None
    timeout_s: float | None = None  # wall-clock limit of a tool call

    def over(self, base: "ResourceLimits") -> "ResourceLimits":
        """This layer on top of base: set values win."""
        return replace(base, **{f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None})

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Match:
    """Regexes on a process (all given must match); uid exact."""

    name: str | None = None  # the tool-call name agentd derived (e.g. "pytest")
    comm: str | None = None
    exe: str | None = None
    argv: str | None = None  # matched against the argv joined with spaces
    uid: int | None = None
    cgroup: str | None = None


@dataclass(frozen=True)
class ToolRule:
    name: str
    match: Match
    limits: ResourceLimits


@dataclass(frozen=True)
class Escalation:
    """What happens on a burst: throttle at memory_high first; when the tool call's PSI
    memory `full` stays above psi_full_pct for sustain_s, freeze it; if it is still over
    after freeze_s, kill the tool call (never the agent runtime)."""

    psi_full_pct: float = 40.0
    sustain_s: float = 2.0
    freeze_s: float = 5.0


@dataclass(frozen=True)
class ToolCallPolicy:
    defaults: ResourceLimits = ResourceLimits()
    ceiling: ResourceLimits = ResourceLimits()
    escalation: Escalation = Escalation()
    tools: tuple[ToolRule, ...] = ()



# ----------------------------------------------------------------------------- the spec


def limits_spec(description: str) -> Mapping:
    return Mapping(
        {
            "memory_high": Scalar("size", description="throttle point (cgroup v2 memory.high)"),
            "memory_max": Scalar("size", description="hard memory limit"),
            "swap_max": Scalar("size", description="swap limit"),
            "cpu_weight": Scalar("int", minimum=1, maximum=10000, description="relative CPU share"),
            "cpu_max": Scalar("number", minimum=0.01, maximum=4096, description="CPUs (2 = two full CPUs)"),
            "pids_max": Scalar("int", minimum=1, maximum=4_194_304, description="max tasks (fork-storm guard)"),
            "timeout_s": Scalar("number", minimum=0.1, maximum=7 * 86400, description="wall-clock limit"),
        },
        description=description,
        build=lambda v: ResourceLimits(**v),
        extra=[_high_not_above_max],
    )


def _high_not_above_max(values: dict) -> list[tuple[str, str]]:
    high, top = values.get("memory_high"), values.get("memory_max")
    if high is not None and top is not None and high > top:
        return [("memory_high", f"expected memory_high <= memory_max ({top} bytes), got {high} bytes")]
    return []


MATCH = Mapping(
    {
        "name": Scalar("regex", description="regex on the derived tool-call name"),
        "comm": Scalar("regex"),
        "exe": Scalar("regex"),
        "argv": Scalar("regex", description="regex on argv joined with spaces"),
        "uid": Scalar("int", minimum=0, maximum=2**32 - 2),
        "cgroup": Scalar("regex"),
    },
    build=lambda v: Match(**v),
    extra=[lambda v: [] if v else [("", "expected at least one of name, comm, exe, argv, uid, cgroup")]],
)

_TOOL_RULE = Mapping(
    {"name": Scalar("str", max_len=64), "match": MATCH, "limits": limits_spec("limits for matching tool calls")},
    required=("name", "match"),
    build=lambda v: ToolRule(v["name"], v["match"], v.get("limits") or ResourceLimits()),
    extra=[lambda v: name_problems(v["name"], "name")],
)

_ESCALATION = Mapping(
    {
        "psi_full_pct": Scalar("number", minimum=1, maximum=100),
        "sustain_s": Scalar("number", minimum=0.1, maximum=600),
        "freeze_s": Scalar("number", minimum=0.1, maximum=3600),
    },
    build=lambda v: Escalation(**v),
)

SPEC = Mapping(
    {
        "defaults": limits_spec("limits every tool call gets"),
        "ceiling": limits_spec("the most an agent's intent can ask for"),
        "escalation": _ESCALATION,
        "tools": ListOf(_TOOL_RULE, max_items=500),
    },
    build=lambda v: ToolCallPolicy(
        defaults=v.get("defaults") or ResourceLimits(),
        ceiling=v.get("ceiling") or ResourceLimits(),
        escalation=v.get("escalation") or Escalation(),
        tools=tuple(v.get("tools") or ()),
    ),
)

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def name_problems(name: str, key: str) -> list[tuple[str, str]]:
    if not name or len(name) > 64 or set(name) - _NAME_CHARS or name.startswith(".") or ".." in name:
        return [(key, f"expected 1-64 characters of A-Z a-z 0-9 . _ - (not starting with a dot), got {name!r}")]
    return []


def valid_name(name: str) -> bool:
    return not name_problems(name, "name")
