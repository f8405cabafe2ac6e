"""The real daemon in a child pid namespace (`unshare --pid --fork --mount-proc`, as systemd in
nspawn/LXC or a container sees it), with the BPF tracker and its exec gate: an agent started
inside that namespace with `agentctl run` gets its tool calls run, placed and ended.

The kernel reports pids as the init namespace sees them; a daemon that took those for its own
placed the wrong pid and left every gated exec stopped for good. Root only. The daemon's
cgroup root nests under this process's own cgroups (benchmarks.daemon_process); the namespace
ends with its pid 1 (the daemon), and every cgroup is removed at teardown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from benchmarks.daemon_process import BIN, DaemonProcess

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="the daemon and unshare --pid need root"),
    pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None,
                       reason="util-linux unshare/nsenter missing"),
]
pytest.importorskip("bcc", reason="BCC (python3-bpfcc) is not importable")

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL", "--"]
CALL = ("import json, sys; from agentd.api.client import ApiClient; "
        "c = ApiClient(sys.argv[1], timeout=10); print(json.dumps(getattr(c, sys.argv[2])(**json.loads(sys.argv[3]))))")


class ClientInNs:
    """ApiClient calls made from inside the daemon's namespace: the daemon refuses a peer whose
    pid it cannot see (SO_PEERCRED gives it pid 0), as it should."""

    def __init__(self, d: "DaemonInPidns"):
        self.d = d

    def __getattr__(self, method):
        def call(**kw):
            out = subprocess.run(self.d.in_ns(sys.executable, "-c", CALL, str(self.d.socket), method, json.dumps(kw)),
                                 capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-1000:])
            return json.loads(out.stdout)
        return call


class DaemonInPidns(DaemonProcess):
    """The daemon as pid 1 of a fresh pid namespace; agents join it through nsenter."""

    def start(self, timeout: float = 60) -> "DaemonInPidns":
        argv = [str(BIN / "agentd"), "run", "--socket", str(self.socket), "--state-dir", str(self.state),
                "--policy-dir", str(self.policy_dir), "--default-policy", str(self.default_policy),
                "--cgroup-leaf", self.leaf, "--tracker", self.tracker, *self.extra_args]
        self.proc = subprocess.Popen(UNSHARE + argv, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        self.client = ClientInNs(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agentd exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                self.client.status()
                return self
            except (RuntimeError, AssertionError, psutil.Error, subprocess.TimeoutExpired):
                time.sleep(0.3)
        raise RuntimeError(f"agentd did not answer within {timeout} s: {self.log.read_text()[-2000:]}")

    def daemon_host_pid(self) -> int:
        """The daemon as this (init) namespace sees it: unshare's forked child."""
        kids = psutil.Process(self.proc.pid).children()
        assert kids, "unshare has no child"
        return kids[0].pid

    def in_ns(self, *argv: str) -> list[str]:
        return ["nsenter", "--target", str(self.daemon_host_pid()), "--pid", "--mount", "--", *argv]

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        try:
            os.kill(self.daemon_host_pid(), signal.SIGTERM)  # unshare ends with its child
            return self.proc.wait(20)
        except (AssertionError, psutil.Error, subprocess.TimeoutExpired):
            self.proc.kill()
            return self.proc.wait(5)


@pytest.fixture
def daemon():
    d = DaemonInPidns(tracker="bpf")
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def test_the_daemon_really_runs_in_a_child_pid_namespace(daemon):
    host_pid = daemon.daemon_host_pid()
    nspid = [ln for ln in open(f"/proc/{host_pid}/status") if ln.startswith("NSpid:")][0].split()[1:]
    assert len(nspid) == 2 and nspid[1] == "1", nspid


