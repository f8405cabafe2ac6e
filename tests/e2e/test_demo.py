"""The README's main job: `agentd demo --json` (a contract other tools rely on) shows a
throttled burst, a killed runaway, a timed-out tool call ended with its whole tree, and an
agent that finishes its remaining turns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root")]

AGENTD = Path(sys.executable).parent / "agentd"


def test_demo_json_contract():
    proc = subprocess.run([str(AGENTD), "demo", "--json"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)  # all of stdout: libbcc's own messages go elsewhere
    assert result["agent_exit"] == 0
    calls = result["tool_calls"]
    for call in calls:
        assert {"name", "cgroup", "peak_bytes", "cpu_s", "wall_s", "outcome", "reason", "exit_code", "events"} <= call.keys()
        assert call["events"][0] == "toolcall.start" and call["events"][-1] == "toolcall.end", call["events"]
        assert call["outcome"] in ("ok", "throttled", "frozen", "killed", "failed")
        assert call["cgroup"].startswith("agents/demo/tools/")
    by_name = {c["name"]: c for c in calls}
    assert by_name["python-burst.py"]["outcome"] == "throttled"
    assert by_name["python-runaway.py"]["outcome"] == "killed"
    assert by_name["python-runaway.py"]["peak_bytes"] >= 256 << 20
    runaway_events = by_name["python-runaway.py"]["events"]  # the ladder, from the journal
    assert runaway_events.index("toolcall.throttled") < runaway_events.index("toolcall.killed"), runaway_events
    assert by_name["server"]["outcome"] == "killed" and "timeout" in by_name["server"]["reason"]
    assert by_name["forkstorm"]["outcome"] == "throttled" and "pids_max" in by_name["forkstorm"]["reason"]
    assert by_name["git"]["outcome"] == "ok" and by_name["git"]["exit_code"] == 0
    assert len({c["cgroup"] for c in calls}) == len(calls)  # one cgroup per tool call
    # Nothing of the demo is left in the kernel.
    own = [l for l in open("/proc/self/cgroup") if l.startswith("0::")][0][3:].strip().rstrip("/")
    for mount in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        assert not os.path.exists(f"{mount}{own}/agentd-demo/agents/demo")


def test_demo_json_with_a_tracker_that_cannot_load_fails_with_the_reason_and_clean_stdout(tmp_path):
    """No kernel headers (BCC_KERNEL_SOURCE at an empty folder): libbcc prints "Unable to
    find kernel headers" on its stdout; it must not reach ours, and --tracker bpf must fail."""
    env = {**os.environ, "BCC_KERNEL_SOURCE": str(tmp_path)}
    proc = subprocess.run([str(AGENTD), "demo", "--json", "--tracker", "bpf"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "--tracker bpf cannot run here: BCC could not compile the tracker: Unable to find kernel headers" in proc.stderr
    own = [l for l in open("/proc/self/cgroup") if l.startswith("0::")][0][3:].strip().rstrip("/")
    for mount in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        assert not os.path.exists(f"{mount}{own}/agentd-demo/agents")
