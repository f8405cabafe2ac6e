"""Try the cgroup v2 `favordynmods` mount option for a benchmark, and put the mount back.

favordynmods makes the kernel keep cgroup_threadgroup_rwsem's readers on the slow path, so
a migration (a write to cgroup.procs) no longer waits an RCU grace period. The rwsem is one
for the whole kernel, so the flag on the v2 root covers the v1 moves too. It is a remount:
this only flips that one option (mount(2) MS_REMOUNT with the super options it found, plus
or minus favordynmods) and refuses when it cannot say what it would restore. v1 hierarchies
refuse option changes on remount (the kernel keeps their options fixed), so they are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

MS_REMOUNT = 32
FLAG = "favordynmods"


def _mountinfo(mount: str) -> tuple[list[str], list[str]] | None:
    """(per-mount options, super options) of the cgroup2 mount at `mount`."""
    for line in open("/proc/self/mountinfo"):
        pre, _, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if fields[4] == mount and tail[0] == "cgroup2":
            return fields[5].split(","), tail[2].split(",")
    return None


def supported() -> bool:
    try:
        return FLAG in open("/sys/kernel/cgroup/features").read().split()
    except OSError:
        return False


def _remount(mount: str, super_opts: list[str]) -> None:
    data = ",".join(o for o in super_opts if o not in ("rw", "ro")).encode()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(None, mount.encode(), None, ctypes.c_ulong(MS_REMOUNT), data or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"remount {mount} with {data.decode() or '(no options)'}: {os.strerror(err)}")


@contextlib.contextmanager
def favordynmods(mount: str = "/sys/fs/cgroup/unified"):
    """Yields None with favordynmods on (and restores the mount), or the reason it was not tried."""
    before = _mountinfo(mount)
    if before is None:
        yield f"no cgroup2 mount at {mount}"
        return
    if not supported():
        yield "this kernel has no favordynmods (/sys/kernel/cgroup/features)"
        return
    mnt_opts, super_opts = before
    if FLAG in super_opts:
        yield f"{mount} already has favordynmods"
        return
    if not set(mnt_opts) <= {"rw", "relatime"}:  # a plain remount would reset nosuid/nodev/...: not ours to risk
        yield f"{mount} has mount options {','.join(mnt_opts)} that a plain remount would not keep"
        return
    _remount(mount, [*super_opts, FLAG])
    try:
        if FLAG not in _mountinfo(mount)[1]:
            yield "the remount did not take favordynmods"
            return
        yield None
    finally:
        _remount(mount, super_opts)
        after = _mountinfo(mount)
        if after != before:
            raise RuntimeError(f"{mount} did not come back as it was: {before} -> {after}")
