"""The pure planner on the fixture topologies: placements, fallbacks, migrations, reclaim."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agentd.tiers import model
from agentd.tiers.model import (ManagedProc, MigrateProc, PlannerInput, PlannerState, ReclaimCgroup, ReclaimState,
                                SetKnob, Vma, decide, node_weights, on_target_pct, plan_class, plan_moves,
                                reclaim_decide)
from agentd.tiers.policy import ClassMatch, Guard, Migrate, Placement, Reclaim, TierClass, TiersSection
from agentd.tiers.topology import discover

FIX = Path(__file__).resolve().parent / "fixtures"
P = 4096


def topo(name):
    return discover(str(FIX / name / "sys"), str(FIX / name / "proc"))


def cls(mode="interleave", weights=(("local", 3), ("far", 1)), fallback="local", **kw):
    return TierClass("c", ClassMatch(comm="x"), placement=Placement(mode, tuple(weights), fallback), **kw)


def test_node_weights_keep_the_tier_ratio_spread_over_each_tiers_nodes():
    assert node_weights([([0, 1], 3), ([2, 3], 1)]) == {0: 3, 1: 3, 2: 1, 3: 1}
    assert node_weights([([0], 1), ([2, 3], 1)]) == {0: 2, 2: 1, 3: 1}
    assert node_weights([([0, 1], 2), ([2], 2)]) == {0: 1, 1: 1, 2: 2}
    w = node_weights([([0], 100), ([1, 2, 3], 99)])
    assert max(w.values()) <= 255 and min(w.values()) >= 1


def test_interleave_local_cxl_on_each_fixture():
    assert plan_class(cls(), topo("one_cxl")).weights == {0: 3, 1: 3, 2: 2}
    two = plan_class(cls(), topo("two_cxl"))
    assert two.mode == "weighted_interleave" and two.weights == {0: 3, 1: 3, 2: 1, 3: 1} and not two.notes
    dram = plan_class(cls(), topo("two_socket_dram"))
    assert dram.mode == "interleave" and dram.nodes == (0, 1) and "no far tier" in dram.notes[0]
    assert plan_class(cls(fallback="refuse"), topo("two_socket_dram")).error
    nvme = plan_class(cls(), topo("nvme_swap"))  # one node, no tiers: a bind to node 0, stated
    assert nvme.mode == "bind" and nvme.nodes == (0,) and nvme.notes


def test_never_bind_to_an_empty_cxl_node():
    t = topo("cxl_not_onlined")
    plan = plan_class(cls("bind", (("node2", 1),)), t)
    assert plan.mode == "local" and plan.nodes == () and any("node 2 is empty" in n for n in plan.notes)
    assert "empty" in plan_class(cls("bind", (("node2", 1),), fallback="refuse"), t).error
    full = topo("two_cxl")
    nodes = dict(full.nodes)
    nodes[3] = replace(nodes[3], free_bytes=1 << 20)  # a full CXL node is empty for placement
    plan = plan_class(cls(), replace(full, nodes=nodes))
    assert plan.weights == {0: 3, 1: 3, 2: 2}  # the far share goes to node 2 alone
    assert 3 not in plan.weights and any("node 3 is empty" in n for n in plan.notes)


def test_a_kernel_without_weighted_interleave_gets_plain_interleave_and_says_so():
    t = replace(topo("two_cxl"), weighted_interleave=False)
    plan = plan_class(cls(), t)
    assert plan.mode == "interleave" and plan.weights == {0: 3, 1: 3, 2: 1, 3: 1}
    assert "no weighted interleave" in plan.notes[0]


def test_nonexistent_node_is_an_error_nothing_planned():
    plan = plan_class(cls("bind", (("node9", 1),)), topo("one_cxl"))
    assert plan.error.startswith("node 9 does not exist") and plan.weights == {}


def test_preferred_and_local_modes():
    assert plan_class(cls("preferred", (("far", 1),)), topo("two_cxl")).mode == "preferred_many"
    assert plan_class(cls("preferred", (("far", 1),)), topo("one_cxl")).mode == "preferred"
    assert plan_class(cls("local", ()), topo("one_cxl")).mode == "local"


def test_plan_moves_splits_each_vma_at_the_ratio_and_skips_those_already_there():
    plan = plan_class(cls(weights=(("local", 1), ("far", 1))), replace(topo("one_cxl"), nodes={
        k: v for k, v in topo("one_cxl").nodes.items()}))
    # local = nodes 0,1 (weight 1 each), far = node 2 (weight 2)
    vma = Vma(0x10000, 0x10000 + 400 * P, {0: 400})
    moves = plan_moves(plan, [vma, Vma(0x900000, 0x900000 + 4 * P, {0: 1, 1: 1, 2: 2})], P)
    assert [(m.start, m.end, m.node) for m in moves] == [
        (0x10000, 0x10000 + 100 * P, 0), (0x10000 + 100 * P, 0x10000 + 200 * P, 1), (0x10000 + 200 * P, 0x10000 + 400 * P, 2)]
    bind = model.NodePlan("bind", {2: 1})
    assert [m.node for m in plan_moves(bind, [vma], P)] == [2]
    assert plan_moves(bind, [Vma(0, 4 * P, {2: 4})], P) == []


def test_top_tier_cap_moves_the_excess_far():
    vmas = [Vma(0, 1000 * P, {0: 1000}), Vma(1 << 30, (1 << 30) + 100 * P, {0: 100})]
    moves = plan_moves(model.NodePlan("local"), vmas, P, top_tier_max=600 * P, local_nodes=[0, 1], far_nodes=[2, 3])
    assert [(m.start, m.node) for m in moves] == [(0, 2)] and moves[0].end == 500 * P
    assert plan_moves(model.NodePlan("local"), vmas, P, top_tier_max=600 * P, local_nodes=[0], far_nodes=[]) == []


def test_on_target_pct():
    plan = model.NodePlan("weighted_interleave", {0: 3, 2: 1})
    assert on_target_pct(plan, {0: 75, 2: 25}) == pytest.approx(100)
    assert on_target_pct(plan, {0: 100}) == pytest.approx(75)
    assert on_target_pct(model.NodePlan("bind", {2: 1}), {0: 10, 2: 30}) == pytest.approx(75)


def test_reclaim_reclaims_under_target_backs_off_above_and_stops_at_budget():
    cfg = Reclaim(to="swap", budget=100 << 20, psi_target_pct=1.0, step=32 << 20, interval_s=5)
    s, step = reclaim_decide(ReclaimState(), cfg, 0.0, 0, now=0)
    assert step.bytes == 32 << 20
    s2, none = reclaim_decide(s, cfg, 0.0, 0, now=1)  # within the interval: nothing
    assert none is None and s2 == s
    s3, step = reclaim_decide(s, cfg, 0.5, 0, now=5)  # half the target: half the step
    assert step.bytes == 16 << 20
    s4, none = reclaim_decide(s3, cfg, 2.0, 0, now=10)  # over target: back off, halve
    assert none is None and s4.step == s3.step // 2 and s4.backoffs == 1 and "backing off" in s4.last_reason
    s5, step = reclaim_decide(s4, cfg, 0.0, 90 << 20, now=15)  # only what the budget leaves
    assert step.bytes == 10 << 20
    s6, none = reclaim_decide(s5, cfg, 0.0, 100 << 20, now=20)
    assert none is None and "budget reached" in s6.last_reason
    _, none = reclaim_decide(ReclaimState(), cfg, None, 0, now=0)
    assert none is None
    s7, none = reclaim_decide(ReclaimState(), cfg, 0.5, 0, now=0, guard_pct=0.4)
    assert none is None and "guard" in s7.last_reason


def _input(t, vmas=None, psi=0.0, procs=None):
    procs = procs or (ManagedProc(10, 111, "toolcalls", "agents/a/tools/1-x", name="x", comm="x"),)
    return PlannerInput(t, tuple(procs), vmas if vmas is not None else {"10:111": [Vma(0, 400 * P, {0: 400})]},
                        {p.cgroup: psi for p in procs}, {})


def test_decide_migrates_sets_knobs_once_and_binds_the_cpuset_only_once_settled():
    sec = {"p": TiersSection((cls("bind", (("far", 1),), memory_high=1 << 30,
                                  reclaim=Reclaim(budget=1 << 30), migrate=Migrate(rate_mb_s=10)),))}
    t = topo("two_cxl")
    st, acts = decide(PlannerState(), _input(t), sec, now=0)
    kinds = [type(a) for a in acts]
    assert SetKnob in kinds and MigrateProc in kinds and ReclaimCgroup in kinds
    # no cpuset.mems yet: on v2 it would migrate every page at once, past the rate limit
    assert {(a.file, a.value) for a in acts if isinstance(a, SetKnob)} == {
        ("memory.high", str(1 << 30)), ("memory.swap.max", str(1 << 30))}
    mig = next(a for a in acts if isinstance(a, MigrateProc))
    assert mig.rate_mb_s == 10 and {m.node for m in mig.moves} == {2, 3}
    st2, acts2 = decide(st, _input(t), sec, now=1)
    assert acts2 == []  # within the settle time, knobs written, reclaim within its interval
    moved = {"10:111": [Vma(0, 200 * P, {2: 200}), Vma(200 * P, 400 * P, {3: 200})]}
    st3, acts3 = decide(st2, _input(t, vmas=moved), sec, now=model.SETTLE_S)
    assert [(a.file, a.value) for a in acts3 if isinstance(a, SetKnob)] == [("cpuset.mems", "2,3")]
    assert not any(isinstance(a, MigrateProc) for a in acts3)
    _, acts4 = decide(st3, _input(t), sec, now=model.SETTLE_S + model.RECHECK_S)
    assert any(isinstance(a, MigrateProc) for a in acts4)  # new pages on node 0 are looked at again
    st5, _ = decide(st3, _input(t, procs=(ManagedProc(11, 1, "jobs", "jobs/j", comm="other"),)), sec, now=3)
    assert st5.placed == {}  # the exited/unmatched process is forgotten


def test_decide_guard_holds_demotion_and_scope_limits_matching():
    sec = {"p": TiersSection((cls("bind", (("far", 1),), guard=Guard(psi_some_pct=5)),))}
    _, acts = decide(PlannerState(), _input(topo("two_cxl"), psi=20.0), sec, now=0)
    assert not any(isinstance(a, MigrateProc) for a in acts)
    sec = {"p": TiersSection((replace(cls("bind", (("far", 1),)), scope=("jobs",)),))}
    assert decide(PlannerState(), _input(topo("two_cxl")), sec, now=0)[1] == []


def test_decide_skips_a_class_that_cannot_be_placed():
    sec = {"p": TiersSection((cls("bind", (("node9", 1),)),))}
    assert decide(PlannerState(), _input(topo("two_cxl")), sec, now=0)[1] == []
