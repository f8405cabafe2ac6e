"""The cn_proc fallback on the real kernel: fork, exec and exit of a known child."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest

from agentd.events import ProcEventKind as K
from agentd.tracking.cnproc_backend import CnProcBackend

from test_tracker_support import Recorder  # tests/kernel is on sys.path, as for cgroup_fixtures

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="the proc connector needs CAP_NET_ADMIN"),
]


@pytest.fixture
def tracker():
    backend, rec = CnProcBackend(), Recorder()
    backend.start(rec)
    try:
        yield backend, rec
    finally:
        backend.stop()


@pytest.fixture
def children():
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)


def test_fork_exec_exit_of_a_known_child(tracker, children):
    backend, rec = tracker
    # The child sleeps a little after exec so that its comm is still readable from /proc.
    p = subprocess.Popen(["/bin/sh", "-c", "sleep 0.2; exit 5"])
    children.append(p)
    assert p.wait(timeout=5) == 5
    fork = rec.wait(lambda e: e.kind is K.FORK and e.pid == p.pid)
    assert fork.ppid == os.getpid() and fork.cgroup_id == 0
    exe = rec.wait(lambda e: e.kind is K.EXEC and e.pid == p.pid)
    assert exe.comm == "sh" and exe.cgroup_id == 0 and not exe.gated
    sleeper = rec.wait(lambda e: e.kind is K.FORK and e.ppid == p.pid)
    assert rec.wait(lambda e: e.kind is K.EXEC and e.pid == sleeper.pid).comm == "sleep"
    end = rec.wait(lambda e: e.kind is K.EXIT and e.pid == p.pid)
    assert end.exit_code_known and os.waitstatus_to_exitcode(end.exit_code) == 5
    assert fork.ts_ns < exe.ts_ns < end.ts_ns
    assert backend.lost_events() == 0


def test_killed_child_and_threads(tracker, children):
    _, rec = tracker
    p = subprocess.Popen(["/bin/sleep", "30"])
    children.append(p)
    rec.wait(lambda e: e.kind is K.EXEC and e.pid == p.pid)
    tids = []
    t = threading.Thread(target=lambda: tids.append(threading.get_native_id()))
    t.start()
    t.join()
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=5)
    end = rec.wait(lambda e: e.kind is K.EXIT and e.pid == p.pid)
    assert end.exit_code == signal.SIGKILL
    assert not rec.find(lambda e: e.pid == tids[0])  # a thread is not a process


def test_cannot_gate():
    backend = CnProcBackend()
    assert backend.can_gate is False
    with pytest.raises(NotImplementedError):
        backend.set_gated_cgroups({1})
    backend.set_gated_cgroups(set())


def test_stop_is_idempotent_and_unsubscribes():
    backend = CnProcBackend()
    backend.start(lambda ev: None)
    backend.stop()
    backend.stop()
    assert backend.lost_events() == 0
