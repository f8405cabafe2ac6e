"""HybridDriver against the real kernel: v2 (unified) grouping plus v1 memory/cpu/cpuset/pids.

Every test works under its own private root below this process's cgroups (see the driver
fixture) and checks what the kernel reports, not what the driver wrote.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time

import pytest

from agentd.cgroups import fs
from agentd.cgroups.detect import move_self_to_daemon_cgroup, open_driver
from agentd.cgroups.driver import CgroupError, Limits
from agentd.cgroups.hybrid import HybridDriver
from agentd.cgroups.parse import parse_flat_keyed

from cgroup_fixtures import children, driver, needs_root, proc_cpu_ticks, proc_state, wait_for  # noqa: F401

pytestmark = [pytest.mark.kernel, needs_root]

MiB = 1 << 20

# Allocates and touches 1 MiB a step (bytes * n writes every page), reports progress.
ALLOC = """
import sys
chunks = []
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else {n}):
    chunks.append(b"x" * (1 << 20))
print("done", len(chunks), flush=True)
sys.stdin.readline()
"""

BUSY = "import time\nwhile True:\n    pass\n"


def _hybrid_or_skip(drv):
    if not isinstance(drv, HybridDriver):
        pytest.skip(f"this host is not hybrid (detected {drv.kind}); tests/vm covers v2")
    return drv


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


# --- layout ------------------------------------------------------------------------------


def test_open_driver_roots_under_own_cgroup_in_every_hierarchy(driver):
    drv = _hybrid_or_skip(driver)
    own = {}
    for line in _read("/proc/self/cgroup").splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(","):
            own[c] = path
    for c, tree in drv.v1.items():
        assert os.path.isdir(tree.root_dir)
        assert tree.root_dir.startswith(os.path.normpath(tree.mount + own[c]) + "/"), (c, tree.root_dir)
    assert drv.tree.root_dir.startswith(os.path.normpath(drv.tree.mount + own[""]).rstrip("/") + "/")
    assert set(drv.v1) == {"memory", "cpu", "cpuset", "pids"}
    f = drv.features()
    assert f.kind == "hybrid" and f.oom_pause and f.cgroup_kill and f.freeze and f.psi_triggers
    assert not f.memory_high and "memory_high" in f.missing


def test_create_in_every_hierarchy_copies_cpuset_and_remove_cleans(driver):
    drv = _hybrid_or_skip(driver)
    rel = "agents/a1/tools/0001-pytest"
    drv.create(rel)
    drv.create(rel)  # idempotent
    for tree in [drv.tree, *drv.v1.values()]:
        assert os.path.isdir(tree.dir(rel)), tree.dir(rel)
    cs = drv.v1["cpuset"]
    assert _read(cs.file(rel, "cpuset.cpus")) == _read(cs.file("", "cpuset.cpus")) != ""
    assert _read(cs.file(rel, "cpuset.mems")) == _read(cs.file("", "cpuset.mems")) != ""
    assert drv.exists(rel) and drv.children("agents/a1") == ["tools"]
    drv.remove("agents")
    for tree in [drv.tree, *drv.v1.values()]:
        assert not os.path.exists(tree.dir("agents")), tree.dir("agents")
    drv.remove("agents")  # missing is fine


def test_a_cpuset_left_half_made_by_a_crash_is_filled_when_created_again(driver, children):
    """A daemon killed between a tool cgroup's mkdir and the writes that fill its v1 cpuset
    leaves a cpuset with no cpus: the next create of that name must fill it, or no process
    can join it (ENOSPC) and the restarted daemon could not place anything there."""
    drv = _hybrid_or_skip(driver)
    rel = "agents/a1/tools/0001-crashed"
    drv.create("agents/a1/tools")
    cs = drv.v1["cpuset"]
    os.mkdir(cs.dir(rel))  # the dead daemon's mkdir, and nothing after it
    assert _read(cs.file(rel, "cpuset.cpus")) == ""
    drv.create(rel)
    assert _read(cs.file(rel, "cpuset.cpus")) == _read(cs.file("", "cpuset.cpus")) != ""
    assert _read(cs.file(rel, "cpuset.mems")) == _read(cs.file("", "cpuset.mems")) != ""
    p = children.cmd(["sleep", "60"])
    assert drv.move(p.pid, rel) is True


def test_move_puts_pid_in_every_hierarchy_and_vanished_pid_is_false(driver, children):
    drv = _hybrid_or_skip(driver)
    drv.create("agents/a1/runtime")
    p = children.cmd(["sleep", "60"])
    assert drv.move(p.pid, "agents/a1/runtime") is True
    cg = _read(f"/proc/{p.pid}/cgroup")
    for line in cg.splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(","):
            if c in drv.v1:
                assert os.path.normpath(drv.v1[c].mount + path) == drv.v1[c].dir("agents/a1/runtime"), line
            if c == "":
                assert os.path.normpath(drv.tree.mount + path) == drv.tree.dir("agents/a1/runtime")
    assert drv.procs("agents/a1/runtime") == [p.pid]
    assert drv.stats("agents/a1/runtime").pids_current == 1
    p.kill()
    p.wait()
    assert drv.move(p.pid, "agents/a1/runtime") is False  # reaped: ESRCH is not an error


def _where(pid: int, drv) -> dict[str, str]:
    """controller ("" for v2) -> the pid's cgroup path relative to the driver's root there."""
    out = {}
    for line in _read(f"/proc/{pid}/cgroup").splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(","):
            tree = drv.tree if c == "" else drv.v1.get(c)
            if tree is not None:
                out[c] = os.path.relpath(os.path.normpath(tree.mount + path), tree.root_dir)
    return out


def test_a_tool_cgroup_is_made_and_entered_only_where_its_limits_need_it(driver, children):
    drv = _hybrid_or_skip(driver)
    drv.create("agents/a1/runtime")
    rel = "agents/a1/tools/0001-cat"
    limits = Limits(memory_max=64 * MiB, oom_pause=True, pids_max=16)
    drv.create(rel, limits)
    made = {c for c, t in drv.v1.items() if os.path.isdir(t.dir(rel))}
    assert made == {"memory", "pids"} & set(drv.v1)
    drv.apply_limits(rel, limits)
    p = children.cmd(["sleep", "60"])
    assert drv.move(p.pid, "agents/a1/runtime") and drv.move(p.pid, rel)
    where = _where(p.pid, drv)
    for c in ("", *made):
        assert where[c] == rel, (c, where)
    for c in set(drv.v1) - made:  # not in the tool's cgroup there: in its parent's (the runtime)
        assert where[c] == "agents/a1/runtime", (c, where)
    assert _read(drv.v1["pids"].file(rel, "pids.max")) == "16"
    # A cpu limit added later (a policy change) adds the cpu hierarchy, members included.
    if "cpu" in drv.v1:
        drv.apply_limits(rel, Limits(memory_max=64 * MiB, oom_pause=True, pids_max=16, cpu_max_quota_us=20_000))
        assert _where(p.pid, drv)["cpu"] == rel
        assert _read(drv.v1["cpu"].file(rel, "cpu.cfs_quota_us")) == "20000"
    p.kill()
    p.wait()
    drv.remove(rel)
    assert not any(os.path.exists(t.dir(rel)) for t in drv._trees())


def test_a_spare_made_ahead_becomes_the_tool_cgroup_by_rename_with_its_limits(driver, children):
    drv = _hybrid_or_skip(driver)
    drv.spares = 1
    drv.create("agents/a1/runtime")
    drv.create("agents/a1/tools")
    limits = Limits(memory_max=48 * MiB, oom_pause=True, pids_max=12)
    assert drv.take_spare("agents/a1/tools/0001-cat", limits) is False  # none made yet
    drv.make_spare("agents/a1/tools", limits)
    drv.make_spare("agents/a1/tools", limits)  # one is enough (spares = 1)
    spares = {c: [n for n in fs.child_dirs(t.dir("agents/a1/tools")) if n.startswith(".spare-")] for c, t in drv.v1.items()}
    assert len(spares["memory"]) == 1 and len(spares["pids"]) == 1 and drv.children("agents/a1/tools") == []
    assert drv.take_spare("agents/a1/tools/0002-cat", Limits(memory_max=48 * MiB, pids_max=12)) is False  # other limits
    rel = "agents/a1/tools/0002-cat"
    assert drv.take_spare(rel, limits) is True
    assert not any(n.startswith(".spare-") for t in drv.v1.values() for n in fs.child_dirs(t.dir("agents/a1/tools")))
    p = children.cmd(["sleep", "60"])
    assert drv.move(p.pid, rel)
    where = _where(p.pid, drv)
    assert where[""] == where["memory"] == where["pids"] == rel, where
    assert int(_read(drv.v1["memory"].file(rel, "memory.limit_in_bytes"))) == 48 * MiB
    assert "oom_kill_disable 1" in _read(drv.v1["memory"].file(rel, "memory.oom_control"))
    assert _read(drv.v1["pids"].file(rel, "pids.max")) == "12"
    p.kill()
    p.wait()
    drv.make_spare("agents/a1/tools", limits)
    drv.remove("agents/a1")  # the agent's end takes its spares with it
    assert not any(os.path.exists(t.dir("agents/a1")) for t in drv._trees())
    assert drv.take_spare("agents/a1/tools/0003-cat", limits) is False


def test_moving_processes_that_exit_and_are_reaped_mid_move_never_raises(driver):
    """Short-lived processes reaped by another thread while we move them: every move is
    True or False (ESRCH), never an error, and nothing is left in the cgroup."""
    import threading

    drv = _hybrid_or_skip(driver)
    drv.create("agents/a1/tools/0001-short")
    results = []
    for _ in range(40):
        p = subprocess.Popen(["true"])
        t = threading.Thread(target=p.wait)
        t.start()
        results.append(drv.move(p.pid, "agents/a1/tools/0001-short"))
        t.join()
    assert all(r in (True, False) for r in results)
    assert wait_for(lambda: not drv.stats("agents/a1/tools/0001-short").populated, 2.0)


def test_remove_with_processes_inside_raises_a_sentence(driver, children):
    drv = _hybrid_or_skip(driver)
    drv.create("agents/a1/runtime")
    p = children.cmd(["sleep", "60"])
    assert drv.move(p.pid, "agents/a1/runtime")
    with pytest.raises(CgroupError) as ei:
        drv.remove("agents")
    assert ei.value.errno == errno.EBUSY and str(p.pid) in str(ei.value) and "kill" in str(ei.value)
    drv.kill("agents")
    drv.remove("agents")
    assert not drv.exists("agents")


# --- memory ------------------------------------------------------------------------------


def test_memory_limit_oom_pause_eventfd_then_grant_lets_it_finish(driver, children):
    drv = _hybrid_or_skip(driver)
    rel = "agents/a1/tools/0001-alloc"
    drv.create(rel)
    drv.apply_limits(rel, Limits(memory_max=48 * MiB, oom_pause=True))
    mem = drv.v1["memory"]
    assert _read(mem.file(rel, "memory.limit_in_bytes")) == str(48 * MiB)
    efd = drv.open_oom_watch(rel)
    try:
        p = children.python(ALLOC.format(n=96))
        assert drv.move(p.pid, rel)
        children.go(p)
        r, _, _ = select.select([efd], [], [], 15)
        assert r == [efd], "no OOM notification within 15 s"
        assert drv.read_oom_watch(efd) >= 1
        s = drv.stats(rel)
        assert s.memory_events["under_oom"] == 1
        assert s.memory_events["max"] > 0  # failcnt
        assert s.memory_limit == 48 * MiB
        assert s.memory_peak >= 40 * MiB
        assert p.poll() is None, "the paused process must still be alive"
        time.sleep(0.3)
        assert drv.stats(rel).memory_events["under_oom"] == 1, "it should stay paused until the daemon decides"
        # The daemon decides: grant more memory.
        drv.apply_limits(rel, Limits(memory_max=256 * MiB, oom_pause=True))
        line = p.stdout.readline()
        assert line.startswith("done 96"), line
        assert drv.stats(rel).memory_events["under_oom"] == 0
        assert drv.stats(rel).memory_events["oom_kill"] == 0
    finally:
        os.close(efd)


def test_memory_oom_pause_then_kill_ends_it(driver, children):
    drv = _hybrid_or_skip(driver)
    rel = "agents/a1/tools/0002-alloc"
    drv.create(rel)
    drv.apply_limits(rel, Limits(memory_max=32 * MiB, oom_pause=True))
    efd = drv.open_oom_watch(rel)
    try:
        p = children.python(ALLOC.format(n=96))
        assert drv.move(p.pid, rel)
        children.go(p)
        assert select.select([efd], [], [], 15)[0] == [efd]
        assert drv.stats(rel).memory_events["under_oom"] == 1
        drv.kill(rel)
        assert p.wait(timeout=5) == -signal.SIGKILL
        s = drv.stats(rel)
        assert not s.populated and s.pids_current == 0
    finally:
        os.close(efd)


def test_freeze_of_an_oom_paused_tool_takes_hold_after_a_grant(driver, children):
    """The freezer cannot reach a task paused in the kernel's memcg OOM wait: freeze() says
    so, stays requested, and the task freezes as soon as the daemon raises the limit."""
    drv = _hybrid_or_skip(driver)
    rel = "agents/a1/tools/0002-freeze"
    drv.create(rel)
    drv.apply_limits(rel, Limits(memory_max=32 * MiB, oom_pause=True))
    efd = drv.open_oom_watch(rel)
    try:
        p = children.python(ALLOC.format(n=64))
        assert drv.move(p.pid, rel)
        children.go(p)
        assert select.select([efd], [], [], 15)[0] == [efd]
        with pytest.raises(CgroupError) as ei:
            drv.freeze("agents/a1")
        assert ei.value.errno == errno.EBUSY and "under_oom" in str(ei.value) and rel in str(ei.value)
        assert not drv.stats(rel).frozen
        drv.apply_limits(rel, Limits(memory_max=256 * MiB, oom_pause=True))
        assert wait_for(lambda: drv.stats(rel).frozen, 3.0)
        assert drv.stats(rel).memory_events["under_oom"] == 0
        time.sleep(0.3)
        assert p.poll() is None and not select.select([p.stdout], [], [], 0)[0], "frozen: must not finish"
        drv.thaw("agents/a1")
        assert p.stdout.readline().startswith("done 64")
    finally:
        os.close(efd)


def test_memory_limit_without_pause_oom_kills_only_the_tool(driver, children):
    drv = _hybrid_or_skip(driver)
    drv.create("agents/a1/runtime")
    drv.create("agents/a1/tools/0003-alloc")
    drv.apply_limits("agents/a1/tools/0003-alloc", Limits(memory_max=32 * MiB))
    agent = children.cmd(["sleep", "60"])
    assert drv.move(agent.pid, "agents/a1/runtime")
    p = children.python(ALLOC.format(n=96))
    assert drv.move(p.pid, "agents/a1/tools/0003-alloc")
    children.go(p)
    assert p.wait(timeout=20) == -signal.SIGKILL
    ev = drv.stats("agents/a1/tools/0003-alloc").memory_events
    assert ev["oom_kill"] >= 1 and ev["max"] > 0 and ev["oom_kill_disable"] == 0
    assert agent.poll() is None, "the agent's runtime must survive its tool's OOM"


def test_memsw_follows_memory_limit_in_a_kernel_accepted_order(driver):
    """memory.memsw.limit_in_bytes must stay >= memory.limit_in_bytes at every write."""
    drv = _hybrid_or_skip(driver)
    mem = drv.v1["memory"]
    if not os.path.exists(mem.file("", "memory.memsw.limit_in_bytes")):
        pytest.skip("no memsw files: the kernel has no swap accounting")
    drv.create("t")
    drv.apply_limits("t", Limits(memory_max=64 * MiB, swap_max=0))
    assert (_read(mem.file("t", "memory.limit_in_bytes")), _read(mem.file("t", "memory.memsw.limit_in_bytes"))) == (
        str(64 * MiB), str(64 * MiB))
    drv.apply_limits("t", Limits(memory_max=128 * MiB, swap_max=16 * MiB))  # memsw raised first
    assert _read(mem.file("t", "memory.memsw.limit_in_bytes")) == str(144 * MiB)
    drv.apply_limits("t", Limits(memory_max=32 * MiB, swap_max=0))  # memory lowered first
    assert (_read(mem.file("t", "memory.limit_in_bytes")), _read(mem.file("t", "memory.memsw.limit_in_bytes"))) == (
        str(32 * MiB), str(32 * MiB))
    with pytest.raises(CgroupError) as ei:
        drv.apply_limits("t", Limits(memory_max=256 * MiB))  # above memsw, swap not given
    assert "swap_max" in str(ei.value)


# --- pids --------------------------------------------------------------------------------

FORK_STORM = """
import errno, os, time
ok, err = 0, None
kids = []
for _ in range(40):
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
    ok += 1
