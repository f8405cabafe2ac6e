"""The BPF tracker on each Debian kernel the VM can boot: 6.12 (.vm/kernel) and Debian 12's
own 6.1 (.vm/kernel-6.1), both unpacked with their headers by scripts/vm-setup.sh. One
short boot per kernel (about 40 s under emulation): the tracker compiles against the guest
kernel's headers, passes that kernel's verifier (6.1's is stricter than this host's), and
reports exit codes (exit 3, a threaded exit_group(4), ls's 2, SIGKILL) once per process.
A missing kernel is a failure with the set-up hint, not a skip."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from test_vm import harness  # the same loaded harness module (one RUNS list)

CHECK = Path(__file__).resolve().parent / "tracker_check.py"
KERNELS = {"6.12": harness.REPO / ".vm" / "kernel", "6.1": harness.REPO / ".vm" / "kernel-6.1"}


@pytest.mark.parametrize("series", sorted(KERNELS))
def test_tracker_loads_and_reports_exit_codes_on_the_guest_kernel(series):
    r = harness.boot_and_run([sys.executable, str(CHECK)], kernel_dir=KERNELS[series], timeout=400)
    assert r.rc == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["kernel"].startswith(series + "."), out
    assert "error" not in out, out
    assert out["exit_codes"] == "task" and out["group_exit"] in ("tracepoint", "signal_live"), out
    want = {"exit3": 3 << 8, "threaded_exit4": 4 << 8, "ls_missing": 2 << 8, "sigkill": 9}
    assert out["exits"] == {name: [[True, code]] for name, code in want.items()}, out
    assert out["forks_seen"] == len(want)
