"""The API server: HTTP/JSON (aiohttp) on a Unix socket, in the daemon's event loop.

Every request is authorized from the caller's SO_PEERCRED (auth.py) before a Controller
method runs; bodies are checked strictly (validation.py); sizes, rates and streams are
bounded (limits.py). Handlers only translate HTTP to the Controller calls that the CLI,
the daemon and the tests share.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import grp
import inspect
import json
import logging
import os
import re
import select
import socket
import stat
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from agentd.api import auth
from agentd.api.auth import Action, Caller
from agentd.api.contract import ApiError, Controller, Peer
from agentd.api.kind_routes import add_kind_routes
from agentd.api.limits import ApiLimits, RateLimiter
from agentd.core.pidfd import PeerProcess
from agentd.paths import DEFAULT_SOCKET
from agentd.api.validation import (
    Field,
    check_body,
    check_name,
    check_toolcall_id,
    check_query,
    level_at_least,
    parse_json_body,
    query_bool,
    query_int,
    query_level,
)

log = logging.getLogger("agentd.api")

SOCKET_MODE = 0o660
NDJSON = "application/x-ndjson"
_PEERCRED = struct.Struct("3i")
# aiohttp >= 3.13 prefers typed request keys; older versions take a string.
CALLER: Any = web.RequestKey("caller", Caller) if hasattr(web, "RequestKey") else "caller"


# --- wire helpers --------------------------------------------------------------------------


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_json"):
        return obj.to_json()
    return str(obj)


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_default, separators=(",", ":"))


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(
        text=dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(err: ApiError, headers: dict | None = None) -> web.Response:
    return json_response(err.to_json(), err.status, headers)


SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux >= 6.5


def peer_exited(request: web.BaseRequest) -> bool:
    """Whether the process that opened this connection has exited since.

    SO_PEERCRED gives the pid at connect time; if that process is gone, the pid may belong
    to another process by now (a forked child may still hold the socket), so nothing
    derived from the pid can be trusted. A pidfd of the peer tells. False where the kernel
    has no SO_PEERPIDFD.
    """
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        fd = struct.unpack("i", sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4))[0]
    except OSError:
        return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)  # a pidfd is readable once its process exited
        return bool(poller.poll(0))
    finally:
        os.close(fd)


def peer_of(request: web.BaseRequest) -> Peer | None:
    """The connecting process's credentials, from SO_PEERCRED on the request's socket."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    pid, uid, gid = _PEERCRED.unpack(raw)
    return Peer(pid=pid, uid=uid, gid=gid) if pid > 0 else None


# --- counters ------------------------------------------------------------------------------


@dataclasses.dataclass
class ApiStats:
    requests: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    denied: int = 0
    rate_limited: int = 0
    streams_open: int = 0
    streams_refused: int = 0
    connections_refused: int = 0
    bad_http: int = 0
    stream_events_sent: int = 0
    stream_events_dropped: int = 0
    stream_write_timeouts: int = 0

    def to_json(self) -> dict:
        return {
            "requests": {str(k): v for k, v in sorted(self.requests.items())},
            "denied": self.denied,
            "rate_limited": self.rate_limited,
            "streams_open": self.streams_open,
            "streams_refused": self.streams_refused,
            "connections_refused": self.connections_refused,
            "bad_http": self.bad_http,
            "stream_events_sent": self.stream_events_sent,
            "stream_events_dropped": self.stream_events_dropped,
            "stream_write_timeouts": self.stream_write_timeouts,
        }