print(ok, err, flush=True)
sys.stdin.readline()
"""


def test_pids_max_stops_a_fork_storm_and_the_parent_survives(driver, children):
    drv = _hybrid_or_skip(driver)
    rel = "agents/a1/tools/0004-storm"
    drv.create(rel)
    drv.apply_limits(rel, Limits(pids_max=6))
    assert _read(drv.v1["pids"].file(rel, "pids.max")) == "6"
    p = children.python(FORK_STORM)
    assert drv.move(p.pid, rel)
    children.go(p)
    ok, err = p.stdout.readline().split()
    assert int(ok) == 5 and int(err) == errno.EAGAIN
    assert p.poll() is None, "the forking parent must survive"
    assert drv.stats(rel).pids_current == 6
    assert drv.stats(rel).pids_max_events >= 1
    drv.kill(rel)
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert not drv.stats(rel).populated
    # pids.current drops when the zombies are reaped (the forked ones by init).
    assert wait_for(lambda: drv.stats(rel).pids_current == 0, 5.0)


# --- freeze / kill -----------------------------------------------------------------------


def test_freeze_stops_cpu_use_and_thaw_resumes(driver, children):
    drv = _hybrid_or_skip(driver)
    rel = "agents/a1/tools/0005-busy"
    drv.create(rel)
    p = children.python(BUSY)
    assert drv.move(p.pid, rel)
    children.go(p)
    time.sleep(0.2)
    drv.freeze("agents/a1")  # a parent: freezing is recursive
    assert drv.stats("agents/a1").frozen and drv.stats(rel).frozen
    assert _read(drv.tree.file(rel, "cgroup.events")).find("frozen 1") >= 0
    t0 = proc_cpu_ticks(p.pid)
    time.sleep(0.5)
    assert proc_cpu_ticks(p.pid) - t0 <= 1, "a frozen process must not run"
    assert proc_state(p.pid) in ("S", "D")
    drv.thaw("agents/a1")
    assert not drv.stats(rel).frozen
    t1 = proc_cpu_ticks(p.pid)
    # Bounded wait rather than a fixed nap: other tests may load this 2-cpu host.
    assert wait_for(lambda: proc_cpu_ticks(p.pid) - t1 >= 5, 5.0), "a thawed busy process must run again"


TREE = """
import os, subprocess, time
# a child, a grandchild, and a double-forked orphan that leaves the session
subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"])
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(300)
    os._exit(0)
