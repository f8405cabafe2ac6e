"""The overhead benchmark's floor (benchmarks/overhead_bare.py) on the real kernel: the real
BPF gate stops the agent's execs, the bare mover makes a v2 tool cgroup per exec, moves the
pid and continues it; every tool saw itself in its tool cgroup at its first read of
/proc/self/cgroup, each exec has its full-path time, and every cgroup it made is gone after.

Root only; its cgroups nest under this process's own v2 cgroup."""

from __future__ import annotations

import os

import pytest

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs and moving processes needs root"),
]

bcc = pytest.importorskip("bcc", reason="BCC (python3-bpfcc) is not importable")

from benchmarks.overhead import AGENT, split_blocks  # noqa: E402
from benchmarks.overhead_bare import own_v2_dir, run_bare  # noqa: E402


def test_bare_mover_places_every_gated_exec_and_leaves_nothing(tmp_path):
    before = {p.name for p in own_v2_dir().iterdir() if p.name.startswith("agentd-overhead-bare-")}
    r = run_bare(AGENT, 40, tmp_path, 100.0)
    assert r["tool_calls"] == 40 and r["escaped"] == 0 and r["mover_errors"] == 0
    assert len(r["full_us"]) == 40 and all(us > 0 for us in r["full_us"])
    assert len(r["steps_us"]) == 40 and r["events_lost"] == 0
    # Each cat saw a tool cgroup of its own (tools/<n>, one per exec).
    out = next(tmp_path.glob("bare-*.out")).read_text()
    v2 = [b[-1] for b in split_blocks(out)]
    assert len(set(v2)) == 40 and all("/tools/" in line for line in v2)
    after = {p.name for p in own_v2_dir().iterdir() if p.name.startswith("agentd-overhead-bare-")}
    assert after == before
