"""What agentd costs: the full policy path on real execs. An agent (a small Python loop)
starts short tool calls (`cat /proc/self/cgroup`, each one its own tool call with its own
cgroup) at a stated rate, open loop (on schedule whether or not the last one has ended;
default 200 tool calls/s); we measure

  - full-path placement latency of every gated tool call: from the exec tracepoint's kernel
    timestamp (the BPF event's ts_ns, bpf_ktime_get_ns = CLOCK_MONOTONIC) to the moment the
    daemon sends SIGCONT (ring buffer, thread wake-up, policy, mkdir, limits, move, all
    included), each step of the daemon's part beside it, and the daemon's own clock
    (from the tracker thread's pick-up to after SIGCONT) for comparison with older results
  - the share of tool calls that saw themselves outside their tool cgroup (their own
    /proc/self/cgroup: v2, memory and pids lines)
  - daemon CPU time per 1,000 tool calls and its RSS
  - BPF program run time per event (kernel.bpf_stats_enabled, the kernel's own counters)
  - tracker events lost

for variants side by side (VARIANTS): the tool cgroup in all 5 hierarchies (the old path),
only where its limits need it, that plus a spare v1 cgroup made ahead and renamed (the
default), that with the v2 root remounted favordynmods (put back after), and the ungated
cn_proc tracker. The host is shared: the variants run
interleaved in rounds (one daemon per variant per round, the rounds' samples pooled), so
that a busy minute hits them all alike; ratios to bpf_all are reported beside absolutes.

    python -m benchmarks.overhead [--quick] [--rate 200] [--variants bpf,bpf_all] [--baseline DIR]
    (--baseline DIR: also run the shipped variant with the agentd package of another checkout,
    e.g. /work/main, interleaved in the same rounds: a code change measured before/after)
    (quick: 1,000 tool calls per variant in 2 rounds; full: 10,000 in 5 rounds)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import cgroup_mount
from benchmarks.daemon_process import DaemonProcess
from benchmarks.results_file import write_result

POLICY = """version: 1
name: default
toolcalls:
  defaults: {memory_high: 64M, memory_max: 128M, pids_max: 64, timeout_s: 60}
"""

# (label, tracker, daemon args, favordynmods on, what it is); "bpf" is the shipped default.
VARIANTS = (
    ("bpf_all", "bpf", ("--tool-cgroups", "all", "--spare-cgroups", "0"), False,
     "BPF exec gate, tool cgroup made and limited in all 5 hierarchies at each exec (the path before this change)"),
    ("bpf_needed", "bpf", ("--tool-cgroups", "needed", "--spare-cgroups", "0"), False,
     "BPF exec gate, tool cgroup only where its limits need it (v2, memory, pids), made and limited at each exec"),
    ("bpf", "bpf", ("--tool-cgroups", "needed", "--spare-cgroups", "1"), False,
     "as bpf_needed, with one spare v1 tool cgroup (memory, pids, limits written) made ahead per agent and "
     "renamed at placement; only the v2 mkdir stays on the path (the default)"),
    ("bpf_favordynmods", "bpf", ("--tool-cgroups", "needed", "--spare-cgroups", "1"), True,
     "as bpf, with the v2 root remounted favordynmods for the run (put back after)"),
    ("cn_proc", "cn_proc", (), False,
     "cn_proc tracker: no gate, placed after the exec has run (for the escape share)"),
)


def proc_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bpf_prog_stats(pid: int) -> tuple[int, int]:
    """Sum of run_time_ns and run_cnt over the BPF programs the process holds."""
    total_ns = total_cnt = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = open(f"/proc/{pid}/fdinfo/{fd}").read()
        except OSError:
            continue
        if "prog_type:" not in info:
            continue
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        total_ns += int(fields.get("run_time_ns", "0").strip() or 0)
        total_cnt += int(fields.get("run_cnt", "0").strip() or 0)
    return total_ns, total_cnt


AGENT = r"""
import os, sys, time
count, rate, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
live, t0 = set(), time.monotonic()
for i in range(count):
    delay = t0 + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    live.add(os.posix_spawn("/bin/cat", ["cat", "/proc/self/cgroup"], os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, fd, 1)]))
    while live:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        live.discard(pid)
while live:
    live.discard(os.waitpid(-1, 0)[0])
