"""The real aiohttp server on a real Unix socket, with real peer credentials.

Behind it runs the real daemon in-process (tests.daemon_thread): these tests are about the
control plane (authorization, validation, bounds, streams) in front of the daemon's own
command set. Agents are real processes (`agentctl run`, or a forked child the daemon adopts
through its command set); requests from other uids and from agents come from forked children.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agentd import __version__
from agentd.api.client import ApiClient, ApiClientError, _UnixConnection
from agentd.api.limits import ApiLimits
from agentd.api.server import start_api
from tests.daemon_thread import DaemonThread, test_config, tmp  # noqa: F401 - tmp is a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="peer-credential tests fork "
                                "children that switch to uid 65534, which needs root")

NOBODY = 65534
OTHER = 1000  # a second user: a2's owner
POLICY = "version: 1\nname: {name}\ntoolcalls:\n  defaults: {{pids_max: 64}}\n"


def serve(tmp, limits=None, **config):
    """The real daemon (not started yet) with its socket (group nogroup, 0660) in <tmp>/run,
    a policy directory to apply into, and the API bounds given."""
    d, leaf = tmp
    return DaemonThread(test_config(d, leaf, policy_dir=Path(d, "policies.d"), **config),
                        api_limits=limits or ApiLimits())


@pytest.fixture
def srv(tmp):
    with serve(tmp) as s:
        yield s


@pytest.fixture
def agents(srv):
    """a1 (root's) and a2 (uid 1000's), each with a live tool call: {name: tool call id}."""
    srv.start_agent("a1")
    srv.start_agent("a2", uid=OTHER)
    return {name: srv.live_tool_call(name) for name in ("a1", "a2")}


def adopt(s, name):
    """in_child's `before`: the daemon manages the child as agent `name` (root's), through
    its own command set, before the child sends anything."""
    return lambda pid: s.call(s.controller.register_agent, pid, 0, name, None)


def raw(path, method, url, body=b"", headers=None):
    """One request with an exact body; returns (status, parsed JSON or text, headers)."""
    conn = _UnixConnection(path, 10)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = data.decode()
    return resp.status, parsed, dict(resp.getheaders())


def in_child(fn, uid=None, before=None, gid=None, groups=()):
    """Run fn() in a forked child (as `uid` if given); return what it returned (JSON).

    `before(pid)` runs in the parent after the fork and before the child starts, e.g. to
    make the child an agent (adopt).
    """
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest, no exceptions escaping
        code = 0
        try:
            os.close(go_w)
            os.close(res_r)
            os.read(go_r, 1)
            if uid is not None:
                os.setgroups(list(groups))
                os.setgid(uid if gid is None else gid)
                os.setuid(uid)
            out = json.dumps(fn()).encode()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = json.dumps({"child_error": repr(e)}).encode()
            code = 1
        with os.fdopen(res_w, "wb") as f:
            f.write(out)
        os._exit(code)
    os.close(go_r)
    os.close(res_w)
    try:
        if before is not None:
            before(pid)
    finally:
        os.write(go_w, b"g")
        os.close(go_w)
    with os.fdopen(res_r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert not (isinstance(result, dict) and "child_error" in result), result
    return result


def outcome(call):
    """(status, code) of a client call: 200 for success."""
    try:
        call()
        return [200, "ok"]
    except ApiClientError as e:
        return [e.status, e.code]


def _unchanged(s, agents=()):
    """Nothing a refused request could have changed did: the policies, the agents, and no
    journal event of a change."""
    c = ApiClient(s.socket_path)
    assert [p["name"] for p in c.policies()] == ["default"]
    assert sorted(a["name"] for a in c.agents()) == sorted(agents)
    changes = ("policy.applied", "agent.registered", "intent.clipped", "toolcall.end")
    kinds = [e["kind"] for e in c.recent_events(level="debug", limit=1000)]
    assert [k for k in kinds if k in changes] == ["agent.registered"] * len(agents), kinds
    return True


# --- socket ---------------------------------------------------------------------------------


def test_socket_has_mode_0660_and_the_configured_group(srv):
    st = os.stat(srv.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == NOBODY  # nogroup
    assert stat.S_IMODE(os.stat(os.path.dirname(srv.socket_path)).st_mode) == 0o755


def test_a_second_server_on_the_same_socket_is_refused_and_a_stale_one_replaced(tmp):
    with serve(tmp) as s:
        with pytest.raises(RuntimeError, match="already serves"):
            asyncio.run(start_api(s.controller, s.socket_path, sock_group="nogroup"))
        assert ApiClient(s.socket_path).status()["version"] == __version__
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(s.socket_path)  # a socket file nobody listens on, as after a crash
    stale.close()
    with serve(tmp) as s:
        assert ApiClient(s.socket_path).status()["version"] == __version__
    assert not os.path.exists(s.socket_path)  # removed on stop


# --- who may do what ------------------------------------------------------------------------


def test_root_may_read_everything_and_apply_policies(srv, agents):
    c = ApiClient(srv.socket_path)
    assert c.status()["tracker"]["backend"] == "cn_proc"
    assert {a["name"] for a in c.agents()} == {"a1", "a2"}
    assert {t["id"] for t in c.tool_calls(live=True)} == set(agents.values())
    [start] = [d for d in c.explain(agents["a1"])["decisions"] if d["kind"] == "toolcall.start"]
    assert start["data"]["limits"]["memory_max"] == 512 << 20  # the default policy's
    assert c.policy_apply(POLICY.format(name="gpu"), "gpu.yaml")["name"] == "gpu"
    assert [p["name"] for p in c.policies()] == ["default", "gpu"]
    assert "agentd_agents_live 2.0" in c.metrics()


def test_a_non_root_user_gets_403_for_policy_apply_and_changes_nothing(srv, agents):
    path, a2_call = srv.socket_path, agents["a2"]

    def as_nobody():
        c = ApiClient(path)
        return {
            "apply": outcome(lambda: c.policy_apply(POLICY.format(name="evil"), "evil.yaml")),
            "status": outcome(c.status),
            "read_a1": outcome(lambda: c.agent("a1")),
            "cancel_a2": outcome(lambda: c.cancel(a2_call)),
            "metrics": outcome(c.metrics),
            "agents": [a["name"] for a in c.agents()],
            "validate": c.policy_validate(POLICY.format(name="x"), "x.yaml")["valid"],
        }

    got = in_child(as_nobody, uid=NOBODY)
    assert got["apply"] == [403, "forbidden"]
    assert got["status"] == [403, "forbidden"]
    assert got["read_a1"] == [403, "forbidden"]
    assert got["cancel_a2"] == [403, "forbidden"]  # a2 belongs to uid 1000
    assert got["metrics"] == [403, "forbidden"]
    assert got["agents"] == []  # sees no one else's agents
    assert got["validate"] is True  # checking a policy changes nothing: anyone may
    assert _unchanged(srv, agents)
    assert ApiClient(path).tool_call(a2_call)["state"] != "done"


def test_the_403_says_why(srv):
    path = srv.socket_path

    def as_nobody():
        try:
            ApiClient(path).policy_apply(POLICY.format(name="x"), "x.yaml")
        except ApiClientError as e:
            return e.message
        return "allowed"

    message = in_child(as_nobody, uid=NOBODY)
    assert "reserved to root" in message and f"uid {NOBODY}" in message


def test_any_user_may_register_an_agent_it_then_owns_with_its_own_pid(srv, agents):
    path = srv.socket_path

    def as_nobody():
        c = ApiClient(path)
        agent = c.register_agent(name="mine")
        return {"agent": agent, "pid": os.getpid(), "read_own": c.agent("mine")["name"],
                "listed": [a["name"] for a in c.agents()],
                "events": [e["agent"] for e in c.recent_events(level="debug")],
                "calls": [t["agent"] for t in c.tool_calls()]}

    got = in_child(as_nobody, uid=NOBODY)
    assert got["agent"]["uid"] == NOBODY
    assert got["agent"]["main_pid"] == got["pid"]  # the peer's pid, not anything from the body
    [mine] = [a for a in ApiClient(path).agents() if a["name"] == "mine"]
    assert (mine["uid"], mine["main_pid"]) == (NOBODY, got["pid"])
    assert got["listed"] == ["mine"]
    assert set(got["events"]) == {"mine"}  # its registration, not a1's or a2's events
    assert got["calls"] == []  # a1's and a2's tool calls are hidden


def test_a_managed_agent_may_declare_intent_but_not_read_another_agent(srv, agents):
    path = srv.socket_path

    def as_agent():
        c = ApiClient(path)
        return {
            "intent": c.declare_intent({"tool": "pytest", "memory": 8 << 30}),
            "read_a2": outcome(lambda: c.agent("a2")),
            "read_own": outcome(lambda: c.agent("ag")),
            "claims_a2": outcome(lambda: c.declare_intent({"agent": "a2", "cpu": 1})),
            "apply": outcome(lambda: c.policy_apply(POLICY.format(name="x"), "x.yaml")),
            "register": outcome(lambda: c.register_agent(name="nested")),
            "events_a2": outcome(lambda: c.recent_events(agent="a2")),
            "wrong_type": outcome(lambda: c.declare_intent({"memory": "lots"})),
            "unknown": outcome(lambda: c.declare_intent({"colour": "red"})),
            "not_object": raw(path, "POST", "/v1/intents", b"[1]")[1]["error"]["code"],
            "agents": [a["name"] for a in c.agents()],
        }

    got = in_child(as_agent, before=adopt(srv, "ag"))
    assert got["intent"]["agent"] == "ag"
    assert got["intent"]["clips"][0]["field"] == "memory_high"  # above the default policy's ceiling
    assert got["read_a2"] == [403, "forbidden"]
    assert got["read_own"] == [200, "ok"]
    assert got["claims_a2"] == [403, "forbidden"]
    assert got["apply"] == [403, "forbidden"]  # even though the child is root
    assert got["register"] == [403, "forbidden"]
    assert got["events_a2"] == [403, "forbidden"]
    assert got["wrong_type"] == [400, "invalid_intent"]  # the controller's checks, passed through
    assert got["unknown"] == [400, "invalid_intent"]
    assert got["not_object"] == "invalid_body"
    assert got["agents"] == ["ag"]
    clipped = [e for e in ApiClient(path).recent_events(agent="ag") if e["kind"] == "intent.clipped"]
    assert [e["data"]["requested"] for e in clipped] == [8 << 30]  # the one accepted intent


def test_an_admin_outside_any_agent_cannot_declare_an_intent(srv):
    with pytest.raises(ApiClientError) as e:
        ApiClient(srv.socket_path).declare_intent({"memory": 1 << 30})
    assert e.value.status == 403 and "agentctl run" in e.value.message


# --- bad input: a clear error, nothing changed ------------------------------------------------


@pytest.mark.parametrize("body, code, field", [
    (b"{not json", "invalid_json", None),
    (b"\xff\xfe", "invalid_json", None),
    (b"[1, 2]", "invalid_body", None),
    (b'{"filename": "p.yaml"}', "missing_field", "text"),
    (b'{"filename": 7, "text": "x"}', "invalid_type", "filename"),
    (b'{"filename": "p.yaml", "text": ["x"]}', "invalid_type", "text"),
    (b'{"filename": "p.yaml", "text": "x", "force": true}', "unknown_field", "force"),
    (b'{"filename": "../../etc/cron.d/x", "text": "x"}', "invalid_name", "filename"),
    (b'{"filename": "..", "text": "x"}', "invalid_name", "filename"),
])
def test_bad_policy_bodies_get_400_with_the_field(srv, body, code, field):
    status, data, _ = raw(srv.socket_path, "POST", "/v1/policies/apply", body,
                          {"Content-Type": "application/json"})
    assert status == 400
    assert data["error"]["code"] == code
    assert data["error"].get("field") == field
    assert data["error"]["message"]
    assert _unchanged(srv)


def test_wrong_types_in_agent_registration_and_cancel(srv, agents):
    s, a1 = srv.socket_path, agents["a1"].replace("/", "%2F")
    assert raw(s, "POST", "/v1/agents", b'{"name": 5}')[1]["error"]["field"] == "name"
    assert raw(s, "POST", "/v1/agents", b'{"name": true}')[1]["error"]["code"] == "invalid_type"
    assert raw(s, "POST", "/v1/agents", b'{"nmae": "x"}')[1]["error"] == {
        "code": "unknown_field", "message": "unknown field 'nmae' (allowed: name, policy)",
        "field": "nmae"}
    assert raw(s, "POST", f"/v1/toolcalls/{a1}/cancel", b'{"reason": 1}')[0] == 400
    assert raw(s, "GET", "/v1/toolcalls?live=maybe")[1]["error"]["field"] == "live"
    assert raw(s, "GET", "/v1/events?level=loud")[1]["error"]["code"] == "invalid_level"
    assert raw(s, "GET", "/v1/agents?x=1")[1]["error"]["code"] == "unknown_parameter"
    assert _unchanged(srv, agents)


@pytest.mark.parametrize("url", [
    "/v1/agents/..%2Fx", "/v1/agents/..", "/v1/policies/..%2F..%2Fetc%2Fpasswd",
    "/v1/toolcalls/..%2F0001-pytest", "/v1/toolcalls?agent=../x", "/v1/events?agent=..%2Fa1",
])
def test_path_traversal_in_names_is_refused(srv, url):
    status, data, _ = raw(srv.socket_path, "GET", url)
    assert status == 400, data
    assert data["error"]["code"] == "invalid_name"


def test_unencoded_dot_dot_never_reaches_a_handler(srv):
    status, data, _ = raw(srv.socket_path, "GET", "/v1/agents/../status")
    assert status in (400, 404) and "error" in data


def test_register_with_a_traversal_name_is_refused(srv):
    status, data, _ = raw(srv.socket_path, "POST", "/v1/agents", b'{"name": "../../x"}')
    assert (status, data["error"]["code"], data["error"]["field"]) == (400, "invalid_name", "name")
    assert _unchanged(srv)


def test_a_huge_body_gets_413_and_changes_nothing(srv):
    body = json.dumps({"filename": "big.yaml", "text": "x" * (300 * 1024)}).encode()
    status, data, _ = raw(srv.socket_path, "POST", "/v1/policies/apply", body)
    assert status == 413 and data["error"]["code"] == "body_too_large"
    assert _unchanged(srv)
    assert ApiClient(srv.socket_path).status()["version"] == __version__


def test_a_huge_chunked_body_without_length_gets_413(srv):
    chunk = b"x" * 65536
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(srv.socket_path)
        sock.sendall(b"POST /v1/policies/apply HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n")
        try:
            for _ in range(8):  # 512 KiB
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before the rest is sent
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"body_too_large" in reply
    assert _unchanged(srv)


def test_unknown_routes_and_methods_are_json_errors(srv):
    assert raw(srv.socket_path, "GET", "/v2/nothing")[1]["error"]["code"] == "not_found"
    status, data, _ = raw(srv.socket_path, "DELETE", "/v1/status")
    assert status == 405 and data["error"]["code"] == "method_not_allowed"


def test_a_controller_crash_is_a_500_and_the_server_stays_up(srv, agents):
    srv.controller.explain = lambda ident: 1 / 0
    status, data, _ = raw(srv.socket_path, "GET", f"/v1/toolcalls/{agents['a1'].replace('/', '%2F')}/explain")
    assert status == 500 and data["error"]["code"] == "internal_error"
    assert ApiClient(srv.socket_path).status()["version"] == __version__


# --- bounds -------------------------------------------------------------------------------


def test_rate_limit_answers_429_per_uid(tmp):
    with serve(tmp, ApiLimits(rate_per_s=0.1, rate_burst=5)) as s:
        codes = [raw(s.socket_path, "GET", "/v1/agents") for _ in range(12)]
        statuses = [c[0] for c in codes]
        assert statuses[:5] == [200] * 5
        assert statuses[5:].count(429) >= 6
        limited = next(c for c in codes if c[0] == 429)
        assert limited[1]["error"]["code"] == "rate_limited"
        assert int(limited[2]["Retry-After"]) >= 1
        # another uid has its own bucket
        path = s.socket_path
        other = in_child(lambda: raw(path, "GET", "/v1/agents")[0], uid=NOBODY)
        assert other == 200


def test_two_hundred_clients_at_once_each_get_an_answer(srv, agents):
    barrier = threading.Barrier(200)

    def one(i):
        c = ApiClient(srv.socket_path, timeout=30)
        barrier.wait()
        if i % 2:
            return c.status()["version"]
        return len(c.tool_calls())

    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(one, range(200)))
    assert results.count(__version__) == 100 and results.count(2) == 100
    assert ApiClient(srv.socket_path).status()["api"]["requests"]["200"] >= 200


def test_open_streams_are_bounded_with_503(tmp):
    with serve(tmp, ApiLimits(max_streams=2)) as s:
        c = ApiClient(s.socket_path)
        streams = [c.follow_events() for _ in range(2)]
        for st in streams:  # start them: the request is sent on the first next()
            threading.Thread(target=lambda st=st: next(st, None), daemon=True).start()
        deadline = time.time() + 5
        while len(s.server.followers) < 2 and time.time() < deadline:
            time.sleep(0.02)
        with pytest.raises(ApiClientError) as e:
            next(c.follow_events())
        assert e.value.status == 503 and e.value.code == "too_many_streams"
        assert c.status()["api"]["streams_refused"] == 1


# --- streams ------------------------------------------------------------------------------


def _open_stream(path, query="follow=1"):
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(f"GET /v1/events?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def _wait(pred, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_events_follow_filters_by_level_and_agent(srv):
    c = ApiClient(srv.socket_path)
    got = []
    stream = c.follow_events(agent="a1", level="warn")

    def reader():
        for ev in stream:
            got.append(ev)
            if len(got) == 2:
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert _wait(lambda: srv.subscribers() == 1)
    srv.emit("toolcall.start", "info, hidden", agent="a1")
    srv.emit("toolcall.throttled", "warn a2, hidden", agent="a2",
             level="warn")
    srv.emit("toolcall.throttled", "shown 1", agent="a1", level="warn")
    srv.emit("toolcall.killed", "shown 2", agent="a1", level="error")
    t.join(10)
    assert [e["message"] for e in got] == ["shown 1", "shown 2"]
    recent = c.recent_events(level="warn")
    assert {e["level"] for e in recent} <= {"warn", "error"} and recent


def test_a_client_disconnecting_mid_stream_is_cleaned_up(srv):
    sock = _open_stream(srv.socket_path)
    assert _wait(lambda: len(srv.server.followers) == 1)
    srv.emit("toolcall.start", "one", agent="a1")
    assert b"one" in sock.recv(4096)
    sock.close()  # vanishes mid-stream
    for i in range(50):
        srv.emit("toolcall.start", f"after {i}", agent="a1")
    assert _wait(lambda: not srv.server.followers)
    assert srv.subscribers() == 0  # unsubscribed
    assert ApiClient(srv.socket_path).status()["api"]["streams_open"] == 0


def test_a_slow_follower_loses_the_oldest_events_and_is_told_how_many(tmp):
    with serve(tmp, ApiLimits(stream_queue=16, write_timeout_s=30)) as s:
        sock = _open_stream(s.socket_path)
        assert _wait(lambda: len(s.server.followers) == 1)
        total = 20000
        payload = "p" * 200

        async def flood():
            import asyncio
            for i in range(total):
                s.daemon.journal.emit("toolcall.start", payload, agent="a1", n=i)
                if i % 1000 == 999:
                    await asyncio.sleep(0)  # let the pump run, as the real journal does

        s.call(flood)
        received, dropped, buf = [], 0, b""
        sock.settimeout(2)
        while True:
            try:
                data = sock.recv(1 << 20)
            except socket.timeout:
                break
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.startswith(b"{"):
                    ev = json.loads(line)
                    received.append(ev["data"]["n"])
                    dropped += ev.get("dropped", 0)
            if received and received[-1] == total - 1:
                break
        sock.close()
    assert dropped > 0, "a reader that did not keep up must be told it lost events"
    assert received == sorted(received)  # order kept
    assert len(received) + dropped == total  # every event delivered or counted


def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout(tmp):
    with serve(tmp, ApiLimits(stream_queue=100000, write_timeout_s=0.5)) as s:
        sock = _open_stream(s.socket_path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert _wait(lambda: len(s.server.followers) == 1)
        big = "x" * 4000

        async def flood():
            import asyncio
            for i in range(3000):  # ~12 MB: more than the socket buffers hold
                s.daemon.journal.emit("toolcall.start", big, agent="a1", n=i)
                if i % 100 == 99:
                    await asyncio.sleep(0)

        s.call(flood)
        assert _wait(lambda: not s.server.followers, timeout=15)
        assert s.server.stats.stream_write_timeouts == 1
        assert ApiClient(s.socket_path).status()["version"] == __version__  # the loop never stalled
        sock.close()


# --- metrics ------------------------------------------------------------------------------


def test_metrics_combine_controller_and_api_counters(srv, agents):
    text = ApiClient(srv.socket_path).metrics()
    assert "# TYPE agentd_agents_live gauge" in text and "agentd_agents_live 2.0" in text
    assert "agentd_agents_registered_total 2.0" in text
    assert "agentd_toolcalls_live 2.0" in text
    assert "agentd_api_streams_open 0.0" in text


def test_metrics_tcp_listener_is_off_by_default_and_serves_only_metrics(tmp):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with serve(tmp, metrics_listen=f"127.0.0.1:{port}"):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and b"agentd_agents_live" in resp.read()
        conn.request("GET", "/v1/status")
        resp = conn.getresponse()
        assert resp.status == 404
        resp.read()
        conn.close()
    with serve(tmp) as s:
        assert s.server.metrics_listen is None
        assert len(s.server._runners) == 1


def test_stopping_the_server_ends_open_streams_promptly(tmp):
    s = serve(tmp).start()
    sock = _open_stream(s.socket_path)
    assert _wait(lambda: len(s.server.followers) == 1)
    t0 = time.monotonic()
    s.stop()
    assert time.monotonic() - t0 < 5
    sock.settimeout(5)
    tail = b""
    while chunk := sock.recv(65536):
        tail += chunk
    assert tail.endswith(b"0\r\n\r\n") or tail == b""  # chunked end, or closed
    sock.close()
    assert not os.path.exists(s.socket_path)


def test_open_connections_are_capped_per_uid(tmp):
    with serve(tmp, ApiLimits(max_connections_per_uid=5)) as s:
        held = []
        for _ in range(5):
            c = socket.socket(socket.AF_UNIX)
            c.connect(s.socket_path)
            held.append(c)
        assert _wait(lambda: s.server._connections.get(0) == 5)
        extra = socket.socket(socket.AF_UNIX)
        extra.settimeout(5)
        extra.connect(s.socket_path)
        reply = extra.recv(4096)
        extra.close()
        assert reply.startswith(b"HTTP/1.1 503") and b"too_many_connections" in reply
        # another uid is not affected
        path = s.socket_path
        assert in_child(lambda: raw(path, "GET", "/v1/agents")[0], uid=NOBODY) == 200
        for c in held:  # closing frees the slots
            c.close()
        assert _wait(lambda: not s.server._connections.get(0))
        assert ApiClient(s.socket_path).status()["api"]["connections_refused"] == 1


@pytest.mark.parametrize("sent", [b"", b"GET /v1/status HTTP/1.1\r\nHost: x\r\n"])
def test_idle_and_half_sent_requests_are_closed_after_the_idle_timeout(tmp, sent):
    with serve(tmp, ApiLimits(idle_timeout_s=0.5)) as s:
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(10)
            c.connect(s.socket_path)
            c.sendall(sent)
            t0 = time.monotonic()
            assert c.recv(100) == b""  # closed by the server, no answer to half a request
            assert time.monotonic() - t0 < 5
        assert _wait(lambda: not s.server._connections)


@pytest.mark.parametrize("garbage", [b"HELLO\r\n\r\n", b"GET /v1/status HTTP/9.9\r\n\r\n",
                                     b"GET /v1/" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
                                     b"\x00\xff\x16\x03\x01 tls?\r\n\r\n"])
def test_malformed_http_gets_400_and_the_server_stays_up(srv, garbage):
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(10)
        c.connect(srv.socket_path)
        c.sendall(garbage)
        reply = c.recv(4096)
    assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n")[0]
    status = ApiClient(srv.socket_path).status()
    assert status["version"] == __version__
    assert status["api"]["bad_http"] == 1  # counted, not a traceback in the daemon's log
    assert _unchanged(srv)


def test_a_busy_agent_does_not_use_up_its_uid_s_rate(tmp):
    with serve(tmp, ApiLimits(rate_per_s=0.1, rate_burst=3)) as s:
        path = s.socket_path

        def flood_as_agent():
            return [raw(path, "GET", "/v1/agents/a1")[0] for _ in range(6)]

        got = in_child(flood_as_agent, before=adopt(s, "a1"))
        assert got[:3] == [200] * 3 and got[3:].count(429) >= 2
        # root outside the agent (same uid 0) still has its whole burst
        assert [raw(path, "GET", "/v1/agents")[0] for _ in range(3)] == [200] * 3


def test_members_of_the_admin_group_may_apply_policies(tmp):
    with serve(tmp, admin_group="nogroup") as s:
        s.start_agent("a1")
        path = s.socket_path

        def as_member():  # uid 65534, supplementary group nogroup (65534) via setgid
            c = ApiClient(path)
            return {"apply": c.policy_apply(POLICY.format(name="ops"), "ops.yaml")["name"],
                    "status": outcome(c.status), "agents": len(c.agents())}

        got = in_child(as_member, uid=NOBODY)
        assert got == {"apply": "ops", "status": [200, "ok"], "agents": 1}  # root's a1 too
        assert "ops" in [p["name"] for p in ApiClient(path).policies()]
        # membership as a supplementary group (read from /proc/<pid>/status), primary gid 1
        got = in_child(as_member, uid=NOBODY, gid=1, groups=[NOBODY])
        assert got["status"] == [200, "ok"]
        # and not a member at all
        assert in_child(lambda: outcome(ApiClient(path).status), uid=NOBODY, gid=1,
                        groups=[]) == [0, "socket_permission_denied"]  # the 0660 socket


def test_an_unknown_admin_group_stops_the_server_from_starting(tmp):
    with pytest.raises(ValueError, match="admin group 'no-such-group' does not exist"):
        serve(tmp, admin_group="no-such-group").start()


def test_a_connection_outliving_the_process_that_opened_it_is_refused(srv):
    """SO_PEERCRED names the pid at connect time; once that process exits the pid may be
    reused, so a forked child still holding the socket must not act on its behalf."""
    path = srv.socket_path
    # the child connects, forks a grandchild that keeps the socket, and exits; the
    # grandchild asks once its parent is gone
    r_fd, w_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r_fd)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        me = os.getpid()  # read before the fork: the child may be gone by the time we look
        if os.fork() == 0:
            deadline = time.time() + 10
            while os.getppid() == me and time.time() < deadline:
                time.sleep(0.01)
            sock.sendall(b"GET /v1/agents HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(10)
            reply = sock.recv(4096)
            os.write(w_fd, reply)
            os._exit(0)
        os._exit(0)
    os.close(w_fd)
    os.waitpid(pid, 0)
    with os.fdopen(r_fd, "rb") as f:
        reply = f.read()
    assert reply.startswith(b"HTTP/1.1 403"), reply[:100]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "peer_gone"
