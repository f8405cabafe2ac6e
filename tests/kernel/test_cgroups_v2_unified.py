"""V2Driver and the POLLPRI watcher on this host's cgroup2 mount.

On a hybrid host that mount has no controllers, so this covers what v2 does without them:
grouping, membership, freeze, kill, cgroup.events, PSI and ids. Limits, memory.events and
subtree_control are covered inside the pure-v2 VM (tests/vm/guest/test_cgroup_v2_driver.py).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time

import pytest

from agentd.cgroups.driver import CgroupError, Limits
from agentd.cgroups.psi import PriWatcher

from cgroup_fixtures import children, needs_root, proc_cpu_ticks, unified_v2_driver, wait_for  # noqa: F401

pytestmark = [pytest.mark.kernel, needs_root]

BUSY = "while True:\n    pass\n"


def test_grouping_move_and_events(unified_v2_driver, children):
    drv = unified_v2_driver
    drv.create("agents/a1/runtime")
    assert drv.children("agents") == ["a1"] and drv.exists("agents/a1/runtime")
    p = children.cmd(["sleep", "60"])
    assert drv.move(p.pid, "agents/a1/runtime")
    assert drv.procs("agents/a1/runtime") == [p.pid]
    s = drv.stats("agents")
    assert s.populated and not s.frozen
    p.kill()
    p.wait()
    assert drv.move(p.pid, "agents/a1/runtime") is False
    assert wait_for(lambda: not drv.stats("agents").populated, 2.0)
    drv.remove("agents")
    assert not os.path.exists(drv.tree.dir("agents"))


def test_limits_without_a_controller_fail_with_a_sentence(unified_v2_driver):
    drv = unified_v2_driver
    if "memory" in drv.available_controllers():
        pytest.skip("this mount has the memory controller: the VM tests cover limits")
    drv.create("t")
    with pytest.raises(CgroupError) as ei:
        drv.apply_limits("t", Limits(memory_max=1 << 30))
    assert ei.value.errno == errno.ENOENT and "memory controller is not enabled" in str(ei.value)
    drv.apply_limits("t", Limits())  # nothing asked, nothing to fail


def test_freeze_thaw_and_kill_tree(unified_v2_driver, children):
    drv = unified_v2_driver
    drv.create("agents/a1/tools/0001-busy")
    p = children.python(BUSY)
    assert drv.move(p.pid, "agents/a1/tools/0001-busy")
    children.go(p)
    time.sleep(0.1)
    drv.freeze("agents")
    assert drv.stats("agents/a1/tools/0001-busy").frozen
    t0 = proc_cpu_ticks(p.pid)
    time.sleep(0.4)
    assert proc_cpu_ticks(p.pid) - t0 <= 1
    drv.thaw("agents")
    t1 = proc_cpu_ticks(p.pid)
    assert wait_for(lambda: proc_cpu_ticks(p.pid) - t1 >= 5, 5.0), "a thawed busy process must run again"
    drv.kill("agents/a1")
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert not drv.stats("agents").populated


def test_cgroup_id_and_reverse(unified_v2_driver):
    drv = unified_v2_driver
    drv.create("agents/a1/runtime")
    cid = drv.cgroup_id("agents/a1/runtime")
    assert cid == os.stat(drv.tree.dir("agents/a1/runtime")).st_ino
    drv.tree._id_cache.clear()
    assert drv.path_of_id(cid) == "agents/a1/runtime"
    assert drv.path_of_id(cid + 10_000_000) is None


def test_move_self_into_daemon_leaf_enables_nothing_where_nothing_is_available(unified_v2_driver, children):
    """On a mount without controllers the helper still moves the caller; enabling is a no-op."""
    drv = unified_v2_driver
    p = children.python(
        "import sys\n"
        "from agentd.cgroups.v2 import V2Driver\n"
        "from agentd.cgroups.detect import move_self_to_daemon_cgroup\n"
        f"drv = V2Driver({drv.tree.mount!r}, {drv.tree.root!r}, create_root=False)\n"
        "move_self_to_daemon_cgroup(drv)\n"
        "print('moved', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    children.go(p)
    assert p.stdout.readline().strip() == "moved"
    assert drv.procs("daemon") == [p.pid]


# --- the POLLPRI watcher -------------------------------------------------------------------


def _run_loop_until(watcher_setup, timeout_s: float):
    """Run an asyncio loop with a PriWatcher; watcher_setup(loop, watcher, done) registers fds
    and calls done(value) from a callback. Returns the value or None on timeout."""

    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        w = PriWatcher(loop)
        try:
            watcher_setup(loop, w, lambda v: fut.done() or fut.set_result(v))
            return await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            return None
        finally:
            w.close()

    return asyncio.run(main())


def test_pri_watcher_delivers_a_psi_trigger_event_into_the_loop(unified_v2_driver, children):
    drv = unified_v2_driver
    drv.create("contend")
    window = max(500_000, drv.features().psi_window_multiple_us)
    fd = drv.open_psi_trigger("contend", "cpu", "some", 30_000, window)
    try:
        busy = [children.python(BUSY) for _ in range(4)]  # 4 runners on 2 cpus
        for b in busy:
            assert drv.move(b.pid, "contend")

        def setup(loop, w, done):
            w.add(fd, lambda f: done(("psi", f, asyncio.get_running_loop() is loop)))
            for b in busy:
                children.go(b)

        got = _run_loop_until(setup, window / 1e6 + 5)
        assert got == ("psi", fd, True), got
    finally:
        os.close(fd)


def test_pri_watcher_delivers_cgroup_events_changes(unified_v2_driver, children):
    """kernfs signals POLLPRI on cgroup.events when populated flips: the kill is seen."""
    drv = unified_v2_driver
    drv.create("w")
    p = children.cmd(["sleep", "60"])
    assert drv.move(p.pid, "w")
    fd = os.open(drv.tree.file("w", "cgroup.events"), os.O_RDONLY)
    try:
        os.pread(fd, 4096, 0)  # arm: kernfs reports changes after the last read

        def on_event(f, done):
            text = os.pread(f, 4096, 0).decode()
            if "populated 0" in text:
                done(text)

        def setup(loop, w, done):
            w.add(fd, lambda f: on_event(f, done))
            loop.call_later(0.1, p.kill)

        got = _run_loop_until(setup, 5)
        assert got is not None and "populated 0" in got
    finally:
        os.close(fd)


def test_pri_watcher_without_a_loop_calls_back_in_its_thread(unified_v2_driver, children):
    drv = unified_v2_driver
    drv.create("w")
    p = children.cmd(["sleep", "60"])
    assert drv.move(p.pid, "w")
    fd = os.open(drv.tree.file("w", "cgroup.events"), os.O_RDONLY)
    seen = []
    w = PriWatcher()
    try:
        os.pread(fd, 4096, 0)
        w.add(fd, lambda f: seen.append(os.pread(f, 4096, 0).decode()))
        drv.freeze("w")
        assert wait_for(lambda: any("frozen 1" in t for t in seen), 3.0), seen
        w.remove(fd)
        n = len(seen)
        drv.thaw("w")
        time.sleep(0.2)
        assert len(seen) == n, "a removed fd must not call back"
    finally:
        w.close()
        os.close(fd)


def test_a_freeze_cancelled_by_a_thaw_is_not_a_failure(unified_v2_driver, children, monkeypatch):
    """The ladder may thaw a tool call while its freeze still waits for `frozen 1` (a task in
    a memory.high penalty sleep freezes late): that freeze was cancelled, not failed. A freeze
    that simply never completes still raises."""
    from agentd.cgroups import fs, unified

    drv = unified_v2_driver
    drv.create("w")
    p = children.python(BUSY)
    assert drv.move(p.pid, "w")
    children.go(p)
    freeze_file = os.path.join(drv.tree.dir("w"), "cgroup.freeze")

    def thawed_during_the_wait(events_file, key, want, timeout_s):
        fs.write(freeze_file, "0")  # what the ladder's thaw does from the loop meanwhile
        return False

    monkeypatch.setattr(unified.fs, "wait_events_key", thawed_during_the_wait)
    drv.freeze("w")  # no "did not report frozen" error
    assert fs.read(freeze_file).strip() == "0"
    monkeypatch.setattr(unified.fs, "wait_events_key", lambda *a: False)
    with pytest.raises(CgroupError, match="did not report frozen"):
        drv.freeze("w")
    monkeypatch.undo()
    drv.thaw("w")
    drv.kill("w")


def test_remove_takes_a_leaf_in_one_rmdir_a_tree_deepest_first_and_names_a_busy_ones_processes(
        unified_v2_driver, children, monkeypatch):
    from agentd.cgroups import fs

    drv = unified_v2_driver
    listed: list[str] = []
    real_child_dirs = fs.child_dirs
    monkeypatch.setattr(fs, "child_dirs", lambda path: listed.append(path) or real_child_dirs(path))
    drv.create("agents/a1/tools/0001-x")
    drv.remove("agents/a1/tools/0001-x")  # a tool call's leaf: no listing of its entries
    assert listed == [] and not drv.exists("agents/a1/tools/0001-x")
    drv.create("agents/a1/tools/0002-y/inner")
    drv.create("agents/a1/runtime")
    drv.remove("agents/a1")  # children first, each found by the parent's EBUSY
    assert not drv.exists("agents/a1") and drv.exists("agents")
    drv.create("agents/a2/tools/0003-busy")
    p = children.cmd(["sleep", "60"])
    assert drv.move(p.pid, "agents/a2/tools/0003-busy")
    with pytest.raises(CgroupError) as ei:
        drv.remove("agents/a2")
    assert ei.value.errno == errno.EBUSY and f"processes [{p.pid}] still run in it" in str(ei.value)
    assert drv.exists("agents/a2/tools/0003-busy")  # nothing with a process in it is gone
    p.kill()
    p.wait()
    assert wait_for(lambda: not drv.stats("agents/a2").populated, 2.0)
    drv.remove("agents/a2")
    assert not drv.exists("agents/a2")
