"""Real memory shapes under contention: replay recorded coding-agent runs (memory curve held
in real processes, Bash tool calls as real child processes at their recorded times,
time-compressed) for one high-priority and two low-priority agents under one host memory
budget, and compare in the same run:

  none    one shared cgroup limited to the budget; the kernel's OOM killer decides
  static  the budget split into fixed per-agent limits (high 50 %, each low 25 %)
  agentd  the real daemon: one cgroup per tool call, the budget on agents/ with pause-and-
          decide (v1) and tool calls ordered before runtimes for the OOM killer

    python -m benchmarks.replay [--quick] [--traces FILE] [--speed X] [--settings MODEL:MB,...]

Writes benchmarks/results/replay.json and prints a table. Default setting: the AgentCgroup
study's 1,100 MB with a high agent replaying dask__dask-11628 and two low ones replaying
sigmavirus24__github3.py-673.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from agentd.cgroups.detect import open_driver
from agentd.cgroups.driver import Limits
from benchmarks.daemon_process import DaemonProcess
from benchmarks.results_file import write_result

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACES = REPO / "data" / "agent-traces" / "swe-agent-traces.json"
HIGH_TASK = "dask__dask-11628"
LOW_TASK = "sigmavirus24__github3.py-673"
MIB = 1 << 20

POLICY_HIGH = """version: 1
name: replay-high
priority: high
toolcalls:
  defaults: {memory_high: 700M, memory_max: 900M, pids_max: 256, timeout_s: 3600}
"""
POLICY_LOW = """version: 1
name: replay-low
priority: low
toolcalls:
  defaults: {memory_high: 300M, memory_max: 500M, pids_max: 256, timeout_s: 3600}
