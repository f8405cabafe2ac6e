"""The policy-kind contract: load-time checks, one dispatch for every kind, failure
isolation, re-entrant journal events, policy sections, saved values and their revert
across a restart, and who may call a kind's commands."""

from __future__ import annotations

import pytest

from agentd.api.auth import Caller
from agentd.api.contract import Peer
from agentd.kinds.access import decide_access
from agentd.kinds.context import SharedModel
from agentd.kinds.contract import Access, Command, Kind, KindInvalid, check_commands, check_kind
from agentd.kinds.host import KindHost
from agentd.kinds.registry import KindEntry, load_kinds, policy_sections
from agentd.kinds.state import KindDatabase
from tests.probe_kind.kind import ProbeKind

PROBE = KindEntry("probe", "tests.probe_kind")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Journal:
    def __init__(self):
        self.events: list[dict] = []
        self.listeners = []

    def emit(self, kind, message, **data):
        ev = {"kind": kind, "message": message, **data}
        self.events.append(ev)
        for listener in self.listeners:
            listener(ev)
        return ev


def make_host(tmp_path, *kinds, clock=None, journal=None):
    journal = journal or Journal()
    db = KindDatabase(tmp_path / "kinds.db")
    host = KindHost(list(kinds), driver=None, model=SharedModel(), db=db, journal_emit=journal.emit,
                    clock=clock or Clock())
    journal.listeners.append(host.on_event)
    return host, journal, db


def test_registry_loads_and_checks_a_kind():
    [kind] = load_kinds((PROBE,))
    assert isinstance(kind, ProbeKind)
    assert "level" in policy_sections((PROBE,))["probe"].fields
    with pytest.raises(KindInvalid, match="registry calls it 'other'"):
        load_kinds((KindEntry("other", "tests.probe_kind"),))


def test_a_kind_without_a_valid_name_or_hook_is_refused():
    class Nameless(Kind):
        name = "Bad Name"

    with pytest.raises(KindInvalid, match="kind name"):
        check_kind(Nameless())

    class NoTick(ProbeKind):
        on_tick = None

    with pytest.raises(KindInvalid, match="on_tick"):
        check_kind(NoTick())


def test_command_tables_are_checked():
    ok = Command("show", "GET", Access.ANYONE, lambda c, b: None)
    check_commands("k", [ok])
    with pytest.raises(KindInvalid, match="twice"):
        check_commands("k", [ok, ok])
    with pytest.raises(KindInvalid, match="method"):
        check_commands("k", [Command("x", "PUT", Access.ANYONE, lambda c, b: None)])
    with pytest.raises(KindInvalid, match="name"):
        check_commands("k", [Command("../x", "GET", Access.ANYONE, lambda c, b: None)])


def test_every_hook_reaches_every_kind_and_one_failure_stays_local(tmp_path):
    a, b = ProbeKind(), ProbeKind()
    a.fail_on = {"on_tick", "on_event"}
    clock = Clock()
    host, journal, _ = make_host(tmp_path, a, b, clock=clock)
    host.on_tick(1.0)
    host.on_sample("snap")
    host.on_event("ev")
    assert ("on_tick", 1.0) in b.calls and ("on_sample", "snap") in b.calls and ("on_event", "ev") in b.calls
    assert host.reports["probe"].errors == 2
    errors = [e for e in journal.events if e["kind"] == "probe.error"]
    assert [e["hook"] for e in errors] == ["on_tick", "on_event"]
    host.on_tick(2.0)  # the same hook failing again within a minute is counted, not journaled
    assert len([e for e in journal.events if e["kind"] == "probe.error"]) == 2
    clock.now += 61
    host.on_tick(3.0)
    assert len([e for e in journal.events if e["kind"] == "probe.error"]) == 3
    assert host.metrics()["agentd_probe_hook_errors_total"] == 4.0  # a and b share the name: one report


def test_journal_events_emitted_while_dispatching_are_delivered_after_in_order(tmp_path):
    class Echo(ProbeKind):
        def on_event(self, event):
            super().on_event(event)
            if isinstance(event, dict) and event["kind"] == "toolcall.end":
                self.ctx.emit("released", "released the pin")

    echo, other = Echo(), ProbeKind()
    host, journal, _ = make_host(tmp_path, echo, other)
    journal.emit("toolcall.end", "ended")
    kinds_seen = [c[1]["kind"] for c in other.calls if c[0] == "on_event"]
    assert kinds_seen == ["toolcall.end", "probe.released"]


def test_policy_sections_reach_their_kind_by_policy_name(tmp_path):
    class P:
        def __init__(self, name, sections):
            self.name, self.sections = name, sections

    kind = ProbeKind()
    host, _, _ = make_host(tmp_path, kind)
    host.on_policy([P("default", {}), P("gpu", {"probe": {"level": 3}}), P("x", {"other": 1})])
    assert kind.calls[-1] == ("on_policy", {"gpu": {"level": 3}})


def test_saved_values_survive_a_restart_and_revert_to_the_original(tmp_path):
    kind = ProbeKind()
    host, journal, db = make_host(tmp_path, kind)
    kind.bump(None, {"by": 2})
    kind.bump(None, {"by": 3})
    assert kind.values["t1"] == "5"
    changed = [e for e in journal.events if e["kind"] == "probe.changed"]
    assert [(e["old"], e["new"]) for e in changed] == [("orig", "2"), ("2", "5")]
    db.close()

    # A new daemon: a fresh kind over the same file sees the counter and the original value.
    again = ProbeKind()
    again.values["t1"] = "5"  # the kernel still holds what the old daemon wrote
    host2, journal2, db2 = make_host(tmp_path, again)
    assert host2.readopt() == {"probe": {"counter": 5}}
    [saved] = again.ctx.changes.saved()
    assert (saved.old, saved.new) == ("orig", "5")
    again.values["t1"] = "hand-edited"
    assert again.ctx.changes.drift() == [{"setting": "probe:value", "target": "t1", "wrote": "5", "live": "hand-edited"}]
    host2.stop(revert=True)
    assert again.values["t1"] == "orig"
    assert again.ctx.changes.saved() == []
    assert [e["kind"] for e in journal2.events] == ["probe.reverted"]
    db2.close()


def test_status_reports_each_kind_with_its_degraded_lines(tmp_path):
    kind = ProbeKind()
    host, _, _ = make_host(tmp_path, kind)
    kind.ctx.degrade("no second NUMA node; placing on node 0 only")
    status = host.status()["probe"]
    assert status["degraded"] == ["no second NUMA node; placing on node 0 only"]
    assert host.degraded() == ["probe: no second NUMA node; placing on node 0 only"]


def _caller(uid=1000, admin=False, agent=None):
    return Caller(peer=Peer(pid=123, uid=uid, gid=uid), admin=admin, agent=agent)


@pytest.mark.parametrize("access,caller,allowed", [
    (Access.ANYONE, _caller(), True),
    (Access.ADMIN, _caller(), False),
    (Access.ADMIN, _caller(0, admin=True), True),
    (Access.ADMIN, _caller(0, admin=True, agent="a"), False),  # root inside an agent acts as the agent
    (Access.USER, _caller(), True),
    (Access.USER, _caller(agent="a"), False),
    (Access.AGENT, _caller(agent="a"), True),
    (Access.AGENT, _caller(0, admin=True), False),
])
def test_access(access, caller, allowed):
    assert decide_access(access, caller).allowed is allowed
