"""The real daemon on pure cgroup v2, inside the VM (tests/vm/test_vm.py boots it). One
daemon (`agentd run --tracker bpf`, the demo's default policy) for three tests:

- the demo's agent (examples/demo_agent.py, what `agentd demo` runs), its records in the
  shape of `agentd demo --json` and the metrics benchmarks/vm_demo.py records: the burst
  throttled at memory.high, the runaway frozen on PSI and then killed at the end of the
  ladder, the hung server's whole tree ended at its timeout, the fork storm stopped at
  pids.max;
- the BPF exec gate: every exec of an agent, seen from the probe's first instruction
  (/proc/self/cgroup), runs in its own tool cgroup: 0 escapes;
- a SIGKILL of the daemon while a tool call is frozen at its limit: the restarted daemon
  re-adopts the agent and the tool call and decides it (killed), nothing stays frozen or
  stopped, no record is lost.

Emulation makes each daemon start slow (BCC compiles the tracker: a minute or more), so
the three share one daemon and its one restart; `agentd demo --json` itself runs in the VM
in benchmarks/vm_demo.py (and on the host in tests/e2e/test_demo.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestlib import Cgroup

REPO = Path(__file__).resolve().parents[3]
RUNAWAY = str(REPO / "examples" / "workloads" / "runaway.py")
PY = sys.executable
GATED_EXECS = 24

# The crash test's policy: the runaway throttled at memory_high 32M, then frozen on PSI, with
# a long freeze grace so that the daemon is surely killed while the tool call is frozen. No
# memory_max: with one (and its one-time grant to 7/8 of the way there) the runaway's
# overshoot past memory.high can reach it first and the kernel's OOM killer ends the tool
# call before the daemon freezes it (the likeliest reason a frozen runaway was gone before
# the crash, once, in the VM).
CRASH_POLICY = """\
version: 1
name: crash
toolcalls:
  defaults: {memory_high: 32M, swap_max: 0, pids_max: 64, timeout_s: 600}
  ceiling: {memory_high: 256M, memory_max: 512M, pids_max: 256, timeout_s: 1200}
  escalation: {psi_full_pct: 40, sustain_s: 1, freeze_s: 20}
