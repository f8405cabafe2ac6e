"""The launch placement's pure parts: the plan document the daemon answers (and the
launcher uses), how it is applied or refused before exec, the policy string numa_maps
shows, and the planner leaving a process alone whose mappings carry its plan's policy."""
from __future__ import annotations

from pathlib import Path

import pytest

from agentd.api.contract import ApiError
from agentd.tiers import model, numa
from agentd.tiers.kind import _launch_request
from agentd.tiers.launch import plan_launch
from agentd.tiers.model import (ManagedProc, MigrateProc, NodePlan, PlannerInput, PlannerState, Vma, decide,
                                kernel_policy, placed_by_kernel)
from agentd.tiers.observe import parse_numa_maps
from agentd.tiers.policy import ClassMatch, Migrate, Placement, TierClass, TiersSection
from agentd.tiers.topology import discover

FIX = Path(__file__).resolve().parent / "fixtures"
P = 4096


def topo(name):
    return discover(str(FIX / name / "sys"), str(FIX / name / "proc"))


def cls(mode, weights, fallback="local", **kw):
    return TierClass("c", ClassMatch(comm="x"), placement=Placement(mode, tuple(weights), fallback),
                     where="p.yaml:4", **kw)


def test_kernel_policy_is_what_numa_maps_prints():
    assert kernel_policy(NodePlan("bind", {0: 1})) == "bind:0"
    assert kernel_policy(NodePlan("bind", {0: 1, 1: 1, 3: 1})) == "bind:0-1,3"
    assert kernel_policy(NodePlan("preferred", {2: 1})) == "prefer:2"
    assert kernel_policy(NodePlan("preferred_many", {2: 1, 3: 1})) == "prefer (many):2-3"
    assert kernel_policy(NodePlan("weighted_interleave", {0: 3, 2: 1})) == "weighted interleave:0,2"
    assert kernel_policy(NodePlan("local")) == "local"


def test_numa_maps_policies_are_parsed_including_two_word_modes():
    text = ("7f0000000000 weighted interleave:0,2 anon=3 dirty=3 N0=2 N2=1 kernelpagesize_kB=4\n"
            "7f0000100000 prefer (many):2-3 heap anon=1 dirty=1 N2=1 kernelpagesize_kB=4\n"
            "7f0000200000 bind=static:0 stack anon=2 dirty=2 N0=2 kernelpagesize_kB=4\n"
            "7f0000300000 default file=/usr/bin/x mapped=2 N0=2 kernelpagesize_kB=4\n")
    vmas = parse_numa_maps(text, page=P)
    assert [v.policy for v in vmas] == ["weighted interleave:0,2", "prefer (many):2-3", "bind=static:0", "default"]
    assert vmas[0].pages == {0: 2, 2: 1}


def test_plan_launch_falls_back_to_plain_interleave_when_the_hosts_weights_differ(tmp_path):
    t = topo("two_cxl")  # weighted interleave, the host's weights all 1
    doc = plan_launch(cls("interleave", (("local", 3), ("far", 1))), t, "pol", str(FIX / "two_cxl" / "sys"))
    assert doc["mode"] == "interleave" and doc["nodes"] == [0, 1, 2, 3] and doc["weights"] == {"0": 3, "1": 3,
                                                                                                "2": 1, "3": 1}
    assert any("interleaving 1:1" in n for n in doc["notes"]) and doc["mandatory"] is False
    base = tmp_path / "kernel" / "mm" / "mempolicy" / "weighted_interleave"
    base.mkdir(parents=True)
    for n, w in ((0, 3), (1, 3), (2, 1), (3, 1)):
        (base / f"node{n}").write_text(f"{w}\n")
    doc = plan_launch(cls("interleave", (("local", 3), ("far", 1))), t, "pol", str(tmp_path))
    assert doc["mode"] == "weighted_interleave" and not doc["notes"]
    refused = plan_launch(cls("bind", (("node9", 1),), fallback="refuse"), t)
    assert refused["error"] and refused["mandatory"] is True and refused["where"] == "p.yaml:4"


def test_place_for_exec_runs_unplaced_or_refuses_as_the_class_says():
    lines: list[str] = []
    plan = {"class": "far", "policy": "p", "where": "p.yaml:4", "mode": "bind", "nodes": [9], "weights": {},
            "notes": [], "error": "node 9 does not exist on this host (nodes 0); nothing applied", "mandatory": False}
    assert numa.place_for_exec(plan, lines.append) is None
    assert lines == ["p.yaml:4: class far (policy p): node 9 does not exist on this host (nodes 0); nothing applied; "
                     "running it unplaced"]
    lines.clear()
    assert numa.place_for_exec({**plan, "mandatory": True}, lines.append) == 2
    assert lines[0].endswith("nothing run (the class says fallback: refuse)")
    lines.clear()
    # an unknown mode is refused by the wrapper before any syscall, like the kernel's EINVAL
    assert numa.place_for_exec({**plan, "error": "", "mode": "sideways", "mandatory": True}, lines.append) == 2
    assert "unknown mode" in lines[0]