def test_an_agents_tool_calls_run_and_end_with_the_gate_in_a_child_pid_namespace(daemon):
    status = daemon.client.status()
    assert status["tracker"]["backend"] == "bpf"
    # Through sh: nsenter waits with WUNTRACED and stops itself when its child stops at the
    # gate (util-linux's continue_as_child), a job-control parent the gate does not serve.
    agentctl = [str(BIN / "agentctl"), "--socket", str(daemon.socket), "run", "--name", "nsag", "--",
                "bash", "-c", "cat /proc/self/cgroup; ls /nonexistent; exit 0"]
    argv = daemon.in_ns("sh", "-c", '"$@"; exit $?', "sh", *agentctl)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        stopped = [p.pid for p in psutil.process_iter(["status"]) if p.info["status"] == psutil.STATUS_STOPPED]
        pytest.fail(f"the agent's tool calls hung (stopped processes on the host: {stopped}); "
                    f"daemon log: {daemon.log.read_text()[-1500:]}")
    assert proc.returncode == 0, proc.stderr
    # The cat ran where the daemon placed it: its own tool cgroup under the agent's.
    v2 = [ln for ln in proc.stdout.splitlines() if ln.startswith("0::")][0]
    assert f"/{daemon.leaf}/agents/nsag/tools/" in v2, proc.stdout
    deadline = time.monotonic() + 15
    while True:
        calls = daemon.toolcalls("nsag")
        if len(calls) >= 2 and all(c["state"] == "done" for c in calls):
            break
        assert time.monotonic() < deadline, f"tool calls not done: {calls}"
        time.sleep(0.2)
    by_name = {c["name"]: c for c in calls}
    assert by_name["cat"]["outcome"] == "ok", by_name["cat"]
    # The exit (reported from BPF in the daemon's namespace) ends the record, with its code.
    assert (by_name["ls"]["outcome"], by_name["ls"]["exit_code"]) == ("failed", 2), by_name["ls"]
    # Each record says where it was placed: its own tool cgroup.
    assert {c["cgroup"] for c in calls} == {"agents/nsag/tools/0001-cat", "agents/nsag/tools/0002-ls"}, calls
    # The pids are the daemon's numbers, not the host's: small ones in a fresh namespace.
    assert all(1 < c["pid"] < 1000 for c in calls), [c["pid"] for c in calls]
    # The agent's own exit (its pid in the namespace) ends it: it does not show live.
    deadline = time.monotonic() + 10
    while daemon.client.agent(name="nsag").get("state") != "done":
        assert time.monotonic() < deadline, json.dumps(daemon.client.agent(name="nsag"))
        time.sleep(0.2)
    # Placed by the daemon, not continued by the gate's fail-open timeout.
    assert "stopped at exec and not placed" not in daemon.log.read_text()