"""


@pytest.fixture(scope="module")
def daemon(cgroup_root):
    """The real daemon with the demo's default policy and CRASH_POLICY beside it; every
    process and cgroup it made is removed afterwards."""
    from agentd.paths import DEFAULT_POLICY
    from benchmarks import vm_demo_guest
    from benchmarks.daemon_process import DaemonProcess

    d = DaemonProcess(tracker="bpf", policy=DEFAULT_POLICY.read_text(), policies={"crash": CRASH_POLICY},
                      env=vm_demo_guest._env())
    try:
        t0 = time.monotonic()
        d.start(timeout=600)
        print(f"daemon started in {time.monotonic() - t0:.1f} s (BCC compiles the tracker)")
        yield d
    finally:
        d.cleanup()


# The demo's turns that show the ladder (burst, runaway, hung server, fork storm); the others
# (grep, pytest, git, echo) end `ok` and cost a minute or more of emulated Python here.
LADDER_TURNS = "3,4,5,6"


def test_demo_agent_on_pure_v2(daemon):
    from benchmarks import vm_demo_guest

    run = vm_demo_guest.demo_agent(daemon, turns=LADDER_TURNS)
    print(f"the demo agent (turns {LADDER_TURNS}) took {run['demo_s']} s in the VM")
    out = run["demo"]
    m = vm_demo_guest.metrics(run, {"escaped_pct": 0.0, "execs": 0})
    assert m["cgroup_driver"] == "v2"
    assert m["tracker"] == "bpf" and m["exec_gate"] == 1, out["lines"]
    assert m["agent_exit"] == 0, run["stdout_tail"] + run["stderr_tail"]
    calls = {c["name"]: c for c in out["tool_calls"]}
    assert m["outcomes"] == ["throttled", "killed", "killed", "throttled"], (m["outcomes"], list(calls))
    assert len({c["cgroup"] for c in calls.values()}) == 4  # one cgroup per tool call
    assert all(c["cgroup"].startswith("agents/demo/tools/") for c in calls.values())
    # The burst: throttled at memory.high, granted once, completed.
    burst = calls["python-burst.py"]
    assert burst["outcome"] == "throttled" and burst["exit_code"] == 0, burst
    assert "toolcall.throttled" in burst["events"] and "toolcall.frozen" not in burst["events"], burst
    # The runaway: throttled, then frozen on PSI (v2 has no pause at the limit), then killed
    # at the end of the ladder by agentd (not by the kernel's OOM killer).
    runaway = calls["python-runaway.py"]
    assert runaway["outcome"] == "killed" and runaway["exit_code"] == -9, runaway
    kinds = runaway["events"]
    assert kinds.index("toolcall.throttled") < kinds.index("toolcall.frozen") < kinds.index("toolcall.killed"), kinds
    assert "no relief" in runaway["reason"] and runaway["peak_bytes"] >= 256 << 20, runaway
    assert m["frozen_then_killed"] == 1
    # The hung server: its timeout ended the whole tree (both sleeps, not only the shell).
    server = calls["server"]
    assert server["outcome"] == "killed" and "timeout" in server["reason"], server
    assert run["leftover_server_pids"] == []
    # The fork storm: stopped by the kernel at pids.max, the tool call went on.
    storm = calls["forkstorm"]
    assert storm["outcome"] == "throttled" and "pids_max" in storm["reason"] and storm["exit_code"] == 0, storm


def test_gated_execs_run_in_their_tool_cgroup_from_the_first_instruction(daemon, tmp_path):
    from benchmarks import vm_demo_guest

    probe = vm_demo_guest.probe_for_guest(tmp_path)
    gate = vm_demo_guest.gate_check(daemon, probe, GATED_EXECS)
    print(f"gate: {json.dumps(gate)}")
    assert gate["agent_exit"] == 0, gate["stderr_tail"]
    assert gate["tracker"] == "bpf" and gate["exec_gate"]
    assert gate["execs"] == GATED_EXECS
    assert gate["escaped"] == 0, gate["escaped_examples"]
    assert gate["distinct_cgroups"] == GATED_EXECS  # one cgroup per exec, each its own
    calls = daemon.toolcalls("gate")
    assert len(calls) == GATED_EXECS and all(c["name"] == "probe" for c in calls)


def test_sigkill_while_frozen_then_restart_readopts_and_decides(daemon):
    # A shell agent (no Python start-up to wait for): the runaway, then one more tool call
    # that the restarted daemon's gate must place.
    script = f"{PY} -S {RUNAWAY} 4 1024; echo runaway $?; cat /proc/self/cgroup; echo agent done"
    agent = subprocess.Popen([str(Path(PY).parent / "agentctl"), "--socket", str(daemon.socket), "run", "--name", "crash",
                              "--policy", "crash", "--", "sh", "-c", script],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.env)
    try:
        tools = Path(daemon.driver().tree.dir("agents/crash/tools"))
        t_agent = time.monotonic()
        frozen = _wait_frozen(tools, timeout=300)
        print(f"the runaway was frozen {time.monotonic() - t_agent:.1f} s after the agent started")
        rel = str(frozen).split(f"/{daemon.leaf}/", 1)[1]
        before = _wait_recorded_frozen(daemon, "crash", rel)
        assert daemon.client.agent("crash")["policy"] == "crash"
        daemon.kill9()
        time.sleep(0.5)
        # The moment held: the tool call is still frozen now that its daemon is dead.
        assert frozen.exists() and Cgroup(frozen).keyed("cgroup.events")["frozen"] == 1, _journal_tail(daemon, "crash")
        t0 = time.monotonic()
        daemon.start(timeout=600)
        print(f"daemon restarted in {time.monotonic() - t0:.1f} s")
        out, err = agent.communicate(timeout=300)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "runaway 137" and lines[-1] == "agent done", out  # the runaway SIGKILLed, the agent went on
    # The tool call after the restart: gated and placed in its own tool cgroup by the new daemon.
    assert [l for l in lines if l.startswith("0::")][0].endswith("/agents/crash/tools/0002-cat"), out
    status = daemon.client.status()
    assert status["readopt"]["agents"] == 1 and status["readopt"]["toolcalls"] >= 1, status["readopt"]
    assert status["readopt"]["held"] == 1, status["readopt"]  # the frozen one, resumed by the new daemon
    after = {c["id"]: c for c in _wait_done(daemon, "crash", 2)}
    assert before <= set(after)  # no record lost
    runaway = [c for c in after.values() if c["cgroup"] == rel]
    assert len(runaway) == 1 and runaway[0]["name"] == "python-runaway.py", after
    assert runaway[0]["outcome"] == "killed", runaway
    assert not frozen.exists()  # decided and removed, not left frozen
    for pid in _pids_under(Path(daemon.driver().tree.dir(""))):
        assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T", f"pid {pid} left stopped"


def _journal_tail(daemon, agent: str, n: int = 12) -> str:
    """The agent's last journal lines and the daemon's log tail, for a failure message."""
    lines = []
    try:
        for line in (daemon.state / "journal.jsonl").read_text().splitlines():
            ev = json.loads(line)
            if ev.get("agent") == agent:
                lines.append(f"{ev['ts']:.2f} {ev['kind']} {ev.get('tool_call') or ''} {ev['message'][:160]}")
    except (OSError, ValueError) as exc:
        lines.append(f"(no journal: {exc})")
    log = daemon.log.read_text()[-1500:] if daemon.log.exists() else ""
    return "\n".join(lines[-n:]) + "\n--- daemon log ---\n" + log


def _wait_frozen(tools: Path, timeout: float) -> Path:
    """The first tool cgroup the kernel reports frozen (cgroup.events), seen from outside."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in tools.iterdir() if tools.exists() else ():
            try:
                if d.is_dir() and Cgroup(d).keyed("cgroup.events").get("frozen") == 1:
                    return d
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"no tool call of {tools} was frozen within {timeout} s")


def _wait_recorded_frozen(daemon, agent: str, rel: str, timeout: float = 30) -> set[str]:
    """The ids of the agent's tool calls once the store holds the frozen one as frozen (the
    kernel is frozen first, the record follows): the crash falls after both."""
    deadline = time.monotonic() + timeout
    while True:
        calls = daemon.toolcalls(agent)
        if any(c["cgroup"] == rel and c["state"] == "frozen" for c in calls):
            return {c["id"] for c in calls}
        if time.monotonic() > deadline:
            raise AssertionError(f"{rel} frozen in the kernel but not in the daemon's records: {calls}")
        time.sleep(0.1)


def _wait_done(daemon, agent: str, count: int, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        calls = daemon.toolcalls(agent)
        if len(calls) >= count and all(c["state"] == "done" for c in calls):
            return calls
        if time.monotonic() > deadline:
            raise AssertionError(f"tool calls not done in time: {calls}")
        time.sleep(0.2)


def _pids_under(root: Path) -> list[int]:
    pids: list[int] = []
    for procs in root.rglob("cgroup.procs"):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except OSError:
            pass
    return pids
