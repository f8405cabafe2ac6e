"""Pure tool-call decisions: how a tool call is named, which policy rule it falls under,
what an agent's declared intent is worth, and the limits that result.

No kernel access here: everything is data in, data out, unit-tested without root.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

from agentd.policy import patterns
from agentd.policy.schema import Policy
from agentd.toolcalls.policy import Match, ResourceLimits, ToolRule, valid_name
from agentd.policy.spec import parse_size

# Interpreters and wrappers whose first real argument names the tool better than they do.
_INTERPRETERS = {"python", "python3", "node", "ruby", "perl", "bash", "sh", "dash", "zsh", "env", "timeout", "nice", "uv", "npx"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

MAX_INTENT_BYTES = 4096
INTENT_ENV = "AGENTD_INTENT"  # JSON intent in a tool call's environment, for agents without the socket


def _base(arg: str) -> str:
    return os.path.basename(arg.rstrip("/")) or arg


def tool_name(argv: list[str], exe: str | None = None, comm: str = "") -> str:
    """A short, cgroup-safe name: `pytest`, `git`, `python-script.py`, `bash`.

    `python -m pytest` -> pytest; `python script.py` -> python-script.py;
    `bash -c "pytest -x"` -> pytest (the first word of the command string)."""
    words = [a for a in argv if a]
    if not words:
        words = [_base(exe)] if exe else [comm or "tool"]
    head = re.sub(r"\d+(\.\d+)*$", "", _base(words[0])) or _base(words[0])
    name = _base(words[0])
    if head in _INTERPRETERS:
        rest = words[1:]
        while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
            rest = rest[1:]
        if len(rest) >= 2 and rest[0] == "-m":
            name = rest[1]
        elif len(rest) >= 2 and rest[0] == "-c" and head in ("bash", "sh", "dash", "zsh"):
            first = rest[1].strip().split()
            name = tool_name(first) if first else head
        elif len(rest) >= 2 and rest[0] == "-c":
            name = head
        elif rest and head in ("env", "timeout", "nice", "npx", "uv"):
            name = tool_name([r for r in rest if "=" not in r or r.startswith("-")] if head == "env" else rest[1:] if head == "timeout" else rest)
        elif rest:
            name = f"{head}-{_base(rest[0])}"
        else:
            name = head
    name = _SAFE.sub("_", name).strip("._-")[:40]
    return name or "tool"


def rule_matches(match: Match, *, name: str, comm: str, exe: str | None, argv: list[str], uid: int | None, cgroup: str = "") -> bool:
    checks = (
        (match.name, name),
        (match.comm, comm),
        (match.exe, exe or ""),
        (match.argv, " ".join(argv)),
        (match.cgroup, cgroup),
    )
    for pattern, value in checks:
        if pattern is not None and not patterns.search(pattern, value):  # RE2: linear time
            return False
    return match.uid is None or match.uid == uid


def find_tool_rule(policy: Policy, *, name: str, comm: str, exe: str | None, argv: list[str], uid: int | None) -> ToolRule | None:
    for rule in policy.toolcalls.tools:
        if rule_matches(rule.match, name=name, comm=comm, exe=exe, argv=argv, uid=uid):
            return rule
    return None


# ------------------------------------------------------------------------------- intent


@dataclass(frozen=True)
class Intent:
    """What an agent says a tool call will need. Every field optional."""

    tool: str | None = None
    memory: int | None = None  # bytes the tool call expects at peak
    cpu: float | None = None  # CPUs
    duration_s: float | None = None
    priority: str | None = None  # low | normal | high
    pids: int | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class IntentInvalid(ValueError):
    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(message)


_INTENT_FIELDS = {"tool", "memory", "cpu", "duration_s", "priority", "pids"}


def _number(value, field_name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise IntentInvalid(field_name, f"{field_name}: expected a number, got {value!r}")
    if not lo <= value <= hi:
        raise IntentInvalid(field_name, f"{field_name}: expected a number between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


def parse_intent(data: object) -> Intent:
    """Validate an intent from JSON (API body or AGENTD_INTENT). Raises IntentInvalid."""
    if not isinstance(data, dict):
        raise IntentInvalid("", "intent: expected a JSON object")
    unknown = set(data) - _INTENT_FIELDS
    if unknown:
        bad = sorted(unknown)[0]
        raise IntentInvalid(bad, f"{bad}: unknown field; expected one of {', '.join(sorted(_INTENT_FIELDS))}")
    out: dict = {}
    if data.get("tool") is not None:
        tool = data["tool"]
        if not isinstance(tool, str) or not valid_name(tool) or len(tool) > 40:
            raise IntentInvalid("tool", f"tool: expected a name of 1-40 characters A-Z a-z 0-9 . _ -, got {tool!r}")
        out["tool"] = tool
    if data.get("memory") is not None:
        try:
            out["memory"] = parse_size(data["memory"])
        except ValueError as exc:
            raise IntentInvalid("memory", f"memory: {exc}") from None
        if out["memory"] <= 0:
            raise IntentInvalid("memory", "memory: expected a positive size")
    if data.get("cpu") is not None:
        out["cpu"] = _number(data["cpu"], "cpu", 0.01, 4096)
    if data.get("duration_s") is not None:
        out["duration_s"] = _number(data["duration_s"], "duration_s", 0.001, 7 * 86400)
    if data.get("pids") is not None:
        out["pids"] = int(_number(data["pids"], "pids", 1, 4_194_304))
    if data.get("priority") is not None:
        if data["priority"] not in ("low", "normal", "high"):
            raise IntentInvalid("priority", f"priority: expected low, normal or high, got {data['priority']!r}")
        out["priority"] = data["priority"]
    return Intent(**out)


def parse_intent_env(environ_text: bytes) -> Intent | None:
    """Find AGENTD_INTENT in a /proc/<pid>/environ blob. Invalid intent -> IntentInvalid."""
    prefix = INTENT_ENV.encode() + b"="
    for entry in environ_text.split(b"\0"):
        if entry.startswith(prefix):
            raw = entry[len(prefix):]
            if len(raw) > MAX_INTENT_BYTES:
                raise IntentInvalid("", f"{INTENT_ENV}: longer than {MAX_INTENT_BYTES} bytes")
            try:
                return parse_intent(json.loads(raw.decode("utf-8", "strict")))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise IntentInvalid("", f"{INTENT_ENV}: not valid JSON ({exc})") from None
    return None


# ------------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Clip:
    """An intent value that the policy's ceiling cut down."""

    field: str
    requested: float
    granted: float

    def to_json(self) -> dict:
        return {"field": self.field, "requested": self.requested, "granted": self.granted}


