"""Every capability systemd/agentd.service keeps is needed by a named call, and CAP_SYS_ADMIN
only by perf_event_open(2) where kernel.perf_event_paranoid=3 (Debian's kernels).

agentd/core/capprobe.py makes the calls for real under `setpriv --bounding-set`: with the
unit's set, then with the set less one capability (the calls that capability is kept for
must fail, where the kernel makes it needed: capprobe.needed_here).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentd.core.capprobe import NEEDED_FOR, needed_here

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
    needed, why_not = needed_here(cap)
    # CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON: each of the others is taken away from
    # the set without it, to see its own calls fail
    base = unit_caps() if cap == "CAP_SYS_ADMIN" else [c for c in unit_caps() if c != "CAP_SYS_ADMIN"]
    with_it = probe(base, other_pid)
    without = probe([c for c in base if c != cap], other_pid)
    also_admin = set(NEEDED_FOR["CAP_SYS_ADMIN"]) if cap != "CAP_SYS_ADMIN" and needed_here("CAP_SYS_ADMIN")[0] else set()
    for call in NEEDED_FOR[cap]:
        assert with_it[call] == "ok" or call in also_admin, (cap, call, with_it[call])
        if needed:
            assert without[call] in ("EPERM", "EACCES"), (cap, call, without[call])
    if not needed:
        pytest.skip(f"{cap} not needed on this kernel: {why_not}")


def test_cap_sys_admin_is_kept_for_perf_event_open_only(other_pid):
    """Without CAP_SYS_ADMIN only perf_event_open (where perf_event_paranoid=3) and the
    kernel.task_delayacct write (which agentd does not make) change."""
    if not own_bounding_set() >> 21 & 1:
        pytest.skip("no CAP_SYS_ADMIN here")
    with_admin = probe(unit_caps(), other_pid)
    without = probe([c for c in unit_caps() if c != "CAP_SYS_ADMIN"], other_pid)
    changed = {k for k in with_admin if with_admin[k] != without[k]}
    allowed = {"write(kernel.task_delayacct)"} | (set(NEEDED_FOR["CAP_SYS_ADMIN"]) if needed_here("CAP_SYS_ADMIN")[0] else set())
    assert changed <= allowed, (without, with_admin)
