"""A cgroup root that is another unit's (systemd/agentd-tree.service), on this host's kernel.

agentd.service runs `agentd run --cgroup-root /system.slice/agentd-tree.service`: the tree
unit's holder process sits in that root when agentd starts, and cgroup v2 refuses to hand
controllers to children of a cgroup holding a process (EBUSY). agentd moves every process of
the root into holder/ (each hierarchy: on this hybrid host the v1 ones too) before it enables
controllers, stays in its own cgroup, and refuses a root an unprivileged user can write.
Every root here nests below this process's own cgroups and is removed at teardown.
"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from agentd.cgroups import fs, v2
from agentd.cgroups.detect import check_root_is_roots, is_inside, move_root_procs_to_leaf, open_driver
from agentd.cgroups.driver import CgroupError
from agentd.cgroups.parse import parse_cgroup_file

from cgroup_fixtures import _force_remove, children, driver, needs_root, unified_v2_driver, wait_for  # noqa: F401

pytestmark = [pytest.mark.kernel, needs_root]

NOBODY = 65534


def _own() -> dict[str, str]:
    return parse_cgroup_file(Path("/proc/self/cgroup").read_text())


def _hierarchies(drv) -> list:
    return [drv.tree, *getattr(drv, "v1", {}).values()]


def _key(drv, tree) -> str:
    """The /proc/<pid>/cgroup key of one of the driver's hierarchies."""
    return "" if tree is drv.tree else tree.controller


def _cgroup_of(pid: int, key: str) -> str:
    return parse_cgroup_file(Path(f"/proc/{pid}/cgroup").read_text()).get(key, "")


def _sleeper(children, drv) -> int:
    """A `sleep` standing in for agentd-tree.service's holder, put into the root (every hierarchy)."""
    p = children.cmd(["sleep", "300"])
    assert drv.move(p.pid, "")
    return p.pid


def test_the_holder_moves_from_the_root_into_holder_in_every_hierarchy(driver, children):
    holder = _sleeper(children, driver)
    for tree in _hierarchies(driver):
        assert fs.read_pids(tree.file("", "cgroup.procs")) == [holder], tree.root_dir
    moved = move_root_procs_to_leaf(driver)
    assert sorted(moved) == sorted(t.mount for t in _hierarchies(driver))
    assert all(pids == [holder] for pids in moved.values())
    for tree in _hierarchies(driver):
        assert fs.read_pids(tree.file("", "cgroup.procs")) == [], tree.root_dir
        assert fs.read_pids(tree.file("holder", "cgroup.procs")) == [holder]
        assert _cgroup_of(holder, _key(driver, tree)) == tree.root.rstrip("/") + "/holder"
    # a restart of agentd finds the root empty: nothing moves, nothing fails
    assert move_root_procs_to_leaf(driver) == {}
    assert _cgroup_of(holder, "") == driver.tree.root.rstrip("/") + "/holder"
    # and the layout goes on below the root as usual
    driver.create("agents/a1/runtime")
    agent = children.cmd(["sleep", "300"]).pid
    assert driver.move(agent, "agents/a1/runtime")
    assert _cgroup_of(agent, "").endswith("/agents/a1/runtime")


def test_every_process_of_the_root_moves_a_parent_and_its_children(driver, children):
    """Several processes in the root (a shell and the sleeps it forked): all of them move, in
    every hierarchy, and the root is left empty."""
    # the shell forks only once it is in the root (a fork before the move would stay behind)
    p = children.cmd(["sh", "-c", "read go; for i in 1 2 3 4 5 6 7 8; do sleep 300 & done; wait"],
                     stdin=subprocess.PIPE, text=True)
    assert driver.move(p.pid, "")
    children.go(p)
    assert wait_for(lambda: len(fs.read_pids(driver.tree.file("", "cgroup.procs"))) == 9, timeout_s=30)
    in_root = sorted(fs.read_pids(driver.tree.file("", "cgroup.procs")))
    moved = move_root_procs_to_leaf(driver)
    assert sorted(moved[driver.tree.mount]) == in_root
    for tree in _hierarchies(driver):
        assert fs.read_pids(tree.file("", "cgroup.procs")) == []
        assert sorted(fs.read_pids(tree.file("holder", "cgroup.procs"))) == in_root


@pytest.fixture
def hugetlb_in_unified(monkeypatch):
    """This hybrid host's cgroup2 mount carries one controller, hugetlb: made available to
    the root's children for the test (the only write outside the test's own cgroups, undone
    at teardown) and made the one V2Driver enables, so the kernel's no-internal-process rule
    is met for real."""
    mount = Path("/sys/fs/cgroup/unified")
    if not mount.is_dir() or "hugetlb" not in (mount / "cgroup.controllers").read_text().split():
        pytest.skip("no cgroup2 mount with the hugetlb controller on this host (the VM covers pure v2)")
    if _own().get("", "/") != "/":
        pytest.skip("this process is not in the cgroup2 root")
    control = mount / "cgroup.subtree_control"
    had = "hugetlb" in control.read_text().split()
    if not had:
        control.write_text("+hugetlb")
    monkeypatch.setattr(v2, "WANTED_CONTROLLERS", ("hugetlb",))
    yield
    if not had:
        try:
            control.write_text("-hugetlb")
        except OSError:
            pass  # another cgroup enabled it meanwhile: leave it


