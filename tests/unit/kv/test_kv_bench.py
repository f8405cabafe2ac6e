"""The kvttl simulator on a few real runs: every policy finishes every program, the metric
names the issue fixes are produced, and pinning shows up where it should (GB·s, hits)."""

from __future__ import annotations

from benchmarks import kvttl


def test_small_simulation_runs_every_policy_on_real_runs():
    runs = kvttl.load_runs(kvttl.TRACES)
    train = [r for i, r in enumerate(runs) if i % 2 == 0]
    specs = [kvttl.program_of(r, i) for i, r in enumerate(runs) if i % 2 == 1][:6]
    assert all(len(p.turns) >= 2 for p in specs)
    res = kvttl.run_load(specs, train, 2.0, False, kvttl.POLICIES + ("nopin_offload",), 3, 20000)
    assert set(res) == set(kvttl.POLICIES) | {"nopin_offload"}
    for name, r in res.items():
        assert r["unfinished"] == 0 and r["avg_jct_s"] > 0 and r["p95_jct_s"] >= r["avg_jct_s"] * 0.5, name
        assert 0 <= r["hit_rate"] <= 1 and r["reprefill_tokens"] >= 0
    assert res["nopin"]["pinned_gb_s"] == 0 and res["pin_budget"]["pinned_gb_s"] > 0
    assert res["agentd"]["pinned_gb_s"] >= 0


def test_phases_group_parallel_tool_calls():
    run = {"tool_calls": [{"tool": "Read", "start": 0.0, "duration": 0.1},
                          {"tool": "Grep", "start": 0.05, "duration": 0.1},
                          {"tool": "Bash", "start": 5.0, "duration": 2.0, "command": "pytest -x tests/"}]}
    phases = kvttl.phases_of(run)
    assert [[t["tool"] for t in ph] for ph in phases] == [["Read", "Grep"], ["Bash"]]
    spec = kvttl.program_of(run, 0)
    assert len(spec.turns) == 3 and spec.turns[1].tool_s == 2.0 and spec.turns[-1].tools == []
