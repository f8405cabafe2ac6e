"""PSI triggers and the other POLLPRI sources (cgroup.events, v2 memory.events) for an event loop.

asyncio's add_reader registers EPOLLIN, but these fds report EPOLLIN all the time and signal
their events with EPOLLPRI, so the loop cannot watch them directly. Two ways were tried here
(kernel 6.18, cpu.pressure trigger under contention):

- an epoll object holding the fds with EPOLLPRI, its own fd added to the loop: the outer
  epoll's readiness check polls the trigger, which CONSUMES a PSI event (psi_trigger_poll
  clears it with cmpxchg), and the inner epoll then reports nothing: events are lost.
- one helper thread blocking in epoll_wait(EPOLLPRI | EPOLLET) that hands each event to the
  loop with call_soon_threadsafe: every event arrives. This is what PriWatcher does.

Edge-triggered, so a kernfs file (cgroup.events, memory.events) that stays "changed" until it
is re-read does not spin the thread; the callback re-reads it when it runs.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
from collections.abc import Callable

from agentd.cgroups.driver import CgroupError

SYSTEM_PRESSURE = "/proc/pressure"


def open_trigger(path: str, kind: str, stall_us: int, window_us: int) -> int:
    """A PSI trigger on any pressure file (a cgroup's or /proc/pressure/<resource>)."""
    if kind not in ("some", "full"):
        raise ValueError(f"PSI kind must be 'some' or 'full': {kind!r}")
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, f"{kind} {stall_us} {window_us}\0".encode())
    except OSError as e:
        os.close(fd)
        raise CgroupError(e.errno, f"the kernel refused PSI trigger '{kind} {stall_us} {window_us}' on {path}: "
                          f"{os.strerror(e.errno or 0)}") from e
    return fd


class PriWatcher:
    """One thread, one epoll: calls callback(fd) for each POLLPRI (or POLLIN, for eventfds)
    event, in the given asyncio loop when there is one, else in the watcher thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self._loop = loop
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="agentd-pri-watcher", daemon=True)
        self._thread.start()

    def add(self, fd: int, callback: Callable[[int], None], events: int = select.EPOLLPRI) -> None:
        """Watch fd (PSI trigger, cgroup.events, memory.events: EPOLLPRI; eventfd: EPOLLIN)."""
        with self._lock:
            self._callbacks[fd] = callback
        self._epoll.register(fd, events | select.EPOLLET)

    def remove(self, fd: int) -> None:
        """Stop watching fd (the caller still owns and closes it)."""
        with self._lock:
            self._callbacks.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self._stop = True
        os.eventfd_write(self._wake, 1)
        self._thread.join(timeout=5)
        self._epoll.close()
        os.close(self._wake)

    def _run(self) -> None:
        while not self._stop:
            try:
                ready = self._epoll.poll()
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return
            for fd, _mask in ready:
                if fd == self._wake:
                    continue
                with self._lock:
                    cb = self._callbacks.get(fd)
                if cb is None:
                    continue
                if self._loop is not None:
                    try:
                        self._loop.call_soon_threadsafe(cb, fd)
                    except RuntimeError:  # loop closed
                        return
                else:
                    cb(fd)
