"""The kv kind's wiring without the daemon: journal records in (toolcall.start / .end), pins,
prefetch notices, kill release, budget eviction across programs, persistence across a restart."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from agentd.api.auth import Caller
from agentd.api.contract import ApiError, Peer
from agentd.kinds.context import SharedModel
from agentd.kinds.host import KindHost
from agentd.kinds.state import KindDatabase
from agentd.kv.kind import KvKind
from agentd.kv.model import KvPolicy

ROOT = Caller(Peer(os.getpid(), 0, 0), admin=True, agent=None)
MB = 1 << 20


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Journal:
    def __init__(self):
        self.events = []
        self.listeners = []

    def emit(self, kind, message, **data):
        ev = {"kind": kind, "message": message, "ts": data.pop("ts", None), "agent": data.pop("agent", None),
              "tool_call": data.pop("tool_call", None), "data": data}
        self.events.append(ev)
        for listener in self.listeners:
            listener(ev)
        return ev


def setup(tmp_path, policy=None):
    clock, journal = Clock(), Journal()
    agents = {"a1": SimpleNamespace(name="a1", uid=0), "a2": SimpleNamespace(name="a2", uid=1000)}
    toolcalls = {}
    model = SharedModel(agents=lambda: agents, toolcalls=lambda: toolcalls)
    kind = KvKind()
    host = KindHost([kind], driver=None, model=model, db=KindDatabase(tmp_path / "kinds.db"), journal_emit=journal.emit,
                    clock=clock)
    journal.listeners.append(host.on_event)
    host.on_policy([SimpleNamespace(name="default", sections={"kv": policy or KvPolicy()})])
    host.readopt()
    return SimpleNamespace(kind=kind, host=host, clock=clock, journal=journal, toolcalls=toolcalls, tmp=tmp_path)


def start(s, tc, agent, argv):
    s.toolcalls[tc] = SimpleNamespace(id=tc, agent=agent, pid=4000, intent=None)
    s.journal.emit("toolcall.start", "started", ts=s.clock.now, agent=agent, tool_call=tc, argv=argv, pid=4000)


def end(s, tc, agent, wall, outcome="exited"):
    s.toolcalls.pop(tc, None)
    s.journal.emit("toolcall.end", "ended", agent=agent, tool_call=tc, wall_s=wall, outcome=outcome)


def register(s, **kw):
    body = dict(engine="e", bytes_per_token=MB, prefill_tps=1000.0, capacity_bytes=100_000 * MB, host_bytes=0)
    body.update(kw)
    return s.kind.api_register(ROOT, body)


def test_learns_from_tool_calls_and_prefetches_a_demoted_cache_before_the_tool_ends(tmp_path):
    s = setup(tmp_path, KvPolicy(host_gbps=1.0))  # a slow host link: 5000 MiB take 5.2 s to copy back
    for i in range(20):
        start(s, f"a1/{i}-pytest", "a1", ["python", "-m", "pytest", "-x", "tests/unit/t.py"])
        s.clock.now += 30
        end(s, f"a1/{i}-pytest", "a1", 30.0)
    assert s.kind.learned == 20 and s.kind.durations.known("a1|exec|pytest -x tests/…") == 20
    register(s, host_bytes=100_000 * MB, pressure=1.0, prefill_tps=100.0)
    start(s, "a1/99-pytest", "a1", ["pytest", "-x", "tests/"])
    d = s.kind.api_turn_ended(ROOT, {"engine": "e", "program": "p", "tokens": 5000, "tool_call": "a1/99-pytest"})
    assert d["action"] == "demote" and 20 < d["expected_resume_s"] < 45
    s.clock.now += 5
    s.host.on_tick(s.clock.now)
    assert not s.kind.notices.get("e")  # 25 s to go: not yet
    s.clock.now += 22
    s.host.on_tick(s.clock.now)
    assert [(n["event"], n.get("early")) for n in s.kind.notices["e"]] == [("prefetch", True)]
    s.clock.now += 4
    end(s, "a1/99-pytest", "a1", 31.0)
    assert [n["event"] for n in s.kind.notices["e"]] == ["prefetch", "tool_ended"]  # not a second prefetch
    assert [e["data"].get("early") for e in s.journal.events if e["kind"] == "kv.prefetch"] == [True]
    assert s.kind.api_next_turn(ROOT, {"engine": "e", "program": "p"})["outcome"] == "host_hit"


def test_the_tools_end_prefetches_a_demoted_cache_when_no_early_prefetch_was_due(tmp_path):
    s = setup(tmp_path)
    for i in range(20):
        start(s, f"a1/{i}-pytest", "a1", ["pytest", "-x", "tests/"])
        s.clock.now += 30
        end(s, f"a1/{i}-pytest", "a1", 30.0)
    register(s, host_bytes=100_000 * MB, pressure=1.0)
    start(s, "a1/99-pytest", "a1", ["pytest", "-x", "tests/"])
    assert s.kind.api_turn_ended(ROOT, {"engine": "e", "program": "p", "tokens": 5000,
                                        "tool_call": "a1/99-pytest"})["action"] == "demote"
    s.clock.now += 3  # it ends early, well before any prefetch was due
    end(s, "a1/99-pytest", "a1", 3.0)
    assert [(n["event"], n.get("early")) for n in s.kind.notices["e"]] == [("prefetch", None)]


def test_a_killed_tool_call_releases_its_pin_and_the_agent_binding_waits_for_the_next_call(tmp_path):
    s = setup(tmp_path)
    register(s, pressure=0.0)
    d = s.kind.api_turn_ended(ROOT, {"engine": "e", "program": "p", "tokens": 100, "agent": "a1"})
    assert d["tool_call"] is None and s.kind.programs[("e", "p")].waiting_for_tool
    start(s, "a1/1-make", "a1", ["make", "test"])
    assert s.kind.programs[("e", "p")].tool_call == "a1/1-make" and s.kind.ledger.get("e", "p") is not None
    end(s, "a1/1-make", "a1", 3.0, outcome="killed")
    assert s.kind.ledger.get("e", "p") is None
    assert any(e["kind"] == "kv.release" and "killed" in e["message"] for e in s.journal.events)
    assert s.kind.learned == 0  # a killed call's duration is censored, not learned
    with pytest.raises(ApiError) as e:  # uid 0 may name a1; a1's program may not take a2's call
        s.toolcalls["a2/1-git"] = SimpleNamespace(id="a2/1-git", agent="a2", pid=5000, intent=None)
        s.kind.api_turn_ended(ROOT, {"engine": "e", "program": "p", "tokens": 100, "tool_call": "a2/1-git"})
    assert (e.value.status, e.value.code) == (403, "wrong_agent")
    assert s.kind.programs[("e", "p")].tool_call == "a1/1-make"  # nothing changed


def test_budget_evicts_the_pin_worth_least_per_byte(tmp_path):
    s = setup(tmp_path, KvPolicy(budget_fraction=0.5))
    register(s, capacity_bytes=1000 * MB, pressure=0.0)
    small = s.kind.api_turn_ended(ROOT, {"engine": "e", "program": "small", "tokens": 300})
    assert small["action"] == "keep"
    # A program unlikely to return is worth less per byte than what is held: it does not fit.
    big = s.kind.api_turn_ended(ROOT, {"engine": "e", "program": "big", "tokens": 400, "remaining_turns": 0.3})
    assert big["action"] == "free" and "budget" in big["reason"] and s.kind.ledger.get("e", "small") is not None
    # A program whose re-admission queues 60 s is worth more per byte: it evicts the small one.
    urgent = s.kind.api_turn_ended(ROOT, {"engine": "e", "program": "urgent", "tokens": 400, "queue_s": 60.0})
    assert urgent["action"] == "keep" and urgent["evicted"] == ["small"]
    assert [n["event"] for n in s.kind.notices["e"]] == ["evict"]


def test_durations_survive_a_restart(tmp_path):
    s = setup(tmp_path)
    start(s, "a1/1-git", "a1", ["git", "diff"])
    end(s, "a1/1-git", "a1", 0.02)
    s.host.stop()
    s2 = setup(tmp_path)
    assert s2.kind.durations.known("exec|git diff") == 1


def test_schedule_hint_is_program_level_fcfs(tmp_path):
    s = setup(tmp_path)
    register(s, pressure=0.0)
    for name in ("old", "mid"):
        s.kind.api_turn_ended(ROOT, {"engine": "e", "program": name, "tokens": 100})
        s.clock.now += 10
    s.kind.api_next_turn(ROOT, {"engine": "e", "program": "mid"})
    out = s.kind.api_schedule(ROOT, {"engine": "e", "waiting": ["new", "mid", "old"]})
    assert out["order"] == ["old", "mid", "new"] and out["pinned"] == ["old"]
    for bad_list, code in ((["ok", 3], "invalid_type"), (["../x"], "invalid_name")):
        with pytest.raises(ApiError) as e:
            s.kind.api_schedule(ROOT, {"engine": "e", "waiting": bad_list})
        assert (e.value.status, e.value.code) == (400, code)


def test_every_decision_parameter_is_a_policy_key():
    import dataclasses

    from agentd.kv.policy import SPEC

    assert {f.name for f in dataclasses.fields(KvPolicy)} == set(SPEC.fields)


def test_an_intents_declared_duration_is_a_light_observation(tmp_path):
    s = setup(tmp_path)
    s.toolcalls["a1/1-build"] = SimpleNamespace(id="a1/1-build", agent="a1", pid=1, intent=SimpleNamespace(duration_s=120))
    s.journal.emit("toolcall.start", "started", ts=s.clock.now, agent="a1", tool_call="a1/1-build", argv=["make", "all"])
    assert s.kind.durations.known("a1|exec|make all") == 0.25 and s.kind.durations.known("exec|make all") == 0


def test_a_pin_freed_on_agentds_own_clock_is_told_to_the_engine(tmp_path):
    """A re-decision while the tool runs answers nobody: the engine learns of the release
    from a notice (it would otherwise hold the blocks until its own TTL ran out)."""
    s = setup(tmp_path)
    for i in range(20):
        start(s, f"a1/{i}-git", "a1", ["git", "status"])
        s.clock.now += 2
        end(s, f"a1/{i}-git", "a1", 2.0)
    register(s, pressure=1.0)
    start(s, "a1/99-git", "a1", ["git", "status"])
    d = s.kind.api_turn_ended(ROOT, {"engine": "e", "program": "p", "tokens": 5000, "tool_call": "a1/99-git"})
    assert d["action"] == "keep", d
    assert not s.kind.notices.get("e")  # the answer carried the action: no notice for it
    for _ in range(60):  # the tool runs far past every git status seen: keeping stops paying
        s.clock.now += 10
        s.host.on_tick(s.clock.now)
        if s.kind.ledger.get("e", "p") is None:
            break
    assert s.kind.ledger.get("e", "p") is None
    assert [n["event"] for n in s.kind.notices["e"]] == ["release"]
    assert any(e["kind"] == "kv.release" for e in s.journal.events)
