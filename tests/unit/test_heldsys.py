"""agentd.heldsys: the placement path's syscalls keep the GIL, and read and fail like os.*."""

import errno
import os
import sys
import threading
import time

import pytest

from agentd import heldsys, procfs
from agentd.cgroups import fs


def test_reads_what_os_reads():
    for name in ("stat", "status", "cmdline", "environ"):
        via_os = procfs.read_bytes(os.getpid(), name)
        with heldsys.holding():
            held = procfs.read_bytes(os.getpid(), name)
        if name in ("stat", "status"):  # times and memory figures move between two reads
            via_os, held = via_os.split()[:8], held.split()[:8]
        assert held == via_os, name
    assert heldsys.readlink(f"/proc/{os.getpid()}/exe") == os.readlink(f"/proc/{os.getpid()}/exe")


def test_errors_are_the_oserror_subclasses_os_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        heldsys.read(str(tmp_path / "absent"), 10)
    heldsys.mkdir(str(tmp_path / "d"))
    with pytest.raises(FileExistsError):
        heldsys.mkdir(str(tmp_path / "d"))
    assert heldsys.isdir(str(tmp_path / "d")) and not heldsys.isdir(str(tmp_path / "absent"))
    heldsys.rename(str(tmp_path / "d"), str(tmp_path / "e"))
    assert os.path.isdir(tmp_path / "e")
    with pytest.raises(OSError) as exc:
        heldsys.rename(str(tmp_path / "d"), str(tmp_path / "f"))
    assert exc.value.errno == errno.ENOENT
    # Through the callers: a gone pid reads as gone, a cgroup write error carries the file.
    with heldsys.holding():
        assert procfs.read_bytes(999_999_999, "stat") is None
        assert procfs.set_oom_score_adj(999_999_999, 500) is False
        with pytest.raises(OSError) as exc:
            fs.write(str(tmp_path / "absent" / "pids.max"), "5")
        assert "pids.max" in str(exc.value)
        assert fs.mkdirs(str(tmp_path), "g/h") == [str(tmp_path / "g"), str(tmp_path / "g" / "h")]


def test_holding_nests_and_ends():
    assert not heldsys.active()
    with heldsys.holding():
        with heldsys.holding():
            assert heldsys.active()
        assert heldsys.active()
    assert not heldsys.active()


def _other_thread_progress(syscalls, seconds: float, interval: float = 0.5) -> int:
    """How far a spinning Python thread gets while this one makes syscalls for `seconds`.
    interval: the GIL switch interval meanwhile; a thread that keeps the GIL loses it anyway
    once the spinner has waited that long, which a busy host (this thread off the CPU) can
    make happen within a short loop: the held case asks for a long one. The spinner starts
    asking for the GIL only after the interval is set (a waiter keeps the interval it began
    waiting with)."""
    count, stop, started, go = [0], threading.Event(), threading.Event(), threading.Event()

    def spin():
        started.set()
        go.wait()
        while not stop.is_set():
            count[0] += 1

    old = sys.getswitchinterval()
    t = threading.Thread(target=spin)
    t.start()
    started.wait()
    sys.setswitchinterval(interval)  # within it, only a released GIL lets the spinner run
    try:
        before = count[0]
        go.set()
        end = time.monotonic() + seconds
        while time.monotonic() < end and count[0] == before:
            syscalls()
        return count[0] - before
    finally:
        stop.set()
        sys.setswitchinterval(old)
        t.join()


def test_the_gil_is_kept_through_the_syscalls():
    read = lambda: procfs.read_bytes(os.getpid(), "stat")  # noqa: E731
    with heldsys.holding():
        assert _other_thread_progress(read, 0.05, interval=30.0) == 0
    assert _other_thread_progress(read, 1.0) > 0  # os.* hands the GIL over at each syscall
