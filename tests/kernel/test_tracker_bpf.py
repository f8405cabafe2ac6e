"""The real BCC tracker on the real kernel: events of known children, the exec gate, the
cgroup attach event, exit codes, thread filtering, the lost-event counter and an OOM victim.

Root only. Every cgroup is created under this process's own cgroups and removed at teardown,
every child is killed, and the program is unloaded, even when a test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from agentd.events import ProcEventKind as K
from agentd import procfs

from test_tracker_support import Recorder  # tests/kernel is on sys.path, as for cgroup_fixtures

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root"),
]

bcc = pytest.importorskip("bcc", reason="BCC (python3-bpfcc) is not importable")

from agentd.tracking.bpf_backend import BpfBackend  # noqa: E402
from agentd.tracking.bpf_source import KernelFacts, TrackerOptions, kernel_facts  # noqa: E402
from agentd.tracking.tp_format import Layout  # noqa: E402

V2 = Path(procfs.v2_mount())


def own_cgroup(controller: str | None) -> str:
    """This process's path in the v2 hierarchy (controller None) or a v1 controller's."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        if (controller is None and hid == "0") or (controller and controller in ctrls.split(",")):
            return path
    raise LookupError(controller)


def wait_for(pred, timeout=5.0, step=0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def remove_cgroup(d: Path) -> None:
    """Kill what is inside (stopped processes too), wait until empty, rmdir deepest first."""
    if not d.exists():
        return
    for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [d]:
        kill = sub / "cgroup.kill"
        if kill.exists():
            try:
                kill.write_text("1")
            except OSError:
                pass
        else:  # v1: no cgroup.kill
            for pid in (sub / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        wait_for(lambda: not (sub / "cgroup.procs").read_text().strip(), timeout=5)
        for _ in range(50):
            try:
                sub.rmdir()
                break
            except OSError:
                time.sleep(0.05)


class Cgroups:
    """Test cgroups under this process's own v2 cgroup."""

    def __init__(self):
        self.base = V2 / own_cgroup(None).lstrip("/") / f"agentd-tracker-test-{uuid.uuid4().hex[:8]}"
        self.base.mkdir()
        self.extra: list[Path] = []

    def make(self, name: str) -> Path:
        d = self.base / name
        d.mkdir()
        return d

    @staticmethod
    def cid(d: Path) -> int:
        return os.stat(d).st_ino

    @staticmethod
    def rel(d: Path) -> str:
        return "/" + str(d.relative_to(V2))

    def cleanup(self):
        for d in [*self.extra, self.base]:
            remove_cgroup(d)


@pytest.fixture
def cgroups():
    cg = Cgroups()
    try:
        yield cg
    finally:
        cg.cleanup()


class Children:
    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def spawn(self, argv, cgroup: Path | None = None, **kw) -> subprocess.Popen:
        def join():  # runs in the child between fork and exec
            if cgroup is not None:
                with open(cgroup / "cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))

        p = subprocess.Popen(argv, preexec_fn=join, **kw)
        self.procs.append(p)
        return p

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.kill()
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def children():
    c = Children()
    try:
        yield c
    finally:
        c.cleanup()


def started(options=None, **kw):
    backend, rec = BpfBackend(options, **kw), Recorder()
    backend.start(rec)
    return backend, rec


@pytest.fixture
def tracker():
    backend, rec = started(gate_timeout_s=30.0)
    try:
        yield backend, rec
    finally:
        backend.stop()


def without_btf(**drop_fields):
    """This kernel's facts as a kernel without BTF (and, per tracepoint, without some fields)
    would give them: the exit code is then pieced together from signal tracepoints."""
    def facts():
        real = kernel_facts()
        layouts = dict(real.layouts)
        for event, names in drop_fields.items():
            lay = layouts[event]
            layouts[event] = Layout(lay.category, lay.event, tuple(f for f in lay.fields if f.name not in names))
        return KernelFacts(layouts, {})
    return facts


@pytest.fixture
def tracker_with_exit_codes():
    """No BTF, voluntary codes through the exit_group syscall tracepoint."""
    backend, rec = started(TrackerOptions(exit_code=True), facts=without_btf())
    try:
        yield backend, rec
    finally:
        backend.stop()


@pytest.fixture
def tracker_without_btf():
    backend, rec = started(gate_timeout_s=30.0, facts=without_btf())
    try:
        yield backend, rec
    finally:
        backend.stop()


def test_fork_exec_exit_of_a_known_child(tracker_with_exit_codes, cgroups, children):
    backend, rec = tracker_with_exit_codes
    work = cgroups.make("work")
    p = children.spawn(["/bin/sh", "-c", "/bin/true; exit 7"], cgroup=work)
    assert p.wait(timeout=5) == 7
    me = os.getpid()
    fork = rec.wait(lambda e: e.kind is K.FORK and e.pid == p.pid)
    assert fork.ppid == me and fork.tgid == me
    assert fork.cgroup_id == Cgroups.cid(V2 / own_cgroup(None).lstrip("/"))  # born where we are
    exe = rec.wait(lambda e: e.kind is K.EXEC and e.pid == p.pid)
    assert (exe.comm, exe.filename, exe.cgroup_id, exe.gated) == ("sh", "/bin/sh", Cgroups.cid(work), False)
    grandchild = rec.wait(lambda e: e.kind is K.FORK and e.ppid == p.pid)
    assert grandchild.cgroup_id == Cgroups.cid(work) and grandchild.comm == "sh"
    true_exec = rec.wait(lambda e: e.kind is K.EXEC and e.pid == grandchild.pid)
    assert true_exec.comm == "true"
    end = rec.wait(lambda e: e.kind is K.EXIT and e.pid == p.pid)
    assert end.comm == "sh" and end.exit_code_known and os.waitstatus_to_exitcode(end.exit_code) == 7
    # Order as the kernel saw it.
    assert fork.ts_ns < exe.ts_ns < grandchild.ts_ns < end.ts_ns


@pytest.mark.parametrize("variant", ["btf", "signals"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_exit_code_of_a_killed_process(children, sig, variant):
    # signal deaths are known without the exit_code option, with BTF or without
    backend, rec = started(facts=kernel_facts if variant == "btf" else without_btf())
    try:
        _check_killed(rec, children, sig)
    finally:
        backend.stop()


def _check_killed(rec, children, sig):
    p = children.spawn(["/bin/sleep", "30"])
    rec.wait(lambda e: e.kind is K.EXEC and e.pid == p.pid)
    p.send_signal(sig)
    p.wait(timeout=5)
    end = rec.wait(lambda e: e.kind is K.EXIT and e.pid == p.pid)
    assert end.exit_code_known and end.exit_code == sig


# exit_group(2) stops the other threads with a SIGKILL that nobody sent: not a kill.
THREADED_EXIT = (
    "import os, threading, time\n"
    "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
    "time.sleep(0.1)\n"
    "os._exit(4)\n"
)


def test_voluntary_exit_of_a_threaded_process_is_not_a_kill(tracker_without_btf, children):
    _, rec = tracker_without_btf
    p = children.spawn([sys.executable, "-c", THREADED_EXIT])
    assert p.wait(timeout=10) == 4
    end = rec.wait(lambda e: e.kind is K.EXIT and e.pid == p.pid)
    assert not end.exit_code_known  # without BTF voluntary codes need TrackerOptions(exit_code=True)


def test_exit_codes_from_the_task_with_btf(tracker, children):
    """BTF's task_struct.exit_code: every exit's wait status, read by the exit program
    itself (no syscall tracepoint): a child exiting 3, a threaded exit_group(4), one
    killed by SIGKILL, bash's `ls /nonexistent` (2)."""
    backend, rec = tracker
    assert backend.exit_codes == "task"
    cases = [(["/bin/sh", "-c", "exit 3"], 3 << 8), ([sys.executable, "-c", THREADED_EXIT], 4 << 8),
             (["/bin/sh", "-c", "kill -KILL $$"], signal.SIGKILL),
             (["/bin/bash", "-c", "ls /nonexistent"], 2 << 8)]
    for argv, status in cases:
        p = children.spawn(argv, stderr=subprocess.DEVNULL)
        p.wait(timeout=10)
        end = rec.wait(lambda e: e.kind is K.EXIT and e.pid == p.pid)
        assert end.exit_code_known and end.exit_code == status, argv
    # bash runs a lone command in its own process: the exit status above is ls's
    assert rec.wait(lambda e: e.kind is K.EXEC and e.pid == p.pid and e.filename.endswith("/ls"))
    assert os.waitstatus_to_exitcode(end.exit_code) == 2


def test_one_exit_event_per_process_without_group_dead(children):
    """Kernels before ~6.16 have no group_dead: the last thread is found through BTF
    (signal->live) or, without BTF, the leader's exit stands for the process."""
    for facts, how in ((without_btf(sched_process_exit={"group_dead"}), "leader"),
                       (lambda: _drop_group_dead(kernel_facts()), "signal_live")):
        backend, rec = started(facts=facts)
        try:
            assert backend.group_exit == how
            p = children.spawn([sys.executable, "-c", THREADED_EXIT])
            assert p.wait(timeout=10) == 4
            rec.wait(lambda e: e.kind is K.EXIT and e.pid == p.pid)
            q = subprocess.Popen(["/bin/true"])  # delivered after: proves the ones before were too
            q.wait()
            rec.wait(lambda e: e.kind is K.EXIT and e.pid == q.pid)
            exits = rec.find(lambda e: e.kind is K.EXIT and e.tgid == p.pid)
            assert len(exits) == 1 and exits[0].pid == p.pid, (how, exits)
        finally:
            backend.stop()


def _drop_group_dead(real):
    lay = real.layouts["sched_process_exit"]
    layouts = {**real.layouts, "sched_process_exit": Layout(lay.category, lay.event,
                                                            tuple(f for f in lay.fields if f.name != "group_dead"))}
    return KernelFacts(layouts, real.offsets)


def test_voluntary_exit_code_with_the_option(tracker_with_exit_codes, children):
    _, rec = tracker_with_exit_codes
    p = children.spawn([sys.executable, "-c", THREADED_EXIT])
    assert p.wait(timeout=10) == 4
    end = rec.wait(lambda e: e.kind is K.EXIT and e.pid == p.pid)
    assert end.exit_code_known and os.waitstatus_to_exitcode(end.exit_code) == 4


@pytest.mark.parametrize("variant", ["btf", "signals"])
def test_handled_sigterm_then_normal_exit_is_not_a_kill(children, variant):
    backend, rec = started(facts=kernel_facts if variant == "btf" else without_btf())
    try:
        _check_handled_sigterm(rec, children, variant)
    finally:
        backend.stop()


def _check_handled_sigterm(rec, children, variant):
    code = (
        "import os, signal, threading, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: None)\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "print('ready', flush=True)\n"
        "time.sleep(0.5)\n"
        "os._exit(2)\n"
    )
    p = children.spawn([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 2
    end = rec.wait(lambda e: e.kind is K.EXIT and e.pid == p.pid)
    if variant == "btf":
        assert end.exit_code_known and end.exit_code == 2 << 8  # exit 2, not "killed by SIGTERM"
    else:
        assert not end.exit_code_known  # not "killed by SIGTERM": the handler took it


def test_threads_are_not_reported_as_forks(tracker):
    backend, rec = tracker
    before = backend.kernel_stats()["threads_filtered"]
    tids = []
    t = threading.Thread(target=lambda: tids.append(threading.get_native_id()))
    t.start()
    t.join()
    # A process fork afterwards proves the events before it were delivered.
    p = subprocess.Popen(["/bin/true"])
    p.wait()
    rec.wait(lambda e: e.kind is K.FORK and e.pid == p.pid)
    assert not rec.find(lambda e: e.kind is K.FORK and e.pid == tids[0])
    assert backend.kernel_stats()["threads_filtered"] > before


def test_gate_stops_the_exec_until_the_daemon_places_it(tracker, cgroups, children, tmp_path):
    backend, rec = tracker
    gate, tool = cgroups.make("agent"), cgroups.make("tool")
    backend.set_gated_cgroups({Cgroups.cid(gate)})
    out = tmp_path / "seen"
    p = children.spawn(["/bin/sh", "-c", f"cat /proc/self/cgroup > {out}"], cgroup=gate)
    ev = rec.wait(lambda e: e.kind is K.EXEC and e.pid == p.pid)
    assert ev.gated and ev.cgroup_id == Cgroups.cid(gate)
    assert wait_for(lambda: (procfs.read_stat(p.pid) or procfs.ProcStat(0, "", "?", 0, 0)).state == "T")
    time.sleep(0.3)
    assert not out.exists(), "the gated image ran before it was placed"
    assert p.poll() is None
    assert backend.owed_pids() == [p.pid]
    # The daemon's part: move, then continue.
    (tool / "cgroup.procs").write_text(str(p.pid))
    assert backend.release(p.pid)
    assert p.wait(timeout=5) == 0
    assert procfs.parse_cgroup_v2(out.read_text()) == Cgroups.rel(tool)
    assert backend.owed_pids() == []


def test_a_gated_tool_under_a_plain_shell_runs_and_reports_its_status(tracker, cgroups, children):
    """The agent's bash (no job control) must not notice the stop of its child."""
    backend, rec = tracker
    agent, tool = cgroups.make("agent"), cgroups.make("tool")
    placed = []

    def place(ev):
        if ev.kind is K.EXEC and ev.gated:
            (tool / "cgroup.procs").write_text(str(ev.pid))
            placed.append(ev.pid)
            backend.release(ev.pid)

    rec.hooks.append(place)
    sh = children.spawn(["/bin/bash", "-c", "read go; /bin/sh -c 'exit 3'; echo rc=$?"], cgroup=agent,
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rec.wait(lambda e: e.kind is K.EXEC and e.pid == sh.pid)  # bash itself started ungated
    backend.set_gated_cgroups({Cgroups.cid(agent)})
    out, _ = sh.communicate("go\n", timeout=10)
    assert out.strip() == "rc=3"
    assert len(placed) == 1
    ev = rec.wait(lambda e: e.kind is K.EXEC and e.pid == placed[0])
    assert ev.gated and ev.comm == "sh"


DAEMON = """
import sys, time
from agentd.tracking.bpf_backend import BpfBackend
b = BpfBackend(gate_timeout_s=600)
b.start(lambda ev: None)  # hears gated execs, never places them
b.set_gated_cgroups({int(sys.argv[1])})
print(b.guard_pid, flush=True)
time.sleep(600)
"""


def test_the_guard_continues_gated_execs_when_the_daemon_is_killed(cgroups, children):
    gate = cgroups.make("agent")
    daemon = children.spawn([sys.executable, "-c", DAEMON, str(Cgroups.cid(gate))], stdout=subprocess.PIPE, text=True)
    guard_pid = int(daemon.stdout.readline())
    p = children.spawn(["/bin/sh", "-c", "exit 0"], cgroup=gate)
    assert wait_for(lambda: (procfs.read_stat(p.pid) or procfs.ProcStat(0, "", "?", 0, 0)).state == "T")
    time.sleep(0.2)  # the daemon has heard of it (and told its guard)
    daemon.kill()
    daemon.wait()
    assert p.wait(timeout=5) == 0
    assert wait_for(lambda: procfs.read_stat(guard_pid) is None or procfs.read_stat(guard_pid).state == "Z")


def test_a_restarted_daemon_continues_what_was_left_stopped(cgroups, children):
    from agentd.tracking.bpf_backend import continue_stopped_in

    gate = cgroups.make("agent")
    p = children.spawn(["/bin/sleep", "30"], cgroup=gate)
    os.kill(p.pid, signal.SIGSTOP)
    assert wait_for(lambda: procfs.read_stat(p.pid).state == "T")
    assert continue_stopped_in([str(gate)]) == [p.pid]
    assert wait_for(lambda: procfs.read_stat(p.pid).state == "S")


def test_ungated_cgroup_is_not_stopped(tracker, cgroups, children, tmp_path):
    backend, rec = tracker
    gate, other = cgroups.make("agent"), cgroups.make("other")
    backend.set_gated_cgroups({Cgroups.cid(gate)})
    p = children.spawn(["/bin/sh", "-c", "exit 0"], cgroup=other)
    assert p.wait(timeout=5) == 0
    assert rec.wait(lambda e: e.kind is K.EXEC and e.pid == p.pid).gated is False
    backend.set_gated_cgroups(set())
    p = children.spawn(["/bin/sh", "-c", "exit 0"], cgroup=gate)
    assert p.wait(timeout=5) == 0  # gate lifted


def test_gated_process_is_continued_when_nobody_places_it(cgroups, children, tmp_path):
    backend, rec = BpfBackend(gate_timeout_s=0.3), Recorder()
    backend.start(rec)
    try:
        gate = cgroups.make("agent")
        backend.set_gated_cgroups({Cgroups.cid(gate)})
        p = children.spawn(["/bin/sh", "-c", "exit 0"], cgroup=gate)
        assert rec.wait(lambda e: e.kind is K.EXEC and e.pid == p.pid).gated
        assert p.wait(timeout=5) == 0
        assert backend.stats()["gate_timeouts"] == 1
    finally:
        backend.stop()


def test_stop_continues_every_gated_process(cgroups, children):
    backend, rec = BpfBackend(gate_timeout_s=60), Recorder()
    backend.start(rec)
    try:
        gate = cgroups.make("agent")
        backend.set_gated_cgroups({Cgroups.cid(gate)})
        p = children.spawn(["/bin/sh", "-c", "exit 0"], cgroup=gate)
        assert rec.wait(lambda e: e.kind is K.EXEC and e.pid == p.pid).gated
        time.sleep(0.2)
        assert p.poll() is None
    finally:
        backend.stop()
    assert p.wait(timeout=5) == 0


def test_gate_fails_open_when_its_ring_is_full_and_stop_continues_the_rest(cgroups, children):
    """Nobody reads: the 4 KiB gate ring holds a dozen gated execs; later ones must run
    (not stopped, counted), and stop() must continue the ones it holds."""
    backend = BpfBackend(TrackerOptions(gate_ringbuf_pages=1))
    backend.load()
    try:
        gate = cgroups.make("agent")
        backend.set_gated_cgroups({Cgroups.cid(gate)})
        procs = [children.spawn(["/bin/sh", "-c", "exit 0"], cgroup=gate) for _ in range(30)]
        assert wait_for(lambda: sum(p.poll() is not None for p in procs) >= 10)
        time.sleep(0.3)
        stopped = [p for p in procs if p.poll() is None]
        assert stopped and all(procfs.read_stat(p.pid).state == "T" for p in stopped)
        assert len(stopped) < len(procs)
        assert backend.kernel_stats()["gate_skipped"] == len(procs) - len(stopped)
    finally:
        backend.stop()
    assert all(p.wait(timeout=5) == 0 for p in procs)


def test_cgroup_attach_when_a_process_moves_itself(tracker, cgroups, children):
    _, rec = tracker
    home, away = cgroups.make("tool"), cgroups.make("escape")
    p = children.spawn(["/bin/sh", "-c", f"echo $$ > {away}/cgroup.procs"], cgroup=home)
    assert p.wait(timeout=5) == 0
    ev = rec.wait(lambda e: e.kind is K.CGROUP_ATTACH and e.pid == p.pid and e.cgroup_id == Cgroups.cid(away))
    assert ev.self_move and ev.cgroup_path == Cgroups.rel(away) and ev.comm == "sh"
    # Placement by someone else (the preexec join ran in the child itself, so that was a
    # self-move too); a move by this process is not.
    q = children.spawn(["/bin/sleep", "30"])
    (home / "cgroup.procs").write_text(str(q.pid))
    ev = rec.wait(lambda e: e.kind is K.CGROUP_ATTACH and e.pid == q.pid)
    assert ev.cgroup_id == Cgroups.cid(home) and not ev.self_move
    assert ev.tgid == os.getpid()


def test_watch_subtree_reports_only_tasks_under_the_root(cgroups, children):
    watched, outside = cgroups.make("delegated"), cgroups.make("elsewhere")
    backend, rec = started(TrackerOptions(watch_subtree=True))
    try:
        backend.set_watch_root(str(watched))
        inner = children.spawn(["/bin/sh", "-c", "/bin/true"], cgroup=watched)
        outer = children.spawn(["/bin/sh", "-c", "/bin/true"], cgroup=outside)
        assert inner.wait(timeout=5) == 0 and outer.wait(timeout=5) == 0
        rec.wait(lambda e: e.kind is K.EXIT and e.pid == inner.pid)
        sub = rec.wait(lambda e: e.kind is K.FORK and e.ppid == inner.pid)  # born under the root
        assert sub.cgroup_id == Cgroups.cid(watched)
        time.sleep(0.2)
        assert not rec.find(lambda e: e.kind in (K.EXEC, K.EXIT) and e.pid == outer.pid)
        assert not rec.find(lambda e: e.kind is K.FORK and e.ppid == outer.pid)
        # Attach events are never filtered: a move from outside into the root must be seen.
        rec.wait(lambda e: e.kind is K.CGROUP_ATTACH and e.pid == outer.pid)
    finally:
        backend.stop()


def test_lost_events_are_counted_when_nobody_reads():
    backend = BpfBackend(TrackerOptions(ringbuf_pages=1, gate=False))
    backend.load()  # attached, but no consumer: the 4 KiB ring buffer fills
    try:
        assert backend.lost_events() == 0
        for _ in range(40):
            subprocess.run(["/bin/true"], check=True)
        assert backend.lost_events() > 0
        assert backend.kernel_stats()["emitted"] > 0
    finally:
        backend.stop()


def test_debug_prints_the_rendered_program(capsys):
    backend = BpfBackend(debug=True)
    backend.load()
    backend.stop()
    err = capsys.readouterr().err
    assert "#define AGENTD_GATE 1" in err and "AGENTD_TP(sched_process_exec)" in err
    assert "struct agentd_args_sched_process_fork {" in err


def test_compile_failure_names_the_first_error():
    from agentd.tracking.backend import BackendUnavailable

    backend = BpfBackend(template="int broken( { return 0; }\n")
    with pytest.raises(BackendUnavailable, match=r"^BCC could not compile the tracker: .*error"):
        backend.load()
    # Compiles, but lacks a program the tracker attaches.
    backend = BpfBackend(template="int agentd__unused(void *ctx) { return 0; }\n")
    with pytest.raises(BackendUnavailable, match=r"^BCC could not attach the tracker to task:task_newtask: "):
        backend.load()
    # The kernel lacks a field the program cannot do without.
    backend = BpfBackend(facts=without_btf(sched_process_exec={"old_pid"}))
    with pytest.raises(BackendUnavailable, match=r"does not fit this kernel: .*sched_process_exec has no field old_pid"):
        backend.load()


@pytest.fixture
def memory_cgroup():
    base = Path("/sys/fs/cgroup/memory") / own_cgroup("memory").lstrip("/")
    if not (base / "memory.limit_in_bytes").exists():
        pytest.skip("no v1 memory controller at this process's cgroup")
    d = base / f"agentd-tracker-oom-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    try:
        yield d
    finally:
        remove_cgroup(d)


def test_oom_victim(tracker, memory_cgroup, children):
    _, rec = tracker
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(64 << 20))
    hog = "b = bytearray(512 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
    p = children.spawn([sys.executable, "-c", hog], cgroup=memory_cgroup, stderr=subprocess.DEVNULL)
    assert p.wait(timeout=30) == -signal.SIGKILL
    ev = rec.wait(lambda e: e.kind is K.OOM_VICTIM and e.pid == p.pid)
    assert ev.comm.startswith("python")
    end = rec.wait(lambda e: e.kind is K.EXIT and e.pid == p.pid)
    assert end.exit_code == signal.SIGKILL


FIXTURE_TRACEFS = Path(__file__).resolve().parents[1] / "unit" / "tracking" / "tracefs"


@pytest.mark.parametrize("btf", ["btf", "no_btf"])
@pytest.mark.parametrize("kernel", ["5.15", "6.1", "6.8", "6.12", "6.18"])
def test_the_program_for_each_supported_kernel_compiles_and_passes_the_verifier(kernel, btf):
    """The C rendered from another kernel's format files (committed copies) compiles with
    BCC and every program passes this kernel's verifier (tracepoint context reads are
    bounds-checked, not layout-checked, so loading without attaching is meaningful)."""
    from agentd.tracking import bpf_source as src
    from agentd.tracking.bpf_backend import _compile
    from agentd.tracking.tp_format import read_format

    layouts = {}
    for tp in src.ALL_TRACEPOINTS:
        layout = read_format(tp.category, tp.event, dirs=(str(FIXTURE_TRACEFS / kernel),))
        if layout is not None:
            layouts[tp.event] = layout
    offsets = kernel_facts().offsets if btf == "btf" else {}
    program = src.render_program(TrackerOptions(exit_code=True), src.load_template(), src.KernelFacts(layouts, offsets))
    bpf = _compile(program.text, ["-w"])
    try:
        for tp in program.tracepoints:
            bpf.load_func(tp.fn_name.encode(), bcc.BPF.TRACEPOINT)
    finally:
        bpf.cleanup()
