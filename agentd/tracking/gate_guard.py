"""A watchdog for the exec gate: a small child process that continues every gated exec the
daemon still owes a SIGCONT when the daemon dies, however it dies (crash, SIGKILL, OOM).

The daemon tells it "+pid" when a gated exec arrives and "-pid" once it is continued, over
a pipe whose write end only the daemon holds (close-on-exec); end of file means the daemon
is gone. It ignores SIGTERM/SIGINT so that a service stop, which signals the whole cgroup,
does not end it before it has done its work; a final SIGKILL of the whole cgroup still does,
which is why a restarted daemon also runs bpf_backend.continue_stopped_in().
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from agentd import heldsys

log = logging.getLogger(__name__)

GUARD_CODE = r"""
import os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
fd, owed, buf = int(sys.argv[1]), set(), b""
while True:
    chunk = os.read(fd, 65536)
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b"\n")
    for line in lines:
        if line[:1] == b"+":
            owed.add(int(line[1:]))
        elif line[:1] == b"-":
            owed.discard(int(line[1:]))
for pid in owed:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
"""


class GateGuard:
    def __init__(self) -> None:
        r, w = os.pipe()  # both close-on-exec: no other child of the daemon keeps w open
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", GUARD_CODE, str(r)],
                pass_fds=(r,), stdin=subprocess.DEVNULL, close_fds=True,
            )
        finally:
            os.close(r)
        self._w: int | None = w

    @property
    def pid(self) -> int:
        return self._proc.pid

    def owe(self, pid: int) -> None:
        self._send(b"+%d\n" % pid)

    def paid(self, pid: int) -> None:
        self._send(b"-%d\n" % pid)

    def _send(self, line: bytes) -> None:
        if self._w is None:
            return
        try:
            # < PIPE_BUF: atomic. On the gated path without giving up the GIL (heldsys).
            (heldsys.write_fd if heldsys.active() else os.write)(self._w, line)
        except OSError as exc:
            log.warning("the exec-gate guard is gone (%s); stopped execs now depend on this daemon alone", exc.strerror)
            self.close()

    def close(self) -> None:
        """Normal shutdown: the caller has continued everything it owed."""
        if self._w is not None:
            os.close(self._w)
            self._w = None
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