_METRIC_NAME = re.compile(r"^([^{]+)(?:\{(.*)\})?$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _split_metric(key: str) -> tuple[str, dict[str, str]]:
    """'name{a="x"}' to ('name', {'a': 'x'}); names are made Prometheus-safe."""
    m = _METRIC_NAME.match(key.strip())
    base, labels_text = (m.group(1), m.group(2)) if m else (key, None)
    base = re.sub(r"[^A-Za-z0-9_:]", "_", base)
    if base[:1].isdigit():
        base = "_" + base
    labels = {k: v for k, v in _LABEL.findall(labels_text or "")}
    return base, labels


class _Collector:
    """Builds Prometheus families from controller.metrics() and the API's own counters."""

    def __init__(self, controller: Controller, stats: ApiStats):
        self.controller = controller
        self.stats = stats

    def _flat(self) -> dict[str, float]:
        try:
            values = dict(self.controller.metrics())
        except Exception:  # a broken gauge must not take /metrics down
            log.exception("controller.metrics() failed; serving the API's own metrics only")
            values = {}
        s = self.stats
        for code, n in s.requests.items():
            values[f'agentd_api_requests_total{{code="{code}"}}'] = n
        values["agentd_api_denied_total"] = s.denied
        values["agentd_api_rate_limited_total"] = s.rate_limited
        values["agentd_api_streams_open"] = s.streams_open
        values["agentd_api_streams_refused_total"] = s.streams_refused
        values["agentd_api_connections_refused_total"] = s.connections_refused
        values["agentd_api_bad_http_total"] = s.bad_http
        values["agentd_api_stream_events_sent_total"] = s.stream_events_sent
        values["agentd_api_stream_events_dropped_total"] = s.stream_events_dropped
        values["agentd_api_stream_write_timeouts_total"] = s.stream_write_timeouts
        return values

    def collect(self):
        families: dict[str, Metric] = {}
        for key, value in self._flat().items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            base, labels = _split_metric(key)
            counter = base.endswith("_total")
            fam_name = base[: -len("_total")] if counter else base
            fam = families.get(fam_name)
            if fam is None:
                fam = Metric(fam_name, fam_name.replace("_", " "),
                             "counter" if counter else "gauge")
                families[fam_name] = fam
            fam.add_sample(base, labels, number)
        yield from families.values()


class _HttpLog(logging.LoggerAdapter):
    """aiohttp's log, minus the traceback it writes for each malformed request it answers
    with a 400: a local user could fill the daemon's log that way. Those are counted."""

    def __init__(self, stats: ApiStats):
        super().__init__(logging.getLogger("agentd.api.http"), {})
        self.stats = stats

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if exc is True:
            exc = sys.exc_info()[1]
        elif isinstance(exc, tuple):
            exc = exc[1]
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500:
            self.stats.bad_http += 1
            return
        super().log(level, msg, *args, **kwargs)


# --- streams -------------------------------------------------------------------------------


class _Follower:
    """One event stream: a bounded buffer between the controller's queue and a client.

    The pump never blocks on the client; when the buffer is full the oldest event is
    dropped and counted, and the next event written carries "dropped": N.
    """

    def __init__(self, queue: asyncio.Queue, visible: Callable[[dict], bool], size: int,
                 stats: ApiStats, uid: int = 0, admin: bool = True):
        self.uid = uid
        self.admin = admin
        self.queue = queue
        self.visible = visible
        self.buf: collections.deque = collections.deque()
        self.size = size
        self.stats = stats
        self.pending_dropped = 0
        self.wake = asyncio.Event()
        self.closing = False
        self.task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            ev = await self.queue.get()
            if not self.visible(ev):
                continue
            if len(self.buf) >= self.size:
                self.buf.popleft()
                self.pending_dropped += 1
                self.stats.stream_events_dropped += 1
            self.buf.append(ev)
            self.wake.set()

    def take(self, limit: int = 512) -> list[str]:
        lines = []
        while self.buf and len(lines) < limit:
            ev = self.buf.popleft()
            if self.pending_dropped:
                ev = {**ev, "dropped": self.pending_dropped}
                self.pending_dropped = 0
            lines.append(dumps(ev))
        return lines

    def close(self) -> None:
        self.closing = True
        self.task.cancel()
        self.wake.set()


# --- the server ----------------------------------------------------------------------------

AGENT_BODY = {"name": Field((str,), name=True), "policy": Field((str,), name=True)}
POLICY_BODY = {"filename": Field((str,), required=True, name=True),
               "text": Field((str,), required=True)}
CANCEL_BODY = {"reason": Field((str,))}


class ApiServer:
    def __init__(self, controller: Controller, socket_path: str | os.PathLike, *,
                 admin_group: str | int | None = None, sock_group: str | int | None = None,
                 limits: ApiLimits = ApiLimits(), metrics_listen: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.controller = controller
        self.socket_path = Path(socket_path)
        self.admin_group = admin_group
        self.admin_gid = _resolve(admin_group, "admin group")
        self.sock_gid = _resolve(sock_group, "socket group")
        self.limits = limits
        self.metrics_listen = metrics_listen
        self.stats = ApiStats()
        self.rate = RateLimiter(limits.rate_per_s, limits.rate_burst, limits.max_buckets,
                                clock)
        self.followers: set[_Follower] = set()
        self.policy_rate = RateLimiter(limits.policy_rate_per_s, limits.policy_rate_burst,
                                       limits.max_buckets, clock)
        self._policy_parses: collections.Counter = collections.Counter()  # non-admin, per uid
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(controller, self.stats))
        self._runners: list[web.AppRunner] = []
        self._sock_ino: int | None = None
        self._connections: collections.Counter = collections.Counter()  # open ones per uid
        self.app = self._make_app()

    # --- lifecycle ---------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware],
                              client_max_size=self.limits.max_body_bytes)
        r = app.router
        r.add_get("/v1/status", self.h_status)
        r.add_get("/v1/agents", self.h_agents)
        r.add_post("/v1/agents", self.h_register)
        r.add_get("/v1/agents/{name}", self.h_agent)
        r.add_get("/v1/toolcalls", self.h_toolcalls)
        r.add_get("/v1/toolcalls/{id}", self.h_toolcall)
        r.add_get("/v1/toolcalls/{id}/explain", self.h_explain)
        r.add_post("/v1/toolcalls/{id}/cancel", self.h_cancel)
        r.add_post("/v1/intents", self.h_intent)
        r.add_get("/v1/events", self.h_events)
        r.add_get("/v1/policies", self.h_policies)
        r.add_get("/v1/policies/{name}", self.h_policy)
        r.add_post("/v1/policies/validate", self.h_policy_validate)
        r.add_post("/v1/policies/apply", self.h_policy_apply)
        r.add_post("/v1/policies/diff", self.h_policy_diff)
        r.add_get("/metrics", self.h_metrics)
        add_kind_routes(r, getattr(self.controller, "kind_commands", list)(), caller_of=lambda req: req[CALLER],
                        read_body=self._body, respond=json_response,
                        admin_group=self.admin_group if isinstance(self.admin_group, str) else None)
        return app

    async def start(self) -> None:
        sock = bind_unix_socket(self.socket_path, SOCKET_MODE, self.sock_gid)
        self._sock_ino = os.stat(self.socket_path).st_ino
        # keepalive_timeout also closes connections that never finish a request
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                               shutdown_timeout=2.0, logger=_HttpLog(self.stats),
                               keepalive_timeout=self.limits.idle_timeout_s)
        await runner.setup()
        self._runners.append(runner)
        self._bound_connections(runner.server)
        await web.SockSite(runner, sock, backlog=512).start()
        log.info("agentd API listening on %s (mode %o%s).", self.socket_path, SOCKET_MODE,
                 f", group {self.sock_gid}" if self.sock_gid is not None else "")
        if self.metrics_listen:
            host, port = parse_listen(self.metrics_listen)
            mapp = web.Application()
            mapp.router.add_get("/metrics", self._metrics_response)
            mrunner = web.AppRunner(mapp, access_log=None, handle_signals=False,
                                    shutdown_timeout=2.0)
            await mrunner.setup()
            self._runners.append(mrunner)
            await web.TCPSite(mrunner, host, port).start()
            log.info("agentd metrics listening on http://%s:%d/metrics.", host, port)

    async def stop(self) -> None:
        for f in list(self.followers):
            f.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        try:  # remove the socket only if it is still ours (not a newer daemon's)
            if self._sock_ino is not None and os.stat(self.socket_path).st_ino == self._sock_ino:
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        log.info("agentd API on %s stopped.", self.socket_path)

    def _bound_connections(self, server: Any) -> None:
        """Cap the open connections of each uid: one user cannot take every descriptor.

        aiohttp calls server.connection_made/connection_lost for each connection; they are
        wrapped here. Over the cap the connection gets a 503 JSON error and is closed.
        """
        made = getattr(server, "connection_made", None)
        lost = getattr(server, "connection_lost", None)
        if made is None or lost is None:
            log.warning("aiohttp has no connection hooks here; connections are not capped per uid")
            return
        counts: collections.Counter = collections.Counter()
        owner: dict[Any, int] = {}
        limit = self.limits.max_connections_per_uid

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            sock = transport.get_extra_info("socket")
            try:
                uid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                       _PEERCRED.size))[1]
            except (OSError, AttributeError):
                return
            if counts[uid] >= limit:
                self.stats.connections_refused += 1
                err = ApiError(503, "too_many_connections",
                               f"uid {uid} already has {counts[uid]} connections open to agentd "
                               "(the limit); close some and retry")
                body = dumps(err.to_json()).encode()
                transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                                b"application/json\r\nConnection: close\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
                # closed once aiohttp has started the connection's handler task, which
                # then ends as for any client that hangs up
                asyncio.get_running_loop().call_soon(transport.close)
                return
            counts[uid] += 1
            owner[handler] = uid

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            lost(handler, exc)
            uid = owner.pop(handler, None)
            if uid is not None:
                counts[uid] -= 1
                if counts[uid] <= 0:
                    del counts[uid]

        server.connection_made = connection_made
        server.connection_lost = connection_lost
        self._connections = counts

    # --- per request -------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            peer = peer_of(request)
            if peer is None:
                raise ApiError(403, "peer_unknown",
                               "the caller's credentials (SO_PEERCRED) could not be read, or its pid is not "
                               "in the daemon's pid namespace (run agentctl inside the daemon's container)")
            caller = self.caller_of(peer)
            if peer_exited(request):  # checked after the lookups: they were about this process
                raise ApiError(403, "peer_gone",
                               f"the process that opened this connection (pid {peer.pid}) has "
                               "exited; its pid no longer identifies the caller: reconnect")
            wait = self.rate.check((peer.uid, caller.agent))
            if wait > 0:
                self.stats.rate_limited += 1
                who = f"agent '{caller.agent}'" if caller.agent else f"uid {peer.uid}"
                raise ApiError(429, "rate_limited",
                               f"too many requests from {who}; retry in {wait:.2f} s",
                               details={"retry_after_s": round(wait, 3)})
            request[CALLER] = caller
            resp = await handler(request)
        except ApiError as e:
            resp = self._error(e)
        except web.HTTPException as e:
            resp = self._error(_http_error(e, self.limits.max_body_bytes))
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("the API handler for %s %s failed", request.method, request.path)
            resp = self._error(ApiError(500, "internal_error",
                                        "agentd failed to handle this request; see its log"))
        self.stats.requests[resp.status] += 1
        return resp

    def _error(self, e: ApiError) -> web.Response:
        headers = None
        if e.status == 403:
            self.stats.denied += 1
        if e.status == 429 and isinstance(e.details, dict):
            headers = {"Retry-After": str(max(1, round(e.details.get("retry_after_s", 1))))}
        return error_response(e, headers)

    def caller_of(self, peer: Peer) -> Caller:
        agent = self.controller.agent_of_pid(peer.pid)
        groups = auth.peer_groups(peer) if self.admin_gid is not None and peer.uid != 0 else set()
        return Caller(peer=peer, admin=auth.is_admin(peer, self.admin_gid, groups), agent=agent)

    def require(self, request: web.Request, action: Action, agent: str | None = None) -> Caller:
        caller: Caller = request[CALLER]
        owner = self.controller.agent_owner_uid(agent) if agent is not None else None
        d = auth.decide(action, caller, agent, owner,
                        self.admin_group if isinstance(self.admin_group, str) else None)
        if not d.allowed:
            log.info("Refused %s to %s: %s.", action.value, caller.describe(), d.reason)
            raise ApiError(403, "forbidden", d.reason)
        return caller

    def _visible(self, caller: Caller) -> Callable[[str | None], bool]:
        owners: dict[str, int | None] = {}

        def visible(agent: str | None) -> bool:
            if caller.role == "admin":
                return True
            if agent is not None and agent not in owners:
                owners[agent] = self.controller.agent_owner_uid(agent)
            return auth.can_see(caller, agent, owners.get(agent) if agent else None)

        return visible

    async def _body(self, request: web.Request, spec: dict[str, Field] | None) -> dict:
        if request.content_length is not None and request.content_length > self.limits.max_body_bytes:
            raise _too_large(self.limits.max_body_bytes)
        body = parse_json_body(await request.read())
        return check_body(body, spec) if spec is not None else body

    # --- handlers ----------------------------------------------------------------------

    async def h_status(self, request: web.Request) -> web.Response:
        check_query(dict(request.query), set())
        self.require(request, Action.STATUS)
        status = dict(self.controller.status())
        status.setdefault("api", {"socket": str(self.socket_path), **self.stats.to_json()})
        return json_response(status)

    async def h_agents(self, request: web.Request) -> web.Response:
        check_query(dict(request.query), set())
        self.require(request, Action.AGENT_LIST)
        visible = self._visible(request[CALLER])
        return json_response({"agents": [a for a in self.controller.agents()
                                         if visible(a.get("name"))]})

    async def h_register(self, request: web.Request) -> web.Response:
        caller = self.require(request, Action.AGENT_REGISTER)
        # Held from now (the headers; the body is not read yet): the caller may exit while
        # its body trickles in, and its pid then name another process (agentd.core.pidfd).
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        peer = PeerProcess.of_socket(sock, caller.peer.pid) if sock is not None else None
        if peer is None or not peer.alive():
            raise ApiError(403, "peer_gone", f"the process that opened this connection (pid {caller.peer.pid}) "
                           "has exited; its pid no longer identifies the caller: reconnect")
        with peer:
            body = await self._body(request, AGENT_BODY)
            if not peer.alive():
                raise ApiError(403, "peer_gone", f"the process that sent this request (pid {caller.peer.pid}) exited "
                               "before its body was read; nothing was registered")
            quota = None if caller.role == "admin" else (self.limits.live_agents_per_uid,
                                                         self.limits.agent_names_per_uid)
            agent = self.controller.register_agent(caller.peer.pid, caller.peer.uid,
                                                   body.get("name"), body.get("policy"), peer=peer, quota=quota)
        log.info("Registered %s as agent '%s'.", caller.describe(),
                 agent.get("name") if isinstance(agent, dict) else agent)
        return json_response(agent, status=201)

    def _find_agent(self, name: str) -> dict:
        for a in self.controller.agents():
            if a.get("name") == name:
                return a
        raise ApiError(404, "unknown_agent", f"there is no agent named {name!r}", "name")

    async def h_agent(self, request: web.Request) -> web.Response:
        check_query(dict(request.query), set())
        name = check_name(request.match_info["name"], "name")
        agent = self._find_agent(name)
        self.require(request, Action.AGENT_READ, name)
        return json_response(agent)

    async def h_toolcalls(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        check_query(q, {"agent", "live"})
        agent = check_name(q["agent"], "agent") if q.get("agent") else None
        live = query_bool(q, "live")
        if agent is not None:
            self.require(request, Action.AGENT_READ, agent)
        else:
            self.require(request, Action.TOOLCALL_LIST)
        visible = self._visible(request[CALLER])
        calls = [c for c in self.controller.tool_calls(agent, live) if visible(c.get("agent"))]
        return json_response({"tool_calls": calls})

    def _tool_call(self, request: web.Request, action: Action) -> tuple[str, dict]:
        check_query(dict(request.query), set())
        ident = check_toolcall_id(request.match_info["id"], "id")
        call = self.controller.tool_call(ident)
        self.require(request, action, call.get("agent"))
        return ident, call

    async def h_toolcall(self, request: web.Request) -> web.Response:
        _, call = self._tool_call(request, Action.TOOLCALL_READ)
        return json_response(call)

    async def h_explain(self, request: web.Request) -> web.Response:
        ident, _ = self._tool_call(request, Action.TOOLCALL_READ)
        return json_response(self.controller.explain(ident))

    async def h_cancel(self, request: web.Request) -> web.Response:
        ident, _ = self._tool_call(request, Action.TOOLCALL_CANCEL)
        body = await self._body(request, CANCEL_BODY)
        caller: Caller = request[CALLER]
        reason = body.get("reason") or f"cancelled through the API by uid {caller.peer.uid}"
        log.info("Cancelling tool call %s for %s: %s.", ident, caller.describe(), reason)
        return json_response(self.controller.cancel_tool_call(ident, reason))

    async def h_intent(self, request: web.Request) -> web.Response:
        check_query(dict(request.query), set())
        caller: Caller = request[CALLER]
        self.require(request, Action.INTENT, caller.agent)
        body = await self._body(request, None)
        claimed = body.pop("agent", None)
        if claimed is not None and claimed != caller.agent:
            raise ApiError(403, "forbidden",
                           f"{caller.describe()} may not declare intents for agent {claimed!r}; "
                           "the agent is taken from the caller's pid", "agent")
        return json_response(self.controller.declare_intent(caller.agent, caller.peer.pid, body))

    async def h_events(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        check_query(q, {"agent", "level", "follow", "limit"})
        agent = check_name(q["agent"], "agent") if q.get("agent") else None
        level = query_level(q)
        follow = query_bool(q, "follow")
        limit = query_int(q, "limit", 0 if follow else 100, 0, 10_000)
        caller = self.require(request, Action.EVENTS, agent)
        if caller.role == "agent":
            agent = caller.agent
        see = self._visible(caller)

        def visible(ev: dict) -> bool:
            return (level_at_least(ev.get("level", "info"), level)
                    and (agent is None or ev.get("agent") == agent) and see(ev.get("agent")))

        if follow:
            self._admit_stream(caller)
        recent = []
        if limit:
            getter = getattr(self.controller, "recent_events", None)
            if getter is not None:
                recent = [e for e in getter(agent, level, limit) if visible(e)][-limit:]
        if not follow:
            text = "".join(dumps(e) + "\n" for e in recent)
            return web.Response(text=text, content_type=NDJSON)
        return await self._follow(request, agent, level, visible, recent, caller)

    def _admit_stream(self, caller: Caller) -> None:
        """Streams are shared out: a uid gets at most max_streams_per_uid, and the last
        streams_kept_for_admins are admins' only, so no user can take root's stream."""
        lim = self.limits
        if caller.role != "admin":
            mine = sum(1 for f in self.followers if f.uid == caller.peer.uid and not f.admin)
            if mine >= lim.max_streams_per_uid:
                self.stats.streams_refused += 1
                raise ApiError(429, "too_many_streams",
                               f"uid {caller.peer.uid} already has {mine} event streams open (the "
                               "limit per user); close one first")
            shared = lim.max_streams - lim.streams_kept_for_admins
            if sum(1 for f in self.followers if not f.admin) >= shared:
                self.stats.streams_refused += 1
                raise ApiError(503, "too_many_streams",
                               f"agentd already serves {shared} event streams to users (the limit; "
                               "the rest are kept for admins); retry later")
        if len(self.followers) >= lim.max_streams:
            self.stats.streams_refused += 1
            raise ApiError(503, "too_many_streams",
                           f"agentd already serves {len(self.followers)} event streams (the "
                           "limit); close one or retry later")

    async def _follow(self, request: web.Request, agent: str | None, level: str,
                      visible: Callable[[dict], bool], recent: list[dict],
                      caller: Caller) -> web.StreamResponse:
        queue = self.controller.subscribe(agent, level)
        follower = _Follower(queue, visible, self.limits.stream_queue, self.stats,
                             caller.peer.uid, caller.role == "admin")
        idle_limit = None if follower.admin else self.limits.stream_idle_timeout_s
        last_sent = time.monotonic()
        follower.buf.extend(recent)
        self.followers.add(follower)
        self.stats.streams_open = len(self.followers)
        resp = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"})
        try:
            await asyncio.wait_for(resp.prepare(request), self.limits.write_timeout_s)
            while not follower.closing:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                lines = follower.take()
                if not lines:
                    if idle_limit is not None and time.monotonic() - last_sent > idle_limit:
                        log.info("Closed an event stream of uid %d: no event for %.0f s.",
                                 follower.uid, idle_limit)
                        break
                    follower.wake.clear()
                    try:
                        await asyncio.wait_for(follower.wake.wait(), 1.0)
                    except asyncio.TimeoutError:
                        pass
                    continue
                await asyncio.wait_for(resp.write(("\n".join(lines) + "\n").encode()),
                                       self.limits.write_timeout_s)
                self.stats.stream_events_sent += len(lines)
                last_sent = time.monotonic()
        except asyncio.TimeoutError:
            self.stats.stream_write_timeouts += 1
            log.warning("Dropped an event stream: the client read nothing for %.0f s.",
                        self.limits.write_timeout_s)
            if request.transport is not None:
                request.transport.abort()
        except (ConnectionError, RuntimeError):
            pass  # the client went away mid-write
        finally:
            follower.close()
            self.followers.discard(follower)
            self.stats.streams_open = len(self.followers)
            try:
                self.controller.unsubscribe(queue)
            except Exception:
                log.exception("controller.unsubscribe failed")
        return resp

    async def h_policies(self, request: web.Request) -> web.Response:
        check_query(dict(request.query), set())
        self.require(request, Action.POLICY_READ)
        return json_response({"policies": self.controller.policy_list()})

    async def h_policy(self, request: web.Request) -> web.Response:
        check_query(dict(request.query), set())
        name = check_name(request.match_info["name"], "name")
        self.require(request, Action.POLICY_READ)
        return json_response(self.controller.policy_get(name))

    async def h_policy_validate(self, request: web.Request) -> web.Response:
        caller = self.require(request, Action.POLICY_VALIDATE)
        with self._policy_parse(caller):
            body = await self._body(request, POLICY_BODY)
            problems = await _result(self.controller.policy_validate(body["text"], body["filename"]))
        return json_response({"valid": not problems, "problems": problems})

    async def h_policy_apply(self, request: web.Request) -> web.Response:
        caller = self.require(request, Action.POLICY_APPLY)
        body = await self._body(request, POLICY_BODY)
        result = await _result(self.controller.policy_apply(body["text"], body["filename"]))
        log.info("Applied policy file %s for %s.", body["filename"], caller.describe())
        return json_response(result)

    async def h_policy_diff(self, request: web.Request) -> web.Response:
        caller = self.require(request, Action.POLICY_READ)
        with self._policy_parse(caller):
            body = await self._body(request, POLICY_BODY)
            return json_response(await _result(self.controller.policy_diff(body["text"],
                                                                           body["filename"])))

    @contextlib.contextmanager
    def _policy_parse(self, caller: Caller):
        """A non-admin's policy parse: rate-limited per uid, one at a time per uid, and a
        bounded number at once for all non-admins (the parse pool keeps a worker for admins)."""
        if caller.role == "admin":
            yield
            return
        uid, lim = caller.peer.uid, self.limits
        wait = self.policy_rate.check(uid)
        if wait > 0:
            self.stats.rate_limited += 1
            raise ApiError(429, "rate_limited",
                           f"too many policy validations from uid {uid}; retry in {wait:.2f} s",
                           details={"retry_after_s": round(wait, 3)})
        if (self._policy_parses[uid] >= lim.policy_parses_per_uid
                or sum(self._policy_parses.values()) >= lim.policy_parses_non_admin):
            self.stats.rate_limited += 1
            raise ApiError(429, "rate_limited",
                           f"agentd is already parsing a policy for uid {uid} or for other users; "
                           "retry in a second", details={"retry_after_s": 1.0})
        self._policy_parses[uid] += 1
        try:
            yield
        finally:
            self._policy_parses[uid] -= 1
            if self._policy_parses[uid] <= 0:
                del self._policy_parses[uid]

    async def h_metrics(self, request: web.Request) -> web.Response:
        self.require(request, Action.METRICS)
        return await self._metrics_response(request)

    async def _metrics_response(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# --- helpers -------------------------------------------------------------------------------


async def _result(value: Any) -> Any:
    """A controller method's result: the daemon's policy methods are coroutines (they parse
    in a worker process), a fake controller's may be plain values."""
    return await value if inspect.isawaitable(value) else value


def _resolve(group: str | int | None, what: str) -> int | None:
    try:
        return auth.resolve_group(group)
    except KeyError:
        raise ValueError(f"the {what} {group!r} does not exist on this host") from None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large",
                    f"the request body is larger than the limit of {limit // 1024} KiB")


def _http_error(e: web.HTTPException, max_body: int) -> ApiError:
    if e.status == 413:
        return _too_large(max_body)
    if e.status == 404:
        return ApiError(404, "not_found", "no such API route; see `agentctl --help`")
    if e.status == 405:
        method = getattr(e, "method", "this method")
        allowed = ", ".join(sorted(getattr(e, "allowed_methods", ()) or ()))
        return ApiError(405, "method_not_allowed",
                        f"this route does not accept {method} (it accepts {allowed})")
    code = re.sub(r"[^a-z]+", "_", (e.reason or "http error").lower()).strip("_")
    return ApiError(e.status, code or "http_error", e.text or e.reason or "HTTP error")


def parse_listen(spec: str) -> tuple[str, int]:
    """'127.0.0.1:9464', '[::1]:9464' or ':9464' (all addresses) to (host, port)."""
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics listen address {spec!r} must look like 127.0.0.1:9464")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def socket_line(path: Path, admin_group: str | None) -> str:
    """How the socket is protected, for `agentctl status`: who may connect, and how each
    request's caller is known."""
    try:
        st = os.stat(path)
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        who = f"{stat.S_IMODE(st.st_mode):04o}, group {group}"
    except OSError as exc:
        who = os.strerror(exc.errno or 0)
    admins = "uid 0" + (f" and group {admin_group}" if admin_group else "")
    return (f"socket: {path} ({who}: who may connect; callers known by SO_PEERCRED, an agent by its cgroup's id, "
            f"a registering process held by a pidfd; admins: {admins}; per-uid limits on connections, "
            "streams and policy validations)")


def bind_unix_socket(path: Path, mode: int, gid: int | None) -> socket.socket:
    """Bind a listening socket that appears at `path` with its final mode and group.

    It is bound under a temporary name, given its mode and group, then renamed into place,
    so no client ever sees it with looser permissions.
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o755)
        os.chmod(path.parent, 0o755)
    if os.path.lexists(path):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"{path} exists and is not a socket; remove it and start again")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise RuntimeError(f"another agentd already serves {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # stale: its daemon is gone
        finally:
            probe.close()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, mode)
        if gid is not None:
            os.chown(tmp, -1, gid)
        os.rename(tmp, path)
        sock.listen(512)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return sock


async def start_api(controller: Controller, socket_path: str | os.PathLike = DEFAULT_SOCKET, *,
                    admin_group: str | int | None = None, sock_group: str | int | None = None,
                    limits: ApiLimits = ApiLimits(),
                    metrics_listen: str | None = None) -> ApiServer:
    """Serve the API on `socket_path` from the running event loop; `await server.stop()`."""
    server = ApiServer(controller, socket_path, admin_group=admin_group, sock_group=sock_group,
                       limits=limits, metrics_listen=metrics_listen)
    await server.start()
    return server
