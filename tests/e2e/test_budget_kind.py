"""The host budget kind in the real daemon on the real kernel: a policy's `budget` section
limits agents/ (the kernel's own file says so), a tool call that takes all agents to the
budget is ended and its agent goes on, and removing the budget puts back the kernel's
original limit."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from agentd.cgroups import fs
from benchmarks.daemon_process import DaemonProcess, parse_lines

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root")]

AGENTS = Path(__file__).parent / "agents"
POLICY = """\
version: 1
name: default
toolcalls:
  defaults: {memory_high: 400M, memory_max: 500M, swap_max: 0, pids_max: 64, timeout_s: 60}
"""


def _limit_file(driver) -> str:
    return driver.knob_path("agents", "memory.max" if driver.kind == "v2" else "memory.limit_in_bytes")


@pytest.fixture
def daemon():
    d = DaemonProcess(tracker="bpf", policy=POLICY)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def test_budget_from_policy_ends_the_tool_call_not_the_agent_and_reverts(daemon, tmp_path):
    limit_file = _limit_file(daemon.driver())
    original = fs.read(limit_file).strip()
    with_budget = tmp_path / "budget.yaml"
    with_budget.write_text("version: 1\nname: host\nbudget: {memory_max: 160M}\n")
    r = daemon.agentctl("policy", "apply", str(with_budget))
    assert r.returncode == 0, r.stderr
    assert int(fs.read(limit_file)) == 160 << 20  # the kernel holds the budget

    proc = daemon.spawn_agent("b1", AGENTS / "scripted.py", json.dumps([sys.executable, str(AGENTS / "report.py"), "burst", "300"]),
                              json.dumps(["true"]))
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err  # the agent went on
    burst, after, done = parse_lines(out)
    assert burst["rc"] != 0 and after["rc"] == 0
    deadline = time.monotonic() + 10
    while True:
        [tc] = [t for t in daemon.toolcalls("b1") if "report" in t["name"]]
        if tc["state"] == "done" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert tc["outcome"] == "killed", tc
    if daemon.driver().kind != "v2":  # v1: the kernel paused everyone at the budget and agentd chose
        assert "host budget" in tc["reason"]
        killed = [e for e in daemon.client.recent_events(agent="b1", limit=50) if e["kind"] == "toolcall.killed"]
        assert killed and killed[-1]["data"]["limit"] == "host_budget"
    status = daemon.client.status()["kinds"]["budget"]
    assert status["memory_max"] == 160 << 20 and status["source"] == "policy host"

    without = tmp_path / "nobudget.yaml"
    without.write_text("version: 1\nname: host\n")
    assert daemon.agentctl("policy", "apply", str(without)).returncode == 0
    deadline = time.monotonic() + 5
    while fs.read(limit_file).strip() != original and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fs.read(limit_file).strip() == original
