"""The daemon SIGKILLed after a tool call was placed and continued but before its record was
durable (issue 9): the restarted daemon has the record placement made (name, rule, limits,
intent, leader, start time), rebuilt from the note written before the SIGCONT.

The moment is made real, not simulated: the test holds the store's write lock (as an
operator's sqlite3 shell or a backup would), so the daemon queues the tool call's record in
memory; the tool call runs in its cgroup; then the daemon is SIGKILLed and the queued record
dies with it. Without the note the re-adopted record said rule "defaults", no argv, no
intent, and a start time of the restart (its timeout started over)."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from agentd.cgroups import layout
from benchmarks.daemon_process import DaemonProcess
from tests.e2e.test_crash_moments import call, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root")]

AGENTS = Path(__file__).parent / "agents"
POLICY = """version: 1
name: default
toolcalls:
  defaults: {memory_high: 32M, memory_max: 64M, swap_max: 0, pids_max: 64, timeout_s: 60}
  ceiling: {memory_high: 200M, memory_max: 256M, pids_max: 256, timeout_s: 120}
  tools:
    - name: sleepy
      match: {comm: "^sleep$"}
      limits: {memory_high: 40M, memory_max: 80M, pids_max: 16}
"""
INTENT = {"memory": "48M", "duration_s": 30}


@pytest.fixture
def daemon():
    d = DaemonProcess(tracker="bpf", policy=POLICY)
    try:
        d.start(timeout=60)
        yield d
    finally:
        d.cleanup()


def running_in_tool_cgroup(d: DaemonProcess, agent: str, name: str) -> tuple[str, int] | None:
    """(cgroup, pid) of a continued (not stopped) process in one of the agent's tool cgroups."""
    driver = d.driver()
    tools = layout.tools_rel(agent)
    for child in driver.children(tools) if driver.exists(tools) else []:
        if not child.endswith(f"-{name}"):
            continue
        for pid in driver.procs(f"{tools}/{child}"):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state not in ("T", "t"):
                return f"{tools}/{child}", pid
    return None


def test_a_tool_call_placed_but_not_yet_recorded_when_the_daemon_dies_keeps_its_record(daemon, tmp_path):
    go = tmp_path / "go"
    steps = [{"argv": ["sleep", "0.1"], "intent": INTENT},  # the reference: placed and recorded as usual
             [sys.executable, "-c", f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.02)"],
             {"argv": ["sleep", "30"], "intent": INTENT}]
    proc = daemon.spawn_agent("noted", AGENTS / "scripted.py", *[json.dumps(s) for s in steps])
    try:
        wait_for(lambda: (c := call(daemon, "noted", 2)) and c["state"] == "running", 30, "the agent waiting for go")
        ref = wait_for(lambda: (c := call(daemon, "noted", 1)) and c["state"] == "done" and c, 30, "the reference tool call")
        assert ref["rule"] == "tools[sleepy]+intent" and ref["intent"]["memory"] == 48 << 20

        lock = sqlite3.connect(str(daemon.state / "agentd.db"), isolation_level=None, timeout=5)
        lock.execute("BEGIN IMMEDIATE")  # the store's write lock: the daemon queues its writes
        try:
            go.write_text("go")
            cgroup, pid = wait_for(lambda: running_in_tool_cgroup(daemon, "noted", "sleep") if (
                call(daemon, "noted", 2) or {}).get("state") else None, 30, "sleep 30 placed and continued")
            time.sleep(0.3)  # the record's write met the lock and was queued
            assert daemon.client.status()["counters"]["toolcalls_started"] >= 3
            rows = lock.execute("SELECT count(*) FROM toolcalls WHERE agent = 'noted' AND seq = 3").fetchone()[0]
            assert rows == 0, "the record reached the store: nothing hard about this moment"
            killed_at = time.time()
            daemon.kill9()
        finally:
            lock.execute("ROLLBACK")
            lock.close()

        daemon.start(timeout=60)
        assert daemon.client.status()["readopt"]["records_restored"] == 1
        rec = call(daemon, "noted", 3)
        assert rec is not None and rec["state"] == "running" and rec["cgroup"] == cgroup
        assert (rec["name"], rec["pid"], rec["argv"]) == ("sleep", pid, ["sleep", "30"])
        assert (rec["rule"], rec["limits"], rec["intent"], rec["clips"]) == (ref["rule"], ref["limits"], ref["intent"],
                                                                             ref["clips"])
        assert rec["started"] < killed_at, "the start time is the placement's, not the restart's"
        assert rec["ladder"]["started"] == rec["started"]  # so its timeout runs from the real start

        os.kill(pid, 9)  # it ends as any tool call does, under the new daemon
        end = wait_for(lambda: (c := call(daemon, "noted", 3)) and c["state"] == "done" and c, 30, "the end recorded")
        assert end["exit_code"] == -9 or end["outcome"] in ("failed", "ok")
    finally:
        proc.kill()
        proc.communicate(timeout=10)