time.sleep(300)
"""


def _tree_started(drv, rel, n):
    pids = fs.subtree_pids(drv.tree.dir(rel))
    return pids if len(pids) >= n else None


def test_kill_ends_a_whole_tree_including_grandchildren_and_orphans(driver, children):
    drv = _hybrid_or_skip(driver)
    drv.create("agents/a1/tools/0006-tree")
    drv.create("agents/a1/tools/0007-other")
    p = children.python(TREE)
    q = children.cmd(["sleep", "300"])
    assert drv.move(p.pid, "agents/a1/tools/0006-tree")
    assert drv.move(q.pid, "agents/a1/tools/0007-other")
    children.go(p)
    # python, sh, 2 x sleep, the orphan (its intermediate parent exits)
    pids = wait_for(lambda: _tree_started(drv, "agents/a1/tools/0006-tree", 5))
    assert pids and len(pids) >= 5, pids
    drv.kill("agents/a1/tools")
    for pid in pids:
        assert proc_state(pid) in (None, "Z"), (pid, proc_state(pid))
    assert drv.stats("agents/a1/tools").populated is False
    assert q.wait(timeout=5) == -signal.SIGKILL


def test_kill_fallback_freeze_signal_thaw_ends_a_tree(driver, children):
    """The path for kernels without cgroup.kill, run on real cgroups."""
    drv = _hybrid_or_skip(driver)
    rel = "agents/a1/tools/0008-tree"
    drv.create(rel)
    p = children.python(TREE)
    assert drv.move(p.pid, rel)
    children.go(p)
    pids = wait_for(lambda: _tree_started(drv, rel, 5))
    assert pids and len(pids) >= 5
    drv.tree.kill(rel, use_kill_file=False)
    for pid in pids:
        assert proc_state(pid) in (None, "Z"), (pid, proc_state(pid))
    s = drv.stats(rel)
    assert not s.populated and not s.frozen


# --- cpu ---------------------------------------------------------------------------------


def test_cpu_usage_grows_and_cfs_quota_caps_it(driver, children):
    drv = _hybrid_or_skip(driver)
    drv.create("agents/a1/tools/0009-free")
    drv.create("agents/a1/tools/0010-capped")
    drv.apply_limits("agents/a1/tools/0010-capped", Limits(cpu_max_quota_us=10_000, cpu_period_us=100_000, cpu_weight=50))
    cpu = drv.v1["cpu"]
    assert _read(cpu.file("agents/a1/tools/0010-capped", "cpu.shares")) == "512"
    free = children.python(BUSY)
    capped = children.python(BUSY)
    assert drv.move(free.pid, "agents/a1/tools/0009-free")
    assert drv.move(capped.pid, "agents/a1/tools/0010-capped")
    u_free0 = drv.stats("agents/a1/tools/0009-free").cpu_usage_us
    u_cap0 = drv.stats("agents/a1/tools/0010-capped").cpu_usage_us
    t0 = time.monotonic()
    children.go(free)
    children.go(capped)
    # Run until the uncapped child has had 0.5 s of cpu (quick on an idle host, longer on a
    # loaded one), so the comparison means something however busy the host is.
    assert wait_for(lambda: drv.stats("agents/a1/tools/0009-free").cpu_usage_us - u_free0 >= 500_000, 10.0)
    wall = time.monotonic() - t0
    d_free = drv.stats("agents/a1/tools/0009-free").cpu_usage_us - u_free0
    d_cap = drv.stats("agents/a1/tools/0010-capped").cpu_usage_us - u_cap0
    assert d_cap <= 0.10 * wall * 1e6 + 150_000, (d_cap, wall)  # 10 % of the wall time, one period of slack
    assert d_free > 2 * d_cap, (d_free, d_cap)
    stat = parse_flat_keyed(_read(cpu.file("agents/a1/tools/0010-capped", "cpu.stat")))
    assert stat["nr_throttled"] > 0


def test_cpuset_pins_a_process(driver, children):
    drv = _hybrid_or_skip(driver)
    rel = "agents/a1/tools/0011-pinned"
    drv.create(rel)
    drv.apply_limits(rel, Limits(cpuset_cpus="0", cpuset_mems="0"))
    p = children.cmd(["sleep", "60"])
    assert drv.move(p.pid, rel)
    status = _read(f"/proc/{p.pid}/status")
    allowed = [l for l in status.splitlines() if l.startswith("Cpus_allowed_list")][0]
    assert allowed.split()[-1] == "0"


# --- PSI -----------------------------------------------------------------------------------


def test_psi_trigger_fires_under_cpu_contention(driver, children):
    drv = _hybrid_or_skip(driver)
    rel = "agents/a1/tools/0012-contend"
    drv.create(rel)
    drv.apply_limits(rel, Limits(cpuset_cpus="0"))
    window = max(500_000, drv.features().psi_window_multiple_us)
    fd = drv.open_psi_trigger(rel, "cpu", "some", 50_000, window)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        assert poller.poll(0) == [], "no pressure yet, so no event"
        busy = [children.python(BUSY) for _ in range(3)]  # three runners on one cpu
        for b in busy:
            assert drv.move(b.pid, rel)
        for b in busy:
            children.go(b)
        events = poller.poll(window // 1000 + 5000)
        assert events and events[0][1] & select.POLLPRI, events
        cpu_psi = drv.tree.pressure(rel, "cpu")
        assert cpu_psi.some_total_us > 50_000
    finally:
        os.close(fd)


def test_psi_trigger_rejects_bad_windows(driver):
    drv = _hybrid_or_skip(driver)
    drv.create("x")
    with pytest.raises(CgroupError):
        drv.open_psi_trigger("x", "memory", "some", 100_000, 20_000_000)  # window over 10 s
    with pytest.raises(ValueError):
        drv.open_psi_trigger("x", "disk", "some", 100_000, 1_000_000)


# --- ids ---------------------------------------------------------------------------------

AT_FDCWD = -100


def _kernfs_handle_id(path: str) -> int:
    """name_to_handle_at(2): for cgroupfs the 8-byte file handle is the kernfs node id, the
    value bpf_get_current_cgroup_id() returns for tasks in that cgroup."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("I", buf, 0, 128)
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(AT_FDCWD, path.encode(), buf, ctypes.byref(mount_id), 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    nbytes, _type = struct.unpack_from("Ii", buf, 0)
    assert nbytes == 8
    return struct.unpack_from("Q", buf, 8)[0]


def test_cgroup_id_is_the_v2_inode_and_the_kernfs_id(driver, children):
    drv = _hybrid_or_skip(driver)
    drv.create("agents/a1/runtime")
    drv.create("agents/a2/runtime")
    cid = drv.cgroup_id("agents/a1/runtime")
    assert cid == os.stat(drv.tree.dir("agents/a1/runtime")).st_ino
    assert cid == _kernfs_handle_id(drv.tree.dir("agents/a1/runtime"))
    assert cid != drv.cgroup_id("agents/a2/runtime")
    # A process's /proc/<pid>/cgroup v2 path leads to the same id.
    p = children.cmd(["sleep", "60"])
    assert drv.move(p.pid, "agents/a1/runtime")
    v2path = [l for l in _read(f"/proc/{p.pid}/cgroup").splitlines() if l.startswith("0::")][0][3:]
    assert os.stat(drv.tree.mount + v2path).st_ino == cid
    # Reverse lookup, including a fresh driver with a cold cache.
    assert drv.path_of_id(cid) == "agents/a1/runtime"
    cold = HybridDriver(drv.tree.mount, drv.tree.root, {}, create_root=False)
    assert cold.path_of_id(drv.cgroup_id("agents/a2/runtime")) == "agents/a2/runtime"
    assert cold.path_of_id(os.stat("/sys/fs/cgroup/unified").st_ino) is None


# --- validation and self move --------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/../b", "a b", "a/./b", "a;b", "a/\n"])
def test_bad_relative_paths_are_refused(driver, bad):
    with pytest.raises(ValueError):
        driver.create(bad)


SELF_MOVE = """
import json, sys
from agentd.cgroups.detect import move_self_to_daemon_cgroup, open_driver
drv = open_driver(leaf_name=sys.argv[1], create_root=False)
move_self_to_daemon_cgroup(drv)
print(open("/proc/self/cgroup").read(), flush=True)
"""


def test_move_self_to_daemon_cgroup(driver, children):
    drv = _hybrid_or_skip(driver)
    leaf = os.path.basename(drv.tree.root_dir)
    out = subprocess.run(
        [sys.executable, "-c", SELF_MOVE, leaf], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for line in out.strip().splitlines():
        _, ctrls, path = line.split(":", 2)
        if ctrls == "" or ctrls in drv.v1:
            assert path.endswith(f"/{leaf}/daemon"), line
    assert drv.children("") == ["daemon"]


SERVICE_ROOT = """
import json
from agentd.cgroups.detect import open_driver
drv = open_driver(create_root=False)
print(json.dumps([drv.tree.root_dir] + [t.root_dir for t in drv.v1.values()]), flush=True)
"""


def test_a_delegated_systemd_service_uses_its_own_cgroup_as_the_root(driver, children):
    """INVOCATION_ID set and the own v2 cgroup named *.service: no "agentd" below it."""
    drv = _hybrid_or_skip(driver)
    drv.create("svc.service")
    p = children.python(SERVICE_ROOT, env={**os.environ, "INVOCATION_ID": "0123456789abcdef"})
    assert drv.move(p.pid, "svc.service")
    children.go(p)
    roots = json.loads(p.stdout.readline())
    assert roots == [drv.tree.dir("svc.service")] + [t.dir("svc.service") for t in drv.v1.values()]
