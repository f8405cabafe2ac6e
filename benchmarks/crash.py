"""Restart safety at the hard moments, measured: SIGKILL the daemon while agents run tool
calls back to back (bursts past memory_high and memory_max, rapid short execs), restart it,
and compare what it knows and what the kernel holds with what it knew before.

    python -m benchmarks.crash [--quick]        (20 cycles; quick: 5)

The kill moments take turns: an exec stopped at the gate, a tool call held at its limit (or
frozen), a policy apply in flight, a tool cgroup made but not yet limited, and a random
moment (benchmarks/crash_moments.py waits for each in the kernel's state and checks that it
still held once the daemon was dead). After each restart:
  records_lost            tool-call records known before the kill and missing after
  frozen_left             tool cgroups frozen or held, processes stopped, once the restarted
                          daemon had the time to decide (its grace)
  orphan_cgroups          tool cgroups neither live nor removed
  managed_processes_lost  agents that died, gated execs never placed
  policy_mismatch         live tool calls whose kernel limit is not the policy in force
and counts kills_at_gate, kills_while_frozen, kills_during_apply, kills_between_mkdir_and_limits
(moments hit), readopted_toolcalls (all cycles), held_decided_after_restart.
Writes benchmarks/results/crash.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

import yaml

from agentd.cgroups import fs
from benchmarks import crash_moments as moments
from benchmarks.daemon_process import BIN, DaemonProcess
from benchmarks.results_file import write_result

AGENT = Path(__file__).resolve().parent / "crash_agent.py"
FREEZE_S = 2
POLICY = f"""version: 1
name: default
toolcalls:
  defaults: {{memory_high: 48M, memory_max: 96M, swap_max: 0, pids_max: 64, timeout_s: 30}}
  escalation: {{psi_full_pct: 40, sustain_s: 1, freeze_s: {FREEZE_S}}}
