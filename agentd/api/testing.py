"""An in-memory Controller for the API's own tests and benchmark (not the daemon's).

It keeps agents, tool calls, policies and a journal in dicts, records every mutating
call in `calls`, and publishes events to subscribers like the real journal does. Call
its methods from the event loop thread that serves the API.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

from agentd.api.contract import ApiError

LEVELS = ("debug", "info", "warn", "error")
INTENT_FIELDS = {"tool": str, "memory": int, "cpu": (int, float), "duration_s": (int, float),
                 "priority": str, "pids": int}  # pids: the most processes the tool call may have
MEMORY_CAP = 4 << 30  # the fake's policy: at most 4G per tool call
CPU_CAP = 4.0


class FakeController:
    def __init__(self) -> None:
        self.agents_by_name: dict[str, dict] = {}
        self.pid_agent: dict[int, str] = {}
        self.calls_by_id: dict[str, dict] = {}
        self.policies: dict[str, dict] = {"default": {"name": "default", "text": "{}\n",
                                                      "filename": "default.yaml"}}
        self.journal: list[dict] = []
        self.subscribers: list[tuple[asyncio.Queue, str | None, str]] = []
        self.calls: list[tuple[str, tuple]] = []  # mutating calls, in order
        self._seq = itertools.count(1)
        self._tc = itertools.count(1)

    # --- test helpers --------------------------------------------------------------------

    def add_agent(self, name: str, uid: int = 0, pids: tuple[int, ...] = ()) -> dict:
        agent = {"name": name, "uid": uid, "pid": pids[0] if pids else 0, "policy": "default",
                 "state": "running", "tool_calls": 0}
        self.agents_by_name[name] = agent
        for p in pids:
            self.pid_agent[p] = name
        return agent

    def add_tool_call(self, agent: str, tool: str = "bash", live: bool = True) -> dict:
        ident = f"{agent}/{next(self._tc):04d}-{tool}"  # the daemon's form
        call = {"id": ident, "agent": agent, "tool": tool, "live": live,
                "state": "running" if live else "exited", "memory_max": 1 << 30,
                "memory_peak": 200 << 20, "cpu_max": 1.0, "started": time.time()}
        self.calls_by_id[ident] = call
        return call

    def publish(self, kind: str, message: str, *, agent: str | None = None,
                level: str = "info", tool_call: str | None = None, **data: float) -> dict:
        ev = {"seq": next(self._seq), "ts": time.time(), "level": level, "kind": kind,
              "agent": agent, "tool_call": tool_call, "message": message, "data": data}
        self.journal.append(ev)
        del self.journal[:-1000]
        for queue, want_agent, min_level in self.subscribers:
            if (want_agent is None or want_agent == agent) and _at_least(level, min_level):
                queue.put_nowait(ev)
        return ev

    # --- reads ---------------------------------------------------------------------------

    def status(self) -> dict:
        return {"version": "fake", "backends": {"tracker": "fake", "cgroups": "fake"},
                "kernel": {"found": ["fake"], "missing": {}},
                "policy": {"loaded": sorted(self.policies)},
                "counters": {"agents": len(self.agents_by_name),
                             "tool_calls": len(self.calls_by_id)}}

    def agents(self) -> list[dict]:
        return list(self.agents_by_name.values())

    def tool_calls(self, agent: str | None = None, live_only: bool = False) -> list[dict]:
        return [c for c in self.calls_by_id.values()
                if (agent is None or c["agent"] == agent) and (c["live"] or not live_only)]

    def tool_call(self, ident: str) -> dict:
        try:
            return self.calls_by_id[ident]
        except KeyError:
            raise ApiError(404, "unknown_tool_call", f"there is no tool call {ident!r}",
                           "id") from None

    def explain(self, ident: str) -> dict:
        call = self.tool_call(ident)
        return {"tool_call": call, "decisions": [
            {"ts": call["started"], "action": "place", "rule": "tools.default",
             "reason": "placed in its own cgroup with the declared memory",
             "numbers": {"memory_max": call["memory_max"]}}]}

    def metrics(self) -> dict[str, float]:
        return {"agentd_agents": len(self.agents_by_name),
                "agentd_events_total": len(self.journal),
                'agentd_tool_calls{state="live"}': sum(c["live"] for c in self.calls_by_id.values())}

    def recent_events(self, agent: str | None = None, min_level: str = "info",
                      limit: int = 100) -> list[dict]:
        found = [e for e in self.journal if (agent is None or e["agent"] == agent)
                 and _at_least(e["level"], min_level)]
        return found[-limit:]

    # --- who is who ----------------------------------------------------------------------

    def agent_of_pid(self, pid: int) -> str | None:
        return self.pid_agent.get(pid)

    def agent_owner_uid(self, agent: str) -> int | None:
        a = self.agents_by_name.get(agent)
        return a["uid"] if a else None

    # --- agents and intents --------------------------------------------------------------

    def register_agent(self, pid: int, uid: int, name: str | None, policy: str | None, peer=None) -> dict:
        name = name or f"agent-{pid}"
        if name in self.agents_by_name:
            raise ApiError(409, "agent_exists", f"an agent named {name!r} already exists", "name")
        if policy is not None and policy not in self.policies:
            raise ApiError(404, "unknown_policy", f"there is no policy {policy!r}", "policy")
        self.calls.append(("register_agent", (pid, uid, name, policy)))
        agent = self.add_agent(name, uid, (pid,))
        agent["policy"] = policy or "default"
        self.publish("agent.registered", f"Agent {name} registered (pid {pid}, uid {uid}).",
                     agent=name, pid=pid, uid=uid)
        return agent

    def declare_intent(self, agent: str, pid: int, intent: dict) -> dict:
        for key, value in intent.items():
            if key not in INTENT_FIELDS:
                raise ApiError(400, "unknown_field", f"unknown intent field {key!r}", key)
            if isinstance(value, bool) or not isinstance(value, INTENT_FIELDS[key]):
                raise ApiError(400, "invalid_type", f"intent field {key!r} has the wrong type", key)
        self.calls.append(("declare_intent", (agent, pid, dict(intent))))
        granted, clips = {}, []
        for key, limit, cap in (("memory", "memory_max", MEMORY_CAP), ("cpu", "cpu_max", CPU_CAP)):
            if key in intent:
                granted[limit] = min(intent[key], cap)
                if intent[key] > cap:
                    clips.append({"field": key, "requested": intent[key], "granted": cap})
        if "pids" in intent:
            granted["pids_max"] = intent["pids"]
        return {"agent": agent, "intent": dict(intent), "granted": granted, "clips": clips}

    def cancel_tool_call(self, ident: str, reason: str) -> dict:
        call = self.tool_call(ident)
        self.calls.append(("cancel_tool_call", (ident, reason)))
        call["live"], call["state"] = False, "cancelled"
        return {"id": ident, "state": "cancelled", "reason": reason}

    # --- policies ------------------------------------------------------------------------

    def policy_validate(self, text: str, filename: str) -> list[dict]:
        if "invalid" in text:
            return [{"file": filename, "line": 1, "key": "", "message": "the fake refuses it"}]
        return []

    def policy_apply(self, text: str, filename: str) -> dict:
        problems = self.policy_validate(text, filename)
        if problems:
            raise ApiError(400, "policy_invalid", f"{filename} has {len(problems)} problem(s)",
                           details=problems)
        name = filename.rsplit(".", 1)[0]
        self.calls.append(("policy_apply", (filename,)))
        self.policies[name] = {"name": name, "text": text, "filename": filename}
        self.publish("policy.applied", f"Policy {name} applied from {filename}.")
        return {"name": name, "applied": True}

    def policy_get(self, name: str) -> dict:
        try:
            return self.policies[name]
        except KeyError:
            raise ApiError(404, "unknown_policy", f"there is no policy {name!r}", "name") from None

    def policy_list(self) -> list[dict]:
        return [{"name": p["name"], "filename": p["filename"]} for p in self.policies.values()]

    def policy_diff(self, text: str, filename: str) -> dict:
        name = filename.rsplit(".", 1)[0]
        old = self.policies.get(name, {}).get("text", "")
        return {"name": name, "changed": old != text, "old": old, "new": text}

    # --- events --------------------------------------------------------------------------

    def subscribe(self, agent: str | None = None, min_level: str = "info") -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self.subscribers.append((queue, agent, min_level))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self.subscribers = [s for s in self.subscribers if s[0] is not queue]


def _at_least(level: str, minimum: str) -> bool:
    return LEVELS.index(level) >= LEVELS.index(minimum)


def fake_with_sample_data() -> FakeController:
    fake = FakeController()
    fake.add_agent("a1", uid=0)
    fake.add_agent("a2", uid=1000)
    fake.add_tool_call("a1", "pytest")
    fake.add_tool_call("a2", "bash", live=False)
    fake.publish("toolcall.throttled", "Tool call a1.1 throttled at memory.high 1G.",
                 agent="a1", tool_call="a1.1", level="warn", memory_high=1 << 30)
    return fake



class ServerThread:
    """The real API server on a real Unix socket, run by its own event loop in a thread.

        with ServerThread(fake, path) as srv:
            ApiClient(path).status()
            srv.call(fake.publish, "x", "y")   # run on the server's loop
    """

    def __init__(self, controller: Any = None, socket_path: str | None = None, **options: Any):
        self.controller = controller if controller is not None else fake_with_sample_data()
        self.socket_path = socket_path
        self.options = options
        self.loop = asyncio.new_event_loop()
        self.server: Any = None
        self._thread = threading.Thread(target=self._run, name="api-server", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        from agentd.api.server import start_api

        asyncio.set_event_loop(self.loop)
        try:
            self.server = self.loop.run_until_complete(
                start_api(self.controller, self.socket_path, **self.options))
        except BaseException as e:  # reported to the starting thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> "ServerThread":
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run fn(*args) on the server's loop (a coroutine function is awaited)."""
        async def run() -> Any:
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def stop(self) -> None:
        if self.server is not None:
            self.call(self.server.stop)
            self.server = None
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