print(time.monotonic() - t0)
"""

# A tool call is in place when it saw itself in its tool cgroup in the v2 grouping and in
# every v1 hierarchy whose controller the benchmark's limits use (memory, pids).
CHECKED = ("0::", "memory", "pids")


def split_blocks(text: str) -> list[list[str]]:
    """One block per cat: /proc/self/cgroup ends with its 0:: line (each cat writes once, O_APPEND)."""
    blocks, cur = [], []
    for line in text.splitlines():
        cur.append(line)
        if line.startswith("0::"):
            blocks.append(cur)
            cur = []
    return blocks


def escaped(block: list[str]) -> bool:
    lines = [l for l in block if l.startswith("0::") or any(f":{c}:" in l for c in ("memory", "pids"))]
    return len(lines) < len(CHECKED) or any("/tools/" not in l for l in lines)


def journal_starts(state: Path) -> list[dict]:
    """The data of every toolcall.start event the daemon journaled (journal.jsonl, rotated one first)."""
    out = []
    for path in (state / "journal.jsonl.1", state / "journal.jsonl"):
        if path.exists():
            for line in path.read_text().splitlines():
                ev = json.loads(line)
                if ev.get("kind") == "toolcall.start":
                    out.append(ev.get("data") or {})
    return out


def run_one(tracker: str, count: int, workdir: Path, rate: float, extra_args: tuple[str, ...], label: str,
            code: str | None = None) -> dict:
    """One daemon, `count` tool calls: raw samples and counters (pooled over rounds by pool()).
    code: a checkout whose agentd the daemon runs (PYTHONPATH), None for this one."""
    env = dict(os.environ, PYTHONPATH=code) if code else None
    daemon = DaemonProcess(tracker=tracker, policy=POLICY, extra_args=extra_args, env=env)
    out = workdir / f"{label}-{time.monotonic_ns()}.out"
    try:
        daemon.start()
        pid = daemon.proc.pid
        rss_start = proc_rss_kb(pid)
        cpu0 = proc_cpu_s(pid)
        bpf0 = bpf_prog_stats(pid)
        agent = subprocess.Popen([str(Path(sys.executable).parent / "agentctl"), "--socket", str(daemon.socket), "run", "--name", "load",
                                  "--", sys.executable, "-c", AGENT, str(count), str(rate), str(out)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = agent.communicate(timeout=max(120, count / 20))
        if agent.returncode != 0:
            raise RuntimeError(f"the load agent failed ({agent.returncode}): {stderr[-2000:]}")
        wall = float(stdout.strip().splitlines()[-1])
        deadline = time.monotonic() + 30
        while daemon.client.tool_calls(live=True) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        cpu = proc_cpu_s(pid) - cpu0
        bpf1 = bpf_prog_stats(pid)
        status = daemon.client.status()
        rss_end = proc_rss_kb(pid)
        starts = [d for d in journal_starts(daemon.state) if d.get("gated")]
        blocks = split_blocks(out.read_text())
        return {"tool_calls": len(blocks), "wall_s": wall, "escaped": sum(1 for b in blocks if escaped(b)),
                "full_us": [d["full_us"] for d in starts if "full_us" in d],
                "placed_us": [d["placed_us"] for d in starts],
                "steps_us": [d["steps_us"] for d in starts if "steps_us" in d],
                "cpu_s": cpu, "rss_kb_start": rss_start, "rss_kb_end": rss_end,
                "bpf_ns": bpf1[0] - bpf0[0], "bpf_runs": bpf1[1] - bpf0[1],
                "events_lost": status["tracker"]["lost_events"]}
    finally:
        daemon.cleanup()


def pct(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1) if ordered else None


def pool(rounds: list[dict], rate: float) -> dict:
    """One variant's figures over all its rounds."""
    n = sum(r["tool_calls"] for r in rounds)
    wall = sum(r["wall_s"] for r in rounds)
    full = [x for r in rounds for x in r["full_us"]]
    placed = [x for r in rounds for x in r["placed_us"]]
    steps = [s for r in rounds for s in r["steps_us"]]
    runs = sum(r["bpf_runs"] for r in rounds)
    out = {"tool_calls": n, "rate_asked_per_s": rate, "wall_s": round(wall, 2), "execs_per_s": round(n / wall, 1) if wall else None,
           "escaped_pct": round(100 * sum(r["escaped"] for r in rounds) / max(1, n), 2),
           "placement_full_count": len(full),
           "placement_p50_us_full": pct(full, 0.5), "placement_p90_us_full": pct(full, 0.9),
           "placement_p99_us_full": pct(full, 0.99), "placement_max_us_full": pct(full, 1.0),
           "placement_p50_us": pct(placed, 0.5), "placement_p99_us": pct(placed, 0.99)}
    for step in (steps[0] if steps else {}):
        vals = [s[step] for s in steps if step in s]
        out[f"step_{step}_p50_us"] = pct(vals, 0.5)
        out[f"step_{step}_p99_us"] = pct(vals, 0.99)
    out.update({"daemon_cpu_s_per_1000": round(sum(r["cpu_s"] for r in rounds) / max(1, n) * 1000, 3),
                "daemon_rss_kb_start": rounds[0]["rss_kb_start"], "daemon_rss_kb_end": max(r["rss_kb_end"] for r in rounds),
                "bpf_ns_per_event": round(sum(r["bpf_ns"] for r in rounds) / runs, 1) if runs else None,
                "events_lost": sum(r["events_lost"] for r in rounds)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--count", type=int, default=None, help="tool calls per variant (all rounds together)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--rate", type=float, default=200.0, help="tool calls started per second (open loop)")
    ap.add_argument("--variants", default=",".join(v[0] for v in VARIANTS), help="which variants to run (comma list)")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="also run the bpf variant with the agentd of the checkout DIR (label bpf_baseline), interleaved")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("overhead: needs root", file=sys.stderr)
        return 2
    count = args.count or (1000 if args.quick else 10_000)
    n_rounds = args.rounds or (2 if args.quick else 5)
    chosen = [v for v in VARIANTS if v[0] in args.variants.split(",")]
    if args.baseline:
        if not (Path(args.baseline) / "agentd" / "__init__.py").exists():
            print(f"overhead: --baseline {args.baseline}: no agentd package there", file=sys.stderr)
            return 2
        shipped = next(v for v in VARIANTS if v[0] == "bpf")
        chosen.append(("bpf_baseline", "bpf", shipped[2], False, f"as bpf, with the agentd of {args.baseline}"))
    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old_stats = stats_path.read_text().strip()
    stats_path.write_text("1")
    raw: dict[str, list[dict]] = {v[0]: [] for v in chosen}
    notes: dict[str, str] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="agentd-overhead-") as tmp:
            for rnd in range(n_rounds):
                per = count // n_rounds + (1 if rnd < count % n_rounds else 0)
                for label, tracker, extra, favor, _ in chosen:
                    if label in notes:
                        continue
                    print(f"overhead: round {rnd + 1}/{n_rounds}: {per} tool calls at {args.rate:g}/s, {label} ...",
                          file=sys.stderr, flush=True)
                    if not favor:
                        code = str(Path(args.baseline).resolve()) if label == "bpf_baseline" else None
                        raw[label].append(run_one(tracker, per, Path(tmp), args.rate, extra, label, code))
                        continue
                    with cgroup_mount.favordynmods() as why:
                        if why is None:
                            raw[label].append(run_one(tracker, per, Path(tmp), args.rate, extra, label))
                        else:
                            notes[label] = f"not run: {why}"
                            print(f"overhead: {label} not run: {why}", file=sys.stderr)
    finally:
        stats_path.write_text(old_stats)
    results = {label: pool(rounds, args.rate) for label, rounds in raw.items() if rounds}
    metrics: dict = {}
    final = results.get("bpf")
    if final is not None:  # the contract's figures: the shipped path (BPF gate, tool cgroups where needed)
        metrics["placement_p50_us_full"] = final["placement_p50_us_full"]
        metrics["placement_p99_us_full"] = final["placement_p99_us_full"]
        metrics["rate_per_s"] = final["execs_per_s"]
        metrics["escaped_pct"] = final["escaped_pct"]
    base = results.get("bpf_all")
    for label, r in results.items():
        for k, v in r.items():
            if v is not None:
                metrics[f"{k}_{label}"] = v
        if base is not None and label != "bpf_all" and r.get("placement_p50_us_full"):
            for q in ("p50", "p99"):  # ratios: the host is shared, absolute times drift between runs
                metrics[f"placement_{q}_full_ratio_{label}_vs_bpf_all"] = round(
                    r[f"placement_{q}_us_full"] / base[f"placement_{q}_us_full"], 3)
    before = results.get("bpf_baseline")
    if final is not None and before is not None and before.get("placement_p50_us_full") and final.get("placement_p50_us_full"):
        for q in ("p50", "p99"):  # this checkout's shipped path against the baseline's, same rounds
            metrics[f"placement_{q}_full_ratio_bpf_vs_bpf_baseline"] = round(
                final[f"placement_{q}_us_full"] / before[f"placement_{q}_us_full"], 3)
    path = write_result("overhead", metrics, {
        "tool_calls_per_variant": count, "rounds": n_rounds, "rate_asked_per_s": args.rate,
        "tool": "cat /proc/self/cgroup, started open loop by a python agent",
        "variants": {v[0]: v[4] for v in chosen}, "not_run": notes,
        "clock": "full = SIGCONT sent (CLOCK_MONOTONIC) - the exec tracepoint's bpf_ktime_get_ns; "
                 "placement_p50_us = the daemon's own clock, tracker thread pick-up to after SIGCONT"})
    labels = list(results)
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    print(f"\n{'metric':<28}" + "".join(f"{l:>18}" for l in labels))
    for k in keys:
        print(f"{k:<28}" + "".join(f"{str(results[l].get(k)):>18}" for l in labels))
    for label, why in notes.items():
        print(f"{label}: {why}")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
