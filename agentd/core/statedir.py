"""The state directory: root's alone (0700, its files 0600), and held by one daemon at a time.

Every agent's argv is in the SQLite database and the journal, so nobody but root may read
them, whatever the umask or the service manager. Two daemons on one state directory would
both re-adopt and place every exec: a flock on a file inside it, taken before anything
else, lets only the first one run.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

LOCK_NAME = "agentd.lock"
# What the daemon keeps there (SQLite makes -wal and -shm with the mode of the database).
PRIVATE_FILES = ("agentd.db", "agentd.db-wal", "agentd.db-shm", "journal.jsonl", "journal.jsonl.1", LOCK_NAME,
                 "kinds.db", "kinds.db-wal", "kinds.db-shm")


class StateDirError(RuntimeError):
    """The state directory cannot be used safely: one line for the operator."""


class AlreadyRunning(StateDirError):
    pass


def open_state_dir(path: Path) -> int:
    """Create path 0700 (or tighten it to 0700), take its lock (the fd returned, to hold
    for the process's life), then make its known files 0600. Refuses a symlink or a
    directory owned by another user: whoever owns it could swap its files."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StateDirError(f"state directory {path}: {os.strerror(exc.errno or 0)} (a symlink is refused)") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise StateDirError(f"state directory {path} is owned by uid {st.st_uid}, not by uid {os.geteuid()}; "
                                "chown it to root or choose another --state-dir")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
        lock_fd = take_lock(path)  # before any file in it is touched
        for name in PRIVATE_FILES:
            _tighten(fd, name)
        _create_private(fd, "agentd.db")  # so SQLite's database, -wal and -shm start 0600
        return lock_fd
    finally:
        os.close(fd)


def _tighten(dir_fd: int, name: str) -> None:
    """chmod 0600 a plain file left by an earlier run (0644 under the old umask)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return  # absent, or a symlink (ELOOP): never followed
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _create_private(dir_fd: int, name: str) -> None:
    try:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd))
    except OSError as exc:
        raise StateDirError(f"cannot create {name} in the state directory: {os.strerror(exc.errno or 0)}") from None


def take_lock(path: Path) -> int:
    """flock(LOCK_EX|LOCK_NB) on <path>/agentd.lock; the fd is held for the process's life.
    AlreadyRunning (with the holder's pid when it wrote one) if another daemon holds it."""
    lock = path / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateDirError(f"cannot open {lock}: {os.strerror(exc.errno or 0)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise AlreadyRunning(f"another agentd (pid {holder or '?'}) already uses the state directory {path}; "
                                 "stop it first or give this one its own --state-dir") from None
        raise StateDirError(f"cannot lock {lock}: {os.strerror(exc.errno or 0)}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
