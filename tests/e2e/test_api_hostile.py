"""The API server against hostile callers (issue 8 items 6 and 9): bodies nested 100,000
deep, huge numbers and NaN on every POST route are 4xx JSON (they were 500s); a non-admin's
policy validations are rate-limited per uid with a clear 429; an idle user stream ends."""

from __future__ import annotations

import os
import socket
import time

import pytest

from agentd.api.client import ApiClient
from agentd.api.limits import ApiLimits
from tests.daemon_thread import tmp  # noqa: F401 - a fixture
from tests.e2e.test_api_server import NOBODY, in_child, raw, serve

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="forks children that switch to uid 65534")

POST_ROUTES = ["/v1/agents", "/v1/intents", "/v1/toolcalls/a1/0001-bash/cancel",
               "/v1/policies/validate", "/v1/policies/apply", "/v1/policies/diff"]
HOSTILE_BODIES = {
    "deep_object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep_array": b"[" * 100_000,
    "long_int": b'{"filename": "x.yaml", "text": "x", "n": ' + b"9" * 5000 + b"}",
    "nan": b'{"filename": "x.yaml", "text": NaN}',
    "huge_float": b'{"reason": 1e999}',
    "lone_surrogate": b'{"filename": "x.yaml", "text": "\\ud800"}',
}


@pytest.mark.parametrize("route", POST_ROUTES)
def test_hostile_bodies_are_4xx_json_on_every_route(tmp, route):
    with serve(tmp) as s:
        for name, body in HOSTILE_BODIES.items():
            t0 = time.monotonic()
            status, data, _ = raw(s.socket_path, "POST", route, body,
                                  {"Content-Type": "application/json"})
            assert 400 <= status < 500, (name, status, data)
            assert isinstance(data, dict) and data["error"]["code"], (name, data)
            assert time.monotonic() - t0 < 1.0
        assert s.server.stats.requests.get(500, 0) == 0


def test_non_admin_validations_are_rate_limited_per_uid_admins_are_not(tmp):
    limits = ApiLimits(policy_rate_per_s=1.0, policy_rate_burst=3)
    with serve(tmp, limits) as s:
        body = b'{"filename": "x.yaml", "text": "version: 1\\nname: x\\n"}'

        def burst():
            return [raw(s.socket_path, "POST", "/v1/policies/validate", body)[:2] for _ in range(6)]

        answers = in_child(burst, uid=NOBODY)
        assert [a[0] for a in answers] == [200, 200, 200, 429, 429, 429]
        assert "too many policy validations from uid 65534" in answers[3][1]["error"]["message"]
        assert all(raw(s.socket_path, "POST", "/v1/policies/validate", body)[0] == 200 for _ in range(10))


def _stream_as(path: str, seconds: float) -> dict:
    """Open a follow stream, report its status and whether it was closed within `seconds`."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(seconds)
    sock.connect(path)
    sock.sendall(b"GET /v1/events?follow=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    t0 = time.monotonic()
    try:
        while chunk := sock.recv(4096):
            data += chunk
            if data.endswith(b"0\r\n\r\n"):  # the chunked stream's end
                break
        closed = True
    except socket.timeout:
        closed = False
    return {"status": int(data.split(b" ")[1]), "closed": closed, "after": time.monotonic() - t0}


def test_an_idle_user_stream_ends_an_admin_stream_stays(tmp):
    with serve(tmp, ApiLimits(stream_idle_timeout_s=1.0)) as s:
        user = in_child(lambda: _stream_as(s.socket_path, 6.0), uid=NOBODY)
        assert user["status"] == 200 and user["closed"] and 1.0 <= user["after"] < 4.0, user
        admin = _stream_as(s.socket_path, 3.0)
        assert admin["status"] == 200 and not admin["closed"]
        assert ApiClient(s.socket_path).status()["api"]["streams_open"] <= 1
