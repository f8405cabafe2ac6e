"""The few cgroupfs primitives both drivers share: path checks, reads, writes, mkdir, rmdir, kill."""

from __future__ import annotations

import errno
import os
import re
import select
import signal
import time

from agentd import heldsys
from agentd.cgroups.driver import CgroupError

_COMPONENT = re.compile(r"[A-Za-z0-9._@:+-]+")


def validate_rel(rel: str) -> str:
    """A path relative to the delegated root; "" is the root itself. Returns it normalised."""
    if not isinstance(rel, str):
        raise ValueError(f"cgroup path must be a string, not {type(rel).__name__}")
    if rel.startswith("/"):
        raise ValueError(f"cgroup path must be relative to the delegated root: {rel!r}")
    parts = [p for p in rel.split("/") if p != ""]
    for p in parts:
        if p in (".", "..") or not _COMPONENT.fullmatch(p):
            raise ValueError(
                f"cgroup path component {p!r} in {rel!r} is not allowed "
                "(only letters, digits and . _ @ : + -; no '.' or '..')"
            )
    return "/".join(parts)


def validate_abs_cgroup(path: str) -> str:
    """An absolute cgroup path such as "/system.slice/agentd.service"."""
    if not path.startswith("/"):
        raise ValueError(f"a cgroup root must be absolute: {path!r}")
    return "/" + validate_rel(path.lstrip("/")) if path.strip("/") else "/"


class Hierarchy:
    """One mounted hierarchy (v2 or a v1 controller) under agentd's root cgroup in it."""

    def __init__(self, mount: str, root: str):
        self.mount = mount.rstrip("/") or "/"
        self.root = validate_abs_cgroup(root)
        self.root_dir = os.path.normpath(self.mount + self.root)

    def dir(self, rel: str) -> str:
        rel = validate_rel(rel)
        return os.path.join(self.root_dir, rel) if rel else self.root_dir

    def file(self, rel: str, name: str) -> str:
        return os.path.join(self.dir(rel), name)

    def mkdirs(self, rel: str) -> list[str]:
        """Create the root (if missing) and rel below it; returns the directories created."""
        rel = validate_rel(rel)
        if isdir(self.root_dir):  # the common case: one stat, then rel's mkdirs
            return mkdirs(self.root_dir, rel)
        return mkdirs(self.mount, self.root) + mkdirs(self.root_dir, rel)


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise CgroupError(e.errno, f"cannot read {path}: {os.strerror(e.errno or 0)}") from e


def read_int(path: str) -> int:
    return int(read(path).strip())


def write(path: str, value: str) -> None:
    """One write() of value, as cgroupfs wants; errors carry the file and the value."""
    if heldsys.active():  # the placement path: keep the GIL (heldsys says why)
        try:
            heldsys.write(path, value.encode())
            return
        except OSError as e:
            raise CgroupError(e.errno, f"writing {value!r} to {path} failed: {os.strerror(e.errno or 0)}") from e
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        raise CgroupError(e.errno, f"cannot open {path} to write {value!r}: {os.strerror(e.errno or 0)}") from e
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise CgroupError(e.errno, f"writing {value!r} to {path} failed: {os.strerror(e.errno or 0)}") from e
    finally:
        os.close(fd)


def write_pid(procs_file: str, pid: int) -> bool:
    """Move pid by writing cgroup.procs. False when the pid is gone (ESRCH); other errors raise."""
    if heldsys.active():  # the placement path: keep the GIL (heldsys says why)
        try:
            heldsys.write(procs_file, str(pid).encode())
            return True
        except OSError as e:
            return _pid_gone_or_raise(e, pid, procs_file)
    try:
        fd = os.open(procs_file, os.O_WRONLY)
    except OSError as e:
        raise CgroupError(e.errno, f"cannot open {procs_file}: {os.strerror(e.errno or 0)}") from e
    try:
        os.write(fd, str(pid).encode())
        return True
    except OSError as e:
        return _pid_gone_or_raise(e, pid, procs_file)
    finally:
        os.close(fd)


