"""Fixtures for the tests that run INSIDE the VM (tests/vm/test_vm.py boots it).

The guest: pure cgroup v2 at /sys/fs/cgroup with every controller enabled in the root's
cgroup.subtree_control, 2 CPUs, 2 GiB, three NUMA nodes (node 2 has no CPU and sits in a
slower memory tier) and a zram device prepared as swap but not switched on. Tests run as
root; the host's root is shared read-only (write under /tmp or a cgroup).

These modules are also imported on the host to list the test ids (AGENTD_VM_COLLECT=1),
so keep imports light and touch no kernel state at import time; never skip at module
level. On the host every test here is skipped (they run only in the VM).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path

import pytest
from guestlib import CGROUP_ROOT, V2_CONTROLLERS, Cgroup, parse_cpulist

IN_VM = os.environ.get("AGENTD_IN_VM") == "1"
_seq = itertools.count()


def pytest_collection_modifyitems(config, items):
    if IN_VM:
        return
    skip = pytest.mark.skip(reason="guest-only test: runs inside the VM (tests/vm/test_vm.py)")
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cgroup_root() -> Cgroup:
    """The guest's root cgroup (pure v2, controllers enabled for children)."""
    if not IN_VM:
        pytest.skip("guest-only fixture")
    root = Cgroup(CGROUP_ROOT)
    enabled = root.read("cgroup.subtree_control").split()
    missing = [c for c in V2_CONTROLLERS if c not in enabled]
    if missing:
        root.enable(missing)
    return root


@pytest.fixture
def cgroup(cgroup_root, request) -> Cgroup:
    """A fresh leaf cgroup under the guest's root, with every v2 controller available
    (memory.*, cpu.*, cpuset.*, io.*, pids.* files present); killed and removed after the
    test, children included. Call .enable() to delegate the controllers to children."""
    name = f"agentd-test-{os.getpid()}-{next(_seq)}-{request.node.name[:40]}"
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    cg = cgroup_root.child(name)
    try:
        yield cg
    finally:
        cg.remove()


def _swap_active(dev: str) -> bool:
    real = os.path.realpath(dev)
    for line in Path("/proc/swaps").read_text().splitlines()[1:]:
        if line.split() and os.path.realpath(line.split()[0]) == real:
            return True
    return False


_swap_left_on: list[str] = []


def _wait_zram_prepared(timeout: float = 120.0) -> None:
    """tests/vm/guest_run.sh prepares zram in the background: wait for its verdict."""
    rw = Path(os.environ.get("AGENTD_VM_RESULTS", "/nonexistent"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (rw / "zram.ready").exists():
            return
        if (rw / "zram.error").exists():
            pytest.fail(f"zram set-up failed in the guest: {(rw / 'zram.error').read_text()}")
        time.sleep(0.1)
    pytest.fail(f"zram set-up did not finish within {timeout:.0f}s")


@pytest.fixture
def zram_swap() -> str:
    """Switch on the zram swap device prepared at boot; switched off afterwards.

    Request it BEFORE the fixtures that start processes (`def test(zram_swap, cgroup)`),
    so that its swapoff runs after they are killed: swapoff must bring every swapped page
    back, which fails (ENOMEM) while a process at its memory.max still holds them. If
    swapoff fails anyway, the swap stays on (a later zram_swap reuses it) and is switched
    off at the end of the session."""
    dev = os.environ.get("AGENTD_VM_ZRAM", "")
    if not IN_VM:
        pytest.skip("guest-only fixture")
    if not dev:
        pytest.skip("the VM was booted without zram (boot_and_run(zram=True))")
    _wait_zram_prepared()
    if not _swap_active(dev):
        r = subprocess.run(["swapon", dev], capture_output=True, text=True)
        assert r.returncode == 0, f"swapon {dev}: {r.stderr.strip()}"
    try:
        yield dev
    finally:
        r = subprocess.run(["swapoff", dev], capture_output=True, text=True)
        if r.returncode != 0 and dev not in _swap_left_on:
            _swap_left_on.append(dev)


@pytest.fixture(scope="session", autouse=True)
def _swap_off_at_session_end():
    yield
    for dev in _swap_left_on:
        subprocess.run(["swapoff", dev], capture_output=True)


@pytest.fixture(scope="session")
def numa_nodes() -> list[int]:
    """The online NUMA node ids (the VM has 0, 1 and CPU-less 2 when booted with numa)."""
    if not IN_VM:
        pytest.skip("guest-only fixture")
    if os.environ.get("AGENTD_VM_NUMA") != "1":
        pytest.skip("the VM was booted without NUMA nodes (boot_and_run(numa=True))")
    return parse_cpulist(Path("/sys/devices/system/node/online").read_text())
