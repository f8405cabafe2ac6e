"""A local user cannot make the root daemon hold agents without end: a non-admin uid may run
at most `live_agents_per_uid` agents at once and own at most `agent_names_per_uid` names
(each name keeps its record for good). Performed as uid 65534 through setpriv and
`agentctl run`, against the real daemon with small limits; root is not limited, and a user
may always run again under a name it owns."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentd.api.client import ApiClient
from agentd.api.limits import ApiLimits
from tests.daemon_thread import DaemonThread, test_config, tmp  # noqa: F401 - tmp is a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root (cgroups, peer credentials)")
REPO = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def _run(sock: str, name: str, *command: str, nobody: bool = True, wait: bool = True):
    argv = [sys.executable, "-m", "cli.agentctl", "--socket", sock, "run", "--name", name, "--", *command]
    p = subprocess.Popen([*NOBODY, *argv] if nobody else argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    if not wait:
        return p
    out, err = p.communicate(timeout=60)
    return p.returncode, err


def _state(sock: str, name: str) -> str | None:
    return next((a["state"] for a in ApiClient(sock).agents() if a["name"] == name), None)


def _wait_state(sock: str, name: str, state: str) -> None:
    deadline = time.monotonic() + 30
    while _state(sock, name) != state and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _state(sock, name) == state, (name, _state(sock, name))


def test_a_user_runs_a_bounded_number_of_agents_and_names_root_is_not_limited(tmp):  # noqa: F811
    d, leaf = tmp
    limits = ApiLimits(live_agents_per_uid=2, agent_names_per_uid=3)
    with DaemonThread(test_config(d, leaf), api_limits=limits) as dt:
        sock = dt.socket_path
        os.chmod(sock, 0o666)
        held = [_run(sock, name, "sleep", "60", wait=False) for name in ("q1", "q2")]
        try:
            for name in ("q1", "q2"):
                _wait_state(sock, name, "live")
            rc, err = _run(sock, "q3", "true")
            assert rc != 0 and "uid 65534 already runs 2 agents" in err, (rc, err)
            assert _state(sock, "q3") is None  # refused before anything was made
            rc, err = _run(sock, "r1", "true", nobody=False)  # root: no limit
            assert rc == 0, err
        finally:
            for p in held:
                p.kill()
                p.wait()
        for name in ("q1", "q2"):
            _wait_state(sock, name, "done")
        rc, err = _run(sock, "q3", "true")  # a third name: within 3
        assert rc == 0, err
        rc, err = _run(sock, "q4", "true")
        assert rc != 0 and "uid 65534 already owns 3 agent names" in err, (rc, err)
        assert _state(sock, "q4") is None
        rc, err = _run(sock, "q1", "true")  # a name it owns: always
        assert rc == 0, err
        assert dt.daemon.store.agent_names_of(65534) == 3
