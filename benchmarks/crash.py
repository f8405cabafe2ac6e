"""Restart safety, measured: SIGKILL the daemon at random moments of a busy run (agents
running tool calls back to back), restart it, and compare what it knows and what the kernel
holds with what it knew before.

    python -m benchmarks.crash [--quick]        (20 cycles; quick: 5)

Writes benchmarks/results/crash.json with metrics cycles, records_lost, frozen_left,
orphan_cgroups, managed_processes_lost, readopt_ms_p50/p99, and prints a table.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from pathlib import Path

from benchmarks.daemon_process import DaemonProcess
from benchmarks.results_file import write_result

REPO = Path(__file__).resolve().parents[1]
AGENT = Path(__file__).resolve().parent / "crash_agent.py"
POLICY = """version: 1
name: default
toolcalls:
  defaults: {memory_high: 48M, memory_max: 96M, pids_max: 64, timeout_s: 30}
  escalation: {psi_full_pct: 40, sustain_s: 1, freeze_s: 1}
"""


def _state_of(pid: int) -> str | None:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def settle_and_check(daemon: DaemonProcess, agents: dict[str, int]) -> dict:
    """After a restart: what the kernel holds that the daemon does not account for."""
    time.sleep(1.5)  # a tick or several: frozen tool calls whose grace ran out get decided
    driver = daemon.driver()
    live_ids = {c["cgroup"] for c in daemon.client.tool_calls(live=True)}
    orphans = frozen = stopped = 0
    for name in agents:
        tools = f"agents/{name}/tools"
        if not driver.exists(tools):
            continue
        for child in driver.children(tools):
            rel = f"{tools}/{child}"
            if child.startswith(".") or rel in live_ids:
                continue
            if driver.procs(rel) or driver.exists(rel):
                # not yet removed: give the tick one more chance
                time.sleep(0.5)
                if driver.exists(rel) and rel not in {c["cgroup"] for c in daemon.client.tool_calls(live=True)}:
                    orphans += 1
        for rel in [f"agents/{name}/runtime", *[f"{tools}/{c}" for c in driver.children(tools)]]:
            try:
                st = driver.stats(rel)
            except OSError:
                continue
            frozen += int(st.frozen)
            for pid in driver.procs(rel):
                stopped += int(_state_of(pid) in ("T", "t"))
    return {"orphan_cgroups": orphans, "frozen_left": frozen + stopped}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cycles", type=int, default=None)
    ap.add_argument("--agents", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("crash: needs root", file=sys.stderr)
        return 2
    cycles = args.cycles or (5 if args.quick else 20)
    rng = random.Random(args.seed)
    daemon = DaemonProcess(tracker="auto", policy=POLICY)
    totals = {"records_lost": 0, "frozen_left": 0, "orphan_cgroups": 0, "managed_processes_lost": 0}
    readopt_ms: list[float] = []
    rows = []
    procs = {}
    try:
        daemon.start()
        for i in range(args.agents):
            name = f"busy{i}"
            procs[name] = daemon.spawn_agent(name, AGENT, str(cycles * 4 + 30), stdout=open(os.devnull, "w"),
                                             stderr=open(os.devnull, "w"))
        time.sleep(1.0)
        agents = {a["name"]: a["main_pid"] for a in daemon.client.agents() if a["state"] == "live"}
        for cycle in range(1, cycles + 1):
            time.sleep(rng.uniform(0.3, 1.5))
            before = {c["id"] for c in daemon.client.tool_calls()}
            daemon.kill9()
            time.sleep(rng.uniform(0.1, 0.6))
            daemon.start()
            status = daemon.client.status()
            readopt_ms.append(status["readopt"]["ms"])
            after = {c["id"] for c in daemon.client.tool_calls()}
            lost = len(before - after)
            check = settle_and_check(daemon, agents)
            dead = sum(1 for name, p in procs.items() if p.poll() is not None)
            totals["records_lost"] += lost
            totals["frozen_left"] += check["frozen_left"]
            totals["orphan_cgroups"] += check["orphan_cgroups"]
            rows.append({"cycle": cycle, "records_before": len(before), "records_lost": lost, "readopt_ms": status["readopt"]["ms"],
                         "readopted_toolcalls": status["readopt"].get("toolcalls", 0), **check, "agents_dead": dead})
            print(f"crash: cycle {cycle}/{cycles}: {len(before)} records, lost {lost}, re-adopted in {status['readopt']['ms']:.1f} ms, "
                  f"frozen left {check['frozen_left']}, orphans {check['orphan_cgroups']}, agents dead {dead}", file=sys.stderr, flush=True)
        totals["managed_processes_lost"] = sum(1 for p in procs.values() if p.poll() is not None and p.returncode != 0)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        daemon.cleanup()
    ordered = sorted(readopt_ms)
    metrics = {"cycles": cycles, **totals,
               "readopt_ms_p50": round(ordered[len(ordered) // 2], 2) if ordered else 0.0,
               "readopt_ms_p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2) if ordered else 0.0,
               "readopt_ms_max": round(max(ordered), 2) if ordered else 0.0}
    path = write_result("crash", metrics, {"agents": args.agents, "seed": args.seed, "cycles": rows})
    print(f"\n{'metric':<24} value")
    for k, v in metrics.items():
        print(f"{k:<24} {v}")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