def test_a_caller_outside_the_namespace_is_refused_with_the_reason(daemon):
    out = subprocess.run([str(BIN / "agentctl"), "--socket", str(daemon.socket), "status"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "not in the daemon's pid namespace" in out.stderr, out.stderr


def test_the_namespace_is_one_clear_line_in_status(daemon):
    degraded = daemon.client.status().get("degraded", [])
    lines = [d for d in degraded if d.startswith("tracker: in a child pid namespace")]
    assert len(lines) == 1, degraded
    assert "tracker: in a child pid namespace" in daemon.log.read_text()


def test_the_tracker_names_every_pid_as_its_namespace_does_and_stops_none_it_cannot(tmp_path):
    """The BpfBackend itself, loaded inside a fresh pid namespace: fork, exec and exit carry
    the namespace's pids (the exit its code), a gated exec is stopped and released by that
    pid, and an exec in a namespace below it runs unstopped although its cgroup is gated."""
    from cgroup_fixtures import _own_v2_path  # the test's own v2 cgroup: nest under it
    from agentd import procfs

    gated = os.path.join(procfs.v2_mount(), _own_v2_path().lstrip("/"), f"pidns-gate-{os.getpid()}")
    os.mkdir(gated)
    try:
        proc = subprocess.run(UNSHARE + [sys.executable, os.path.join(os.path.dirname(__file__), "pidns_probe.py"), gated],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    finally:
        for pid in open(os.path.join(gated, "cgroup.procs")).read().split():
            os.kill(int(pid), signal.SIGKILL)
        for _ in range(50):
            try:
                os.rmdir(gated)
                break
            except OSError:
                time.sleep(0.1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pid_ns"] and out["self"] == 1, out
    plain = out["plain"]
    assert plain["pid"] < 100, plain  # this namespace's number, not the host's
    assert plain["exec"] == 1 and plain["exit_codes"] == [3 << 8], plain
    assert out["forks_reported"], "this kernel has BTF: forks are reported with the child's pid"
    assert plain["fork"] == 1, plain
    # sh's own exec (before its move, not gated) and /bin/true's (gated, released by its pid).
    assert out["gated"]["rc"] == 0 and sorted(out["gated"]["events"]) == [False, True], out["gated"]
    nested = out["nested"]
    assert nested["rc"] == 5, nested  # ran to its end: nothing left stopped
    assert nested["gated_execs"] == ["/usr/bin/unshare"], nested
    assert out["stats"]["pidns_unseen"] >= 2 and out["stats"]["gate_timeouts"] == 0, out["stats"]


def test_without_btf_a_foreign_namespace_sees_nothing_and_stops_nothing():
    """The program built for a pid namespace this test is not in (a fresh one held open by a
    sleeping child), and without BTF offsets (forks not reported): it loads, reports none of
    this namespace's processes, and a gated exec of one of them runs unstopped."""
    from cgroup_fixtures import _own_v2_path
    from agentd import procfs
    from agentd.tracking.bpf_backend import BpfBackend
    from agentd.tracking.bpf_source import KernelFacts, kernel_facts
    from agentd.tracking.pidns import PidNamespace

    holder = subprocess.Popen(UNSHARE + ["sleep", "60"])
    gated = os.path.join(procfs.v2_mount(), _own_v2_path().lstrip("/"), f"pidns-foreign-{os.getpid()}")
    os.mkdir(gated)
    backend = None
    try:
        child = None
        for _ in range(100):
            kids = psutil.Process(holder.pid).children()
            if kids:
                child = kids[0].pid
                break
            time.sleep(0.05)
        st = os.stat(f"/proc/{child}/ns/pid")
        foreign = PidNamespace(st.st_dev, st.st_ino)
        assert foreign.is_child
        real = kernel_facts()
        seen = []
        backend = BpfBackend(gate_timeout_s=30, facts=lambda: KernelFacts(real.layouts, {}, foreign))
        backend.start(seen.append)
        assert backend.pid_ns == foreign and not backend.pidns_forks
        backend.set_gated_cgroups({os.stat(gated).st_ino})
        p = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {gated}/cgroup.procs; exec /bin/true"])
        assert p.wait(10) == 0  # not stopped: the program could not have named it
        time.sleep(0.2)
        assert not [e for e in seen if e.pid == p.pid], seen
        stats = backend.stats()
        assert stats["pidns_unseen"] >= 3 and stats["gate_owed"] == 0, stats
    finally:
        if backend is not None:
            backend.stop()
        holder.kill()
        holder.wait(10)
        for pid in open(os.path.join(gated, "cgroup.procs")).read().split():
            os.kill(int(pid), signal.SIGKILL)
        for _ in range(50):
            try:
                os.rmdir(gated)
                break
            except OSError:
                time.sleep(0.1)


def test_cn_proc_refuses_to_run_in_a_child_pid_namespace():
    """Its events carry init-namespace pids (multicast from another listener's subscription):
    there they would name other processes, so auto has no tracker rather than a wrong one."""
    code = ("from agentd.tracking.cnproc_backend import CnProcBackend\n"
            "from agentd.tracking.backend import BackendUnavailable\n"
            "try:\n    CnProcBackend().load()\n    print('loaded')\n"
            "except BackendUnavailable as exc:\n    print('refused:', exc)\n")
    out = subprocess.run(UNSHARE + [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.startswith("refused: cn_proc does not work in a child pid namespace"), out.stdout + out.stderr


@pytest.mark.parametrize("btf", ["btf", "no_btf"])
@pytest.mark.parametrize("kernel", ["5.15", "6.1", "6.8", "6.12", "6.18"])
def test_the_pidns_program_for_each_supported_kernel_passes_the_verifier(kernel, btf):
    """The child-namespace variant (helper for exec/exit, BTF walk for fork, or forks left
    out without BTF) rendered from each supported kernel's format files loads here."""
    import bcc
    from pathlib import Path

    from agentd.tracking import bpf_source as src
    from agentd.tracking.bpf_backend import _compile
    from agentd.tracking.pidns import PidNamespace
    from agentd.tracking.tp_format import read_format

    fixtures = Path(__file__).resolve().parents[1] / "unit" / "tracking" / "tracefs" / kernel
    layouts = {}
    for tp in src.ALL_TRACEPOINTS:
        layout = read_format(tp.category, tp.event, dirs=(str(fixtures),))
        if layout is not None:
            layouts[tp.event] = layout
    offsets = src.kernel_facts().offsets if btf == "btf" else {}
    facts = src.KernelFacts(layouts, offsets, PidNamespace(dev=4, ino=4026532178))
    program = src.render_program(src.TrackerOptions(exit_code=True), src.load_template(), facts)
    assert program.pidns_forks == (btf == "btf")
    bpf = _compile(program.text, ["-w"])
    try:
        for tp in program.tracepoints:
            bpf.load_func(tp.fn_name.encode(), bcc.BPF.TRACEPOINT)
    finally:
        bpf.cleanup()
