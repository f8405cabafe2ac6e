"""A policy kind served by the real daemon: its commands appear as /v1/<kind>/<command> on
the real socket, authorized from real peer credentials (a uid-65534 child), its hooks are
driven by the daemon's loop, its status and metrics are in the daemon's, and its persisted
state is re-adopted by the next daemon on the same state directory."""

from __future__ import annotations

import os
import time

import pytest

from agentd.api.client import ApiClient, ApiClientError
from agentd.kinds.registry import KindEntry
from tests.daemon_thread import DaemonThread, test_config, tmp  # noqa: F401 - tmp is a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root (cgroups, peer credentials)")

PROBE = KindEntry("probe", "tests.probe_kind")
NOBODY = 65534


def as_nobody(fn):
    """Run fn() in a forked child as uid 65534; return its result or ('error', status, code)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                out = repr(fn())
            except ApiClientError as e:
                out = repr(("error", e.status, e.code))
        except BaseException as e:  # noqa: BLE001
            out = repr(("crash", str(e)))
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return eval(data)  # noqa: S307 - our own child's repr of plain data


def test_kind_commands_hooks_status_and_readopt_through_the_real_daemon(tmp):
    d, leaf = tmp
    with DaemonThread(test_config(d, leaf, kinds=(PROBE,))) as dt:
        client = ApiClient(str(dt.config.socket_path))
        sock = str(dt.config.socket_path)
        # GET for anyone, with the caller as the daemon saw it.
        assert client.kind_get("probe", "show", who="root") == {"uid": 0, "role": "admin", "who": "root"}
        assert as_nobody(lambda: ApiClient(sock).kind_get("probe", "show")) == {"uid": NOBODY, "role": "user", "who": None}
        # POST reserved to admins: refused to uid 65534 before the handler runs.
        assert as_nobody(lambda: ApiClient(sock).kind_post("probe", "bump", {"by": 1})) == ("error", 403, "forbidden")
        assert dt.kind("probe").ctx.state.get("counter") is None
        # Body checked against the command's schema: unknown field, wrong type, handler's own 400.
        for body, code in (({"by": 1, "x": 2}, "unknown_field"), ({"by": "1"}, "invalid_type"), ({"by": -1}, "invalid_value")):
            with pytest.raises(ApiClientError) as e:
                client.kind_post("probe", "bump", body)
            assert (e.value.status, e.value.code) == (400, code), body
        assert client.kind_post("probe", "bump", {"by": 4}) == {"counter": 4}
        # An AGENT command from outside any agent.
        with pytest.raises(ApiClientError) as e:
            client.kind_post("probe", "mine", {})
        assert e.value.status == 403
        # Hooks driven by the loop: on_policy and readopt at start, ticks, journal records.
        time.sleep(0.5)
        hooks = [c[0] for c in dt.kind("probe").calls]
        assert hooks[:2] == ["on_policy", "readopt"] and "on_tick" in hooks
        assert any(c[0] == "on_event" and isinstance(c[1], dict) and c[1]["kind"] == "probe.changed" for c in dt.kind("probe").calls)
        status = client.status()
        assert status["kinds"]["probe"]["counter"] == 4 and status["kinds"]["probe"]["saved_settings"] == 1
        assert "agentd_probe_counter_total 4.0" in client.metrics()
    assert [c for c in dt.kind("probe").calls if c[0] == "stop"] == [("stop", False)]
    # The next daemon on the same state directory re-adopts the kind's state and saved values.
    with DaemonThread(test_config(d, leaf, kinds=(PROBE,))) as dt2:
        assert dt2.daemon.kind_readopt == {"probe": {"counter": 4}}
        [saved] = dt2.kind("probe").ctx.changes.saved()
        assert (saved.old, saved.new) == ("orig", "4")