def test_launch_request_is_bounded():
    ok = {"argv": ["python", "x.py"], "scope": "agents"}
    assert _launch_request(ok) == (["python", "x.py"], "agents", None, "python")
    for bad, field in (({"argv": []}, "argv"), ({"argv": [1]}, "argv"), ({"argv": ["a\0b"]}, "argv"),
                       ({"argv": ["x"] * 5000}, "argv"), ({"scope": "toolcalls"}, "scope"),
                       ({"class": "x" * 65}, "class"), ({"exe": "/" * 5000}, "exe")):
        with pytest.raises(ApiError) as e:
            _launch_request({**ok, **bad})
        assert (e.value.status, e.value.field) == (400, field)


def _inp(t, vmas):
    proc = ManagedProc(10, 111, "runtimes", "agents/a/runtime", name="a", comm="x")
    return PlannerInput(t, (proc,), {"10:111": vmas}, {proc.cgroup: 0.0}, {})


def test_the_planner_moves_nothing_of_a_process_whose_mappings_carry_its_plan():
    t = topo("two_cxl")
    sec = {"p": TiersSection((cls("interleave", (("node0", 1), ("node2", 1)), migrate=Migrate(rate_mb_s=10)),))}
    # small mappings the kernel interleaved by page offset: off the 1:1 ratio each, by a page
    skewed = [Vma(i * 3 * P, (i + 1) * 3 * P, {0: 2, 2: 1}, True, "interleave:0,2") for i in range(4)]
    st, acts = decide(PlannerState(), _inp(t, skewed), sec, now=0)
    assert not [a for a in acts if isinstance(a, MigrateProc)] and st.kernel_placed == frozenset({"10:111"})
    # the same pages under the default policy (not placed at launch): moved to the ratio
    default = [v._replace(policy="default") for v in skewed]
    st, acts = decide(PlannerState(), _inp(t, default), sec, now=0)
    assert [a for a in acts if isinstance(a, MigrateProc)] and st.kernel_placed == frozenset()
    # a launch that fell back to 1:1 while the class wants 3:1 weighted: the kind rebalances
    sec3 = {"p": TiersSection((cls("interleave", (("node0", 3), ("node2", 1)), migrate=Migrate(rate_mb_s=10)),))}
    assert model.plan_class(sec3["p"].classes[0], t).mode == "weighted_interleave"
    even = [Vma(0, 400 * P, {0: 200, 2: 200}, True, "interleave:0,2")]
    st, acts = decide(PlannerState(), _inp(t, even), sec3, now=0)
    assert [a for a in acts if isinstance(a, MigrateProc)] and not st.kernel_placed
    # the top-tier cap still holds for a process placed at launch
    capped = {"p": TiersSection((cls("bind", (("node0", 1),), top_tier_max=100 * P),))}
    bound = [Vma(0, 400 * P, {0: 400}, True, "bind:0")]
    assert placed_by_kernel(model.plan_class(capped["p"].classes[0], t), bound)
    _, acts = decide(PlannerState(), _inp(t, bound), capped, now=0)
    [mig] = [a for a in acts if isinstance(a, MigrateProc)]
    assert {m.node for m in mig.moves} <= {2, 3}


def test_agentctl_run_itself_is_left_alone_until_it_execs_its_command(tmp_path):
    from agentd.kinds.context import SharedModel
    from agentd.kinds.host import KindHost
    from agentd.kinds.state import KindDatabase
    from agentd.tiers.kind import LAUNCH_GRACE_S, TiersKind

    launcher = ("/usr/bin/python3", "/venv/bin/agentctl", "--socket", "s", "run", "--", "python", "alloc.py")
    assert model.launching(ManagedProc(1, 1, "runtimes", "", argv=launcher))
    assert model.launching(ManagedProc(1, 1, "runtimes", "", argv=("python", "-m", "cli.agentctl", "run", "--",
                                                                    "python", "alloc.py")))
    assert not model.launching(ManagedProc(1, 1, "runtimes", "", argv=("python", "alloc.py", "run", "agentctl")))
    kind = TiersKind(sys_root=str(FIX / "two_cxl" / "sys"))
    KindHost([kind], driver=None, model=SharedModel(), db=KindDatabase(tmp_path / "k.db"),
             journal_emit=lambda *a, **k: None, clock=lambda: 1.0)
    kind.sections = {"p": TiersSection((TierClass("c", ClassMatch(argv="alloc.py"),
                                                  placement=Placement("bind", (("far", 1),))),))}
    procs = [ManagedProc(10, 111, "runtimes", "agents/a/runtime", name="a", argv=launcher),
             ManagedProc(11, 112, "runtimes", "agents/b/runtime", name="b", argv=("python", "alloc.py"))]
    kind.managed_procs = lambda: procs
    rounds = []
    kind.ctx.run_blocking = lambda fn, *args: rounds.append(args)
    for now in (100.0, 100.0 + LAUNCH_GRACE_S):
        kind._busy, kind._next_round = False, 0.0
        kind.on_tick(now)
    # the launcher's pages are neither read nor moved while it execs; a launcher that never
    # execs (or a process that only looks like one) is placed like any other after the grace
    assert rounds[0][2] == frozenset({"10:111"}) and rounds[1][2] == frozenset()
