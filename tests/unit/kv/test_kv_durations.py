"""The duration model: command shapes, back-off, conditional remaining time, bounded memory,
persistence, and a held-out check on the real traces (fit on some runs, score the others)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from agentd.kv.durations import (NBINS, DurationModel, bin_of, keys_for, main_argv, shape_of, trace_keys)

TRACES = Path(__file__).resolve().parents[3] / "data" / "agent-traces" / "swe-agent-traces.json"


@pytest.mark.parametrize("command, shape", [
    ("pytest -x tests/unit/test_a.py::t", "pytest -x tests/…"),
    ("python3 -m pytest -x tests/unit/test_b.py", "pytest -x tests/…"),
    ("cd /repo && source venv/bin/activate && timeout 60 python -m pytest -x tests/", "pytest -x tests/…"),
    ("git diff HEAD~1", "git diff"),
    ("git status", "git status"),
    ("grep -r foo src", "grep -r"),
    ("FOO=1 make test", "make test"),
    ("python3 << 'EOF'\nimport x\nEOF", "python <<"),
    ("find . -name '*.py' | head -20", "find -name"),
])
def test_command_shapes_normalise_arguments_away(command, shape):
    assert shape_of(main_argv(command))[1] == shape


def test_keys_back_off_from_agent_shape_to_everything():
    assert keys_for("a1", "exec", ["git", "diff", "HEAD"]) == ["a1|exec|git diff", "exec|git diff", "exec:git", "exec", "*"]
    assert trace_keys(None, "Read", None) == ["Read", "*"]


def test_unseen_tool_gets_the_prior_and_a_seen_shape_speaks_for_itself():
    m = DurationModel(prior_median_s=2.0)
    assert m.dist(["nothing", "*"]).quantile(0.5) == pytest.approx(2.0, rel=0.1)
    for _ in range(60):
        m.observe(["exec|pytest -x tests/…", "exec:pytest", "exec", "*"], 30.0)
        m.observe(["exec|git diff", "exec:git", "exec", "*"], 0.02)
    assert m.dist(["exec|pytest -x tests/…", "exec:pytest", "exec", "*"]).quantile(0.5) == pytest.approx(30, rel=0.2)
    assert m.dist(["exec|git diff", "exec:git", "exec", "*"]).quantile(0.5) == pytest.approx(0.02, rel=0.2)
    # A new git shape backs off to git's distribution, not to the global mix.
    assert m.dist(["exec|git log", "exec:git", "exec", "*"]).quantile(0.5) < 0.1


def test_conditional_remaining_time_given_elapsed():
    m = DurationModel()
    keys = ["k", "*"]
    for _ in range(100):
        m.observe(keys, 1.0)  # half the calls take a second
        m.observe(keys, 100.0)  # half take 100 s
    d = m.dist(["k"])
    assert d.p_end_within(0.0, 2.0) == pytest.approx(0.5, abs=0.08)
    # Once it has run 5 s it is one of the long ones: ending in the next 2 s is unlikely.
    assert d.p_end_within(5.0, 2.0) < 0.05
    assert d.remaining_quantile(5.0, 0.5) == pytest.approx(95, rel=0.2)
    assert d.expected_remaining_capped(5.0, 10.0) == pytest.approx(10.0, rel=0.05)
    # Beyond everything seen: the Lindy tail, not zero or a crash.
    assert 0 < d.p_end_within(50_000, 10) < 0.01
    assert d.remaining_quantile(50_000, 0.5) == pytest.approx(50_000, rel=0.01)


def test_memory_is_bounded_and_recent_observations_weigh_more():
    m = DurationModel(max_keys=50, max_weight=20)
    for i in range(500):
        m.observe([f"a{i}|exec|tool{i}", "exec", "*"], 1.0)
    assert len(m.hists) <= 50 and "*" in m.hists and "exec" in m.hists
    for _ in range(20):
        m.observe(["x"], 10.0)
    for _ in range(20):
        m.observe(["x"], 0.1)
    assert m.dist(["x"]).quantile(0.5) < 1.0  # the last 20 outweigh the first 20
    assert m.hists["x"].total <= 20 + 1e-9


def test_round_trips_through_json_and_refuses_garbage():
    m = DurationModel()
    m.observe(["a", "*"], 3.0)
    doc = json.loads(json.dumps(m.to_json()))
    m2 = DurationModel()
    assert m2.load_json(doc) == 2
    assert m2.dist(["a", "*"]).pmf == m.dist(["a", "*"]).pmf
    assert DurationModel().load_json({"version": 1, "nbins": NBINS + 1}) == 0
    assert DurationModel().load_json({"version": 1, "nbins": NBINS, "bins_per_decade": 8,
                                      "keys": {"a": {"9999": 1}}}) == 0
    m.observe(["a"], float("nan"))
    m.observe(["a"], -1)
    assert m.hists["a"].total == 1


def test_bins_cover_milliseconds_to_hours():
    assert bin_of(0) == 0 and bin_of(1e9) == NBINS - 1 and bin_of(1.0) < bin_of(10.0)


def test_held_out_real_traces_shapes_predict_better_than_tool_names():
    """Fit on 80 of the 118 real runs, score the other 38: the shape model's log-loss beats
    the per-tool and global models, and its p90 covers about 90 % of held-out calls."""
    runs = json.loads(TRACES.read_text())
    idx = list(range(len(runs)))
    random.Random(1).shuffle(idx)
    train, test = [runs[i] for i in idx[:80]], [runs[i] for i in idx[80:]]
    m = DurationModel()
    for r in train:
        for t in r["tool_calls"]:
            m.observe(trace_keys(None, t["tool"], t.get("command")), t["duration"])

    def score(keys_of):
        loss, cover, n = 0.0, 0, 0
        for r in test:
            for t in r["tool_calls"]:
                d = m.dist(keys_of(t))
                loss -= math.log(max(d.pmf[bin_of(t["duration"])], 1e-12))
                cover += t["duration"] <= d.quantile(0.9)
                n += 1
        return loss / n, cover / n

    shape_loss, shape_cover = score(lambda t: trace_keys(None, t["tool"], t.get("command")))
    tool_loss, _ = score(lambda t: [t["tool"], "*"])
    global_loss, _ = score(lambda t: ["*"])
    assert shape_loss < tool_loss - 0.1 < global_loss - 0.2
    assert 0.85 <= shape_cover <= 0.97
