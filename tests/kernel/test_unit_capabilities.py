"""Every capability systemd/agentd.service keeps is needed by a named call, on this kernel,
and CAP_SYS_ADMIN is needed by none that agentd makes.

agentd/core/capprobe.py makes the calls for real under `setpriv --bounding-set`: with the
unit's set, then with the set less one capability (the calls that capability is kept for
must fail), then with CAP_SYS_ADMIN added (nothing but kernel.task_delayacct, which agentd
does not write, may change).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentd.core.capprobe import NEEDED_FOR

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "agentd.service"
NOBODY = 65534

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setpriv, BPF)")]

def unit_caps() -> list[str]:
    m = re.search(r"^CapabilityBoundingSet=(.*)$", UNIT.read_text(), re.M)
    assert m
    return m.group(1).split()


def own_bounding_set() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    return 0


def cap_bit(name: str) -> int:
    from agentd.core.capabilities import REASONS

    return {"CAP_SYS_ADMIN": 21, **{n: b for n, (b, _) in REASONS.items()}}[name]


def kernel_at_least(major: int, minor: int) -> bool:
    rel = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    return rel >= (major, minor)


@pytest.fixture(scope="module")
def other_pid():
    p = subprocess.Popen(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "--",
                          "sleep", "120"])
    for _ in range(50):  # until setpriv has become uid 65534
        if Path(f"/proc/{p.pid}/status").read_text().split("Uid:")[1].split()[0] == str(NOBODY):
            break
        subprocess.run(["sleep", "0.05"])
    yield p.pid
    p.kill()
    p.wait()


def probe(caps: list[str], pid: int) -> dict[str, str]:
    bset = "-all" + "".join(f",+{c[4:].lower()}" for c in caps)
    r = subprocess.run(["setpriv", f"--bounding-set={bset}", "--", sys.executable, "-m", "agentd.core.capprobe", str(pid)],
                       capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_unit_keeps_exactly_the_capabilities_named_here():
    from agentd.core.capabilities import REASONS

    assert set(unit_caps()) == set(NEEDED_FOR) == set(REASONS)
    assert "CAP_SYS_ADMIN" not in unit_caps()


def test_every_call_works_with_the_units_set(other_pid):
    caps = unit_caps()
    got = probe(caps, other_pid)
    have = own_bounding_set()
    for cap, calls in NEEDED_FOR.items():
        for call in calls:
            if have >> cap_bit(cap) & 1:
                assert got[call] == "ok", (call, got)


@pytest.mark.parametrize("cap", sorted(NEEDED_FOR))
def test_each_capability_is_needed(cap, other_pid):
    if not own_bounding_set() >> cap_bit(cap) & 1:
        pytest.skip(f"this test process has no {cap} to give up")
    if cap == "CAP_NET_ADMIN" and kernel_at_least(6, 6):
        pytest.skip("Linux 6.6 opened the proc connector to every user; CAP_NET_ADMIN stays for older kernels")
    with_it = probe(unit_caps(), other_pid)
    without = probe([c for c in unit_caps() if c != cap], other_pid)
    for call in NEEDED_FOR[cap]:
        assert with_it[call] == "ok" and without[call] in ("EPERM", "EACCES"), (cap, call, with_it[call], without[call])


def test_cap_sys_admin_adds_nothing_agentd_calls(other_pid):
    if not own_bounding_set() >> 21 & 1:
        pytest.skip("no CAP_SYS_ADMIN here")
    without = probe(unit_caps(), other_pid)
    with_admin = probe(unit_caps() + ["CAP_SYS_ADMIN"], other_pid)
    changed = {k for k in with_admin if with_admin[k] != without[k]}
    assert changed <= {"write(kernel.task_delayacct)"}, (without, with_admin)
    if Path("/proc/sys/kernel/task_delayacct").exists() and os.access("/proc/sys/kernel/task_delayacct", os.W_OK):
        # the one call that does need it (and that agentd does not make)
        assert without["write(kernel.task_delayacct)"] == "EPERM" and with_admin["write(kernel.task_delayacct)"] == "ok"
