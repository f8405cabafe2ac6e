"""A caller held by a pidfd, so its pid cannot change hands unnoticed.

SO_PEERCRED gives a number. Between the request's headers and its body the caller can exit
and another process (root's, even) take the same pid; whatever is then done "to pid N"
happens to that other process. A pidfd refers to one process for good: it polls readable
once that process has exited, and while it has not exited no other process can hold its
pid (a pid is freed only when its holder is reaped). So "the pidfd is not readable" after
an action on pid N proves N was still the caller's during it.

SO_PEERPIDFD (Linux 6.5) pins the very process that connected. Without it, pidfd_open(pid)
is taken as early as possible, with the start time read then, and compared later.
"""

from __future__ import annotations

import os
import select
import socket
import struct

from agentd import procfs

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)


class PeerProcess:
    def __init__(self, pid: int, fd: int, start: int | None, pinned: bool):
        self.pid = pid
        self.fd = fd
        self.start = start  # /proc start time when it was taken
        self.pinned = pinned  # from SO_PEERPIDFD: the process that connected, not whoever had the pid

    @classmethod
    def of_socket(cls, sock, pid: int) -> "PeerProcess | None":
        """A pidfd for the peer of a Unix socket; None when the peer is already gone."""
        start = _start_of(pid)
        try:
            fd = struct.unpack("i", sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4))[0]
            return cls(pid, fd, start, pinned=True)
        except OSError:
            pass
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            return None
        return cls(pid, fd, start, pinned=False)

    def alive(self) -> bool:
        """The same process still holds the pid: not exited, and (for a pidfd_open one) the
        start time unchanged."""
        if self.fd < 0:
            return False
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)  # readable once the process exited
        if poller.poll(0):
            return False
        return self.start is not None and _start_of(self.pid) == self.start

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "PeerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _start_of(pid: int) -> int | None:
    stat = procfs.read_stat(pid)
    return stat.start_ticks if stat is not None else None
