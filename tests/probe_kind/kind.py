from __future__ import annotations

from agentd.api.contract import ApiError
from agentd.api.validation import Field
from agentd.kinds.contract import Access, Command, Kind


class MemorySetting:
    """A Setting over a dict, standing in for a kernel file."""

    name = "probe:value"

    def __init__(self, values: dict):
        self.values = values

    def read(self, target):
        return self.values.get(target, "orig")

    def write(self, target, value):
        self.values[target] = value


class ProbeKind(Kind):
    name = "probe"
    journal_prefix = "probe"

    def __init__(self):
        self.calls: list[tuple] = []
        self.fail_on: set[str] = set()
        self.values: dict = {}
        self.setting = MemorySetting(self.values)

    def _record(self, hook, *args):
        self.calls.append((hook, *args))
        if hook in self.fail_on:
            raise RuntimeError(f"probe fails in {hook}")

    def attach(self, ctx):
        super().attach(ctx)
        ctx.changes.register(self.setting)

    def readopt(self):
        self._record("readopt")
        return {"counter": self.ctx.state.get("counter", 0)}

    def on_event(self, event):
        self._record("on_event", event)

    def on_sample(self, snapshot):
        self._record("on_sample", snapshot)

    def on_tick(self, now):
        self._record("on_tick", now)

    def on_policy(self, sections):
        self._record("on_policy", sections)

    def stop(self, revert):
        self._record("stop", revert)
        if revert:
            self.ctx.changes.revert_all(reason="probe stopped")

    def status(self):
        return {"counter": self.ctx.state.get("counter", 0)}

    def metrics(self):
        return {"counter_total": self.ctx.state.get("counter", 0)}

    def commands(self):
        return [
            Command("show", "GET", Access.ANYONE, self.show, {"who": Field((str,))}, "who is asking"),
            Command("bump", "POST", Access.ADMIN, self.bump, {"by": Field((int,), required=True)}, "add to the counter"),
            Command("mine", "POST", Access.AGENT, lambda caller, body: {"agent": caller.agent}, {}, "the caller's agent"),
        ]

    def show(self, caller, query):
        return {"uid": caller.peer.uid, "role": caller.role, "who": query.get("who")}

    def bump(self, caller, body):
        if body["by"] < 0:
            raise ApiError(400, "invalid_value", "by must be >= 0", "by")
        counter = self.ctx.state.get("counter", 0) + body["by"]
        self.ctx.state.put("counter", counter)
        self.ctx.changes.apply(self.setting, "t1", str(counter), reason="bumped")
        return {"counter": counter}


KIND = ProbeKind
