"""What the API server needs from the daemon: the one command set that the CLI (through the
API), the daemon's own start-up and the tests all call.

The server authorizes each request from SO_PEERCRED before calling any method here; methods
validate their arguments and raise ApiError with a stable code and the offending field.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class ApiError(Exception):
    status: int  # HTTP status: 400 bad input, 403 refused, 404 unknown, 409 conflict, 429 rate
    code: str  # stable machine code, e.g. "invalid_intent", "unknown_agent", "policy_invalid"
    message: str  # a sentence a person understands
    field: str | None = None  # the offending field (dotted path) where there is one
    details: Any = None  # e.g. the list of policy problems

    def to_json(self) -> dict:
        body = {"error": {"code": self.code, "message": self.message}}
        if self.field:
            body["error"]["field"] = self.field
        if self.details is not None:
            body["error"]["details"] = self.details
        return body


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


class Controller(Protocol):
    # --- reads ---------------------------------------------------------------------------
    def status(self) -> dict: ...  # backends, kernel features found/missing (with why), policy, counters
    def agents(self) -> list[dict]: ...
    def tool_calls(self, agent: str | None = None, live_only: bool = False) -> list[dict]: ...
    def tool_call(self, ident: str) -> dict: ...  # raises ApiError 404
    def explain(self, ident: str) -> dict: ...  # the decisions on a tool call, with their numbers
    def metrics(self) -> dict[str, float]: ...  # counters and gauges for /metrics

    # --- who is who (authorization) ------------------------------------------------------
    def agent_of_pid(self, pid: int) -> str | None: ...  # the managed agent whose tree holds pid
    def agent_owner_uid(self, agent: str) -> int | None: ...

    # --- agents and intents --------------------------------------------------------------
    # peer: the caller held by a pidfd (agentd.core.pidfd.PeerProcess): register only that process
    def register_agent(self, pid: int, uid: int, name: str | None, policy: str | None, peer: Any = None,
                       quota: tuple[int, int] | None = None) -> dict: ...
    def declare_intent(self, agent: str, pid: int, intent: dict) -> dict: ...  # granted values + clips
    def cancel_tool_call(self, ident: str, reason: str) -> dict: ...

    # --- policies ------------------------------------------------------------------------
    # validate, apply and diff may be coroutines (the daemon's parse in a worker process
    # with a time limit, off the event loop); the server awaits them when they are.
    def policy_validate(self, text: str, filename: str) -> list[dict]: ...  # problems; [] when valid
    def policy_apply(self, text: str, filename: str) -> dict: ...  # raises ApiError 400 policy_invalid
    def policy_get(self, name: str) -> dict: ...
    def policy_list(self) -> list[dict]: ...
    def policy_diff(self, text: str, filename: str) -> dict: ...

    # --- events --------------------------------------------------------------------------
    def subscribe(self, agent: str | None = None, min_level: str = "info") -> asyncio.Queue: ...
    def unsubscribe(self, queue: asyncio.Queue) -> None: ...

    # --- additions by the API server (optional: the server degrades without them) ----------
    def recent_events(
        self, agent: str | None = None, min_level: str = "info", limit: int = 100
    ) -> list[dict]: ...  # the newest `limit` journal events, oldest first, filtered like subscribe
