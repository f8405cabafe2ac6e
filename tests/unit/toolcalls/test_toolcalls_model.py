"""The tool-call engine's pure decisions (agentd.toolcalls.model): no kernel, no clock."""

from __future__ import annotations

import ast
from pathlib import Path

from agentd.cgroups.driver import CgroupStats
from agentd.policy.schema import ResourceLimits
from agentd.toolcalls import model
from agentd.toolcalls.escalation import LadderState
from agentd.toolcalls.model import Agent, ToolCall
from agentd.toolcalls.rules import Intent, Resolved

MIB = 1 << 20
PACKAGE = Path(__file__).resolve().parents[3] / "agentd" / "toolcalls"


def _tc(**kw) -> ToolCall:
    base = dict(id="a/0001-x", agent="a", seq=1, name="x", cgroup="agents/a/tools/0001-x", pid=10, argv=["x"], started=100.0,
                resolved=Resolved(ResourceLimits(memory_high=64 * MIB, memory_max=128 * MIB), "defaults", ()),
                intent=None, ladder=LadderState(started=100.0))
    return ToolCall(**{**base, **kw})


def test_driver_knobs_on_hybrid_start_the_hard_limit_at_memory_high_and_pause_there():
    lim = ResourceLimits(memory_high=64 * MIB, memory_max=128 * MIB, cpu_max=1.5, pids_max=50)
    v1 = model.tool_limits_for_driver(lim, "hybrid")
    assert (v1.memory_max, v1.memory_high, v1.oom_pause, v1.cpu_max_quota_us, v1.pids_max) == (64 * MIB, None, True, 150_000, 50)
    v2 = model.tool_limits_for_driver(lim, "v2")
    assert (v2.memory_high, v2.memory_max, v2.oom_pause) == (64 * MIB, 128 * MIB, False)
    agent = model.agent_limits_for_driver(ResourceLimits(memory_high=1 * MIB, memory_max=8 * MIB, pids_max=9), "hybrid")
    assert (agent.memory_max, agent.memory_high, agent.pids_max, agent.oom_pause) == (8 * MIB, None, 9, False)


def test_the_oldest_fresh_intent_applies_and_stale_ones_are_skipped():
    old, a, b = Intent(memory=1), Intent(memory=2), Intent(memory=3)
    pending = [(0.0, old), (100.0, a), (101.0, b)]
    intent, rest = model.take_pending_intent(pending, now=110.0)
    assert intent is a and rest == [(0.0, old), (101.0, b)]
    assert model.take_pending_intent([(0.0, old)], now=100.0) == (None, [(0.0, old)])
    kept = model.fresh_intents([(float(t), Intent(memory=t)) for t in range(40)], now=40.0)
    assert len(kept) == model.PENDING_INTENTS_KEPT - 1 and kept[-1][0] == 39.0


def test_exit_status_becomes_an_exit_code_or_minus_the_signal():
    assert model.exit_code_of(0) == 0
    assert model.exit_code_of(2 << 8) == 2
    assert model.exit_code_of(9) == -9


def test_lineage_finds_the_nearest_leader_or_runtime():
    agent = Agent("a", 1000, 5, 1, "default", "agents/a")
    tc = _tc(pid=7)
    agents = {"a": agent}
    assert model.find_lineage(9, [8, 7, 5], {7: tc}, {5: agent}, agents) == model.Lineage(agent, tc)
    assert model.find_lineage(6, [5, 1], {7: tc}, {5: agent}, agents) == model.Lineage(agent, None)
    assert model.find_lineage(3, [1], {7: tc}, {5: agent}, agents) == model.Lineage(None, None)


def test_reevaluation_keeps_the_meaning_of_a_grant_already_made():
    new = ResourceLimits(memory_high=32 * MIB, memory_max=256 * MIB)
    plain = model.reevaluated_knobs(new, LadderState(started=0), "v2")
    assert plain.memory_high == 32 * MIB
    granted = model.reevaluated_knobs(new, LadderState(started=0, granted=True), "v2")
    assert granted.memory_high == 32 * MIB + (256 - 32) * MIB * 7 // 8  # the v2 grant stays
    v1 = model.reevaluated_knobs(new, LadderState(started=0, granted=True), "hybrid")
    assert v1.memory_max == 256 * MIB  # already past memory_high: the grant's limit


def test_retry_hint_asks_for_more_time_or_memory_within_the_ceiling():
    assert model.retry_hint(_tc(outcome="ok"), ResourceLimits(), now=200.0) is None
    slow = _tc(outcome="killed", ladder=LadderState(started=100.0, limit="timeout_s"), ended=130.0)
    assert model.retry_hint(slow, ResourceLimits(), now=999.0)["intent"] == {"duration_s": 60.0, "tool": "x"}
    big = _tc(outcome="killed", peak_bytes=100 * MIB)
    assert model.retry_hint(big, ResourceLimits(memory_max=1024 * MIB), now=0)["intent"]["memory"] == 150 * MIB
    assert "intent" not in model.retry_hint(big, ResourceLimits(memory_max=120 * MIB), now=0)


def test_a_cgroup_sample_becomes_the_ladders_input():
    st = CgroupStats(memory_current=5, memory_peak=6, memory_limit=7, memory_high=4, populated=False,
                     memory_events={"high": 3, "oom_kill": 1, "under_oom": 1})
    s = model.sample_of(st, now=12.5, peak=9)
    assert (s.now, s.memory_current, s.memory_peak, s.high_events, s.oom_kill_events, s.under_oom, s.populated) == \
        (12.5, 5, 9, 3, 1, True, False)


def test_decision_code_takes_now_and_never_reads_the_clock():
    """No time.time()/monotonic() in the engine's pure modules; placement's latency marks
    (monotonic_ns) are measurement, and decisions there take the engine's injectable clock."""
    for name in ("model.py", "escalation.py", "rules.py", "policy.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                 and n.value.id == "time"]
        assert not calls, f"{name} reads the clock: {[ast.unparse(c) for c in calls]}"


def test_readopt_uses_only_the_engines_public_methods():
    tree = ast.parse((PACKAGE / "readopt.py").read_text())
    private = sorted({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                      and n.value.id == "engine" and n.attr.startswith("_")})
    assert private == []


def test_live_toolcalls_keep_their_leader_pid_index_through_every_change():
    from types import SimpleNamespace

    from agentd.toolcalls.model import LiveToolCalls

    live = LiveToolCalls()
    a, b = SimpleNamespace(pid=10), SimpleNamespace(pid=11)
    live["a"], live["b"] = a, b
    assert live.by_pid == {10: a, 11: b}
    a2 = SimpleNamespace(pid=12)
    live["a"] = a2  # re-adopted or replaced: the old leader's entry goes
    assert live.by_pid == {12: a2, 11: b}
    assert live.pop("b") is b and live.pop("gone", None) is None
    del live["a"]
    assert live == {} and live.by_pid == {}
