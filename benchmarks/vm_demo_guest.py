"""The guest half of benchmarks.vm_demo, also used by tests/vm/guest/test_daemon_guest.py:
run inside the pure cgroup v2 VM (as root), it runs `agentd demo --json` and a gate check
against the real daemon, and prints one JSON object.

- run_demo(): `agentd demo --json` as a subprocess; its JSON, the seconds it took, and the
  `sleep 300` processes of the demo's hanging server turn still alive afterwards (the
  timeout must end the whole tree: none).
- gate_check(): the real daemon (`agentd run --tracker bpf`) with an agent, a shell, that
  execs a tiny static probe N times; each exec is gated (SIGSTOP at the exec tracepoint),
  placed and continued, and the probe's first instructions write /proc/self/cgroup
  (benchmarks/placement.py's probe). An exec that saw any cgroup other than its own tool
  cgroup escaped.
- demo_agent(): the demo's agent (examples/demo_agent.py) under an already running daemon
  with the demo's default policy, its records in the shape of `agentd demo --json` (the
  guest tests use it: one daemon for the demo agent, the gate check and a crash, instead of
  one BCC compile of the tracker per daemon, each a minute or more under emulation).
- metrics(): the contract's metrics from the two (pure).

    python -m benchmarks.vm_demo_guest [--execs N] [--tracker auto|bpf|cn_proc]

Imports stay light at module level: the guest test module imports this on the host too
(when its ids are listed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOL_CGROUP = re.compile(r"/agents/(?P<agent>[^/]+)/tools/(?P<seq>\d+)-(?P<name>[^/]+)$")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The checkout's own code first (a worktree's venv may point its editable install elsewhere).
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    # The demo's pytest turn would scan every installed distribution for plugins first:
    # tens of seconds under emulation, and nothing the demo shows.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return env


def leftover_processes(argv: list[str]) -> list[int]:
    """Pids whose command line is exactly argv."""
    want = ("\0".join(argv) + "\0").encode()
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes() == want:
                    out.append(int(entry))
            except OSError:
                pass
    return out


def run_demo(tracker: str = "auto", timeout: float = 900) -> dict:
    """`agentd demo --json` once: {"demo": its JSON, "demo_s", "leftover_server_pids",
    "stderr_tail"}; a demo that fails or prints no JSON gives "error" instead of "demo"."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "agentd.main", "demo", "--json", "--tracker", tracker],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=_env())
    out: dict = {"demo_s": round(time.monotonic() - t0, 1), "rc": proc.returncode,
                 "stderr_tail": proc.stderr[-2000:],
                 # The demo's hanging turn: `bash -c "sleep 300 & sleep 300"` with a 1 s intent.
                 "leftover_server_pids": leftover_processes(["sleep", "300"])}
    try:
        out["demo"] = json.loads(proc.stdout)  # all of stdout: nothing else may reach it
    except json.JSONDecodeError as exc:
        out["error"] = f"agentd demo --json exited {proc.returncode}, stdout is not one JSON object ({exc}): {proc.stdout[:300]!r}"
    return out


