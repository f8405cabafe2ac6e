"""Checks of the guest kernel itself: what the VM is booted for (pure cgroup v2 with all
controllers, memory.high throttling, NUMA nodes with a CPU-less slow tier, zram swap).
Runs inside the VM only (tests/vm/test_vm.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from guestlib import V2_CONTROLLERS, MiB, alloc_argv, parse_cpulist


def _wait_line(proc: subprocess.Popen, want: str, timeout: float) -> list[str]:
    """Read proc's stdout lines until one equals `want`; all lines read."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.strip() == want:
            return lines
    raise AssertionError(f"no {want!r} from {proc.args} within {timeout}s; got {lines[-3:]}")


def test_pure_cgroup_v2_with_all_controllers(cgroup_root):
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    fstypes = {m[1]: m[2] for m in mounts}
    assert fstypes.get("/sys/fs/cgroup") == "cgroup2"
    assert not [m for m in mounts if m[2] == "cgroup"], "a cgroup v1 hierarchy is mounted"
    controllers = cgroup_root.read("cgroup.controllers").split()
    for c in V2_CONTROLLERS:
        assert c in controllers
    # cgroup_no_v1=all: no v1 hierarchy can be mounted for the memory controller.
    target = Path("/tmp/agentd-v1-probe")
    target.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "cgroup", "-o", "memory", "none", str(target)],
                       capture_output=True, text=True)
    if r.returncode == 0:
        subprocess.run(["umount", str(target)])
    assert r.returncode != 0, "memory could be mounted as a v1 hierarchy"


def test_fresh_cgroup_has_every_controller(cgroup):
    assert set(V2_CONTROLLERS) <= set(cgroup.read("cgroup.controllers").split())
    for f in ("memory.high", "memory.max", "memory.swap.max", "memory.events",
              "memory.pressure", "memory.numa_stat", "cpu.max", "cpu.weight",
              "cpuset.cpus", "cpuset.mems", "io.max", "pids.max", "cgroup.kill",
              "cgroup.freeze"):
        assert (cgroup.path / f).exists(), f
    # Controllers can be delegated further down, and a child gets them.
    cgroup.enable()
    child = cgroup.child("leaf")
    assert set(V2_CONTROLLERS) <= set(child.read("cgroup.controllers").split())


def test_memory_high_throttles_an_allocating_process(cgroup):
    """memory.high below what the process touches: the kernel reclaims and, with nothing
    to reclaim (no swap on), throttles the allocating task: memory.events "high" rises and
    the task's stall shows in the cgroup's memory pressure."""
    high = 24 * MiB
    cgroup.write("memory.high", high)
    assert cgroup.keyed("memory.events")["high"] == 0
    proc = cgroup.popen(alloc_argv(64, hold=True), stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        events = cgroup.keyed("memory.events")
        stall = cgroup.pressure("memory")["some"]["total"]
        while time.monotonic() < deadline and not (events["high"] > 0 and stall > 0):
            time.sleep(0.2)
            events = cgroup.keyed("memory.events")
            stall = cgroup.pressure("memory")["some"]["total"]
        assert events["high"] > 0, events
        assert stall > 0, "no memory stall recorded while over memory.high"
        assert events["oom_kill"] == 0 and events["max"] == 0, events
        assert cgroup.pids() == [proc.pid], "the throttled process left its cgroup or died"
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_numa_nodes_with_a_cpuless_slow_tier(numa_nodes):
    node = Path("/sys/devices/system/node")
    assert numa_nodes == [0, 1, 2]
    assert parse_cpulist((node / "has_memory").read_text()) == [0, 1, 2]
    assert parse_cpulist((node / "has_cpu").read_text()) == [0, 1]
    assert parse_cpulist((node / "node2" / "cpulist").read_text()) == []
    # The HMAT puts the CPU-less node into its own, lower memory tier.
    tiers = {}
    for t in Path("/sys/devices/virtual/memory_tiering").glob("memory_tier*"):
        tiers[int(t.name[len("memory_tier"):])] = parse_cpulist((t / "nodelist").read_text())
    assert len(tiers) == 2, tiers
    fast, slow = (tiers[k] for k in sorted(tiers))
    assert fast == [0, 1] and slow == [2], tiers


def test_membind_and_migrate_pages_to_the_cpuless_node(numa_nodes, cgroup):
    """numactl --membind puts a process's pages on node 0; migratepages (migrate_pages(2))
    moves them to the CPU-less node 2; memory.numa_stat of its cgroup follows."""
    proc = cgroup.popen(["numactl", "--membind=0", *alloc_argv(32, step_mb=8, hold=True)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        _wait_line(proc, "done", 60)
        before = _numa_anon(cgroup)
        assert before.get(0, 0) >= 32 * MiB, before
        assert before.get(2, 0) < 4 * MiB, before
        r = subprocess.run(["migratepages", str(proc.pid), "0", "2"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        after = _numa_anon(cgroup)
        assert after.get(2, 0) >= 32 * MiB, after
        assert after.get(0, 0) < before[0] - 24 * MiB, after
    finally:
        proc.kill()
        proc.wait()


def _numa_anon(cgroup) -> dict[int, int]:
    for line in cgroup.read("memory.numa_stat").splitlines():
        if line.startswith("anon "):
            return {int(k[1:]): int(v) for k, v in (f.split("=") for f in line.split()[1:])}
    raise AssertionError("no anon line in memory.numa_stat")


def test_zram_swap_takes_pages_over_memory_high(zram_swap, cgroup):
    # zram_swap first: its swapoff runs after the cgroup fixture killed the allocator.
    swaps = Path("/proc/swaps").read_text()
    assert zram_swap in swaps, swaps
    cgroup.write("memory.high", 16 * MiB)
    proc = cgroup.popen(alloc_argv(48, hold=True), stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
    try:
        _wait_line(proc, "done", 90)
        assert cgroup.keyed("memory.events")["high"] > 0
        assert int(cgroup.read("memory.swap.current")) >= 16 * MiB
        assert int(cgroup.read("memory.current")) < 32 * MiB
        # memory.reclaim pushes still more out, into swap.
        current = int(cgroup.read("memory.current"))
        swapped = int(cgroup.read("memory.swap.current"))
        cgroup.write("memory.reclaim", 4 * MiB)
        assert int(cgroup.read("memory.current")) <= current - 2 * MiB
        assert int(cgroup.read("memory.swap.current")) >= swapped
    finally:
        proc.kill()
        proc.wait()


def test_running_as_root_in_the_vm():
    assert os.geteuid() == 0
    assert os.environ.get("AGENTD_IN_VM") == "1"
