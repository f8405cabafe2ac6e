"""The SQLite store (records survive a reopen, rotation keeps it flat, a failed transaction
writes nothing) and the policy set (a bad file never replaces a good policy)."""

import pytest

from agentd.core import store as store_mod
from agentd.core.policies import PolicySet
from agentd.core.store import Store
from agentd.paths import DEFAULT_POLICY
from agentd.policy.loader import PolicyInvalid


def toolcall(i: int, state: str = "done") -> dict:
    return {"id": f"a/{i:04d}-x", "agent": "a", "seq": i, "name": "x", "cgroup": f"agents/a/tools/{i:04d}-x", "pid": 100 + i,
            "argv": ["x"], "started": float(i), "ended": float(i) + 1, "state": state, "outcome": "ok", "reason": "",
            "rule": "defaults", "limits": {"memory_max": 1}, "clips": [], "intent": None, "peak_bytes": 5, "cpu_s": 0.1,
            "exit_code": 0, "ladder": None}


def event(i: int) -> dict:
    return {"ts": float(i), "level": "info", "kind": "k", "agent": "a", "tool_call": None, "message": "m", "data": {"i": i}}


def test_records_survive_reopen(tmp_path):
    db = tmp_path / "s.db"
    s = Store(db)
    s.put_toolcall(toolcall(1, "running"))
    seq = s.append_event(event(1))
    del s  # no close: as after a SIGKILL
    again = Store(db)
    assert again.toolcall("a/0001-x")["state"] == "running"
    assert again.events()[-1]["seq"] == seq and again.events()[-1]["data"] == {"i": 1}
    assert again.max_seq("a") == 1


def test_failed_transaction_writes_nothing(tmp_path):
    s = Store(tmp_path / "s.db")
    with pytest.raises(RuntimeError):
        with s.transaction():
            s.put_toolcall(toolcall(7))
            s.append_event(event(7))
            raise RuntimeError("boom")
    assert s.toolcall("a/0007-x") is None and s.events() == []


def test_rotation_keeps_the_store_flat(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "MAX_EVENTS", 50)
    monkeypatch.setattr(store_mod, "MAX_DONE_TOOLCALLS", 20)
    s = Store(tmp_path / "s.db")
    for i in range(1, 101):
        s.put_toolcall(toolcall(i))
        s.append_event(event(i))
    s.put_toolcall(toolcall(500, "running"))
    s.rotate()
    ids = [t["id"] for t in s.toolcalls(limit=10_000)]
    assert len(ids) == 21 and "a/0500-x" in ids and "a/0100-x" in ids and "a/0001-x" not in ids
    assert len(s.events(limit=10_000)) == 50


def test_bad_policy_file_never_replaces_a_good_one(tmp_path):
    d = tmp_path / "policies.d"
    d.mkdir()
    (d / "team.yaml").write_text("version: 1\nname: team\ntoolcalls: {defaults: {pids_max: 10}}\n")
    ps = PolicySet(d, DEFAULT_POLICY, require_root_owned=False)
    assert ps.get("team").toolcalls.defaults.pids_max == 10
    (d / "team.yaml").write_text("version: 1\nname: team\ntoolcalls: {defaults: {pids_max: ten}}\n")
    with pytest.raises(PolicyInvalid) as exc:
        ps.reload()
    assert exc.value.problems[0].line == 3 and "pids_max" in exc.value.problems[0].key
    assert ps.get("team").toolcalls.defaults.pids_max == 10  # the old one stays in force
    with pytest.raises(PolicyInvalid):
        ps.apply("version: 1\nname: team\nbogus: 1\n", "new.yaml")
    assert ps.get("team").toolcalls.defaults.pids_max == 10
    assert ps.get("unknown").name == "default"


def test_apply_writes_atomically_and_diff_shows_the_change(tmp_path):
    ps = PolicySet(tmp_path / "p", DEFAULT_POLICY, require_root_owned=False)
    text = "version: 1\nname: web\ntoolcalls: {defaults: {pids_max: 5}}\n"
    ps.apply(text, "web.yaml")
    assert (tmp_path / "p" / "web.yaml").read_text() == text
    assert ps.get("web").toolcalls.defaults.pids_max == 5
    diff = ps.diff(text.replace("5", "6"), "web2.yaml")
    assert "-toolcalls: {defaults: {pids_max: 5}}" in diff and "+toolcalls: {defaults: {pids_max: 6}}" in diff
    assert not list((tmp_path / "p").glob(".*tmp"))
