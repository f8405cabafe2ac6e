"""V2Driver inside the pure cgroup v2 VM (every controller available), checked against the
kernel's own counters. Runs in the guest only (tests/vm/test_vm.py boots it); Python is ~12x
slower there, so children are small and waits are bounded.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentd.cgroups import fs
from agentd.cgroups.detect import open_driver
from agentd.cgroups.driver import CgroupError, Limits
from agentd.cgroups.v2 import V2Driver

MiB = 1 << 20
ALLOC_PY = str(Path(__file__).with_name("alloc.py"))
_seq = itertools.count()


def _has_memory_controller() -> bool:
    try:
        return "memory" in Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()
    except OSError:
        return False


@pytest.fixture
def v2(cgroup_root):
    """A V2Driver from open_driver(), rooted at <own cgroup>/agentd-v2test-N; every process
    and cgroup under it is killed and removed afterwards, even when the test fails."""
    if not _has_memory_controller():
        pytest.skip("no memory controller in /sys/fs/cgroup/cgroup.controllers: not a pure v2 guest")
    drv = open_driver(leaf_name=f"agentd-v2test-{os.getpid()}-{next(_seq)}")
    assert isinstance(drv, V2Driver)
    procs: list[subprocess.Popen] = []
    drv.test_procs = procs
    try:
        yield drv
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        try:
            fs.write(drv.tree.file("", "cgroup.freeze"), "0")
            drv.kill("")
        except CgroupError:
            pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        drv.remove("")
        assert not os.path.exists(drv.tree.root_dir)


def gated(drv, argv: list[str]) -> subprocess.Popen:
    """A shell that waits for a line on stdin, then execs argv: move it first, then go()."""
    p = subprocess.Popen(
        ["sh", "-c", 'read x; exec "$@"', "sh", *argv],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    drv.test_procs.append(p)
    return p


def go(p: subprocess.Popen) -> None:
    p.stdin.write("go\n")
    p.stdin.flush()


def alloc(drv, mb: int, hold: bool = False) -> subprocess.Popen:
    return gated(drv, [sys.executable, "-S", ALLOC_PY, str(mb), "1", "1" if hold else "0"])


def wait_for(pred, timeout_s: float, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step_s)


def subtree_control(drv, rel: str) -> set[str]:
    return set(fs.read(drv.tree.file(rel, "cgroup.subtree_control")).split())


def test_controllers_enabled_top_down_and_processes_only_in_leaves(v2):
    drv = v2
    drv.create("agents/a1/tools/0001-t")
    want = {"memory", "cpu", "pids", "cpuset", "io"}
    for anc in ("", "agents", "agents/a1", "agents/a1/tools"):
        assert want <= subtree_control(drv, anc), anc
    assert subtree_control(drv, "agents/a1/tools/0001-t") == set()
    for f in ("memory.max", "memory.high", "cpu.max", "cpu.weight", "pids.max", "cpuset.cpus", "io.max"):
        assert os.path.exists(drv.tree.file("agents/a1/tools/0001-t", f)), f
    p = gated(drv, ["sleep", "60"])
    assert drv.move(p.pid, "agents/a1/tools/0001-t")
    # The kernel refuses a process in a cgroup that enables controllers for its children.
    with pytest.raises(CgroupError) as ei:
        drv.move(p.pid, "agents/a1")
    assert ei.value.errno == errno.EBUSY and "leaves" in str(ei.value)
    # And refuses to enable controllers below a cgroup that holds a process.
    drv.make_dirs("agents/a2")
    assert drv.move(p.pid, "agents/a2")
    with pytest.raises(CgroupError) as ei:
        drv.create("agents/a2/runtime")
    assert ei.value.errno == errno.EBUSY and str(p.pid) in str(ei.value)
    f = drv.features()
    assert f.memory_high and f.cgroup_kill and f.freeze and f.psi_triggers and not f.oom_pause


def test_memory_high_throttles_and_psi_trigger_fires(v2):
    drv = v2
    rel = "agents/a1/tools/0002-high"
    drv.create(rel)
    drv.apply_limits(rel, Limits(memory_high=16 * MiB))
    assert fs.read(drv.tree.file(rel, "memory.high")).strip() == str(16 * MiB)
    window = max(500_000, drv.features().psi_window_multiple_us)
    psi_fd = drv.open_psi_trigger(rel, "memory", "some", 20_000, window)
    try:
        poller = select.poll()
        poller.register(psi_fd, select.POLLPRI)
        p = alloc(drv, 40)
        assert drv.move(p.pid, rel)
        go(p)
        assert wait_for(lambda: drv.stats(rel).memory_events.get("high", 0) > 0, 30), drv.stats(rel)
        fired = poller.poll(window // 1000 + 10_000)
        assert fired and fired[0][1] & select.POLLPRI, "memory.pressure trigger did not fire"
        assert p.poll() is None, "memory.high throttles, it does not kill"
        s = drv.stats(rel)
        assert s.memory_pressure.some_total_us > 0 and s.memory_events.get("oom_kill", 0) == 0
        drv.apply_limits(rel, Limits(memory_high=256 * MiB))  # the daemon grants: throttling ends
        assert p.wait(timeout=60) == 0
    finally:
        os.close(psi_fd)


def test_memory_max_oom_kill_is_counted_and_signalled(v2):
    drv = v2
    drv.create("agents/a1/runtime")
    rel = "agents/a1/tools/0003-max"
    drv.create(rel)
    drv.apply_limits(rel, Limits(memory_max=24 * MiB, swap_max=0))
    agent = gated(drv, ["sleep", "60"])
    assert drv.move(agent.pid, "agents/a1/runtime")
    fd = drv.open_oom_watch(rel)
    try:
        assert drv.oom_watch_poll_mask() == select.POLLPRI
        drv.read_oom_watch(fd)  # arm
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        p = alloc(drv, 64)
        assert drv.move(p.pid, rel)
        go(p)
        assert p.wait(timeout=60) == -signal.SIGKILL
        assert poller.poll(5000), "memory.events did not signal POLLPRI"
        assert drv.read_oom_watch(fd) >= 1
        ev = drv.stats(rel).memory_events
        assert ev["oom_kill"] >= 1 and ev["max"] >= 1
        assert agent.poll() is None, "the agent survives its tool's OOM"
    finally:
        os.close(fd)


FORK_STORM = (
    "import os, sys, time\n"
    "ok, err = 0, 0\n"
    "for _ in range(20):\n"
    "    try:\n"
    "        pid = os.fork()\n"
    "    except OSError as e:\n"
    "        err = e.errno\n"
    "        break\n"
    "    if pid == 0:\n"
    "        time.sleep(60)\n"
    "        os._exit(0)\n"
    "    ok += 1\n"
    "print(ok, err, flush=True)\n"
    "sys.stdin.readline()\n"
)


def test_pids_max_stops_a_fork_storm(v2):
    drv = v2
    rel = "agents/a1/tools/0004-storm"
    drv.create(rel)
    drv.apply_limits(rel, Limits(pids_max=5))
    p = gated(drv, [sys.executable, "-S", "-c", FORK_STORM])
    assert drv.move(p.pid, rel)
    go(p)
    ok, err = p.stdout.readline().split()
    assert (int(ok), int(err)) == (4, errno.EAGAIN)
    assert p.poll() is None
    s = drv.stats(rel)
    assert s.pids_current == 5
    assert s.pids_max_events >= 1  # pids.events "max": forks refused


TREE = "sleep 300 & sleep 300 & (sleep 300 &) ; sh -c 'sleep 300 & wait' & wait"


def test_freeze_with_controllers_enabled_then_kill_ends_the_tree(v2):
    drv = v2
    drv.create("agents/a1/tools/0005-tree")
    drv.apply_limits("agents/a1/tools/0005-tree", Limits(memory_max=256 * MiB, pids_max=64))
    p = gated(drv, ["sh", "-c", TREE])
    assert drv.move(p.pid, "agents/a1/tools/0005-tree")
    go(p)
    pids = wait_for(lambda: (lambda x: x if len(x) >= 6 else None)(fs.subtree_pids(drv.tree.dir("agents"))), 20)
    assert pids, fs.subtree_pids(drv.tree.dir("agents"))
    assert subtree_control(drv, "agents/a1")  # freezing a cgroup that enables controllers
    drv.freeze("agents/a1")
    assert drv.stats("agents/a1").frozen and drv.stats("agents/a1/tools/0005-tree").frozen
    drv.thaw("agents/a1")
    assert not drv.stats("agents/a1/tools/0005-tree").frozen
    drv.kill("agents")
    assert not drv.stats("agents").populated
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] == "Z", pid
        except FileNotFoundError:
            pass
    drv.remove("agents")
    assert not drv.exists("agents")


def test_cpu_max_caps_usage(v2):
    drv = v2
    rel = "agents/a1/tools/0006-cpu"
    drv.create(rel)
    drv.apply_limits(rel, Limits(cpu_max_quota_us=10_000, cpu_period_us=100_000, cpu_weight=50))
    assert fs.read(drv.tree.file(rel, "cpu.max")).split() == ["10000", "100000"]
    p = gated(drv, [sys.executable, "-S", "-c", "while True: pass"])
    assert drv.move(p.pid, rel)
    go(p)
    time.sleep(0.5)
    u0 = drv.stats(rel).cpu_usage_us
    time.sleep(1.5)
    used = drv.stats(rel).cpu_usage_us - u0
    assert used < 400_000, used  # 10 % of 1.5 s is 150 ms; uncapped it would be ~1.5 s
    assert fs.read(drv.tree.file(rel, "cpu.stat")).find("nr_throttled 0") < 0


def test_move_self_to_daemon_then_root_enables_controllers(v2):
    """A process sitting in the root (as systemd starts a service) moves itself to daemon/,
    after which the root can hand controllers to its children."""
    drv = v2
    code = (
        "import sys\n"
        "from agentd.cgroups.v2 import V2Driver\n"
        "from agentd.cgroups.detect import move_self_to_daemon_cgroup\n"
        f"drv = V2Driver({drv.tree.mount!r}, {drv.tree.root!r}, create_root=False)\n"
        "move_self_to_daemon_cgroup(drv)\n"
        "print(open('/proc/self/cgroup').read().strip(), flush=True)\n"
        "sys.stdin.readline()\n"
    )
    assert subtree_control(drv, "") == set()
    p = gated(drv, [sys.executable, "-S", "-c", code])
    assert drv.move(p.pid, "")  # in the root itself, as a service starts
    go(p)
    line = p.stdout.readline().strip()
    assert line.endswith(drv.tree.root + "/daemon"), (line, p.stderr.read() if p.poll() is not None else "")
    assert {"memory", "pids"} <= subtree_control(drv, "")
    assert os.path.exists(drv.tree.file("daemon", "memory.max"))


def test_swap_max_lets_a_tool_spill_to_swap_or_not(v2, zram_swap):
    drv = v2
    assert drv.features().swap
    drv.create("agents/a1/tools/0007-swap")
    drv.create("agents/a1/tools/0008-noswap")
    drv.apply_limits("agents/a1/tools/0007-swap", Limits(memory_max=24 * MiB, swap_max=64 * MiB))
    drv.apply_limits("agents/a1/tools/0008-noswap", Limits(memory_max=24 * MiB, swap_max=0))
    assert fs.read(drv.tree.file("agents/a1/tools/0007-swap", "memory.swap.max")).strip() == str(64 * MiB)
    spill = alloc(drv, 40, hold=True)
    assert drv.move(spill.pid, "agents/a1/tools/0007-swap")
    go(spill)
    lines = iter(spill.stdout.readline, "")  # "allocated N" ... "done"; "" at EOF
    assert any(line.strip() == "done" for line in lines), "the spilling allocator died"
    assert int(fs.read(drv.tree.file("agents/a1/tools/0007-swap", "memory.swap.current"))) > 8 * MiB
    assert drv.stats("agents/a1/tools/0007-swap").memory_events.get("oom_kill", 0) == 0
    capped = alloc(drv, 40)
    assert drv.move(capped.pid, "agents/a1/tools/0008-noswap")
    go(capped)
    assert capped.wait(timeout=60) == -signal.SIGKILL
    assert drv.stats("agents/a1/tools/0008-noswap").memory_events["oom_kill"] >= 1