def _pid_gone_or_raise(e: OSError, pid: int, procs_file: str) -> bool:
    """A failed cgroup.procs write: False when the pid is gone (ESRCH), else a CgroupError."""
    if e.errno == errno.ESRCH:
        return False
    raise CgroupError(e.errno, f"moving pid {pid} into {procs_file} failed: {os.strerror(e.errno or 0)}") from e


def read_pids(procs_file: str) -> list[int]:
    try:
        text = read(procs_file)
    except CgroupError as e:
        if e.errno == errno.ENOENT:
            return []
        raise
    return [int(x) for x in text.split()]


def isdir(path: str) -> bool:
    return heldsys.isdir(path) if heldsys.active() else os.path.isdir(path)


def _mkdir(path: str) -> None:
    (heldsys.mkdir if heldsys.active() else os.mkdir)(path)


def rename(src: str, dst: str) -> None:
    (heldsys.rename if heldsys.active() else os.rename)(src, dst)


def mkdirs(base: str, rel: str) -> list[str]:
    """mkdir each missing component of rel under base; returns the directories created."""
    leaf = os.path.join(base, rel.strip("/")) if rel.strip("/") else base
    try:  # the common case on the placement path: only the leaf is new
        _mkdir(leaf)
        return [leaf]
    except FileExistsError:
        return []
    except FileNotFoundError:
        pass  # a parent is missing: walk down from base
    except OSError as e:
        raise CgroupError(e.errno, f"cannot create cgroup {leaf}: {os.strerror(e.errno or 0)}") from e
    created = []
    path = base
    for part in [p for p in rel.split("/") if p]:
        path = os.path.join(path, part)
        try:
            _mkdir(path)
            created.append(path)
        except FileExistsError:
            pass
        except OSError as e:
            raise CgroupError(e.errno, f"cannot create cgroup {path}: {os.strerror(e.errno or 0)}") from e
    return created


def child_dirs(path: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def rmdir_tree(path: str) -> None:
    """rmdir path and every descendant, deepest first. Missing is fine; EBUSY raises a sentence.

    A leaf (every tool call's cgroup) goes with one rmdir: the kernel answers EBUSY for a
    cgroup with children as for one with processes, and only then are its entries listed
    (a cgroup directory holds dozens of files: listing each one first was a tenth of the
    daemon's CPU per tool call)."""
    if _rmdir(path) == 0:
        return
    for name in child_dirs(path):
        rmdir_tree(os.path.join(path, name))
    err = _rmdir(path)
    if err == errno.EBUSY:
        pids = read_pids(os.path.join(path, "cgroup.procs"))
        raise CgroupError(errno.EBUSY, f"cannot remove cgroup {path}: processes {pids[:10]} still run in it; kill them first")
    if err:
        raise CgroupError(err, f"cannot remove cgroup {path}: {os.strerror(err)}")


def _rmdir(path: str) -> int:
    """0 when path is gone (removed now, or missing); EBUSY/ENOTEMPTY when something is still
    in it; any other failure raises."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
            raise CgroupError(e.errno, f"cannot remove cgroup {path}: {os.strerror(e.errno or 0)}") from e
        return e.errno
    return 0


def subtree_pids(path: str) -> list[int]:
    pids = read_pids(os.path.join(path, "cgroup.procs"))
    for name in child_dirs(path):
        pids.extend(subtree_pids(os.path.join(path, name)))
    return pids


def signal_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_events_key(events_file: str, key: str, want: int, timeout_s: float) -> bool:
    """Wait until cgroup.events shows key == want; kernfs signals changes with POLLPRI.
    True when reached, False on timeout or when the cgroup vanished."""
    deadline = time.monotonic() + timeout_s
    try:
        fd = os.open(events_file, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        while True:
            text = os.pread(fd, 4096, 0).decode()
            for line in text.splitlines():
                k, _, v = line.partition(" ")
                if k == key and int(v) == want:
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # kernfs notifications can be coalesced; re-read at least every 50 ms.
            poller.poll(min(left, 0.05) * 1000)
    except OSError:
        return False
    finally:
        os.close(fd)


def has_swap() -> bool:
    try:
        with open("/proc/swaps") as f:
            return len(f.read().splitlines()) > 1
    except OSError:
        return False
