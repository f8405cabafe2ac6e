"""The daemon's command set behind the API (agentd.api.contract.Controller): thin methods
over the tool-call engine and the PolicySet that validate input and raise ApiError with stable codes.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from agentd.api.contract import ApiError
from agentd.cgroups import layout
from agentd.policy.loader import PolicyInvalid
from agentd.policy.parse_worker import ParseTimeout
from agentd.policy.problems import Problem
from agentd.policy.schema import valid_name
from agentd.toolcalls.agents import NameTaken
from agentd.toolcalls.rules import IntentInvalid, parse_intent

if TYPE_CHECKING:
    from agentd.core.daemon import Daemon


def _wall(tc: dict) -> float:
    end = tc.get("ended") or time.time()
    return round(end - tc["started"], 3)


class DaemonController:
    def __init__(self, daemon: "Daemon"):
        self.d = daemon

    @property
    def m(self):
        return self.d.engine

    # ------------------------------------------------------------------ reads
    def status(self) -> dict:
        return self.d.status()

    def agents(self) -> list[dict]:
        live = {a.name: a for a in self.m.agents.values()}
        out = []
        for rec in self.d.store.agents():
            agent = live.get(rec["name"])
            rec["toolcalls_live"] = sum(1 for t in self.m.toolcalls.values() if t.agent == rec["name"])
            rec["runtime_pids"] = self.m.driver.procs(layout.runtime_rel(agent.name)) if agent and agent.state == "live" else []
            out.append(rec)
        return out[-500:]

    def tool_calls(self, agent: str | None = None, live_only: bool = False) -> list[dict]:
        return [self._with_live_figures(row) for row in self.d.store.toolcalls(agent=agent, live_only=live_only)]

    def tool_call(self, ident: str) -> dict:
        row = self.d.store.toolcall(ident)
        if row is None:
            raise ApiError(404, "unknown_toolcall", f"no tool call {ident!r}", "id")
        return self._with_live_figures(row)

    def _with_live_figures(self, row: dict) -> dict:
        """The stored record, with the running figures of a live tool call."""
        live = self.m.toolcalls.get(row["id"])
        if live is not None:
            row["peak_bytes"], row["cpu_s"], row["state"] = live.peak_bytes, round(live.cpu_s, 3), live.state
        row["wall_s"] = _wall(row)
        return row

    def explain(self, ident: str) -> dict:
        tc = self.tool_call(ident)
        events = self.d.store.events(tool_call=ident, limit=200)
        return {"tool_call": tc, "decisions": events}

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {f"agentd_{k}": v for k, v in self.m.metrics().items()}
        out["agentd_agents_live"] = float(sum(1 for a in self.m.agents.values() if a.state == "live"))
        out["agentd_toolcalls_live"] = float(len(self.m.toolcalls))
        out["agentd_tracker_events_lost_total"] = float(self.d.tracker.lost_events()) if self.d.tracker else 0.0
        out["agentd_journal_dropped_total"] = float(self.d.journal.dropped)
        out["agentd_store_writes_deferred_total"] = float(self.d.store.stats["writes_deferred"])
        out["agentd_store_writes_pending"] = float(self.d.store.pending_writes)
        if self.d.store.batcher is not None:  # the batched write path (agentd/core/batch_writer.py)
            for key in ("batches", "items", "dropped", "failed", "busy_retries"):
                out[f"agentd_store_batch_{key}_total"] = float(self.d.store.batcher.stats[key])
        out["agentd_policy_parse_timeouts_total"] = float(self.d.parse_workers.stats["timeouts"])
        snap = self.d.gpu_snapshot
        for gpu in (snap.gpus if snap is not None else []):
            label = f'{{gpu="{gpu.index}"}}'
            for key, value in (("memory_used_bytes", gpu.memory_used_bytes), ("memory_total_bytes", gpu.memory_total_bytes),
                               ("utilization_pct", gpu.util_gpu), ("power_watts", gpu.power_w)):
                if value is not None:
                    out[f"agentd_gpu_{key}{label}"] = float(value)
        out.update(self.d.kinds.metrics())
        return out

    # ------------------------------------------------------------------ policy kinds
    def kind_commands(self) -> list:
        """(kind name, agentd.kinds.contract.Command) for every route /v1/<kind>/<command>."""
        return self.d.kinds.commands()

    # ------------------------------------------------------------------ who is who
    def agent_of_pid(self, pid: int) -> str | None:
        return self.m.agent_of_pid(pid)

    def agent_owner_uid(self, agent: str) -> int | None:
        a = self.m.agents.get(agent)
        if a is not None:
            return a.uid
        rows = [r for r in self.d.store.agents() if r["name"] == agent]
        return rows[0]["uid"] if rows else None

    # ------------------------------------------------------------------ agents and intents
    def register_agent(self, pid: int, uid: int, name: str | None, policy: str | None, peer=None,
                       quota: tuple[int, int] | None = None) -> dict:
        """quota: (live agents, agent names) uid may hold; None for an admin (no limit)."""
        if name is not None and not valid_name(name):
            raise ApiError(400, "invalid_name", f"agent name {name!r}: expected 1-64 characters of A-Z a-z 0-9 . _ -", "name")
        if policy is not None and policy not in self.d.policies.policies:
            raise ApiError(404, "unknown_policy", f"no policy named {policy!r}; see `agentctl policy list`", "policy")
        owner = self.m.agent_of_pid(pid)
        if owner is not None:
            raise ApiError(409, "already_managed", f"process {pid} already belongs to agent {owner}", "pid")
        if quota is not None:
            self._check_agent_quota(uid, name, *quota)
        try:
            agent = self.m.register_agent(pid, uid, name, policy, peer=peer)
        except NameTaken as exc:
            raise ApiError(409, "name_taken", str(exc), "name") from None
        except FileExistsError as exc:
            raise ApiError(409, "agent_exists", str(exc), "name") from None
        except ProcessLookupError as exc:
            raise ApiError(409, "process_gone", str(exc), "pid") from None
        except ValueError as exc:
            raise ApiError(400, "invalid_name", str(exc), "name") from None
        rec = agent.record()
        rec["results_dir"] = str(self.d.results.agent_path(agent.name))
        return rec

    def _check_agent_quota(self, uid: int, name: str | None, live_cap: int, names_cap: int) -> None:
        live = sum(1 for a in self.m.agents.values() if a.uid == uid and a.state == "live")
        if live >= live_cap:
            raise ApiError(403, "quota_exceeded", f"uid {uid} already runs {live} agents, the most agentd manages "
                           "for one user; end one first (an admin is not limited)")
        if (name is None or self.d.store.agent_uid(name) != uid) and self.d.store.agent_names_of(uid) >= names_cap:
            raise ApiError(403, "quota_exceeded", f"uid {uid} already owns {names_cap} agent names, each keeping its "
                           "history; run under one of them again (`agentctl run --name NAME`)", "name")

    def declare_intent(self, agent: str, pid: int, intent: dict) -> dict:
        if agent not in self.m.agents or self.m.agents[agent].state != "live":
            raise ApiError(404, "unknown_agent", f"no live agent {agent!r}", "agent")
        try:
            parsed = parse_intent(intent)
        except IntentInvalid as exc:
            self.m.counters["intents_rejected"] += 1
            raise ApiError(400, "invalid_intent", str(exc), exc.field or None) from None
        return self.m.declare_intent(agent, parsed)

    def cancel_tool_call(self, ident: str, reason: str) -> dict:
        if ident not in self.m.toolcalls:
            raise ApiError(404, "unknown_toolcall", f"no live tool call {ident!r}", "id")
        tc = self.m.cancel(ident, reason or "cancelled by request")
        return {"id": tc.id, "state": "killing"}

    # ------------------------------------------------------------------ policies
    async def _parse(self, text: str, filename: str, want_policy: bool = True):
        """Parse in a worker process with a time limit: the event loop never parses."""
        try:
            return await self.d.parse_workers.parse(text, filename, want_policy)
        except ParseTimeout as exc:
            problem = Problem(filename, 0, "", str(exc))
            raise ApiError(400, "policy_invalid", f"{filename} is not a valid policy: {exc}", "text", [problem.to_json()]) from None
        except OSError as exc:  # no worker could be started
            raise ApiError(503, "parser_unavailable", f"agentd could not start a policy parse worker: {exc}") from None

    async def policy_validate(self, text: str, filename: str) -> list[dict]:
        return [p.to_json() for p in (await self._parse(text, filename, want_policy=False))[1]]

    async def policy_apply(self, text: str, filename: str) -> dict:
        parsed, problems = await self._parse(text, filename)
        try:
            if problems:
                raise PolicyInvalid(problems)
            policy = self.d.policies.apply(text, filename, parsed=parsed)
        except PolicyInvalid as exc:
            raise ApiError(400, "policy_invalid", f"{filename} is not a valid policy; nothing changed", "text",
                           [p.to_json() for p in exc.problems]) from None
        changed = self.d.policies_changed()
        self.d.journal.emit("policy.applied", f"policy {policy.name} applied from {filename}; {changed} live tool calls got new limits",
                            policy=policy.name, toolcalls_changed=changed)
        return {"name": policy.name, "applied": True, "toolcalls_changed": changed}

    def policy_get(self, name: str) -> dict:
        policy = self.d.policies.policies.get(name)
        if policy is None:
            raise ApiError(404, "unknown_policy", f"no policy named {name!r}", "name")
        return {"name": policy.name, "source": policy.source, "text": policy.text}

    def policy_list(self) -> list[dict]:
        return [{"name": p.name, "source": p.source} for p in self.d.policies.policies.values()]

    async def policy_diff(self, text: str, filename: str) -> dict:
        parsed, problems = await self._parse(text, filename)
        try:
            if problems:
                raise PolicyInvalid(problems)
            return {"diff": self.d.policies.diff(text, filename, parsed=parsed)}
        except PolicyInvalid as exc:
            raise ApiError(400, "policy_invalid", f"{filename} is not a valid policy", "text", [p.to_json() for p in exc.problems]) from None

    # ------------------------------------------------------------------ events
    def recent_events(self, agent: str | None, level: str, limit: int) -> list[dict]:
        from agentd.core.journal import LEVELS

        floor = LEVELS.get(level or "info", 20)
        rows = self.d.store.events(agent=agent, limit=max(limit * 4, limit))
        return [e for e in rows if LEVELS.get(e["level"], 20) >= floor][-limit:]

    def subscribe(self, agent: str | None = None, min_level: str = "info") -> asyncio.Queue:
        return self.d.journal.subscribe(agent, min_level)

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self.d.journal.unsubscribe(queue)
