"""Real memory shapes under contention: replay recorded coding-agent runs (memory curve held
in real processes, Bash tool calls as real child processes at their recorded times,
time-compressed) for one high-priority and one or more low-priority agents under one host
memory budget, and compare the same triple, repeated, under:

  none          one parent cgroup limited to the budget (swap 0); the kernel's OOM killer decides
  static        fixed per-agent limits, the split that keeps the most agents alive: the high
                agent first, then the lows smallest first, each given its whole need (peak
                incl. base + 16 MiB for the replay's own interpreters, measured: 13 MiB) while
                it fits; what is left is shared by the rest. Beside it (full runs only):
  static_prop   limits proportional to the peaks (below every peak once the peaks exceed the budget)
  static_equal  the budget split equally
  agentd        the real daemon: `--host-memory-max BUDGET`, two policies that say only the
                agents' priorities (no per-tool-call limits), everything else the policy
                defaults and what the daemon learns at run time

    python -m benchmarks.replay [--setting agentcgroup|glm[,...]] [--repeat N] [--quick]
    python -m benchmarks.replay --high TASK --low TASK[,TASK] [--model M] [--budget-mb MB]
    python -m benchmarks.replay --traces FILE --sweep K --seed S [--overcommit 0.2]

Settings:
  agentcgroup  AgentCgroup's own (agentcg/memcg/multi_tenant_test, ISOLATION_EXPERIMENT_LOG.md):
               Haiku runs, high dask__dask-11628, two lows sigmavirus24__github3.py-673,
               all three start at the same moment, +100 MiB base per agent, 1,100 MiB parent
               limit with swap 0, 50x time compression. Published: survival 66 % (no
               isolation, 3 runs, each lost one low) -> 100 % (BPF, 1 run); high P95
               allocation latency 70.97 -> 50.14 ms at 1,300 MB (per-run P95 34.8-106.9 ms).
  glm          the same tasks from the GLM-4.7-Flash runs, same base, budget by --overcommit.
  --sweep K    K triples drawn at random (--seed) from --traces: high and lows any runs,
               budget = (sum of the three peaks incl. base) / (1 + overcommit), i.e. the
               peaks together exceed the budget by --overcommit (default 20 %).

Survival = the agent's runtime process was not killed (it exits 0 having replayed its whole
curve); tool calls completed = Bash calls that exited 0; the high agent's allocation latency
both per 4 MiB chunk and per sample-to-sample step (the whole step's allocation, as the
peer's trace_replay.py times it), P95 per repetition, then mean and min-max across them.
OOM kills are read from the run's own cgroups (hierarchical counters), not the host's.

Where this replay still differs from AgentCgroup's, and why:
  - Bash tool calls run as real child processes (the memory above the runtime's curve while
    the call ran is held by the child), so agentd can place and end them in their own
    cgroups; the peer replays one process per agent. The curve's total is the same.
  - Python interpreters add ~10 MiB per runtime and per live tool call that the peer's
    replay also has per agent but not per tool call.
  - Allocation touches 4 MiB chunks (bytearray, zero-filled); the peer touches one byte per
    page of 64 MiB chunks. The step latency is timed over the same span (one sample step).
  - Our budget is 1,100 MiB (2^20); the peer writes 1100M to memory.max, which is the same.
  - This host is hybrid (v1 memory controller): at the limit the kernel pauses (oom_kill_
    disable) and agentd decides, where the peer's kernel has memcg BPF struct_ops (v2).
  - Two cores shared with other work: absolute latencies are noisy; ratios to `none` from
    the same repetition are printed beside them.

Writes benchmarks/results/<--out, default replay>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from agentd.cgroups.detect import open_driver
from agentd.cgroups.driver import CgroupError, Limits
from benchmarks.daemon_process import DaemonProcess
from benchmarks.results_file import write_result

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACES = REPO / "data" / "agent-traces" / "swe-agent-traces.json"
MIB = 1 << 20
MAIN_MODES = ("none", "static", "agentd")
ALL_MODES = ("none", "static", "static_prop", "static_equal", "agentd")
INTERPRETERS = 16 * MIB  # the replay's runtime + tool-call interpreters above the curve (13 MiB measured)
CONTRACT = ("survival_pct", "high_survival_pct", "tool_calls_completed_pct", "p95_alloc_ms_high", "oom_kills")

SETTINGS = {
    "agentcgroup": {"model": "haiku", "high": "dask__dask-11628", "lows": ["sigmavirus24__github3.py-673"] * 2,
                    "budget_mb": 1100, "base_mib": 100},
    "glm": {"model": "glm-4.7-flash", "high": "dask__dask-11628", "lows": ["sigmavirus24__github3.py-673"] * 2,
            "budget_mb": None, "base_mib": 100},
}

# Priorities only: per-tool-call limits and the budget's hold come from the policy defaults
# and what the daemon learns at run time, never from figures fitted to a trace.
POLICY = """version: 1
name: replay-{prio}
priority: {prio}
"""


# ---------------------------------------------------------------------------- plans

def load_runs(path: Path) -> list[dict]:
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"replay: {path}: {exc}") from None
    if not isinstance(runs, list) or not runs:
        raise SystemExit(f"replay: {path}: expected a non-empty list of runs")
    for i, r in enumerate(runs):
        if not isinstance(r, dict) or not {"task", "model", "memory", "tool_calls"} <= set(r) \
                or not isinstance(r["memory"], dict) or not r["memory"].get("samples"):
            raise SystemExit(f"replay: {path}: run {i}: expected task, model, memory.samples, tool_calls")
    return runs


def pick_run(runs: list[dict], task: str, model: str | None) -> dict:
    found = [r for r in runs if r["task"] == task and (model is None or r["model"] == model)]
    if not found:
        raise SystemExit(f"replay: no run of {task!r}" + (f" with model {model!r}" if model else "") + " in the traces")
    return found[0]


def build_plan(run: dict, speed: float, base: int = 0, max_trace_s: float | None = None) -> dict:
    """Runtime curve outside Bash calls; each Bash call's memory above the curve at its start
    is held by the tool-call process. Times divided by `speed`; `base` held all along."""
    samples = [(t, b) for t, b, *_ in run["memory"]["samples"] if max_trace_s is None or t <= max_trace_s]
    bash = sorted((c for c in run["tool_calls"] if c["tool"] == "Bash" and (max_trace_s is None or c["start"] <= max_trace_s)),
                  key=lambda c: c["start"])

    def at(t: float) -> int:
        best = samples[0][1]
        for ts, b in samples:
            if ts > t:
                break
            best = b
        return int(best)

    tools = []
    for c in bash:
        level = at(c["start"])
        pts = [[(t - c["start"]) / speed, max(0, b - level)] for t, b in samples if c["start"] <= t <= c["start"] + c["duration"]]
        tools.append({"start": c["start"] / speed, "duration": max(c["duration"] / speed, 0.01), "points": pts or [[0.0, 0]]})
    points = [[t / speed, b] for t, b in samples]
    return {"points": points, "tools": tools, "delay": 0.0, "base": base, "task": run["task"], "model": run["model"],
            "peak": base + max(b for _, b in samples), "duration_s": samples[-1][0] / speed}


def proportional_split(budget: int, peaks: list[int]) -> list[int]:
    """The best fixed split we state: each agent's limit proportional to its peak."""
    total = sum(peaks)
    return [budget * p // total for p in peaks]


def survival_split(budget: int, needs: list[int], priorities: list[str]) -> list[int]:
    """The fixed split that keeps the most agents alive: high priority first, then the
    smallest needs, each given its whole need while it fits; the rest share what is left.
    If every need fits, the spare is spread in proportion to the needs."""
    order = sorted(range(len(needs)), key=lambda i: (priorities[i] != "high", needs[i]))
    limits = [0] * len(needs)
    left = budget
    unfed = []
    for i in order:
        if needs[i] <= left:
            limits[i], left = needs[i], left - needs[i]
        else:
            unfed.append(i)
    if unfed:
        for i in unfed:
            limits[i] = left // len(unfed)
    else:
        total = sum(needs)
        limits = [n + left * n // total for n in needs]
    return limits


def static_limits(mode: str, budget: int, plans: list[tuple[str, str, dict]]) -> list[int]:
    needs = [p["peak"] + INTERPRETERS for _, _, p in plans]
    if mode == "static":
        return survival_split(budget, needs, [prio for _, prio, _ in plans])
    if mode == "static_prop":
        return proportional_split(budget, needs)
    return [budget // len(plans)] * len(plans)


def triple(runs, high_task, low_tasks, model, speed, base, budget_mb, overcommit, max_trace_s, label) -> dict:
    high = pick_run(runs, high_task, model)
    plans = [("high", "high", build_plan(high, speed, base, max_trace_s))]
    for i, task in enumerate(low_tasks, 1):
        plans.append((f"low{i}", "low", build_plan(pick_run(runs, task, model), speed, base, max_trace_s)))
    peaks = sum(p["peak"] for _, _, p in plans)
    budget = budget_mb * MIB if budget_mb else int(peaks / (1 + overcommit)) // MIB * MIB
    return {"label": label, "plans": plans, "budget": budget, "peaks_sum": peaks}


def sweep_triples(runs, k, seed, speed, base, overcommit, max_trace_s) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(k):
        high, low1, low2 = rng.sample(range(len(runs)), 3)
        plans = [("high", "high", build_plan(runs[high], speed, base, max_trace_s)),
                 ("low1", "low", build_plan(runs[low1], speed, base, max_trace_s)),
                 ("low2", "low", build_plan(runs[low2], speed, base, max_trace_s))]
        peaks = sum(p["peak"] for _, _, p in plans)
        out.append({"label": f"sweep{i}", "plans": plans, "budget": int(peaks / (1 + overcommit)) // MIB * MIB,
                    "peaks_sum": peaks})
    return out


# ---------------------------------------------------------------------------- one run

def p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def launch(plan: dict, workdir: Path, name: str, start_at: float, cgroup_move=None, spawn=None) -> tuple[subprocess.Popen, Path]:
    plan_path = workdir / f"{name}.plan.json"
    out_path = workdir / f"{name}.out.json"
    if out_path.exists():
        out_path.unlink()
    plan_path.write_text(json.dumps({**plan, "start_at": start_at}))
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
        tools = (result or {}).get("tools", [])
        chunk = (result or {}).get("runtime_alloc_ms", []) + [a for t in tools for a in t.get("alloc_ms", [])]
        step = (result or {}).get("runtime_step_ms", []) + [a for t in tools for a in t.get("step_ms", [])]
        per[name] = {"priority": prio, "survived": result is not None, "rc": rc, "tool_calls": len(plan["tools"]),
                     "tool_calls_ok": sum(1 for t in tools if t["rc"] == 0), "p95_alloc_ms": round(p95(chunk), 3),
                     "p95_step_ms": round(p95(step), 3), "wall_s": round((result or {}).get("wall_s", 0.0), 2),
                     "replay_s": round(plan["duration_s"], 2)}
        if rc != 0 and proc.stderr is not None:
            per[name]["stderr_tail"] = proc.stderr.read()[-300:].decode("utf-8", "replace")
    return per


def _oom_kills(driver, rel: str = "") -> int:
    """OOM kills in rel's subtree: v1 counts a kill in the victim's own cgroup, not above."""
    try:
        own = int(driver.stats(rel).memory_events.get("oom_kill", 0))
        if driver.kind == "v2":
            return own  # memory.events is hierarchical
        return own + sum(_oom_kills(driver, f"{rel}/{c}" if rel else c) for c in driver.children(rel))
    except (CgroupError, OSError):
        return 0


def run_baseline(mode: str, plans: list[tuple[str, str, dict]], budget: int, workdir: Path, timeout: float) -> dict:
    leaf = f"agentd-replay-{mode}-{uuid.uuid4().hex[:6]}"
    driver = open_driver(None, leaf_name=leaf)
    try:
        driver.apply_limits("", Limits(memory_max=budget, swap_max=0))
        limits = static_limits(mode, budget, plans) if mode != "none" else None
        start_at = time.time() + 1.0 + 0.1 * len(plans)
        agents = []
        for i, (name, prio, plan) in enumerate(plans):
            rel = "shared" if mode == "none" else f"agents/{name}"
            driver.create(rel)
            if limits:
                driver.apply_limits(rel, Limits(memory_max=limits[i], swap_max=0))

            def move(rel=rel):
                driver.move(os.getpid(), rel)

            proc, out = launch(plan, workdir, f"{mode}-{name}", start_at, cgroup_move=move)
            agents.append((name, prio, plan, proc, out))
        per = collect(agents, timeout)
        per["_oom_kills"] = _oom_kills(driver)
        if limits:
            per["_limits_mib"] = [x // MIB for x in limits]
        return per
    finally:
        _remove(driver)


def run_agentd(plans: list[tuple[str, str, dict]], budget: int, workdir: Path, timeout: float) -> dict:
    daemon = DaemonProcess(tracker="auto", policies={f"replay-{p}": POLICY.format(prio=p) for p in ("high", "low")},
                           extra_args=("--host-memory-max", str(budget)))
    try:
        daemon.start()

        def spawn(name, prio, args):
            return subprocess.Popen([str(Path(sys.executable).parent / "agentctl"), "--socket", str(daemon.socket), "run",
                                     "--name", name, "--policy", f"replay-{prio}", "--", sys.executable, *args],
                                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        start_at = time.time() + 2.0 + 0.5 * len(plans)  # agentctl start-up and registration before the common start
        agents = []
        for name, prio, plan in plans:
            proc, out = launch(plan, workdir, f"agentd-{name}", start_at,
                               spawn=lambda n, a, name=name, prio=prio: spawn(name, prio, a))
            agents.append((name, prio, plan, proc, out))
        per = collect(agents, timeout)
        per["_decisions"] = _decisions(daemon)
        # finished tool calls' cgroups are gone: the journal's kernel.oom_victim counts those
        per["_oom_kills"] = max(_oom_kills(daemon.driver()), per["_decisions"].get("kernel.oom_victim", 0))
        return per
    finally:
        daemon.cleanup()


def _decisions(daemon: DaemonProcess) -> dict:
    """What the daemon did at the budget, from its journal: holds, releases, ends."""
    try:
        events = daemon.client.recent_events(limit=2000)
    except Exception:
        return {}
    count = {}
    for e in events:
        kind = e.get("kind", "")
        if kind == "toolcall.killed":  # by whom: host_budget (the kind), memory_max (the ladder), ...
            kind = f"toolcall.killed:{e.get('data', {}).get('limit')}"
        if kind.startswith(("budget.", "toolcall.killed")) or kind in ("agent.killed", "kernel.oom_victim"):
            count[kind] = count.get(kind, 0) + 1
    return count


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
            "high_survival_pct": 100.0 if high["survived"] else 0.0,
            "tool_calls_completed_pct": round(100 * ok / planned, 1) if planned else 100.0,
            "p95_alloc_ms_high": high["p95_alloc_ms"], "p95_step_ms_high": high["p95_step_ms"],
            "wall_s_high": high["wall_s"], "oom_kills": per.get("_oom_kills", 0),
            "decisions": per.get("_decisions"), "limits_mib": per.get("_limits_mib"), "agents": agents}


# ---------------------------------------------------------------------------- aggregation

def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)} \
        if values else {"mean": 0.0, "min": 0.0, "max": 0.0}


LATENCY = ("p95_alloc_ms_high", "p95_step_ms_high")


def values(rows: list[dict], m: str) -> list[float]:
    """A latency counts only where the high agent lived to report it (0 = it was killed)."""
    return [r[m] for r in rows if r[m] > 0] if m in LATENCY else [r[m] for r in rows]


def aggregate(reps: list[dict], modes: tuple[str, ...]) -> dict:
    """reps: [{mode: summary}] -> {mode: {metric: {mean,min,max}}} plus latency ratios to
    `none` taken within each repetition (the same moment's load on the host)."""
    out = {}
    for mode in modes:
        rows = [r[mode] for r in reps]
        agg = {m: spread(values(rows, m)) for m in (*CONTRACT, "p95_step_ms_high", "wall_s_high")}
        if mode != "none" and "none" in modes:
            for m in ("p95_alloc_ms_high", "p95_step_ms_high"):
                ratios = [r[mode][m] / r["none"][m] for r in reps if r["none"][m] > 0 and r[mode][m] > 0]
                agg[f"{m}_ratio_to_none"] = spread(ratios)
        out[mode] = agg
    return out


def run_triple(t: dict, modes: tuple[str, ...], repeat: int, workdir: Path) -> dict:
    plans, budget = t["plans"], t["budget"]
    timeout = max(p["duration_s"] for _, _, p in plans) * 4 + 60
    reps = []
    for rep in range(repeat):
        row = {}
        for mode in modes:
            print(f"replay: {t['label']} at {budget // MIB} MiB, {mode}, repetition {rep + 1}/{repeat} ...",
                  file=sys.stderr, flush=True)
            per = run_agentd(plans, budget, workdir, timeout) if mode == "agentd" else \
                run_baseline(mode, plans, budget, workdir, timeout)
            row[mode] = summarize(per)
        reps.append(row)
    return {"label": t["label"], "budget_mib": budget // MIB, "peaks_sum_mib": t["peaks_sum"] // MIB,
            "high": plans[0][2]["task"], "lows": [p["task"] for _, _, p in plans[1:]], "model": plans[0][2]["model"],
            "peaks_mib": [p["peak"] // MIB for _, _, p in plans], "aggregate": aggregate(reps, modes), "repetitions": reps}


# ---------------------------------------------------------------------------- main

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one repetition, the three main policies, traces cut at 600 s")
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    ap.add_argument("--setting", default=None, help="agentcgroup|glm, comma-separated (default agentcgroup unless "
                                                    "--high or --sweep is given)")
    ap.add_argument("--high", default=None, help="task of the high-priority agent")
    ap.add_argument("--low", default=None, help="task(s) of the low-priority agents, comma-separated")
    ap.add_argument("--model", default=None, help="with --high/--low: take the runs of this model")
    ap.add_argument("--budget-mb", type=int, default=None, help="with --high/--low: the budget in MiB (default: by --overcommit)")
    ap.add_argument("--sweep", type=int, default=0, metavar="K", help="K random triples from --traces")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--overcommit", type=float, default=0.2, help="sum of peaks over the budget (default 0.2: 20 %%)")
    ap.add_argument("--base-mib", type=int, default=100, help="base memory per agent (AgentCgroup: 100)")
    ap.add_argument("--speed", type=float, default=50.0, help="time compression (default 50, as AgentCgroup)")
    ap.add_argument("--repeat", type=int, default=None, help="repetitions per triple (default 5; --quick 1)")
    ap.add_argument("--sweep-repeat", type=int, default=None, help="repetitions per sweep triple (default --repeat)")
    ap.add_argument("--modes", default=None, help=f"comma-separated from {','.join(ALL_MODES)}")
    ap.add_argument("--out", default="replay", help="results file name under benchmarks/results/")
    args = ap.parse_args(argv)
    if (args.high is None) != (args.low is None):
        ap.error("--high and --low go together")
    if args.overcommit <= 0 or args.overcommit > 10:
        ap.error("--overcommit: expected a fraction above 0, e.g. 0.2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("replay: needs root (cgroups, the daemon)", file=sys.stderr)
        return 2
    runs = load_runs(args.traces)
    repeat = args.repeat or (1 if args.quick else 5)
    modes = tuple(args.modes.split(",")) if args.modes else (MAIN_MODES if args.quick else ALL_MODES)
    if not set(modes) <= set(ALL_MODES) or not set(MAIN_MODES) <= set(modes):
        raise SystemExit(f"replay: --modes must include {','.join(MAIN_MODES)} and only {','.join(ALL_MODES)}")
    max_trace_s = 600.0 if args.quick else None
    base = args.base_mib * MIB
    named = args.setting.split(",") if args.setting else ([] if args.high or args.sweep else ["agentcgroup"])
    triples = []
    for name in named:
        if name not in SETTINGS:
            raise SystemExit(f"replay: --setting {name!r}: expected one of {', '.join(SETTINGS)}")
        s = SETTINGS[name]
        triples.append((repeat, triple(runs, s["high"], s["lows"], s["model"], args.speed, s["base_mib"] * MIB,
                                       s["budget_mb"], args.overcommit, max_trace_s, name)))
    if args.high:
        triples.append((repeat, triple(runs, args.high, args.low.split(","), args.model, args.speed, base, args.budget_mb,
                                       args.overcommit, max_trace_s, "custom")))
    if args.sweep:
        if len(runs) < 3:
            raise SystemExit("replay: --sweep needs at least three runs in the traces")
        for t in sweep_triples(runs, args.sweep, args.seed, args.speed, base, args.overcommit, max_trace_s):
            triples.append((args.sweep_repeat or repeat, t))

    results = []
    with tempfile.TemporaryDirectory(prefix="agentd-replay-") as tmp:
        for n, t in triples:
            results.append(run_triple(t, modes, n, Path(tmp)))

    metrics = metrics_of(results, modes, repeat)
    params = {"speed": args.speed, "overcommit": args.overcommit, "base_mib": args.base_mib, "traces": str(args.traces),
              "seed": args.seed if args.sweep else None, "modes": list(modes), "quick": args.quick,
              "cgroups": open_driver(None, create_root=False).kind,
              "static_split": "static: the survival-maximising split (high first, then smallest needs, need = peak incl. base + "
                              "16 MiB interpreters); static_prop: proportional to the needs; static_equal: budget/n",
              "triples": [{k: v for k, v in r.items() if k != "repetitions"} for r in results]}
    path = write_result(args.out, metrics, params, repetitions={r["label"]: r["repetitions"] for r in results})
    print_table(results, modes, args)
    print(f"\nwrote {path}")
    return 0


def metrics_of(results: list[dict], modes: tuple[str, ...], repeat: int) -> dict:
    """The contract: each metric's mean over every repetition of every triple (latencies over
    those where the high agent lived), with the latency ratios to `none` beside them."""
    metrics = {}
    for mode in modes:
        rows = [r[mode] for res in results for r in res["repetitions"]]
        for m in (*CONTRACT, "p95_step_ms_high"):
            vals = values(rows, m)
            metrics[f"{m}_{mode}"] = round(statistics.fmean(vals), 3) if vals else 0.0
        if mode != "none":
            for m in LATENCY:
                ratios = [r[mode][m] / r["none"][m] for res in results for r in res["repetitions"]
                          if r["none"][m] > 0 and r[mode][m] > 0]
                metrics[f"{m}_ratio_to_none_{mode}"] = round(statistics.fmean(ratios), 3) if ratios else 0.0
    metrics["repeats"] = repeat
    metrics["triples"] = len(results)
    return metrics


def _cell(a: dict, fmt: str = "{:.0f}") -> str:
    if a["min"] == a["max"]:
        return fmt.format(a["mean"])
    return f"{fmt.format(a['mean'])} ({fmt.format(a['min'])}-{fmt.format(a['max'])})"


def print_table(results: list[dict], modes: tuple[str, ...], args) -> None:
    print(f"\nreplay: {args.speed:g}x, mean (min-max) over repetitions; latencies are absolute ms on a shared "
          "2-core host (noisy) with the ratio to `none` in the same repetition beside them")
    head = (f"{'triple':<12} {'MiB':>5} {'policy':<13} {'survived %':>14} {'high %':>10} {'tools ok %':>16} "
            f"{'p95 chunk ms':>20} {'x none':>6} {'p95 step ms':>20} {'x none':>6} {'OOM kills':>11}")
    print(head)
    for res in results:
        for mode in modes:
            a = res["aggregate"][mode]
            ratio = lambda m: f"{a[m + '_ratio_to_none']['mean']:.2f}" if m + "_ratio_to_none" in a else "1"
            print(f"{res['label']:<12} {res['budget_mib']:>5} {mode:<13} {_cell(a['survival_pct']):>14} "
                  f"{_cell(a['high_survival_pct']):>10} {_cell(a['tool_calls_completed_pct']):>16} "
                  f"{_cell(a['p95_alloc_ms_high'], '{:.1f}'):>20} {ratio('p95_alloc_ms_high'):>6} "
                  f"{_cell(a['p95_step_ms_high'], '{:.1f}'):>20} {ratio('p95_step_ms_high'):>6} "
                  f"{_cell(a['oom_kills'], '{:.1f}'):>11}")


if __name__ == "__main__":
    sys.exit(main())
