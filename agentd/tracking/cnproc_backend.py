"""The fallback tracker: the kernel's proc connector (cn_proc) over netlink.

No gate, no cgroup ids (cgroup_id is 0), no OOM or cgroup-attach events: it tells fork, exec
and exit only. The protocol is spoken with the socket module rather than pyroute2's
ProcEventSocket (pyroute2 0.9 wraps it in its asyncio core, which hides ENOBUFS and read
timeouts); the constants and layouts are the ones in pyroute2.netlink.connector.cn_proc and
linux/cn_proc.h.

Lost events are counted from ENOBUFS (at least one each) and from gaps in the per-CPU
sequence numbers the kernel stamps on every proc event.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct
import threading

from agentd import procfs
from agentd.events import ProcEvent, ProcEventKind
from agentd.tracking import pidns
from agentd.tracking.backend import BackendUnavailable, EventSink, TrackerBackend

log = logging.getLogger(__name__)

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_DONE = 3
NLMSG_ERROR = 2
NLMSG_NOOP = 1

PROC_EVENT_FORK = 0x1
PROC_EVENT_EXEC = 0x2
PROC_EVENT_EXIT = 0x80000000

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
PROC_EV_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
FORK = struct.Struct("=IIII")  # parent_pid, parent_tgid, child_pid, child_tgid
EXEC = struct.Struct("=II")  # process_pid, process_tgid
EXIT = struct.Struct("=IIIIII")  # pid, tgid, exit_code, exit_signal, parent_pid, parent_tgid

POLL_TIMEOUT_S = 0.1
RCVBUF = 8 << 20


def control_message(listen: bool) -> bytes:
    op = struct.pack("=I", PROC_CN_MCAST_LISTEN if listen else PROC_CN_MCAST_IGNORE)
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
    return NLMSGHDR.pack(NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn


class SeqTracker:
    """Counts gaps in the per-CPU sequence numbers of proc events."""

    def __init__(self) -> None:
        self.last: dict[int, int] = {}
        self.gaps = 0

    def see(self, cpu: int, seq: int) -> None:
        prev = self.last.get(cpu)
        self.last[cpu] = seq
        if prev is not None and seq > prev + 1:
            self.gaps += seq - prev - 1


def parse_datagram(data: bytes, seqs: SeqTracker | None = None, read_comm=procfs.read_comm) -> list[ProcEvent]:
    """ProcEvents (fork of processes, exec, process exit) from one netlink datagram."""
    out: list[ProcEvent] = []
    off = 0
    while off + NLMSGHDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size or off + length > len(data):
            break
        body = off + NLMSGHDR.size
        off += (length + 3) & ~3
        if mtype in (NLMSG_NOOP, NLMSG_ERROR):
            continue
        if body + CN_MSG.size + PROC_EV_HEAD.size > len(data):
            continue
        idx, val, seq, _ack, _len, _fl = CN_MSG.unpack_from(data, body)
        if idx != CN_IDX_PROC or val != CN_VAL_PROC:
            continue
        p = body + CN_MSG.size
        what, cpu, ts = PROC_EV_HEAD.unpack_from(data, p)
        if seqs is not None and what != 0:  # the LISTEN ack (what 0) carries our own seq
            seqs.see(cpu, seq)
        p += PROC_EV_HEAD.size
        ev = _event(what, ts, data, p, read_comm)
        if ev is not None:
            out.append(ev)
    return out


def _event(what: int, ts: int, data: bytes, p: int, read_comm) -> ProcEvent | None:
    if what == PROC_EVENT_FORK and p + FORK.size <= len(data):
        _ppid, ptgid, cpid, ctgid = FORK.unpack_from(data, p)
        if cpid != ctgid or cpid <= 0:  # a thread, not a process
            return None
        return ProcEvent(ProcEventKind.FORK, pid=cpid, tgid=ptgid, ppid=ptgid, comm=read_comm(cpid), ts_ns=ts)
    if what == PROC_EVENT_EXEC and p + EXEC.size <= len(data):
        pid, tgid = EXEC.unpack_from(data, p)
        if pid <= 0:
            return None
        return ProcEvent(ProcEventKind.EXEC, pid=tgid, tgid=tgid, old_pid=pid, comm=read_comm(tgid), ts_ns=ts)
    if what == PROC_EVENT_EXIT and p + EXIT.size <= len(data):
        pid, tgid, code, _sig, _pp, _ptgid = EXIT.unpack_from(data, p)
        if pid != tgid or pid <= 0:  # a thread's exit; the process ends with its leader
            return None
        return ProcEvent(ProcEventKind.EXIT, pid=pid, tgid=tgid, exit_code=code, exit_code_known=True, ts_ns=ts)
    return None


class CnProcBackend(TrackerBackend):
    name = "cn_proc"
    can_gate = False

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._sink: EventSink | None = None
        self._seqs = SeqTracker()
        self._enobufs = 0
        self.sink_errors = 0

    def load(self) -> None:
        """Open the connector socket and subscribe. Idempotent."""
        if self._sock is not None:
            return
        ns = pidns.current()
        if ns.is_child:
            # The kernel ignores a listen request from there, yet multicasts the events another
            # listener turned on: init-namespace pids that name other processes, or none here.
            raise BackendUnavailable(f"cn_proc does not work in a child pid namespace (pid:[{ns.ino}]): "
                                     "its pids are the init namespace's")
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as exc:
            raise BackendUnavailable(f"no proc connector socket: {exc.strerror}") from exc
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, CN_IDX_PROC))
            sock.send(control_message(True))
        except OSError as exc:
            sock.close()
            raise BackendUnavailable(f"proc connector refused to listen: {exc.strerror}") from exc
        sock.setblocking(False)
        self._sock = sock

    def start(self, sink: EventSink) -> None:
        if self._thread is not None:
            raise RuntimeError("CnProcBackend already started")
        self.load()
        self._sink = sink
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="agentd-cnproc-tracker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._sock is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self._sock.send(control_message(False))
        except OSError:
            pass
        self._sock.close()
        self._sock = None

    def lost_events(self) -> int:
        return self._seqs.gaps + self._enobufs

    def stats(self) -> dict[str, int]:
        return {"lost": self.lost_events(), "enobufs": self._enobufs, "sink_errors": self.sink_errors}

    def _loop(self) -> None:
        sock = self._sock
        while not self._stop.is_set():
            ready, _, _ = select.select([sock], [], [], POLL_TIMEOUT_S)
            if not ready:
                continue
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        self._enobufs += 1
                        log.warning("proc connector overran its socket buffer; events were lost")
                        continue
                    log.exception("proc connector read failed")
                    break
                for ev in parse_datagram(data, self._seqs):
                    try:
                        self._sink(ev)
                    except Exception:
                        self.sink_errors += 1
                        log.exception("tracker sink failed on %s", ev)
