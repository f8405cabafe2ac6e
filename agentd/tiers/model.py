"""The pure planner: policy class + topology -> a kernel placement; per-process page
observations -> migrations (ratio, bind, top-tier cap); cgroup pressure -> proactive
reclaim steps (Senpai/TMO: reclaim while the workload's memory stall stays under its
target, back off when it rises). No kernel, no clock: `now` comes in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from math import gcd
from typing import Any, Iterable, NamedTuple

from agentd.tiers.policy import MAX_WEIGHT, Reclaim, TierClass, TiersSection

MIN_FREE_BYTES = 64 << 20  # a node with less free memory is "empty": never a placement target
RATIO_TOLERANCE = 0.05  # a VMA within 5 points of its target split is left alone
RECHECK_S = 30.0  # how often a placed process is looked at again (new allocations)
SETTLE_S = 2.0  # how soon a process whose pages were just moved is looked at again


# ----------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class NodePlan:
    """What a class asks of the kernel on this host."""

    mode: str  # local | bind | preferred | preferred_many | interleave | weighted_interleave
    weights: dict[int, int] = field(default_factory=dict)  # node -> weight (all 1 unless weighted)
    notes: tuple[str, ...] = ()  # stated fallbacks
    error: str = ""  # the class cannot be placed here (nothing is applied)

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(sorted(self.weights))

    def fractions(self) -> dict[int, float]:
        total = sum(self.weights.values())
        return {n: w / total for n, w in sorted(self.weights.items())} if total else {}

    def to_json(self) -> dict:
        return {"mode": self.mode, "nodes": list(self.nodes), "weights": {str(k): v for k, v in self.weights.items()},
                "notes": list(self.notes), "error": self.error}


def _lcm(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out = out * v // gcd(out, v)
    return out


def node_weights(tier_weights: list[tuple[list[int], int]]) -> dict[int, int]:
    """Spread each tier's weight evenly over its nodes, keeping the tiers' ratio:
    local(2 nodes):cxl(2 nodes) = 3:1 -> {0: 3, 1: 3, 2: 1, 3: 1}; local(1):cxl(2) = 1:1 ->
    {0: 2, 2: 1, 3: 1}. Reduced by the common divisor and scaled into the kernel's 1..255."""
    groups = [(nodes, w) for nodes, w in tier_weights if nodes and w > 0]
    if not groups:
        return {}
    common = _lcm(len(nodes) for nodes, _ in groups)
    raw: dict[int, int] = {}
    for nodes, w in groups:
        for n in nodes:
            raw[n] = raw.get(n, 0) + w * common // len(nodes)
    g = 0
    for v in raw.values():
        g = gcd(g, v)
    out = {n: v // g for n, v in raw.items()}
    top = max(out.values())
    if top > MAX_WEIGHT:
        out = {n: max(1, round(v * MAX_WEIGHT / top)) for n, v in out.items()}
    return out


def plan_class(cls: TierClass, topo: Any, min_free_bytes: int = MIN_FREE_BYTES) -> NodePlan:
    """The class's placement on this topology, with every fallback stated."""
    p = cls.placement
    if p.mode == "local":
        return NodePlan("local")
    notes: list[str] = []
    groups: list[tuple[list[int], int]] = []
    for key, weight in p.weights:
        m = re.fullmatch(r"node(\d+)", key)
        if m and int(m.group(1)) not in topo.nodes:
            return NodePlan(p.mode, error=f"node {m.group(1)} does not exist on this host "
                                          f"(nodes {','.join(map(str, sorted(topo.nodes)))}); nothing applied")
        nodes = topo.nodes_of(key)
        if not nodes and not m:
            msg = f"this host has no {key} tier (tiers: {', '.join(t.name for t in topo.tiers)})"
            if p.fallback == "refuse":
                return NodePlan(p.mode, error=msg + "; the class refuses to fall back, nothing applied")
            notes.append(msg + f"; its share ({weight}) goes to the other tiers")
            continue
        usable = []
        for n in nodes:
            node = topo.nodes[n]
            if not node.has_memory or node.free_bytes < min_free_bytes:
                msg = f"node {n} is empty ({node.free_bytes >> 20} MiB free of {node.total_bytes >> 20} MiB): never a target"
                if p.fallback == "refuse" and len(nodes) == 1:
                    return NodePlan(p.mode, error=msg + "; the class refuses to fall back, nothing applied")
                notes.append(msg)
                continue
            usable.append(n)
        if usable:
            groups.append((usable, weight))
    weights = node_weights(groups)
    if not weights:
        return NodePlan("local", notes=tuple(notes + ["no usable node left: first-touch local placement"]))
    if p.mode == "bind":
        return NodePlan("bind", {n: 1 for n in weights}, tuple(notes))
    if p.mode == "preferred":
        return NodePlan("preferred" if len(weights) == 1 else "preferred_many", {n: 1 for n in weights}, tuple(notes))
    if len(weights) == 1:
        return NodePlan("bind", weights, tuple(notes + ["interleave over one usable node is a bind to it"]))
    if len(set(weights.values())) == 1:
        return NodePlan("interleave", {n: 1 for n in weights}, tuple(notes))
    if not topo.weighted_interleave:
        notes.append("kernel has no weighted interleave (6.9+): new pages interleave 1:1 over nodes "
                     f"{','.join(map(str, sorted(weights)))}; agentd moves running processes' pages to the ratio")
        return NodePlan("interleave", weights, tuple(notes))
    return NodePlan("weighted_interleave", weights, tuple(notes))


# ----------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class ManagedProc:
    """A process agentd manages, as the kind sees it in the shared model."""

    pid: int
    start: int  # /proc/PID/stat start time (pid reuse guard)
    scope: str  # toolcalls | runtimes | jobs
    cgroup: str  # relative to the daemon's root
    name: str = ""  # tool-call name / agent / job name
    comm: str = ""
    exe: str = ""
    argv: tuple[str, ...] = ()
    uid: int | None = None

    @property
    def key(self) -> str:
        return f"{self.pid}:{self.start}"


def matches(cls: TierClass, proc: ManagedProc) -> bool:
    m = cls.match
    if proc.scope not in cls.scope:
        return False
    for pattern, value in ((m.name, proc.name), (m.comm, proc.comm), (m.exe, proc.exe),
                           (m.argv, " ".join(proc.argv)), (m.cgroup, proc.cgroup)):
        if pattern is not None and not re.search(pattern, value):
            return False
    return m.uid is None or m.uid == proc.uid


def launching(proc: ManagedProc) -> bool:
    """`agentctl run` itself, registered but not yet exec'd into its command (whose argv it
    carries, so a class may match it): its pages go away at exec, moving them is waste;
    the launch sets the command's policy before its first page."""
    argv = proc.argv
    head = argv[:argv.index("--")] if "--" in argv else argv
    return "run" in head and any(a == "cli.agentctl" or a.rsplit("/", 1)[-1] == "agentctl" for a in head[:3])


def find_class(sections: dict[str, TiersSection], proc: ManagedProc) -> tuple[str, TierClass] | None:
    """First matching class over the policies in force (by policy name, sorted: stable)."""
    for policy in sorted(sections):
        for cls in sections[policy].classes:
            if matches(cls, proc):
                return policy, cls
    return None


# ----------------------------------------------------------------------------- migration


class Vma(NamedTuple):  # tuples: the planner makes tens of thousands per round
    start: int
    end: int
    pages: dict  # node -> resident pages (numa_maps N<node>=<pages>)
    anon: bool = True
    policy: str = ""  # the mempolicy numa_maps shows for it ("bind:0"; the task's unless mbind)

    @property
    def resident(self) -> int:
        return sum(self.pages.values())


class Move(NamedTuple):
    """Move the resident pages of [start, end) to `node` (move_pages)."""

    start: int
    end: int
    node: int
    est_bytes: int


def _split(vma: Vma, cuts: list[tuple[int, float, float]], page: int) -> list[tuple[int, int, int, float]]:
    """[start, end) cut into one page-aligned run per node, sized by the node's fraction;
    cuts = (node, fraction, cumulative fraction) in node order."""
    npages = (vma.end - vma.start) // page
    out, at, last = [], vma.start, len(cuts) - 1
    for i, (node, frac, acc) in enumerate(cuts):
        end = vma.end if i == last else vma.start + round(npages * acc) * page
        if end > at:
            out.append((at, end, node, frac))
        at = end
    return out


def _cuts(fractions: dict[int, float]) -> list[tuple[int, float, float]]:
    out, acc = [], 0.0
    for node, frac in sorted(fractions.items()):
        acc += frac
        out.append((node, frac, acc))
    return out


def plan_moves(plan: NodePlan, vmas: list[Vma], page: int, top_tier_max: int | None = None,
               local_nodes: Iterable[int] = (), far_nodes: Iterable[int] = ()) -> list[Move]:
    """Moves that bring a process's resident pages to the plan (bind: onto its nodes;
    interleave: each VMA split at the ratio) and under its top-tier cap."""
    moves: list[Move] = []
    fractions = plan.fractions()
    cuts = _cuts(fractions)
    if plan.mode in ("bind", "interleave", "weighted_interleave") and fractions:
        for v in vmas:
            resident = v.resident
            if not resident:
                continue
            if plan.mode == "bind":
                if all(n in fractions for n, c in v.pages.items() if c):
                    continue
            elif all(abs(v.pages.get(n, 0) / resident - fractions.get(n, 0.0)) <= RATIO_TOLERANCE
                     for n in set(v.pages) | fractions.keys()):
                continue
            for start, end, node, frac in _split(v, cuts, page):
                moves.append(Move(start, end, node, int(resident * frac) * page))
    if top_tier_max is not None:
        far = sorted(far_nodes)
        local = set(local_nodes)
        if far:
            on_local = sum(c for v in vmas for n, c in v.pages.items() if n in local) * page
            # pages the moves above already send far
            on_local -= sum(m.est_bytes for m in moves if m.node in far)
            excess = on_local - top_tier_max
            i = 0
            for v in sorted(vmas, key=lambda v: -sum(c for n, c in v.pages.items() if n in local)):
                if excess <= 0:
                    break
                here = sum(c for n, c in v.pages.items() if n in local) * page
                if here <= 0 or any(m.start < v.end and v.start < m.end for m in moves):
                    continue
                share = min(1.0, excess / here)
                npages = (v.end - v.start) // page
                end = v.start + max(1, round(npages * share)) * page
                moves.append(Move(v.start, min(end, v.end), far[i % len(far)], int(here * share)))
                excess -= int(here * share)
                i += 1
    return moves


_KERNEL_MODE = {"bind": "bind", "preferred": "prefer", "preferred_many": "prefer (many)", "interleave": "interleave",
                "weighted_interleave": "weighted interleave", "local": "local"}


def kernel_policy(plan: NodePlan) -> str:
    """The policy as /proc/PID/numa_maps prints it (the kernel's mpol_to_str): "bind:0-1",
    "prefer:0", "weighted interleave:0,2", "local"."""
    mode = _KERNEL_MODE.get(plan.mode, plan.mode)
    if not plan.nodes:
        return mode
    ranges, nodes = [], sorted(plan.nodes)
    lo = prev = nodes[0]
    for n in nodes[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        ranges.append(f"{lo}-{prev}" if prev > lo else f"{lo}")
        if n is not None:
            lo = prev = n
    return f"{mode}:{','.join(ranges)}"


def placed_by_kernel(plan: NodePlan, vmas: list[Vma]) -> bool:
    """Every anonymous mapping is under the plan's own mempolicy (set at launch, before
    exec): the kernel already puts each new page where the plan says, so there is nothing
    to move for the plan (interleave: per mapping, at the ratio)."""
    want = kernel_policy(plan)
    return bool(vmas) and plan.mode != "local" and all(v.policy == want for v in vmas)


def node_bytes(vmas: list[Vma], page: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for v in vmas:
        for n, c in v.pages.items():
            out[n] = out.get(n, 0) + c * page
    return out


def on_target_pct(plan: NodePlan, per_node: dict[int, int]) -> float:
    """How much of the process's memory sits where the plan says (100 = all of it):
    bind/preferred: on its nodes; interleave: 100 - half the L1 distance to the ratio."""
    total = sum(per_node.values())
    if not total or plan.mode == "local":
        return 100.0
    fr = plan.fractions()
    if plan.mode in ("bind", "preferred", "preferred_many"):
        return 100.0 * sum(b for n, b in per_node.items() if n in fr) / total
    dist = sum(abs(per_node.get(n, 0) / total - fr.get(n, 0.0)) for n in set(per_node) | set(fr))
    return 100.0 * (1 - dist / 2)


# ----------------------------------------------------------------------------- reclaim


@dataclass(frozen=True)
class ReclaimState:
    step: int = 0  # current step in bytes (0: start at the class's step)
    last_at: float = -1e18
    reclaimed: int = 0
    backoffs: int = 0
    last_reason: str = ""


@dataclass(frozen=True)
class ReclaimStep:
    bytes: int
    psi: float
    reason: str


def reclaim_decide(state: ReclaimState, cfg: Reclaim, psi_some_avg10: float | None, swapped_bytes: int,
                   now: float, guard_pct: float | None = None) -> tuple[ReclaimState, ReclaimStep | None]:
    """Senpai's loop: every interval, reclaim step * (1 - psi/target) while the stall stays
    under target; at or above it, reclaim nothing and halve the step (back off); under the
    budget only. The step grows back (x2) after each quiet interval."""
    if now - state.last_at < cfg.interval_s:
        return state, None
    step = state.step or cfg.step
    if psi_some_avg10 is None:
        return replace(state, last_at=now, last_reason="no pressure reading: not reclaiming blind"), None
    if guard_pct is not None and psi_some_avg10 >= guard_pct:
        return replace(state, last_at=now, step=max(1 << 20, step // 2), backoffs=state.backoffs + 1,
                       last_reason=f"guard: memory stall {psi_some_avg10:.2f}% >= {guard_pct:g}%"), None
    if psi_some_avg10 >= cfg.psi_target_pct:
        return replace(state, last_at=now, step=max(1 << 20, step // 2), backoffs=state.backoffs + 1,
                       last_reason=f"backing off: memory stall {psi_some_avg10:.2f}% >= target {cfg.psi_target_pct:g}%"), None
    room = cfg.budget - swapped_bytes
    if room <= 0:
        return replace(state, last_at=now, last_reason=f"budget reached ({swapped_bytes >> 20} MiB pushed out)"), None
    amount = int(step * (1 - psi_some_avg10 / cfg.psi_target_pct))
    amount = min(amount, room)
    amount -= amount % 4096
    if amount < 4096:
        return replace(state, last_at=now, last_reason="step below one page"), None
    new = replace(state, last_at=now, step=min(cfg.step, step * 2), reclaimed=state.reclaimed + amount,
                  last_reason=f"reclaiming {amount >> 20} MiB at stall {psi_some_avg10:.2f}%")
    return new, ReclaimStep(amount, psi_some_avg10, new.last_reason)


def guard_blocks(cls: TierClass, psi_some_avg10: float | None) -> bool:
    """The pressure guard: no demotion (moves to far nodes) while the workload stalls."""
    return psi_some_avg10 is not None and psi_some_avg10 >= cls.guard.psi_some_pct


# ----------------------------------------------------------------------------- decide


@dataclass(frozen=True)
class SetKnob:
    cgroup: str
    file: str  # cpuset.mems | memory.swap.max | memory.zswap.max | memory.high
    value: str
    reason: str


@dataclass(frozen=True)
class MigrateProc:
    pid: int
    start: int
    cls: str
    moves: tuple[Move, ...]
    rate_mb_s: float
    interval_ms: float


@dataclass(frozen=True)
class ReclaimCgroup:
    cgroup: str
    bytes: int
    cls: str
    reason: str
    swappiness: int | None = None


@dataclass(frozen=True)
class PlannerState:
    placed: dict = field(default_factory=dict)  # proc key -> (class, plan nodes, at)
    knobs: frozenset = frozenset()  # (cgroup, file, value) already written
    reclaim: dict = field(default_factory=dict)  # cgroup -> ReclaimState
    kernel_placed: frozenset = frozenset()  # proc keys whose pages the launch mempolicy places


@dataclass(frozen=True)
class PlannerInput:
    topology: Any
    procs: tuple[ManagedProc, ...]
    vmas: dict  # proc key -> list[Vma] (observed this round; absent: not read)
    psi: dict  # cgroup -> memory "some" avg10 (percent) or None
    swapped: dict  # cgroup -> bytes in swap (memory.swap.current, + zswap)
    page_size: int = 4096
    cpuset: bool = True  # the driver can write cpuset.mems of these cgroups


def decide(state: PlannerState, inp: PlannerInput, sections: dict[str, TiersSection],
           now: float) -> tuple[PlannerState, list]:
    """One round. A bind's cpuset.mems is written only once the cgroup's pages are where
    the plan says: on cgroup v2 a cpuset.mems change migrates every page at once
    (memory_migrate), which would bypass the migration rate limit."""
    actions: list = []
    knob_actions: list = []
    placed = dict(state.placed)
    knobs = set(state.knobs)
    reclaim = dict(state.reclaim)
    topo = inp.topology
    local_nodes, far_nodes = topo.nodes_of("local"), [n for n in topo.nodes_of("far")
                                                      if topo.nodes[n].free_bytes >= MIN_FREE_BYTES]
    live = set()
    seen_cgroups = set()
    kernel_placed: set[str] = set()
    unsettled: set[str] = set()  # cgroups with pages still to move (or not yet looked at)
    plans: dict[int, NodePlan] = {}  # one plan per class per round
    binds: dict[str, tuple[str, str]] = {}  # cgroup -> (nodes, reason)
    for proc in inp.procs:
        found = find_class(sections, proc)
        if found is None:
            continue
        _, cls = found
        live.add(proc.key)
        plan = plans.get(id(cls))
        if plan is None:
            plan = plans[id(cls)] = plan_class(cls, topo)
        if plan.error:
            continue
        psi = inp.psi.get(proc.cgroup)

        def knob(file: str, value: str, reason: str, cgroup: str = proc.cgroup) -> None:
            k = (cgroup, file, value)
            if k not in knobs:
                knobs.add(k)
                knob_actions.append(SetKnob(cgroup, file, value, reason))

        if proc.cgroup not in seen_cgroups:
            seen_cgroups.add(proc.cgroup)
            if plan.mode == "bind" and inp.cpuset:
                binds[proc.cgroup] = (",".join(map(str, plan.nodes)), f"class {cls.name}: bind")
            if cls.memory_high is not None:
                knob("memory.high", str(cls.memory_high), f"class {cls.name}: memory_high")
            if cls.reclaim is not None:
                if cls.reclaim.to == "zswap":
                    knob("memory.zswap.max", str(cls.reclaim.budget), f"class {cls.name}: zswap budget")
                else:
                    knob("memory.swap.max", str(cls.reclaim.budget), f"class {cls.name}: swap budget")
                rs, step = reclaim_decide(reclaim.get(proc.cgroup, ReclaimState()), cls.reclaim, psi,
                                          inp.swapped.get(proc.cgroup, 0), now, cls.guard.psi_some_pct)
                reclaim[proc.cgroup] = rs
                if step is not None:
                    actions.append(ReclaimCgroup(proc.cgroup, step.bytes, cls.name, step.reason,
                                                 cls.reclaim.swappiness))

        sig = (cls.name, plan.mode, tuple(sorted(plan.weights.items())))
        prev = placed.get(proc.key)
        due = prev is None or prev[0] != sig or now - prev[1] >= prev[2]
        vmas = inp.vmas.get(proc.key)
        if not cls.migrate.existing or cls.migrate.rate_mb_s == 0:
            continue  # the kernel moves them (cpuset.mems) or only new pages follow the plan
        if vmas is None:
            if prev is None or prev[0] != sig:
                unsettled.add(proc.cgroup)
            continue
        by_kernel = placed_by_kernel(plan, vmas)
        if by_kernel:
            kernel_placed.add(proc.key)
        if not due:
            if prev[2] == SETTLE_S:  # pages were just moved: not yet looked at again
                unsettled.add(proc.cgroup)
            continue
        # placed at launch (agentctl run): no page of the plan to move, only the top-tier cap
        moves = plan_moves(NodePlan("local") if by_kernel else plan, vmas, inp.page_size, cls.top_tier_max,
                           local_nodes, far_nodes)
        if guard_blocks(cls, psi):
            moves = [m for m in moves if m.node not in far_nodes]
        # moved: look again soon (settle, then cpuset.mems); placed: every RECHECK_S
        placed[proc.key] = (sig, now, SETTLE_S if moves else RECHECK_S)
        if moves:
            unsettled.add(proc.cgroup)
            actions.append(MigrateProc(proc.pid, proc.start, cls.name, tuple(moves), cls.migrate.rate_mb_s,
                                       cls.migrate.interval_ms))
    for cgroup, (nodes, reason) in binds.items():
        if cgroup not in unsettled:
            k = (cgroup, "cpuset.mems", nodes)
            if k not in knobs:
                knobs.add(k)
                knob_actions.append(SetKnob(cgroup, "cpuset.mems", nodes, reason))
    placed = {k: v for k, v in placed.items() if k in live}
    return PlannerState(placed, frozenset(knobs), reclaim, frozenset(kernel_placed)), knob_actions + actions
