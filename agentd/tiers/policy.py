"""The `tiers:` section of a policy file: which memory tiers each process class may use,
in what proportion, and how its cold memory is pushed out.

    tiers:
      classes:                          # first match wins
        - name: optimizer
          match: {argv: "train.py"}     # name/comm/exe/argv/cgroup regexes, uid (as tool-call rules)
          scope: [toolcalls, runtimes, jobs]
          placement:
            mode: interleave            # local | bind | preferred | interleave
            weights: {local: 3, cxl: 1} # tier (local, far/cxl) or node (node2) -> weight;
                                        # a tier's weight is spread over all its nodes
            fallback: local             # a far tier that is missing/empty: local | refuse
          top_tier_max: 4G              # local-tier bytes per process; the rest moves far
          migrate: {rate_mb_s: 200, interval_ms: 20}
          reclaim: {to: swap, budget: 2G, psi_target_pct: 0.5, step: 64M, interval_s: 5, swappiness: 100}
          guard: {psi_some_pct: 10}     # stop demoting/reclaiming while the workload stalls this much
          memory_high: 8G

Pure: imports only agentd.policy.spec. Whether a node or tier exists is a property of the
host, not of the file: `check_against(section, topology)` reports those with the file:line
each class was written at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from math import gcd
from typing import Any

import yaml

from agentd.policy.spec import ListOf, Mapping, Scalar, Spec

MODES = ("local", "bind", "preferred", "interleave")
SCOPES = ("toolcalls", "runtimes", "jobs")
TIER_KEY = re.compile(r"(local|far|cxl|node\d{1,4}|\d{1,4})")
MAX_WEIGHT = 255  # the kernel's weighted-interleave weights are u8


@dataclass(frozen=True)
class ClassMatch:
    name: str | None = None
    comm: str | None = None
    exe: str | None = None
    argv: str | None = None
    cgroup: str | None = None
    uid: int | None = None


@dataclass(frozen=True)
class Placement:
    mode: str = "local"
    weights: tuple[tuple[str, int], ...] = ()  # (tier or node key, weight), in file order
    fallback: str = "local"  # local | refuse


@dataclass(frozen=True)
class Migrate:
    rate_mb_s: float = 100.0  # 0 = unlimited (one migrate_pages call)
    interval_ms: float = 20.0  # pause between move_pages batches
    existing: bool = True  # move pages already placed, not only new allocations


@dataclass(frozen=True)
class Reclaim:
    to: str = "swap"  # swap | zswap
    budget: int = 1 << 30  # most bytes of a workload pushed out
    psi_target_pct: float = 0.5  # memory "some" avg10 the workload may stall
    step: int = 32 << 20  # bytes per memory.reclaim write at zero pressure
    interval_s: float = 5.0
    swappiness: int | None = None  # memory.reclaim's swappiness= (None: the cgroup's own)


@dataclass(frozen=True)
class Guard:
    psi_some_pct: float = 10.0


@dataclass(frozen=True)
class TierClass:
    name: str
    match: ClassMatch
    scope: tuple[str, ...] = SCOPES
    placement: Placement = Placement()
    top_tier_max: int | None = None
    migrate: Migrate = Migrate()
    reclaim: Reclaim | None = None
    guard: Guard = Guard()
    memory_high: int | None = None
    where: str = ""  # "file:line" of the class, for errors found against the host


@dataclass(frozen=True)
class TiersSection:
    classes: tuple[TierClass, ...] = ()
    where: str = ""


# ----------------------------------------------------------------------------- spec


class _Located(Spec):
    """Checks with `inner` and records file:line on the built dataclass (its `where`)."""

    def __init__(self, inner: Spec):
        self.inner = inner
        self.description = getattr(inner, "description", "")

    def check(self, node, path, problems, file):
        value = self.inner.check(node, path, problems, file)
        if value is not None and hasattr(value, "where"):
            value = replace(value, where=f"{file}:{node.start_mark.line + 1}")
        return value

    def json_schema(self):
        return self.inner.json_schema()


class _Weights(Spec):
    """{tier or node: weight} in file order; keys local, far, cxl, node<N> or N."""

    description = "tier (local, far, cxl) or node (node2) -> integer weight 1-255, or percentages adding up to 100"

    def check(self, node, path, problems, file):
        if not isinstance(node, yaml.MappingNode) or not node.value:
            self._problem(problems, file, node, path, "expected a mapping such as {local: 3, cxl: 1}")
            return None
        out: list[tuple[str, int]] = []
        for key_node, value_node in node.value:
            key = str(key_node.value).lower() if isinstance(key_node, yaml.ScalarNode) else ""
            sub = f"{path}.{key}"
            if not TIER_KEY.fullmatch(key):
                self._problem(problems, file, key_node, sub, "unknown tier; expected local, far, cxl or a node (node2)")
                continue
            if key == "cxl":
                key = "far"
            if key.isdigit():
                key = f"node{int(key)}"
            if any(k == key for k, _ in out):
                self._problem(problems, file, key_node, sub, "named twice (cxl and far are the same tier)")
                continue
            weight = Scalar("int", minimum=0, maximum=100).check(value_node, sub, problems, file)
            if weight is not None:
                out.append((key, weight))
        return tuple(out) if out else None

    def json_schema(self):
        return {"type": "object", "propertyNames": {"pattern": f"^{TIER_KEY.pattern}$"},
                "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 100},
                "description": self.description}


def _placement_checks(v: dict) -> list[tuple[str, str]]:
    mode, weights = v.get("mode", "local"), v.get("weights") or ()
    if mode == "local" and weights:
        return [("weights", "mode local takes no weights (it allocates on the CPU's own node)")]
    if mode != "local" and not weights:
        return [("weights", f"mode {mode} needs weights naming its tiers or nodes, e.g. {{local: 1}}")]
    total = sum(w for _, w in weights)
    if weights and total == 0:
        return [("weights", "the weights add up to 0; give at least one tier a weight")]
    if mode in ("bind", "preferred") and len({w for _, w in weights if w}) > 1:
        return [("weights", f"mode {mode} uses the named tiers without ratios; use mode interleave for a ratio")]
    if mode == "interleave" and total > MAX_WEIGHT and total != 100:
        return [("weights", f"ratios add up to {total}: give small integers (3:1) or percentages adding up to 100")]
    if v.get("percent") and total != 100:
        return [("weights", f"percentages add up to {total}, not 100")]
    return []


def _reduce(weights: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    """Percentages 75:25 -> 3:1 (the kernel's weights are small integers)."""
    nonzero = [w for _, w in weights if w]
    g = 0
    for w in nonzero:
        g = gcd(g, w)
    return tuple((k, w // g if g else w) for k, w in weights)


_MATCH = Mapping(
    {"name": Scalar("regex"), "comm": Scalar("regex"), "exe": Scalar("regex"),
     "argv": Scalar("regex", description="regex on argv joined with spaces"), "cgroup": Scalar("regex"),
     "uid": Scalar("int", minimum=0, maximum=2**32 - 2)},
    build=lambda v: ClassMatch(**v),
    extra=[lambda v: [] if v else [("", "expected at least one of name, comm, exe, argv, cgroup, uid")]],
)

_PLACEMENT = Mapping(
    {"mode": Scalar("enum", choices=MODES, description="local: first touch on the CPU's node; bind: only the "
                    "named tiers; preferred: the named tiers first; interleave: pages spread at the weights' ratio"),
     "weights": _Weights(),
     "percent": Scalar("bool", description="weights are percentages that must add up to 100"),
     "fallback": Scalar("enum", choices=("local", "refuse"),
                        description="when a named far tier is missing or empty: place locally, or refuse the class")},
    build=lambda v: Placement(mode=v.get("mode", "local"), weights=_reduce(v.get("weights") or ()),
                              fallback=v.get("fallback", "local")),
    extra=[_placement_checks],
)

_MIGRATE = Mapping(
    {"rate_mb_s": Scalar("number", minimum=0, maximum=100_000, description="0 = unlimited"),
     "interval_ms": Scalar("number", minimum=0, maximum=10_000),
     "existing": Scalar("bool", description="also move pages that are already placed")},
    build=lambda v: Migrate(**v),
)

_RECLAIM = Mapping(
    {"to": Scalar("enum", choices=("swap", "zswap")),
     "budget": Scalar("size", description="most bytes pushed out (memory.swap.max or memory.zswap.max)"),
     "psi_target_pct": Scalar("number", minimum=0.01, maximum=50, description="memory 'some' avg10 target"),
     "step": Scalar("size", description="bytes per memory.reclaim write at zero pressure"),
     "interval_s": Scalar("number", minimum=0.5, maximum=3600),
     "swappiness": Scalar("int", minimum=0, maximum=200,
                          description="memory.reclaim swappiness= (0: file pages only, 200: anon first)")},
    required=("budget",),
    build=lambda v: Reclaim(**v),
    extra=[lambda v: [("step", "expected a step of at least 1M")] if v.get("step", 1 << 20) < (1 << 20) else []],
)

_CLASS = Mapping(
    {"name": Scalar("str", max_len=64), "match": _MATCH,
     "scope": ListOf(Scalar("enum", choices=SCOPES), max_items=3),
     "placement": _PLACEMENT, "top_tier_max": Scalar("size"), "migrate": _MIGRATE, "reclaim": _RECLAIM,
     "guard": Mapping({"psi_some_pct": Scalar("number", minimum=0.1, maximum=100)}, build=lambda v: Guard(**v)),
     "memory_high": Scalar("size")},
    required=("name", "match"),
    build=lambda v: TierClass(name=v["name"], match=v["match"], scope=tuple(v.get("scope") or SCOPES),
                              placement=v.get("placement") or Placement(), top_tier_max=v.get("top_tier_max"),
                              migrate=v.get("migrate") or Migrate(), reclaim=v.get("reclaim"),
                              guard=v.get("guard") or Guard(), memory_high=v.get("memory_high")),
    extra=[lambda v: [] if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", v["name"]) else
           [("name", f"expected 1-64 characters of A-Z a-z 0-9 . _ -, got {v['name']!r}")]],
)


def _unique_names(v: dict) -> list[tuple[str, str]]:
    names = [c.name for c in v.get("classes") or ()]
    dup = sorted({n for n in names if names.count(n) > 1})
    return [("classes", f"class names must be unique; {', '.join(dup)} repeated")] if dup else []


SPEC = _Located(Mapping(
    {"classes": ListOf(_Located(_CLASS), max_items=200)},
    description="memory-tier placement per process class (agentd.tiers)",
    build=lambda v: TiersSection(classes=tuple(v.get("classes") or ())),
    extra=[_unique_names],
))


# ----------------------------------------------------------------------------- host checks


def check_against(section: TiersSection, topology: Any) -> list[str]:
    """What in the section this host cannot do, one "file:line: class X: ..." line each.

    Errors (a node that does not exist, a class that refuses its fallback) and stated
    fallbacks ("falls back to local") alike; `model.plan_class` makes the same decisions."""
    from agentd.tiers import model  # the same rules, one place

    out = []
    for cls in section.classes:
        result = model.plan_class(cls, topology)
        for note in result.notes:
            out.append(f"{cls.where or '?'}: class {cls.name}: {note}")
        if result.error:
            out.append(f"{cls.where or '?'}: class {cls.name}: {result.error}")
    return out