@dataclass(frozen=True)
class Resolved:
    limits: ResourceLimits
    rule: str  # which policy layer set the limits: "defaults", "tools[pytest]"
    clips: tuple[Clip, ...] = field(default=())


def resolve_limits(policy: Policy, rule: ToolRule | None, intent: Intent | None) -> Resolved:
    """defaults < matching tool rule < intent, the intent clipped to the ceiling."""
    tc = policy.toolcalls
    limits = tc.defaults
    source = "defaults"
    if rule is not None:
        limits = rule.limits.over(limits)
        source = f"tools[{rule.name}]"
    clips: list[Clip] = []
    if intent is None:
        return Resolved(limits, source)
    ceiling = tc.ceiling
    changes: dict = {}

    def grant(key: str, requested: float, ceiling_value: float | None) -> float:
        if ceiling_value is not None and requested > ceiling_value:
            clips.append(Clip(key, requested, ceiling_value))
            return ceiling_value
        return requested

    if intent.memory is not None:
        # The declared peak becomes the throttle point; the hard stop sits above it with
        # the same ratio the policy uses, so a truthful intent is never killed.
        high = int(grant("memory_high", intent.memory, ceiling.memory_high or ceiling.memory_max))
        ratio = (limits.memory_max / limits.memory_high) if limits.memory_max and limits.memory_high else 1.5
        top = int(grant("memory_max", int(high * ratio), ceiling.memory_max))
        changes.update(memory_high=min(high, top), memory_max=top)
    if intent.cpu is not None:
        changes["cpu_max"] = grant("cpu_max", intent.cpu, ceiling.cpu_max)
    if intent.pids is not None:
        changes["pids_max"] = int(grant("pids_max", intent.pids, ceiling.pids_max))
    if intent.duration_s is not None:
        # Give the declared duration twice over before a timeout kill.
        changes["timeout_s"] = grant("timeout_s", intent.duration_s * 2, ceiling.timeout_s)
    if intent.priority is not None:
        changes["cpu_weight"] = {"low": 50, "normal": 100, "high": 400}[intent.priority]
    return Resolved(ResourceLimits(**changes).over(limits), source + "+intent", tuple(clips))
