"""Pick the driver this host needs (v2 or hybrid) and find agentd's delegated root in each hierarchy."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from agentd.cgroups import fs, layout
from agentd.cgroups.driver import CgroupDriver, CgroupError
from agentd.cgroups.hybrid import V1_CONTROLLERS, HybridDriver
from agentd.cgroups.parse import parse_cgroup_file, parse_mounts
from agentd.cgroups.v2 import V2Driver

DAEMON_LEAF = layout.DAEMON
HOLDER_LEAF = layout.HOLDER
MOVE_ROUNDS = 20  # a process in the root may fork while it is moved: list and move again


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


def is_inside(path: str, root: str) -> bool:
    """Pure: the absolute cgroup path lies in root's subtree (root itself included)."""
    path, root = path.rstrip("/") or "/", root.rstrip("/") or "/"
    return root == "/" or path == root or path.startswith(root + "/")


def root_is_elsewhere(own_v2: str, root: str | None) -> bool:
    """Pure: the root was named (--cgroup-root) and agentd's own cgroup is outside it, so the
    root belongs to another unit (systemd/agentd-tree.service): agentd stays where it is and
    does not move itself in. Unnamed roots keep the old way (agentd moves into <root>/daemon)."""
    return root is not None and not is_inside(own_v2, root)


def own_v2_cgroup() -> str:
    with open("/proc/self/cgroup") as f:
        return parse_cgroup_file(f.read()).get("", "/")


def root_owner_problems(entries: list[tuple[str, int, int]]) -> list[str]:
    """Pure: entries are (path, uid, st_mode) of a root and its ancestors (and the root's
    cgroup.procs and cgroup.subtree_control). Each one not root's, or writable by group or
    others, is a problem: whoever can write there can make, rename or fill agentd's cgroups."""
    problems = []
    for path, uid, mode in entries:
        if uid != 0:
            problems.append(f"{path} is owned by uid {uid}, not root")
        elif mode & (stat.S_IWGRP | stat.S_IWOTH):
            problems.append(f"{path} is writable by group or others ({stat.filemode(mode)})")
    return problems


def _hierarchies(driver: CgroupDriver) -> list[fs.Hierarchy]:
    return [driver.tree, *getattr(driver, "v1", {}).values()]


def check_root_is_roots(driver: CgroupDriver) -> None:
    """Refuse a named root that an unprivileged user could change under agentd: the root (when
    it exists), every ancestor up to the mount and the root's procs and subtree_control files,
    in every hierarchy, must be root's and not group- or world-writable (a user's delegated
    cgroup, e.g. user@1000.service, fails here)."""
    entries = []
    for tree in _hierarchies(driver):
        path = tree.root_dir
        while True:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                st = None  # made by agentd (create_root): its parent is checked
            if st is not None:
                entries.append((path, st.st_uid, st.st_mode))
            if os.path.normpath(path) == os.path.normpath(tree.mount):
                break
            path = os.path.dirname(path)
        for name in ("cgroup.procs", "cgroup.subtree_control"):
            try:
                st = os.lstat(tree.file("", name))
            except FileNotFoundError:
                continue
            entries.append((tree.file("", name), st.st_uid, st.st_mode))
    problems = root_owner_problems(entries)
    if problems:
        raise CgroupError(errno.EPERM, "refusing the cgroup root: " + "; ".join(problems[:4])
                          + " (a cgroup an unprivileged user can write is never agentd's root)")


def move_root_procs_to_leaf(driver: CgroupDriver, leaf: str = HOLDER_LEAF) -> dict[str, list[int]]:
    """Move every process found in the root cgroup, in each hierarchy, into <root>/<leaf>, then
    let the root hand controllers to its children: on v2 a cgroup that holds a process cannot
    (EBUSY). The holder of systemd/agentd-tree.service sits in the root when its unit starts.
    Idempotent: with the root empty it only makes sure leaf exists. Returns the pids moved per
    mount point."""
    moved: dict[str, list[int]] = {}
    if isinstance(driver, V2Driver):
        driver.make_dirs(leaf)
    else:
        driver.create(leaf)
    for tree in _hierarchies(driver):
        procs, target = tree.file("", "cgroup.procs"), tree.file(leaf, "cgroup.procs")
        for _ in range(MOVE_ROUNDS):
            pids = fs.read_pids(procs)
            if not pids:
                break
            for pid in pids:
                if fs.write_pid(target, pid):
                    moved.setdefault(tree.mount, []).append(pid)
        else:
            left = fs.read_pids(procs)
            if left:
                raise CgroupError(errno.EBUSY, f"processes {left[:10]} keep appearing in {tree.root_dir} "
                                  f"after {MOVE_ROUNDS} rounds of moving them into {leaf}/")
    if isinstance(driver, V2Driver):
        driver.enable_controllers(leaf)
    return moved


def open_driver(root: str | None = None, create_root: bool = True, *, leaf_name: str = "agentd") -> CgroupDriver:
    """The driver for this host, rooted at agentd's delegated cgroup.

    root: an absolute cgroup path (e.g. "/system.slice/agentd-tree.service") used in every
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