def demo_agent(daemon, name: str = "demo", turns: str = "", timeout: float = 900) -> dict:
    """The demo's agent run through `agentctl run` under `daemon` (a DaemonProcess whose
    default policy is policies/default.yaml, as the demo's): {"demo": the same shape as
    `agentd demo --json`, "demo_s", "leftover_server_pids", "rc", "stderr_tail"}.
    turns: DEMO_TURNS for the agent ("3,4,5,6": only the ladder's turns; "": all)."""
    from agentd.demo import summary_rows

    env = _env()
    env["DEMO_TURNS"] = turns
    t0 = time.monotonic()
    proc = subprocess.run([str(daemon_bin("agentctl")), "--socket", str(daemon.socket), "run", "--name", name, "--",
                           sys.executable, str(REPO / "examples" / "demo_agent.py")],
                          capture_output=True, text=True, timeout=timeout, env=env)
    took = round(time.monotonic() - t0, 1)
    records = wait_done(daemon, name)
    events: dict[str, list[str]] = {}
    for ev in daemon.client.recent_events(agent=name, limit=5000):
        if ev.get("tool_call"):
            events.setdefault(ev["tool_call"], []).append(ev["kind"])
    status = daemon.client.status()
    demo = {"agent_exit": proc.returncode, "tool_calls": summary_rows(sorted(records, key=lambda r: r["seq"]), events),
            "tracker": status["tracker"], "cgroups": status["cgroups"]["driver"], "lines": status["lines"]}
    return {"demo": demo, "demo_s": took, "rc": proc.returncode, "stdout_tail": proc.stdout[-2000:],
            "stderr_tail": proc.stderr[-2000:], "leftover_server_pids": leftover_processes(["sleep", "300"])}


def wait_done(daemon, agent: str, timeout: float = 120) -> list[dict]:
    """The agent's tool-call records once every one is done (the daemon finishes a tool
    call a tick or more after its last process exits)."""
    deadline = time.monotonic() + timeout
    while True:
        calls = daemon.client.tool_calls(agent=agent)
        if all(c["state"] == "done" for c in calls):
            return calls
        if time.monotonic() > deadline:
            raise AssertionError(f"tool calls of {agent} not done within {timeout} s: {calls}")
        time.sleep(0.2)


def build_probe(workdir: Path) -> str:
    """The static probe of benchmarks/placement.py (reads /proc/self/cgroup with its first
    instructions, no loader, no libc)."""
    from benchmarks.placement import PROBE_C

    src, probe = workdir / "probe.c", workdir / "probe"
    src.write_text(PROBE_C)
    subprocess.run(["gcc", "-O2", "-static", "-nostdlib", "-fno-stack-protector", "-o", str(probe), str(src)], check=True)
    return str(probe)


def probe_for_guest(workdir: Path) -> str:
    """The probe the host built into the VM's results folder before booting (gcc there takes
    seconds, here half a minute under emulation), else one built now."""
    prebuilt = Path(os.environ.get("AGENTD_VM_RESULTS", "/nonexistent")) / "probe"
    return str(prebuilt) if os.access(prebuilt, os.X_OK) else build_probe(workdir)


def probe_agent_script(probe: str, outdir: Path, n: int) -> str:
    """A shell agent that runs the probe n times, one after the other, each writing what it
    saw into outdir/<i>: the shell forks, opens the file, then execs the probe (gated)."""
    return (f"i=0; while [ $i -lt {n} ]; do {probe} > {outdir}/$i; i=$((i + 1)); done")


def read_probe_outputs(outdir: Path, n: int) -> list[str | None]:
    """The v2 cgroup path each probe saw (None: no output)."""
    seen: list[str | None] = []
    for i in range(n):
        try:
            text = (outdir / str(i)).read_text()
        except OSError:
            text = ""
        path = next((line[3:].strip() for line in text.splitlines() if line.startswith("0::")), None)
        seen.append(path)
    return seen


def count_escapes(seen: list[str | None], leaf: str, agent: str) -> dict:
    """Each exec must have seen its own tool cgroup of `agent` under the daemon's root
    `leaf`, a different one each time (one cgroup per tool call)."""
    placed = [p for p in seen if p is not None and f"/{leaf}/agents/{agent}/tools/" in p
              and (m := TOOL_CGROUP.search(p)) is not None and m["agent"] == agent]
    escaped = len(seen) - len(placed)
    return {"execs": len(seen), "placed": len(placed), "escaped": escaped,
            "distinct_cgroups": len(set(placed)),
            "escaped_pct": round(100.0 * escaped / len(seen), 2) if seen else 100.0,
            "escaped_examples": [p for p in seen if p not in placed][:3]}


