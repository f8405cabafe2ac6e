"""The kv duration model learns from tool calls that the BPF tracker observes in the kernel:
the real daemon as a process (`agentd run --tracker bpf`), an agent started with `agentctl
run` running real commands, the learned durations read back over the socket."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from benchmarks.daemon_process import DaemonProcess

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="BPF and cgroups need root")]

SCRIPTED = Path(__file__).resolve().parents[1] / "e2e" / "agents" / "scripted.py"


def test_durations_learned_from_bpf_observed_tool_calls():
    d = DaemonProcess(tracker="bpf")
    try:
        d.start()
        steps = [["sleep", "0.2"]] * 3 + [["sleep", "1.2"]] * 3 + [["git", "--version"]]
        proc = d.spawn_agent("kvk", SCRIPTED, *[json.dumps(s) for s in steps])
        proc.communicate(timeout=60)
        assert proc.returncode == 0
        deadline = time.monotonic() + 10
        while True:
            dur = d.client.kind_get("kv", "durations", limit="100")
            if dur["learned_from_tracker"] >= 7 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        keys = {x["key"]: x for x in dur["durations"]}
        assert dur["learned_from_tracker"] == 7, dur
        sleep = keys["kvk|exec|sleep"]  # both sleep lengths under one shape: a bimodal distribution
        assert sleep["n"] == 6 and 0.15 <= sleep["p50_s"] <= 1.4 and sleep["p90_s"] >= 1.0
        assert keys["exec|git --version"]["n"] == 1 and keys["exec:git"]["n"] == 1
    finally:
        d.cleanup()
