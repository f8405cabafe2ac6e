"""Driver choice, root resolution and path checks: pure functions, no cgroupfs."""

from __future__ import annotations

import pytest

from agentd.cgroups.detect import (detect_layout, is_delegated_service, is_inside, resolve_root, root_is_elsewhere,
                                   root_owner_problems)
from agentd.cgroups.fs import validate_abs_cgroup, validate_rel

HYBRID_MOUNTS = (
    "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
    "cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0\n"
    "cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0\n"
    "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
    "cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0\n"
    "cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0\n"
    "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n"
)
HYBRID_CGROUP = "8:pids:/\n4:memory:/process_api/abc\n3:cpuset:/\n1:cpu:/\n0::/\n"
V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n"
V2_SERVICE_CGROUP = "0::/system.slice/agentd.service\n"
# systemd's hybrid mode mounts only name=systemd as v1: no controller there, so that is v2.
SYSTEMD_NAMED_ONLY = (
    "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    "cgroup /sys/fs/cgroup/systemd cgroup rw,name=systemd 0 0\n"
)


def test_hybrid_host_is_hybrid_with_each_controller_mount():
    lay = detect_layout(HYBRID_MOUNTS, HYBRID_CGROUP)
    assert lay.kind == "hybrid" and lay.unified_mount == "/sys/fs/cgroup/unified"
    assert lay.v1_mounts == {
        "cpu": "/sys/fs/cgroup/cpu", "cpuset": "/sys/fs/cgroup/cpuset",
        "memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids",
    }
    assert lay.own["memory"] == "/process_api/abc"


def test_pure_v2_and_named_only_v1_are_v2():
    assert detect_layout(V2_MOUNTS, V2_SERVICE_CGROUP).kind == "v2"
    assert detect_layout(V2_MOUNTS, V2_SERVICE_CGROUP).unified_mount == "/sys/fs/cgroup"
    lay = detect_layout(SYSTEMD_NAMED_ONLY, "0::/\n")
    assert lay.kind == "v2" and lay.unified_mount == "/sys/fs/cgroup/unified"


def test_no_cgroup2_is_an_error():
    with pytest.raises(OSError):
        detect_layout("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n", "4:memory:/\n")


def test_root_resolution():
    assert resolve_root("/process_api/abc", None, "agentd") == "/process_api/abc/agentd"
    assert resolve_root("/", None, "agentd") == "/agentd"
    assert resolve_root("/x", "/system.slice/agentd.service", "agentd") == "/system.slice/agentd.service"
    with pytest.raises(ValueError):
        resolve_root("/", "relative/root", "agentd")
    assert is_delegated_service("/system.slice/agentd.service", {"INVOCATION_ID": "f00"})
    assert not is_delegated_service("/system.slice/agentd.service", {})
    assert not is_delegated_service("/user.slice/session-1.scope", {"INVOCATION_ID": "f00"})


@pytest.mark.parametrize("rel,norm", [
    ("", ""), ("agents/a1/runtime", "agents/a1/runtime"), ("agents//a1/", "agents/a1"),
    ("tools/0003-pytest", "tools/0003-pytest"), ("a@b:c+d.e_f", "a@b:c+d.e_f"),
])
def test_valid_rel_paths(rel, norm):
    assert validate_rel(rel) == norm


@pytest.mark.parametrize("bad", ["/abs", "..", "a/../b", "a/./b", "a b", "a;b", "a\n", "a/é", "a/*"])
def test_invalid_rel_paths(bad):
    with pytest.raises(ValueError):
        validate_rel(bad)


def test_abs_cgroup_paths():
    assert validate_abs_cgroup("/") == "/"
    assert validate_abs_cgroup("/system.slice/agentd.service") == "/system.slice/agentd.service"
    for bad in ("system.slice", "/a/../b"):
        with pytest.raises(ValueError):
            validate_abs_cgroup(bad)


def test_a_named_root_outside_the_own_cgroup_is_elsewhere():
    # agentd.service naming agentd-tree.service's cgroup: agentd stays where it is
    assert root_is_elsewhere("/system.slice/agentd.service", "/system.slice/agentd-tree.service")
    # a prefix of the name is not an ancestor
    assert root_is_elsewhere("/system.slice/agentd.service-x", "/system.slice/agentd.service")
    # the root is the own cgroup or above it: agentd moves itself into daemon/ as before
    assert not root_is_elsewhere("/system.slice/agentd.service", "/system.slice/agentd.service")
    assert not root_is_elsewhere("/system.slice/agentd.service/daemon", "/system.slice/agentd.service/")
    assert not root_is_elsewhere("/user.slice/x", "/")
    # no named root: the old defaults (own + /agentd, or the delegated service cgroup)
    assert not root_is_elsewhere("/system.slice/agentd.service", None)
    assert is_inside("/a/b", "/a") and is_inside("/a", "/a/") and not is_inside("/ab", "/a")


def test_a_root_a_user_could_change_is_a_problem():
    ok = [("/sys/fs/cgroup", 0, 0o40755), ("/sys/fs/cgroup/system.slice", 0, 0o40755),
          ("/sys/fs/cgroup/system.slice/agentd-tree.service/cgroup.procs", 0, 0o100644)]
    assert root_owner_problems(ok) == []
    bad = root_owner_problems([("/sys/fs/cgroup/user.slice/user@1000.service", 1000, 0o40755),
                               ("/sys/fs/cgroup/x", 0, 0o40775), ("/sys/fs/cgroup/y", 0, 0o40757)])
    assert bad == ["/sys/fs/cgroup/user.slice/user@1000.service is owned by uid 1000, not root",
                   "/sys/fs/cgroup/x is writable by group or others (drwxrwxr-x)",
                   "/sys/fs/cgroup/y is writable by group or others (drwxr-xrwx)"]