"""


def pick_run(runs: list[dict], task: str, model: str | None) -> dict:
    found = [r for r in runs if r["task"] == task and (model is None or r["model"] == model)]
    if not found:
        raise SystemExit(f"replay: no run of {task!r}" + (f" with model {model!r}" if model else "") + " in the traces")
    return found[0]


def build_plan(run: dict, speed: float, delay: float = 0.0) -> dict:
    """Runtime curve outside Bash calls; each Bash call's memory above the curve at its start
    is held by the tool-call process. Times divided by `speed`."""
    samples = [(t, b) for t, b, *_ in run["memory"]["samples"]]
    bash = sorted((c for c in run["tool_calls"] if c["tool"] == "Bash"), key=lambda c: c["start"])

    def at(t: float) -> int:
        best = samples[0][1]
        for ts, b in samples:
            if ts > t:
                break
            best = b
        return int(best)

    tools = []
    for c in bash:
        base = at(c["start"])
        pts = [[(t - c["start"]) / speed, max(0, b - base)] for t, b in samples if c["start"] <= t <= c["start"] + c["duration"]]
        tools.append({"start": c["start"] / speed, "duration": max(c["duration"] / speed, 0.01), "points": pts or [[0.0, 0]]})
    points = [[t / speed, b] for t, b in samples]
    return {"points": points, "tools": tools, "delay": delay, "task": run["task"], "model": run["model"]}


def vmstat_oom_kills() -> int:
    for line in open("/proc/vmstat"):
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def launch(plan: dict, workdir: Path, name: str, cgroup_move=None, spawn=None) -> tuple[subprocess.Popen, Path]:
    plan_path = workdir / f"{name}.plan.json"
    out_path = workdir / f"{name}.out.json"
    plan_path.write_text(json.dumps(plan))
    args = ["-m", "benchmarks.replay_proc", "agent", str(plan_path), str(out_path)]
    if spawn is not None:
        return spawn(name, args), out_path
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, preexec_fn=cgroup_move, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    return proc, out_path


def collect(agents: list[tuple[str, str, dict, subprocess.Popen, Path]], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    per = {}
    for name, prio, plan, proc, out in agents:
        try:
            rc = proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        result = json.loads(out.read_text()) if out.exists() and rc == 0 else None
        planned = len(plan["tools"])
        done = sum(1 for t in (result or {}).get("tools", []) if t["rc"] == 0)
        alloc = (result or {}).get("runtime_alloc_ms", []) + [a for t in (result or {}).get("tools", []) for a in t["alloc_ms"]]
        per[name] = {"priority": prio, "survived": result is not None, "rc": rc, "tool_calls": planned, "tool_calls_ok": done,
                     "p95_alloc_ms": round(p95(alloc), 3), "wall_s": round((result or {}).get("wall_s", 0.0), 2)}
        if rc != 0 and proc.stderr is not None:
            per[name]["stderr_tail"] = proc.stderr.read()[-400:].decode("utf-8", "replace") if proc.stderr else ""
    return per


def run_baseline(mode: str, plans: list[tuple[str, str, dict]], budget: int, workdir: Path, timeout: float) -> dict:
    leaf = f"agentd-replay-{mode}-{uuid.uuid4().hex[:6]}"
    driver = open_driver(None, leaf_name=leaf)
    try:
        driver.apply_limits("", Limits(memory_max=budget, swap_max=0))
        agents = []
        for name, prio, plan in plans:
            rel = "shared" if mode == "none" else f"agents/{name}"
            driver.create(rel)
            if mode == "static":
                share = budget // 2 if prio == "high" else budget // 4
                driver.apply_limits(rel, Limits(memory_max=share, swap_max=0))

            def move(rel=rel):
                driver.move(os.getpid(), rel)

            proc, out = launch(plan, workdir, f"{mode}-{name}", cgroup_move=move)
            agents.append((name, prio, plan, proc, out))
        return collect(agents, timeout)
    finally:
        _remove(driver)


def run_agentd(plans: list[tuple[str, str, dict]], budget: int, workdir: Path, timeout: float) -> dict:
    daemon = DaemonProcess(tracker="auto", policies={"replay-high": POLICY_HIGH, "replay-low": POLICY_LOW},
                           extra_args=("--host-memory-max", str(budget)))
    try:
        daemon.start()

        def spawn(name, args):
            prio = "high" if name.endswith("high") else "low"
            return subprocess.Popen([str(Path(sys.executable).parent / "agentctl"), "--socket", str(daemon.socket), "run",
                                     "--name", name, "--policy", f"replay-{prio}", "--", sys.executable, *args],
                                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        agents = []
        for name, prio, plan in plans:
            proc, out = launch(plan, workdir, f"agentd-{name}", spawn=lambda n, a, name=name: spawn(name, a))
            agents.append((name, prio, plan, proc, out))
        per = collect(agents, timeout)
        per["_events"] = {"killed": sum(1 for c in _all_toolcalls(daemon) if c["outcome"] == "killed")}
        return per
    finally:
        daemon.cleanup()


def _all_toolcalls(daemon: DaemonProcess) -> list[dict]:
    try:
        return daemon.client.tool_calls()
    except Exception:
        return []


def _remove(driver) -> None:
    def walk(rel):
        for child in driver.children(rel):
            walk(f"{rel}/{child}" if rel else child)
        if driver.procs(rel):
            driver.kill(rel)
    try:
        walk("")
        driver.remove("")
    except OSError:
        pass


def summarize(per: dict) -> dict:
    agents = {k: v for k, v in per.items() if not k.startswith("_")}
    high = [v for v in agents.values() if v["priority"] == "high"][0]
    planned = sum(v["tool_calls"] for v in agents.values())
    ok = sum(v["tool_calls_ok"] for v in agents.values())
    return {"survival_pct": round(100 * sum(v["survived"] for v in agents.values()) / len(agents), 1),
            "tool_calls_completed_pct": round(100 * ok / planned, 1) if planned else 100.0,
            "p95_alloc_ms_high": high["p95_alloc_ms"], "wall_s_high": high["wall_s"], "agents": agents}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one setting, faster replay (well under a minute)")
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    ap.add_argument("--speed", type=float, default=None, help="time compression (default 50, quick 100)")
    ap.add_argument("--settings", default=None,
                    help="MODEL:BUDGET_MB,... (default glm-4.7-flash:1100; full adds glm-4.7-flash:1400,haiku:600,haiku:800)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("replay: needs root (cgroups, the daemon)", file=sys.stderr)
        return 2
    runs = json.loads(args.traces.read_text())
    speed = args.speed or (100.0 if args.quick else 50.0)
    default = "glm-4.7-flash:1100" + ("" if args.quick else ",glm-4.7-flash:1400,haiku:600,haiku:800")
    wanted = [(s.rsplit(":", 1)[0], int(s.rsplit(":", 1)[1])) for s in (args.settings or default).split(",")]
    settings = []
    with tempfile.TemporaryDirectory(prefix="agentd-replay-") as tmp:
        workdir = Path(tmp)
        for model, budget_mb in wanted:
            high = pick_run(runs, HIGH_TASK, model)
            low = pick_run(runs, LOW_TASK, model)
            plans = [("high", "high", build_plan(high, speed)), ("low1", "low", build_plan(low, speed)),
                     ("low2", "low", build_plan(low, speed, delay=100.0 / speed))]  # the second low starts 100 s later
            timeout = max(p[2]["points"][-1][0] + p[2]["delay"] for p in plans) * 3 + 30
            row = {"model": model, "budget_mb": budget_mb}
            for mode in ("none", "static", "agentd"):
                before = vmstat_oom_kills()
                print(f"replay: {model} at {budget_mb} MB, {mode} ...", file=sys.stderr, flush=True)
                per = run_agentd(plans, budget_mb * MIB, workdir, timeout) if mode == "agentd" else \
                    run_baseline(mode, plans, budget_mb * MIB, workdir, timeout)
                row[mode] = summarize(per)
                row[mode]["oom_kills"] = vmstat_oom_kills() - before
            settings.append(row)
    main_row = settings[0]
    metrics = {}
    for mode in ("none", "static", "agentd"):
        metrics[f"survival_pct_{mode}"] = main_row[mode]["survival_pct"]
        metrics[f"tool_calls_completed_pct_{mode}"] = main_row[mode]["tool_calls_completed_pct"]
        metrics[f"p95_alloc_ms_high_{mode}"] = main_row[mode]["p95_alloc_ms_high"]
        metrics[f"wall_s_high_{mode}"] = main_row[mode]["wall_s_high"]
        metrics[f"oom_kills_{mode}"] = main_row[mode]["oom_kills"]
    params = {"budget_mb": main_row["budget_mb"], "speed": speed, "model": main_row["model"], "high": HIGH_TASK, "low": LOW_TASK,
              "traces": str(args.traces), "cgroups": open_driver(None, create_root=False).kind, "settings": settings}
    path = write_result("replay", metrics, params)
    print(f"\nreplay: {HIGH_TASK} (high) + 2 x {LOW_TASK} (low), {speed:g}x, cgroups {params['cgroups']}")
    print(f"{'model':<14} {'budget':>7} {'mode':<7} {'survived':>9} {'tools ok':>9} {'p95 alloc ms (high)':>20} {'wall s (high)':>14} {'OOM kills':>10}")
    for row in settings:
        for mode in ("none", "static", "agentd"):
            r = row[mode]
            print(f"{row['model']:<14} {row['budget_mb']:>5}MB {mode:<7} {r['survival_pct']:>8.0f}% {r['tool_calls_completed_pct']:>8.1f}% "
                  f"{r['p95_alloc_ms_high']:>20.2f} {r['wall_s_high']:>14.2f} {r['oom_kills']:>10}")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
