"""The tool-call engine through KindHost(engine=...): attached like every kind, its hooks
called first, its failures not swallowed (they reach the daemon), stopped last."""

from __future__ import annotations

import pytest

from agentd.kinds.context import SharedModel
from agentd.kinds.contract import Kind
from agentd.kinds.host import KindHost
from agentd.kinds.state import KindDatabase
from agentd.policy.schema import Policy, ToolCallPolicy


class Recorder(Kind):
    def __init__(self, name: str, calls: list, fail: str = ""):
        self.calls, self.fail = calls, fail
        type(self).name = name

    def _hook(self, hook: str, value=None):
        self.calls.append((self.name, hook))
        if hook == self.fail:
            raise RuntimeError(f"{self.name} fails in {hook}")
        return value

    def readopt(self):
        return self._hook("readopt", {"agents": 1})

    def on_event(self, event):
        self._hook("on_event")

    def on_tick(self, now):
        self._hook("on_tick")

    def on_policy(self, sections):
        self.sections = sections
        return self._hook("on_policy", 3)

    def stop(self, revert):
        self._hook("stop")


class Engine(Recorder):
    pass


class Other(Recorder):
    pass


def _host(tmp_path, calls, fail=""):
    engine, other = Engine("toolcalls", calls, fail), Other("other", calls)
    host = KindHost([other], engine=engine, driver=None, model=SharedModel(), db=KindDatabase(tmp_path / "k.db"),
                    journal_emit=lambda *a, **k: {}, clock=lambda: 0.0)
    return host, engine


def test_the_engines_hooks_come_first_and_it_stops_last(tmp_path):
    calls: list = []
    host, engine = _host(tmp_path, calls)
    assert engine.ctx.name == "toolcalls" and "toolcalls" in host.contexts and "toolcalls" not in host.reports
    assert host.readopt_engine() == {"agents": 1}
    policy = Policy("p", toolcalls=ToolCallPolicy())
    assert host.on_policy([policy]) == 3 and engine.sections == {"p": ToolCallPolicy()}
    host.on_kernel_event(object())
    host.on_tick(1.0)
    host.stop()
    assert calls == [("toolcalls", "readopt"), ("toolcalls", "on_policy"), ("other", "on_policy"),
                     ("toolcalls", "on_event"), ("other", "on_event"), ("toolcalls", "on_tick"), ("other", "on_tick"),
                     ("other", "stop"), ("toolcalls", "stop")]
    assert "toolcalls" not in host.status()  # its figures stay the daemon's top-level ones


@pytest.mark.parametrize("hook", ["on_tick", "on_event"])
def test_an_engine_failure_reaches_the_daemon_and_the_kinds_still_run(tmp_path, hook):
    calls: list = []
    host, _ = _host(tmp_path, calls, fail=hook)
    with pytest.raises(RuntimeError):
        host.on_tick(1.0) if hook == "on_tick" else host.on_kernel_event(object())
    assert ("other", hook) in calls


def test_a_failed_readopt_stops_start_up(tmp_path):
    host, _ = _host(tmp_path, [], fail="readopt")
    with pytest.raises(RuntimeError):
        host.readopt_engine()