def test_controllers_are_enabled_only_after_the_holder_left_the_root(hugetlb_in_unified, unified_v2_driver, children):
    drv = unified_v2_driver
    assert drv.available_controllers() == ["hugetlb"]
    holder = _sleeper(children, drv)
    # the bug: with the holder in the root, agents/ cannot get controllers (EBUSY)
    with pytest.raises(CgroupError) as exc:
        drv.create("agents")
    assert exc.value.errno == errno.EBUSY and str(holder) in str(exc.value)
    drv.remove("agents")
    move_root_procs_to_leaf(drv)
    assert drv.enabled_controllers("") == ["hugetlb"]
    assert fs.read_pids(drv.tree.file("holder", "cgroup.procs")) == [holder]
    drv.create("agents/a1/runtime")
    assert any(n.startswith("hugetlb.") for n in os.listdir(drv.tree.dir("agents")))  # the controller is there


def test_a_root_an_unprivileged_user_can_write_is_refused(driver, children):
    """As systemd does for a delegated unit with User=: the root chowned to uid 65534. That
    user can then make agents/<name> (here for real, through setpriv) and move processes:
    agentd refuses the root before it makes or moves anything in it."""
    root = driver.tree.root_dir
    check_root_is_roots(driver)  # root's: accepted
    os.chown(root, NOBODY, NOBODY)
    try:
        made = subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
                               "mkdir", os.path.join(root, "agents")], capture_output=True, text=True, timeout=30)
        assert made.returncode == 0, made.stderr  # the user can write the root
        with pytest.raises(CgroupError) as exc:
            check_root_is_roots(driver)
        assert exc.value.errno == errno.EPERM and f"{root} is owned by uid {NOBODY}" in str(exc.value)
    finally:
        os.chown(root, 0, 0)
    os.chmod(root, 0o757)
    try:
        with pytest.raises(CgroupError, match="writable by group or others"):
            check_root_is_roots(driver)
    finally:
        os.chmod(root, 0o755)
    check_root_is_roots(driver)


# --- the daemon with a root outside its own cgroup -------------------------------------------


@pytest.fixture
def tree_root(children):
    """An absolute cgroup path below this process's own cgroup in every hierarchy agentd uses
    (agentd's own cgroup is not inside it: the root is "elsewhere", like agentd-tree.service's),
    with a holder `sleep` in it; everything made for it is removed at teardown."""
    own = _own()
    deepest = max(own.values(), key=len).rstrip("/")
    path = f"{deepest}/agentd-test-tree-{uuid.uuid4().hex[:8]}"
    drv = open_driver(path, create_root=False)
    keys = {id(t): _key(drv, t) for t in _hierarchies(drv)}
    if not all(is_inside(path, own.get(keys[id(t)], "/")) for t in _hierarchies(drv)):
        pytest.skip("no cgroup path lies below this process's own cgroup in every hierarchy")
    tops = []
    for tree in _hierarchies(drv):  # the topmost directory the test makes in each hierarchy
        top = tree.root_dir
        while not os.path.isdir(os.path.dirname(top)):
            top = os.path.dirname(top)
        tops.append(top)
    try:
        drv.create("")
        holder = _sleeper(children, drv)
        yield path, drv, holder
    finally:
        children.cleanup()
        for top in tops:
            _force_remove(top)
        left = [t for t in tops if os.path.exists(t)]
        assert not left, f"test cgroups left behind: {left}"


def test_the_daemon_moves_the_holder_stays_in_its_own_cgroup_and_restarts(tree_root, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from daemon_thread import DaemonThread, test_config

    path, drv, holder = tree_root
    own_before = Path("/proc/self/cgroup").read_text()
    # move_self as under the unit: with the root elsewhere agentd must NOT move itself in
    config = test_config(str(tmp_path), "unused", cgroup_root=path, move_self=True, api=False)
    for start in (1, 2):  # a start, then a restart on the same tree
        with DaemonThread(config) as dt:
            cg_line = next(line for line in dt.call(dt.daemon.status)["lines"] if line.startswith("cgroups:"))
            assert f"root {path} " in cg_line, cg_line
            assert ("1 process(es) moved from the root into holder/" in cg_line) == (start == 1), cg_line
            assert Path("/proc/self/cgroup").read_text() == own_before  # agentd stayed where it was
            for tree in _hierarchies(drv):
                assert fs.read_pids(tree.file("", "cgroup.procs")) == []
                assert _cgroup_of(holder, _key(drv, tree)) == f"{path}/holder"
            assert os.path.isdir(drv.tree.dir("agents"))


def test_the_daemon_refuses_a_root_a_user_can_write(tree_root, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from daemon_thread import DaemonThread, test_config

    path, drv, holder = tree_root
    os.chown(drv.tree.root_dir, NOBODY, NOBODY)
    try:
        with pytest.raises(CgroupError, match=f"owned by uid {NOBODY}"):
            DaemonThread(test_config(str(tmp_path), "unused", cgroup_root=path, api=False)).start()
        # nothing was made or moved: the holder still sits in the root
        assert _cgroup_of(holder, "") == path and not os.path.exists(drv.tree.dir("holder"))
    finally:
        os.chown(drv.tree.root_dir, 0, 0)
