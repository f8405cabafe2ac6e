"""The tracker reports every OOM kill on the host; the engine journals only those of its
own agents and tool calls (identified by the cgroups it created for them, from the kernel's
view of real processes) and counts the rest."""

from __future__ import annotations

import pytest

from agentd.events import ProcEvent, ProcEventKind
from tests.kernel.cgroup_fixtures import driver, children, needs_root  # noqa: F401 - fixtures
from tests.kernel.test_toolcall_ends import _tool, engine  # noqa: F401 - fixture

pytestmark = [pytest.mark.kernel, needs_root]


def _victim(pid: int) -> ProcEvent:
    return ProcEvent(ProcEventKind.OOM_VICTIM, pid, tgid=pid, comm="victim")


def _oom_events(engine):  # noqa: F811
    return [e for e in engine.store.events(limit=100) if e["kind"] == "kernel.oom_victim"]


def test_an_oom_kill_outside_agentd_is_counted_not_journaled(engine, children):  # noqa: F811
    stranger = children.cmd(["sleep", "60"])  # the test's own cgroup: no agent of ours
    engine.on_event(_victim(stranger.pid))
    assert _oom_events(engine) == []
    assert engine.counters["oom_victims_unmanaged"] == 1


def test_an_oom_kill_in_a_tool_call_or_a_runtime_is_journaled_with_its_agent(engine, children):  # noqa: F811
    p, tc = _tool(engine, children, ["sleep", "60"])
    engine.on_event(_victim(p.pid))
    engine.on_event(_victim(engine.test_agent.main_pid))
    events = _oom_events(engine)
    assert len(events) == 2, events
    by_pid = {e["data"]["pid"]: e for e in events}
    assert by_pid[p.pid]["tool_call"] == tc.id and by_pid[p.pid]["agent"] == engine.test_agent.name
    runtime = by_pid[engine.test_agent.main_pid]
    assert runtime["agent"] == engine.test_agent.name and runtime["tool_call"] is None
    assert "runtime" in runtime["message"]
    assert engine.counters["oom_victims_unmanaged"] == 0
