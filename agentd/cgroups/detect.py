"""Pick the driver this host needs (v2 or hybrid) and find agentd's delegated root in each hierarchy."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from agentd.cgroups import fs, layout
from agentd.cgroups.driver import CgroupDriver, CgroupError
from agentd.cgroups.hybrid import V1_CONTROLLERS, HybridDriver
from agentd.cgroups.parse import parse_cgroup_file, parse_mounts
from agentd.cgroups.v2 import V2Driver

DAEMON_LEAF = layout.DAEMON


@dataclass
class Layout:
    """What /proc/self/mounts and /proc/self/cgroup say, before any driver exists."""

    kind: str  # "v2" or "hybrid"
    unified_mount: str
    v1_mounts: dict[str, str] = field(default_factory=dict)  # controller -> mount point
    own: dict[str, str] = field(default_factory=dict)  # hierarchy key ("" = v2) -> own cgroup path


def detect_layout(mounts_text: str, cgroup_text: str) -> Layout:
    """Pure: v2 when no v1 hierarchy carries a controller agentd limits with; hybrid otherwise."""
    mounts = parse_mounts(mounts_text)
    unified = [mp for fstype, mp, _ in mounts if fstype == "cgroup2"]
    v1: dict[str, str] = {}
    for fstype, mp, opts in mounts:
        if fstype != "cgroup":
            continue
        for c in V1_CONTROLLERS:
            if c in opts and c not in v1:
                v1[c] = mp
    if not unified:
        raise CgroupError(0, "no cgroup2 mount found in /proc/self/mounts; agentd needs the v2 hierarchy")
    own = parse_cgroup_file(cgroup_text)
    if v1:
        unified_mount = next((m for m in unified if m.endswith("/unified")), unified[0])
        return Layout("hybrid", unified_mount, v1, own)
    unified_mount = "/sys/fs/cgroup" if "/sys/fs/cgroup" in unified else unified[0]
    return Layout("v2", unified_mount, {}, own)


def resolve_root(own_path: str, root: str | None, leaf_name: str) -> str:
    """Pure: the absolute cgroup path of agentd's root in one hierarchy."""
    if root is not None:
        return fs.validate_abs_cgroup(root)
    own_path = own_path or "/"
    return fs.validate_abs_cgroup(own_path.rstrip("/") + "/" + fs.validate_rel(leaf_name))


def is_delegated_service(own_v2: str, env: dict[str, str]) -> bool:
    """systemd started us as a service with Delegate=yes: the service cgroup is ours."""
    return bool(env.get("INVOCATION_ID")) and own_v2.rstrip("/").endswith(".service")


def open_driver(root: str | None = None, create_root: bool = True, *, leaf_name: str = "agentd") -> CgroupDriver:
    """The driver for this host, rooted at agentd's delegated cgroup.

    root: an absolute cgroup path (e.g. "/system.slice/agentd.service") used in every
    hierarchy. None: the caller's own cgroup in each hierarchy plus leaf_name, or, for a
    systemd service with delegation (INVOCATION_ID set, own v2 cgroup "*.service"), the
    own cgroup itself.
    """
    with open("/proc/self/mounts") as f:
        mounts_text = f.read()
    with open("/proc/self/cgroup") as f:
        cgroup_text = f.read()
    layout = detect_layout(mounts_text, cgroup_text)
    env = dict(os.environ)
    own_v2 = layout.own.get("", "/")
    service = root is None and is_delegated_service(own_v2, env)

    def root_for(key: str) -> str:
        own = layout.own.get(key, "/")
        if service:
            return fs.validate_abs_cgroup(own)
        return resolve_root(own, root, leaf_name)

    if layout.kind == "v2":
        return V2Driver(layout.unified_mount, root_for(""), create_root=create_root)
    v1 = {c: (mp, root_for(c)) for c, mp in layout.v1_mounts.items()}
    return HybridDriver(layout.unified_mount, root_for(""), v1, create_root=create_root)


def move_self_to_daemon_cgroup(driver: CgroupDriver, pid: int | None = None) -> str:
    """Move the calling process (all its threads) into <root>/daemon, then let the root hand
    controllers to its children: on v2 a cgroup that holds a process cannot do that."""
    pid = os.getpid() if pid is None else pid
    if isinstance(driver, V2Driver):
        driver.make_dirs(DAEMON_LEAF)
        if not driver.move(pid, DAEMON_LEAF):
            raise CgroupError(errno.ESRCH, f"pid {pid} vanished while moving into {DAEMON_LEAF}")
        driver.enable_controllers(DAEMON_LEAF)
    else:
        driver.create(DAEMON_LEAF)
        if not driver.move(pid, DAEMON_LEAF):
            raise CgroupError(errno.ESRCH, f"pid {pid} vanished while moving into {DAEMON_LEAF}")
    return DAEMON_LEAF