"""
# The policies applied during the run: the same but for pids_max, so a half-applied change
# shows in the kernel's pids.max of live tool calls.
APPLIED = [POLICY.replace("pids_max: 64", f"pids_max: {n}") for n in (60, 64)]
ORDER = ("held", "gate", "apply", "mkdir", "random")
MOMENT_TIMEOUT_S = 20
KEYS = {"gate": "kills_at_gate", "held": "kills_while_frozen", "apply": "kills_during_apply",
        "mkdir": "kills_between_mkdir_and_limits"}


def stored_ids(daemon: DaemonProcess) -> set[str]:
    db = sqlite3.connect(f"file:{daemon.state / 'agentd.db'}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT id FROM toolcalls")}
    finally:
        db.close()


def policy_in_force(daemon: DaemonProcess) -> str:
    applied = daemon.policy_dir / "default.yaml"
    return applied.read_text() if applied.exists() else daemon.default_policy.read_text()


def stored_states(daemon: DaemonProcess, ids) -> dict[str, str]:
    db = sqlite3.connect(f"file:{daemon.state / 'agentd.db'}?mode=ro", uri=True)
    try:
        return {i: st for i, st in db.execute(f"SELECT id, state FROM toolcalls WHERE id IN ({','.join('?' * len(ids))})",
                                              list(ids))}
    finally:
        db.close()


def wait_decided(daemon: DaemonProcess, held: dict[str, str], timeout: float) -> int:
    """How many of the tool calls held at the kill the restarted daemon decided (its record
    says done: killed at the end of its grace, or let finish) within the grace and a margin."""
    if not held:
        return 0
    deadline = time.monotonic() + timeout
    while True:
        done = sum(st == "done" for st in stored_states(daemon, held).values())
        if done == len(held) or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def stuck(driver, agents: dict[str, int]) -> set:
    """Tool cgroups held or frozen by the kernel, and processes stopped, right now."""
    out = {("cgroup", rel) for rel in moments.held_toolcalls(driver, agents)}
    for name in agents:
        tools = f"agents/{name}/tools"
        rels = [f"agents/{name}/runtime", *[f"{tools}/{c}" for c in (driver.children(tools) if driver.exists(tools) else [])]]
        for rel in rels:
            try:
                pids = driver.procs(rel)
            except OSError:
                continue
            out |= {("pid", pid) for pid in pids if moments.proc_state(pid) in ("T", "t")}
    return out


def v1_only(driver, tools: str) -> set[str]:
    listed = set(driver.children(tools)) if driver.exists(tools) else set()
    return {f"{tree.controller}:{child}" for tree in getattr(driver, "v1", {}).values()
            for child in fs.child_dirs(tree.dir(tools)) if child not in listed and not child.startswith(".")}  # .spare-N: made ahead


def check_after_restart(daemon: DaemonProcess, agents: dict[str, int], gated: list[int]) -> dict:
    """What the kernel holds that the restarted daemon does not account for."""
    time.sleep(1.0)  # a few ticks: finished tool calls settle, released execs get placed
    driver = daemon.driver()
    live = {c["cgroup"]: c for c in daemon.client.tool_calls(live=True)}
    orphans = 0
    for name in agents:
        tools = f"agents/{name}/tools"
        for child in driver.children(tools) if driver.exists(tools) else []:
            rel = f"{tools}/{child}"
            if child.startswith(".") or rel in live:
                continue
            time.sleep(0.5)  # not yet removed: give the tick one more chance
            if driver.exists(rel) and rel not in {c["cgroup"] for c in daemon.client.tool_calls(live=True)}:
                orphans += 1
        # hybrid: a tool cgroup made in some v1 hierarchies only (a kill between its mkdirs;
        # a placement in flight also has them for a moment, before its v2 one)
        partial = v1_only(driver, tools)
        if partial:
            time.sleep(0.5)
            orphans += len(partial & v1_only(driver, tools))
    # Held, frozen or stopped is normal for a moment (the bursts are held at memory_max for
    # the grace, execs stop at the gate): left means still so after the grace and the gate's
    # fail-open time have passed.
    first = stuck(driver, agents)
    if first:
        time.sleep(FREEZE_S + 2.5)
    left = first & stuck(driver, agents)
    # The exec stopped at the gate when the daemon died: placed now (or already done).
    unplaced = 0
    for pid in gated:
        try:
            where = open(f"/proc/{pid}/cgroup").read()
        except OSError:
            continue  # ran and exited
        unplaced += "/tools/" not in where and moments.proc_state(pid) not in (None, "Z")
    # The policy in force reached every live tool call's kernel limit.
    want = str(yaml.safe_load(policy_in_force(daemon))["toolcalls"]["defaults"]["pids_max"])
    mismatch = 0
    for rel in live:
        try:
            mismatch += fs_read(driver.knob_path(rel, "pids.max")) != want
        except OSError:
            pass  # ended meanwhile
    return {"orphan_cgroups": orphans, "frozen_left": len(left), "left": sorted(map(str, left)), "gated_unplaced": unplaced,
            "policy_mismatch": mismatch}


def fs_read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def snapshot(daemon: DaemonProcess, agents: dict[str, int]) -> dict:
    """What each agent was doing when its moment did not come: its processes and states."""
    driver = daemon.driver()
    out = {}
    for name in agents:
        rels = [f"agents/{name}/runtime", *[f"agents/{name}/tools/{c}" for c in driver.children(f"agents/{name}/tools")]]
        procs = []
        for rel in rels:
            for pid in driver.procs(rel):
                try:
                    argv = open(f"/proc/{pid}/cmdline").read().split("\0")[:3]
                except OSError:
                    continue
                procs.append({"cgroup": rel.split("/", 2)[2], "pid": pid, "state": moments.proc_state(pid), "argv": argv})
        out[name] = procs
    return out


def kill_at(moment: str, daemon: DaemonProcess, agents: dict[str, int], rng: random.Random, applies: int) -> moments.Hit:
    hit = None
    if moment == "gate":
        hit = moments.at_gate(daemon, agents, MOMENT_TIMEOUT_S)
    elif moment == "held":
        hit = moments.while_held(daemon, agents, MOMENT_TIMEOUT_S)
    elif moment == "apply":
        # always a change from the policy in force, killed at the write or at the rename
        text = next(t for t in APPLIED if t != policy_in_force(daemon))
        hit = moments.during_apply(daemon, text, MOMENT_TIMEOUT_S, agentctl=str(BIN / "agentctl"),
                                   at=("write", "rename")[applies % 2])
    elif moment == "mkdir":
        hit = moments.between_mkdir_and_limits(daemon, agents, MOMENT_TIMEOUT_S)
    if hit is None:  # random, or the moment did not come in time
        time.sleep(rng.uniform(0.3, 1.5))
        seen = snapshot(daemon, agents) if moment != "random" else None
        moments.kill(daemon)
        hit = moments.Hit("random", False, {"wanted": moment, **({"agents_then": seen} if seen else {})})
    return hit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cycles", type=int, default=None)
    ap.add_argument("--agents", type=int, default=3, help="busy agents: one runs rapid short execs, the others mixed bursts")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("crash: needs root", file=sys.stderr)
        return 2
    cycles = args.cycles or (5 if args.quick else 20)
    rng = random.Random(args.seed)
    daemon = DaemonProcess(tracker="auto", policy=POLICY)
    totals = {"records_lost": 0, "frozen_left": 0, "orphan_cgroups": 0, "managed_processes_lost": 0, "policy_mismatch": 0}
    counts = {"kills_random": 0, **{k: 0 for k in KEYS.values()}, "readopted_toolcalls": 0, "held_decided_after_restart": 0,
              "held_at_kill": 0}
    readopt_ms: list[float] = []
    rows = []
    procs = {}
    started = time.monotonic()
    try:
        daemon.start()
        tracker = daemon.client.status().get("tracker")
        for i in range(args.agents):
            mode = "rapid" if i == 0 else "mix"
            procs[f"{mode}{i}"] = daemon.spawn_agent(f"{mode}{i}", AGENT, str(cycles * 30 + 60), mode,
                                                     stdout=subprocess_devnull(), stderr=subprocess_devnull())
        deadline = time.monotonic() + 60  # agentctl run under load: registration takes a while
        while True:
            agents = {a["name"]: a["main_pid"] for a in daemon.client.agents() if a["state"] == "live"}
            if set(agents) == set(procs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if set(agents) != set(procs):
            raise RuntimeError(f"agents did not register within 60 s: {sorted(agents)} of {sorted(procs)}")
        applies = 0
        for cycle in range(1, cycles + 1):
            moment = ORDER[(cycle - 1) % len(ORDER)]
            time.sleep(rng.uniform(0.2, 0.8))
            before = {c["id"] for c in daemon.client.tool_calls()}
            hit = kill_at(moment, daemon, agents, rng, applies)
            applies += moment == "apply"
            driver = daemon.driver()
            held = moments.held_toolcalls(driver, agents)  # the daemon is dead: held now means held at the kill
            gated = [hit.detail["pid"]] if hit.moment == "gate" and hit.hit else []
            if hit.hit:
                counts[KEYS[hit.moment]] += 1
            else:
                counts["kills_random"] += 1
            time.sleep(rng.uniform(0.1, 0.6))
            daemon.start()
            status = daemon.client.status()
            readopt = status["readopt"]
            readopt_ms.append(readopt["ms"])
            decided = wait_decided(daemon, held, FREEZE_S + 5)
            check = check_after_restart(daemon, agents, gated)
            lost = len(before - stored_ids(daemon))
            dead = sum(1 for p in procs.values() if p.poll() is not None)
            counts["readopted_toolcalls"] += readopt.get("toolcalls", 0)
            counts["held_at_kill"] += len(held)
            counts["held_decided_after_restart"] += decided
            totals["records_lost"] += lost
            totals["frozen_left"] += check["frozen_left"] + (len(held) - decided)
            totals["orphan_cgroups"] += check["orphan_cgroups"]
            totals["managed_processes_lost"] += check["gated_unplaced"]
            totals["policy_mismatch"] += check["policy_mismatch"]
            rows.append({"cycle": cycle, "moment": hit.moment, "wanted": moment, "hit": hit.hit, "detail": hit.detail,
                         "records_before": len(before), "records_lost": lost, "readopt_ms": readopt["ms"],
                         "readopt": {k: v for k, v in readopt.items() if k != "ms"}, "held_at_kill": held,
                         "held_decided": decided, **check, "agents_dead": dead})
            print(f"crash: cycle {cycle}/{cycles}: {moment:<6} {'hit' if hit.hit else 'missed (random kill)'}; "
                  f"re-adopted {readopt.get('toolcalls', 0)} tool calls in {readopt['ms']:.1f} ms, held at kill {len(held)} "
                  f"(decided {decided}), lost {lost}, frozen left {check['frozen_left']}, orphans {check['orphan_cgroups']}, "
                  f"policy mismatch {check['policy_mismatch']}, agents dead {dead}", file=sys.stderr, flush=True)
        totals["managed_processes_lost"] += sum(1 for p in procs.values() if p.poll() is not None and p.returncode != 0)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        daemon.cleanup()
    ordered = sorted(readopt_ms)
    metrics = {"cycles": cycles, **totals, **counts,
               "readopt_ms_p50": round(ordered[len(ordered) // 2], 2) if ordered else 0.0,
               "readopt_ms_p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2) if ordered else 0.0,
               "readopt_ms_max": round(max(ordered), 2) if ordered else 0.0,
               "wall_s": round(time.monotonic() - started, 1)}
    path = write_result("crash", metrics, {"agents": args.agents, "seed": args.seed, "quick": args.quick, "tracker": tracker,
                                           "freeze_s": FREEZE_S, "order": list(ORDER), "cycles": rows})
    print(f"\n{'moment':<8} {'wanted':>6} {'hit':>4}")
    for moment in ORDER[:-1]:
        wanted = sum(r["wanted"] == moment for r in rows)
        print(f"{moment:<8} {wanted:>6} {sum(r['moment'] == moment and r['hit'] for r in rows):>4}")
    print(f"\n{'metric':<32} value")
    for k, v in metrics.items():
        print(f"{k:<32} {v}")
    print(f"\nwrote {path}")
    bad = [k for k in totals if totals[k]] + (["readopted_toolcalls"] if not counts["readopted_toolcalls"] else [])
    if bad:
        print(f"crash: FAILED: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def subprocess_devnull():
    return open(os.devnull, "w")


if __name__ == "__main__":
    sys.exit(main())
