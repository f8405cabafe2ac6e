"""The daemon SIGKILLed at the hard moments of a tool call's life, then restarted: a tool call
held at its memory limit when the daemon died is decided (killed) by the new daemon, never
left held; a freeze the old daemon carried out but did not live to record is undone; a
policy written just before the crash reaches the live tool calls after the restart.

The kernel states are real: the held tool call is paused by the kernel at its limit
(v1 memory.oom_control under_oom 1 on hybrid, or frozen on pure v2) while no daemon runs.
The unrecorded freeze and the unapplied policy are the exact states a daemon dying between
two of its own writes leaves behind; the test writes them while the daemon is down."""

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
PY = sys.executable
REPORT = str(AGENTS / "report.py")
POLICY = """version: 1
name: default
toolcalls:
  defaults: {memory_high: 32M, memory_max: 64M, swap_max: 0, pids_max: 64, timeout_s: 60}
  escalation: {psi_full_pct: 40, sustain_s: 1, freeze_s: 3}
"""


@pytest.fixture
def daemon():
    d = DaemonProcess(tracker="bpf", policy=POLICY)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def call(d: DaemonProcess, agent: str, seq: int) -> dict | None:
    return next((c for c in d.toolcalls(agent) if c["seq"] == seq), None)


def held_by_kernel(d: DaemonProcess, rel: str) -> bool:
    st = d.driver().stats(rel)
    return bool(st.memory_events.get("under_oom", 0)) or st.frozen


def test_a_tool_call_held_at_its_limit_when_the_daemon_dies_is_killed_by_the_restarted_one(daemon):
    steps = [[PY, REPORT, "burst", "300"], ["true"]]
    proc = daemon.spawn_agent("held", AGENTS / "scripted.py", *[json.dumps(s) for s in steps])
    # Past memory_high (granted up to memory_max), then held at memory_max with the grace running.
    tc = wait_for(lambda: (c := call(daemon, "held", 1)) and c["state"] == "frozen" and c, 30, "the burst held at memory_max")
    rel = tc["cgroup"]
    daemon.kill9()
    time.sleep(0.5)
    assert held_by_kernel(daemon, rel), "the kernel no longer holds the tool call: nothing hard about this moment"
    time.sleep(1.0)
    assert held_by_kernel(daemon, rel), "the tool call must stay held while no daemon runs"
    daemon.start()
    assert daemon.client.status()["readopt"]["held"] == 1
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = parse_lines(out)
    assert lines[0]["rc"] == -9  # decided by the restarted daemon: killed at the end of its grace
    assert lines[1]["rc"] == 0
    done = wait_for(lambda: (c := call(daemon, "held", 1)) and c["state"] == "done" and c, 5, "the record settled")
    assert done["outcome"] == "killed", done
    assert not daemon.driver().exists(rel)


def test_a_freeze_the_dead_daemon_did_not_record_is_undone(daemon):
    proc = daemon.spawn_agent("froze", AGENTS / "scripted.py", json.dumps(["sleep", "8"]))
    tc = wait_for(lambda: call(daemon, "froze", 1), 10, "the sleep placed")
    rel = tc["cgroup"]
    daemon.kill9()
    # What a daemon leaves when it dies between its freeze and the record of it.
    driver = daemon.driver()
    fs.write(driver.knob_path(rel, "cgroup.freeze"), "1")
    wait_for(lambda: driver.stats(rel).frozen, 5, "the kernel froze the tool call")
    daemon.start()
    assert daemon.client.status()["readopt"]["thawed_unrecorded"] == 1
    assert not driver.stats(rel).frozen
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert parse_lines(out)[0]["rc"] == 0
    done = wait_for(lambda: (c := call(daemon, "froze", 1)) and c["state"] == "done" and c, 5, "the record settled")
    assert done["outcome"] == "ok", done


def test_a_policy_written_just_before_the_crash_reaches_live_tool_calls(daemon):
    proc = daemon.spawn_agent("pol", AGENTS / "scripted.py", json.dumps(["sleep", "8"]))
    tc = wait_for(lambda: call(daemon, "pol", 1), 10, "the sleep placed")
    driver = daemon.driver()
    pids_max = lambda: fs.read(driver.knob_path(tc["cgroup"], "pids.max")).strip()
    assert pids_max() == "64"
    daemon.kill9()
    # What `policy apply` leaves when the daemon dies after writing the file, before it
    # re-evaluated the live tool calls.
    (daemon.policy_dir / "default.yaml").write_text(POLICY.replace("pids_max: 64", "pids_max: 48"))
    daemon.start()
    assert pids_max() == "48"
    assert daemon.client.status()["readopt"]["limits_updated"] == 1
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_a_python_tool_call_started_while_the_daemon_was_down_is_placed_after_the_restart(daemon):
    """The agent runs python, and so does its tool call: same program, other command line.
    (The gate guard continues an exec stopped at the gate when the daemon dies: it then
    runs where this one runs, in the agent's runtime cgroup.)"""
    nap = [PY, "-c", "import time; time.sleep(8)"]
    proc = daemon.spawn_agent("py", AGENTS / "scripted.py", json.dumps(["sleep", "0.5"]), json.dumps(nap))
    wait_for(lambda: call(daemon, "py", 1), 10, "the sleep placed")
    daemon.kill9()
    driver = daemon.driver()
    runtime = "agents/py/runtime"
    tool = wait_for(lambda: [p for p in driver.procs(runtime) if open(f"/proc/{p}/cmdline").read().split("\0")[1:2] == ["-c"]],
                    10, "the python tool call running unplaced")[0]
    daemon.start()
    assert daemon.client.status()["readopt"]["adopted_unplaced"] == 1
    assert "/agents/py/tools/" in open(f"/proc/{tool}/cgroup").read()
    assert call(daemon, "py", 2)["argv"] == nap
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
