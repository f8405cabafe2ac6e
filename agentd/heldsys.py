"""Syscalls that keep the GIL, for the exec gate's placement path only (`holding()`).

Why: CPython releases the GIL around every blocking syscall (os.open, os.read, os.write,
os.mkdir, os.stat, ...). A thread that gave it up gets it back only when the holder reaches
its own next syscall or the switch interval (5 ms) runs out, later still when the holder is
preempted on a loaded host. Placement makes some 40 syscalls while an exec sits stopped, and
the event loop (the previous tool calls' records, its tick reading every live tool call's
cgroup files) takes the GIL at each of them. Measured on this 2-core host with one busy
Python thread beside it: 8 /proc reads took p50 118 µs, p99 18-50 ms through os.*, and p50
194 µs, p99 0.5-2 ms through these calls (py-spy on the daemon at 200 tool calls/s showed
the tracker thread waiting at its syscalls, the gate guard's pipe write among them).

These call libc through ctypes.PyDLL, which does not release the GIL, so a placement runs
from its first syscall to the SIGCONT without handing the GIL over. That is only right for
short syscalls: /proc files of a process stopped at the gate (nobody else holds its mm),
cgroupfs mkdir/rename/writes. The longest is a v2 cgroup.procs write (an RCU grace period
without favordynmods); the event loop waits that long, which is the point: a stopped exec
comes first. The loop and everything else keep the ordinary os.* calls (`active()` False).

Errors come back as OSError with errno, like os.*; a caller that needs the file name in the
message adds it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

_libc = ctypes.PyDLL(None, use_errno=True)


def _fn(name: str, restype, *argtypes):
    f = getattr(_libc, name)
    f.restype, f.argtypes = restype, list(argtypes)
    return f


_c_int, _c_char_p, _c_void_p, _c_size_t, _c_ssize_t = ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_ssize_t
_open = _fn("open", _c_int, _c_char_p, _c_int, _c_int)
_read = _fn("read", _c_ssize_t, _c_int, _c_void_p, _c_size_t)
_write = _fn("write", _c_ssize_t, _c_int, _c_char_p, _c_size_t)
_close = _fn("close", _c_int, _c_int)
_mkdir = _fn("mkdir", _c_int, _c_char_p, _c_int)
_rename = _fn("rename", _c_int, _c_char_p, _c_char_p)
_readlink = _fn("readlink", _c_ssize_t, _c_char_p, _c_void_p, _c_size_t)

_state = threading.local()
_BUF_MAX = 1 << 20  # the largest read placement makes (procfs.LIMITS["status"])


def active() -> bool:
    """True inside `holding()` on this thread: the callers in fs and procfs use these calls."""
    return getattr(_state, "on", False)


@contextlib.contextmanager
def holding():
    """On this thread, fs and procfs keep the GIL through their syscalls (placement only).
    Nests: the tracker's gated-exec callback holds, and placement inside it holds again."""
    before = active()
    _state.on = True
    try:
        yield
    finally:
        _state.on = before


def _error(path: str | None = None) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err), path) if path is not None else OSError(err, os.strerror(err))


def _buffer(size: int):
    buf = getattr(_state, "buf", None)
    if buf is None or len(buf) < size:
        buf = _state.buf = ctypes.create_string_buffer(max(size, 64 << 10))
    return buf


def read(path: str, limit: int) -> bytes:
    """Up to `limit` bytes of a /proc or cgroupfs file, in one read(2): the files placement
    reads (/proc/<pid>/stat, status, cmdline, environ) hand over all they hold, up to the
    count asked, in the first read."""
    limit = min(limit, _BUF_MAX)
    fd = _open(os.fsencode(path), os.O_RDONLY | os.O_CLOEXEC, 0)
    if fd < 0:
        raise _error(path)
    try:
        buf = _buffer(limit)
        n = _read(fd, buf, limit)
        if n < 0:
            raise _error(path)
        return ctypes.string_at(buf, n)
    finally:
        _close(fd)


def write(path: str, data: bytes) -> None:
    """open, one write(2), close: what cgroupfs and /proc knobs want."""
    fd = _open(os.fsencode(path), os.O_WRONLY | os.O_CLOEXEC, 0)
    if fd < 0:
        raise _error(path)
    try:
        if _write(fd, data, len(data)) < 0:
            raise _error(path)
    finally:
        _close(fd)


def write_fd(fd: int, data: bytes) -> int:
    n = _write(fd, data, len(data))
    if n < 0:
        raise _error()
    return n


def mkdir(path: str, mode: int = 0o777) -> None:
    if _mkdir(os.fsencode(path), mode) != 0:
        raise _error(path)


def rename(src: str, dst: str) -> None:
    if _rename(os.fsencode(src), os.fsencode(dst)) != 0:
        raise _error(src)


def isdir(path: str) -> bool:
    fd = _open(os.fsencode(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0)
    if fd < 0:
        return False
    _close(fd)
    return True


def readlink(path: str) -> str:
    buf = _buffer(4096)
    n = _readlink(os.fsencode(path), buf, 4096)
    if n < 0:
        raise _error(path)
    return os.fsdecode(ctypes.string_at(buf, n))