def gate_check(daemon, probe: str, n: int, agent: str = "gate", timeout: float = 600) -> dict:
    """n gated execs of the probe by an agent of the running `daemon` (a DaemonProcess)."""
    outdir = Path(tempfile.mkdtemp(prefix="agentd-gate-"))
    t0 = time.monotonic()
    proc = subprocess.run([str(daemon_bin("agentctl")), "--socket", str(daemon.socket), "run", "--name", agent, "--",
                           "sh", "-c", probe_agent_script(probe, outdir, n)],
                          capture_output=True, text=True, timeout=timeout, env=_env())
    took = time.monotonic() - t0
    result = count_escapes(read_probe_outputs(outdir, n), daemon.leaf, agent)
    result.update(agent_exit=proc.returncode, seconds=round(took, 1), stderr_tail=proc.stderr[-1000:])
    status = daemon.client.status()
    result["tracker"] = status["tracker"]["backend"]
    result["exec_gate"] = status["tracker"]["exec_gate"]
    result["placement_p50_us_full"] = status["tracker"].get("placement_p50_us_full")
    result["placement_p99_us_full"] = status["tracker"].get("placement_p99_us_full")
    return result


def daemon_bin(name: str) -> Path:
    return Path(sys.executable).parent / name


def run_gate_check(n: int, policy: str | None = None, start_timeout: float = 600) -> dict:
    """Start the real daemon (BPF tracker), run gate_check, stop it; everything removed."""
    from benchmarks.daemon_process import TEST_POLICY, DaemonProcess

    work = Path(tempfile.mkdtemp(prefix="agentd-probe-"))
    d = DaemonProcess(tracker="bpf", policy=policy or TEST_POLICY, env=_env())
    try:
        probe = build_probe(work)
        t0 = time.monotonic()
        d.start(timeout=start_timeout)
        started = round(time.monotonic() - t0, 1)
        result = gate_check(d, probe, n)
        result["daemon_start_s"] = started
        return result
    finally:
        d.cleanup()


def metrics(demo_run: dict, gate: dict) -> dict:
    """The contract's metrics (issue 9) from run_demo() and gate_check()."""
    demo = demo_run["demo"]
    calls = demo["tool_calls"]
    return {
        "cgroup_driver": demo["cgroups"],
        "tracker": demo["tracker"]["backend"],
        "exec_gate": int(bool(demo["tracker"]["exec_gate"])),
        "tool_calls": len(calls),
        "outcomes": [c["outcome"] for c in calls],
        "escaped_pct_gated": gate["escaped_pct"],
        "gated_execs": gate["execs"],
        "agent_exit": demo["agent_exit"],
        "frozen_then_killed": sum(1 for c in calls if _frozen_then_killed(c.get("events") or [])),
        "leftover_server_processes": len(demo_run["leftover_server_pids"]),
        "demo_s": demo_run["demo_s"],
        "demo_toolcalls_wall_s": round(sum(c["wall_s"] for c in calls), 1),
        "demo_placement_p50_us_full": demo["tracker"].get("placement_p50_us_full"),
        "gate_placement_p50_us_full": gate.get("placement_p50_us_full"),
        "gate_placement_p99_us_full": gate.get("placement_p99_us_full"),
    }


def _frozen_then_killed(kinds: list[str]) -> bool:
    return "toolcall.frozen" in kinds and "toolcall.killed" in kinds[kinds.index("toolcall.frozen"):]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--execs", type=int, default=40, help="gated execs of the probe")
    ap.add_argument("--tracker", choices=["auto", "bpf", "cn_proc"], default="auto")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("vm_demo_guest: run as root inside the VM")
    out: dict = {"kernel": os.uname().release}
    out["demo_run"] = run_demo(args.tracker)
    try:
        out["gate"] = run_gate_check(args.execs)
    except Exception as exc:  # the demo's result still comes back, with the reason
        out["gate_error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
