"""The calls that need each capability the unit keeps, made for real (one errno each).

`python -m agentd.core.capprobe PID` (PID: a process of another uid) prints one JSON object {call: errno name or "ok"}; run under
`setpriv --bounding-set=...` it shows which call fails without which capability on the
running kernel (tests/kernel/test_unit_capabilities.py does, for every capability of
systemd/agentd.service). Every call is the smallest form of one agentd makes: a BPF map and
a tracepoint program, attached with perf_event_open (and, for comparison, a raw tracepoint
program attached with bpf(BPF_RAW_TRACEPOINT_OPEN)); the proc connector; a signal to,
an oom_score_adj of, a file chowned to another uid; a negative nice; kernel.task_delayacct.
Everything made here is undone before it returns.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile

NOBODY = 65534
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
SYS_BPF, SYS_PERF_EVENT_OPEN = 321, 298  # x86_64 (the unit sets SystemCallArchitectures=native)
BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN = 0, 5, 17
BPF_MAP_TYPE_ARRAY, BPF_PROG_TYPE_TRACEPOINT, BPF_PROG_TYPE_RAW_TRACEPOINT = 2, 5, 17
PERF_TYPE_TRACEPOINT = 2
PERF_EVENT_IOC_SET_BPF = 0x40042408
TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def _err(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    return errno.errorcode.get(code, str(code)) if code else type(exc).__name__


def _syscall(nr: int, *args) -> int:
    r = _libc.syscall(nr, *args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def bpf_map_create() -> int:
    attr = ctypes.create_string_buffer(struct.pack("IIII", BPF_MAP_TYPE_ARRAY, 4, 4, 1), 128)
    return _syscall(SYS_BPF, BPF_MAP_CREATE, attr, 128)


def bpf_prog_load_tracepoint(prog_type: int = BPF_PROG_TYPE_TRACEPOINT) -> int:
    insns = ctypes.create_string_buffer(bytes([0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]), 16)
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(struct.pack("IIQQ", prog_type, 2, ctypes.addressof(insns),
                                                   ctypes.addressof(lic)), 128)
    return _syscall(SYS_BPF, BPF_PROG_LOAD, attr, 128)


def raw_tracepoint_attach() -> None:
    """The other way to run a program at a tracepoint (BCC's RAW_TRACEPOINT_PROBE): a raw
    tracepoint program attached with bpf(BPF_RAW_TRACEPOINT_OPEN), no perf event at all.
    Probed to see whether it escapes Debian's perf_event_paranoid=3 (CAP_SYS_ADMIN)."""
    prog = bpf_prog_load_tracepoint(BPF_PROG_TYPE_RAW_TRACEPOINT)
    name = ctypes.create_string_buffer(b"sched_process_exec")
    attr = ctypes.create_string_buffer(struct.pack("QI", ctypes.addressof(name), prog), 128)
    try:
        _close(_syscall(SYS_BPF, BPF_RAW_TRACEPOINT_OPEN, attr, 128))
    finally:
        _close(prog)


def tracepoint_id(name: str = "sched/sched_process_exec") -> int:
    for root in TRACEFS:
        try:
            with open(f"{root}/events/{name}/id") as f:
                return int(f.read())
        except OSError:
            continue
    raise FileNotFoundError(errno.ENOENT, "no tracefs")


def perf_event_open_tracepoint() -> int:
    # perf_event_attr, first version (64 bytes): type, size, config, then zeros
    attr = ctypes.create_string_buffer(struct.pack("IIQ", PERF_TYPE_TRACEPOINT, 64, tracepoint_id()), 64)
    return _syscall(SYS_PERF_EVENT_OPEN, attr, -1, 0, -1, 8)  # all tasks, cpu 0, FD_CLOEXEC


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


def attach() -> None:
    prog = bpf_prog_load_tracepoint()
    ev = perf_event_open_tracepoint()
    try:
        import fcntl

        fcntl.ioctl(ev, PERF_EVENT_IOC_SET_BPF, prog)
    finally:
        _close(ev, prog)


def cn_proc_listen() -> None:
    """PROC_CN_MCAST_LISTEN on the proc connector, as the cn_proc tracker does; the kernel
    answers with an ack carrying the error (EPERM without CAP_NET_ADMIN)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 11)  # NETLINK_CONNECTOR
    try:
        s.bind((0, 1))  # CN_IDX_PROC multicast group
        s.settimeout(2)
        op = struct.pack("I", 1)  # PROC_CN_MCAST_LISTEN
        cn = struct.pack("IIIIHH", 1, 1, 0, 0, len(op), 0) + op
        s.send(struct.pack("IHHII", 16 + len(cn), 3, 0, 0, 0) + cn)  # NLMSG_DONE
        while True:
            data = s.recv(4096)
            what, = struct.unpack_from("I", data, 36)
            if what == 0:  # PROC_EVENT_NONE: the ack
                err, = struct.unpack_from("I", data, 52)
                if err:
                    raise OSError(err, os.strerror(err))
                return
    finally:
        s.close()


def kill_other_user(pid: int) -> None:
    os.kill(pid, 0)  # the permission check of kill(2), without a signal


def lower_oom_score_adj() -> None:
    """Of a root process (an agent runtime launched by root): another uid's file is 0644
    its own, which root cannot open for writing without CAP_DAC_OVERRIDE."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        with open(f"/proc/{child.pid}/oom_score_adj", "w") as f:
            f.write("-100")  # lower than the inherited 0: needs CAP_SYS_RESOURCE
    finally:
        child.kill()
        child.wait()


def read_exe(pid: int) -> None:
    os.readlink(f"/proc/{pid}/exe")


def read_environ(pid: int) -> None:
    with open(f"/proc/{pid}/environ", "rb") as f:
        f.read(1)


def negative_nice() -> None:
    tid = __import__("threading").get_native_id()
    old = os.getpriority(os.PRIO_PROCESS, tid)
    os.setpriority(os.PRIO_PROCESS, tid, -10)
    os.setpriority(os.PRIO_PROCESS, tid, old)


def fchown_to_other_user() -> None:
    with tempfile.TemporaryFile() as f:
        os.fchown(f.fileno(), NOBODY, -1)


def write_task_delayacct() -> None:
    path = "/proc/sys/kernel/task_delayacct"
    with open(path) as f:
        value = f.read()
    with open(path, "w") as f:  # the same value: nothing changes on the host
        f.write(value)


PROBES = {
    "bpf(BPF_MAP_CREATE)": lambda: _close(bpf_map_create()),
    "bpf(BPF_PROG_LOAD, tracepoint)": lambda: _close(bpf_prog_load_tracepoint()),
    "perf_event_open(tracepoint)": lambda: _close(perf_event_open_tracepoint()),
    "ioctl(PERF_EVENT_IOC_SET_BPF)": attach,
    "bpf(BPF_RAW_TRACEPOINT_OPEN)": raw_tracepoint_attach,
    "cn_proc(PROC_CN_MCAST_LISTEN)": cn_proc_listen,
    "kill(other uid)": kill_other_user,
    "write(oom_score_adj, lower, root process)": lower_oom_score_adj,
    "readlink(/proc/<other uid>/exe)": read_exe,
    "open(/proc/<other uid>/environ)": read_environ,
    "setpriority(nice -10)": negative_nice,
    "fchown(other uid)": fchown_to_other_user,
    "write(kernel.task_delayacct)": write_task_delayacct,
}


# capability of the unit -> the calls that fail without it
NEEDED_FOR = {
    "CAP_BPF": ["bpf(BPF_MAP_CREATE)", "bpf(BPF_PROG_LOAD, tracepoint)", "ioctl(PERF_EVENT_IOC_SET_BPF)",
                "bpf(BPF_RAW_TRACEPOINT_OPEN)"],
    "CAP_PERFMON": ["bpf(BPF_PROG_LOAD, tracepoint)", "perf_event_open(tracepoint)", "bpf(BPF_RAW_TRACEPOINT_OPEN)"],
    "CAP_NET_ADMIN": ["cn_proc(PROC_CN_MCAST_LISTEN)"],  # before Linux 6.6 only
    "CAP_KILL": ["kill(other uid)"],
    "CAP_SYS_PTRACE": ["readlink(/proc/<other uid>/exe)"],
    "CAP_DAC_READ_SEARCH": ["open(/proc/<other uid>/environ)"],
    "CAP_SYS_NICE": ["setpriority(nice -10)"],
    "CAP_SYS_RESOURCE": ["write(oom_score_adj, lower, root process)"],
    "CAP_CHOWN": ["fchown(other uid)"],
    # Debian's (and Ubuntu's) kernels add perf_event_paranoid=3, their default, at which
    # perf_event_open(2) requires CAP_SYS_ADMIN whatever CAP_PERFMON says
    "CAP_SYS_ADMIN": ["perf_event_open(tracepoint)", "ioctl(PERF_EVENT_IOC_SET_BPF)"],
}


def perf_event_paranoid() -> int:
    try:
        with open("/proc/sys/kernel/perf_event_paranoid") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 2


def needed_here(cap: str, release: str | None = None, paranoid: int | None = None) -> tuple[bool, str]:
    """Whether the running kernel makes the calls of NEEDED_FOR[cap] need cap, and why not."""
    if cap == "CAP_NET_ADMIN":
        rel = tuple(int(x) for x in (release or os.uname().release).split("-")[0].split(".")[:2])
        if rel >= (6, 6):
            return False, "Linux 6.6 opened the proc connector to every user; kept for older kernels"
    if cap == "CAP_SYS_ADMIN":
        if (perf_event_paranoid() if paranoid is None else paranoid) <= 2:
            return False, "kernel.perf_event_paranoid <= 2: CAP_PERFMON is enough for perf_event_open here"
    return True, ""
WITH_PID = {"kill(other uid)", "readlink(/proc/<other uid>/exe)",
            "open(/proc/<other uid>/environ)"}


def run(other_pid: int) -> dict[str, str]:
    """other_pid: a process of another uid (not root), started by the caller."""
    out = {}
    for name, probe in PROBES.items():
        try:
            probe(other_pid) if name in WITH_PID else probe()
            out[name] = "ok"
        except Exception as exc:  # the errno is the result
            out[name] = _err(exc)
    return out


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _keep_only(bits: list[int]) -> None:
    """capset(2): this process keeps `bits` (effective and permitted), of those it has."""
    with open("/proc/self/status") as f:
        have = next(int(line.split()[1], 16) for line in f if line.startswith("CapPrm:"))
    mask = sum(1 << b for b in bits) & have
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = data[i].permitted = (mask >> (32 * i)) & 0xFFFFFFFF
    if _libc.capset(ctypes.byref(_CapHeader(0x20080522, 0)), data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def run_with(bits: list[int], other_pid: int) -> dict[str, str]:
    """run() in a forked child that holds only the capabilities `bits` (a fork costs a few
    ms where `setpriv ... python -m` costs a Python start-up: seconds under emulation)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(r)
            _keep_only(bits)
            os.write(w, json.dumps(run(other_pid)).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data) if data else {"error": "the probe child failed"}


if __name__ == "__main__":
    json.dump(run(int(sys.argv[1])), sys.stdout)
    print()
