"""The daemon on pure cgroup v2: `agentd demo --json` inside the test VM, beside a gate
check of the real daemon there.

    python -m benchmarks.vm_demo [--quick]

Boots the VM of tests/vm (Debian's 6.12 kernel, pure cgroup v2 with every controller,
software emulation), runs benchmarks/vm_demo_guest.py in it (the demo, then `agentd run
--tracker bpf` with an agent that execs a static probe which reads /proc/self/cgroup with
its first instructions), and writes benchmarks/results/vm_demo.json. Metrics (issue 9):
cgroup_driver ("v2"), tracker ("bpf" or "cn_proc"), tool_calls, outcomes (one per tool
call, in order), escaped_pct_gated (probe execs that saw a cgroup other than their own
tool cgroup), agent_exit; beside them what the VM costs (boot_s, guest_s, demo_s).
--quick: 20 probe execs instead of 80 (the demo itself is the same).

Emulation inflates every time here (Python about 12x slower than on the host): read the
seconds as what the VM tests cost, not as what the daemon costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results_file import write_result
from benchmarks.vm_demo_guest import metrics as demo_metrics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "vm_demo.json"


def run_vm(execs: int, timeout: float) -> tuple[dict, object]:
    sys.path.insert(0, str(REPO))
    from tests.vm import harness

    rw = Path(tempfile.mkdtemp(prefix="agentd-bench-vmdemo-"))
    r = harness.boot_and_run([sys.executable, "-m", "benchmarks.vm_demo_guest", "--execs", str(execs),
                              "--tracker", "auto"], timeout=timeout, files_dir=rw, cwd=REPO)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.rc != 0 or not lines:
        raise SystemExit(f"the guest part failed (rc {r.rc}, files {rw}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return json.loads(lines[-1]), r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 gated probe execs instead of 80")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds for boot and guest run")
    args = ap.parse_args(argv)
    execs = 20 if args.quick else 80
    t0 = time.monotonic()
    guest, vm = run_vm(execs, args.timeout)
    run = guest["demo_run"]
    if "error" in run:
        raise SystemExit(f"agentd demo failed in the VM: {run['error']}\n{run['stderr_tail']}")
    if "gate" not in guest:
        raise SystemExit(f"the gate check failed in the VM: {guest.get('gate_error')}")
    gate = guest["gate"]
    metrics = demo_metrics(run, gate)
    metrics.update(boot_s=round(vm.boot_s or 0.0, 1), guest_s=round(vm.command_s or 0.0, 1),
                   wall_s=round(time.monotonic() - t0, 1), gate_check_s=gate["seconds"],
                   gate_daemon_start_s=gate["daemon_start_s"], qemu_peak_rss_mb=vm.host_maxrss_kb // 1024)
    params = {"quick": args.quick, "probe_execs": execs, "kernel": guest["kernel"], "vm": vm.summary(),
              "demo": "agentd demo --json --tracker auto (default policy, no trace: 0.2 s per turn)",
              "gate": "agentd run --tracker bpf, agent `sh -c` execs the probe one after the other; "
                      "escaped = saw a cgroup other than agents/gate/tools/<seq>-probe at its first instruction",
              "emulation": "TCG (software): times are inflated, Python about 12x slower than on the host"}
    rows = run["demo"]["tool_calls"]
    path = write_result("vm_demo", metrics, params, tool_calls=rows, gate=gate,
                        lines=run["demo"]["lines"])

    print(f"agentd demo in the VM: kernel {guest['kernel']}, cgroup driver {metrics['cgroup_driver']}, "
          f"tracker {metrics['tracker']} (exec gate {'on' if metrics['exec_gate'] else 'off'})")
    print(f"\n{'tool call':<20}{'outcome':<11}{'exit':>5}{'peak MiB':>10}{'wall s':>8}  ladder (journal)")
    for c in rows:
        ladder = " > ".join(k.removeprefix("toolcall.") for k in c.get("events", []) if k not in ("toolcall.start", "toolcall.end"))
        exit_code = "" if c["exit_code"] is None else c["exit_code"]
        print(f"{c['name'][:19]:<20}{c['outcome']:<11}{exit_code!s:>5}{c['peak_bytes'] >> 20:>10}{c['wall_s']:>8.1f}  {ladder}")
    print(f"\nagent exit {metrics['agent_exit']}; {metrics['tool_calls']} tool calls; frozen then killed: "
          f"{metrics['frozen_then_killed']}; `sleep 300` left after the timeout: {metrics['leftover_server_processes']}")
    print(f"gated execs: {gate['placed']} of {gate['execs']} in their own tool cgroup at their first instruction "
          f"(escaped {metrics['escaped_pct_gated']} %), placement p50 {gate['placement_p50_us_full']} µs "
          f"p99 {gate['placement_p99_us_full']} µs (emulated)")
    print(f"\n{'cost (s)':<28}{'value':>8}")
    for k in ("boot_s", "demo_s", "demo_toolcalls_wall_s", "gate_daemon_start_s", "gate_check_s", "guest_s", "wall_s"):
        print(f"{k:<28}{metrics[k]:>8}")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
