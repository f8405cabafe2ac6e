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
cn_proc tracker, and `bare`: no daemon, the same gate with a mover that only makes a v2 tool
cgroup, moves the pid and continues it (benchmarks/overhead_bare.py), the kernel + Python
floor. The host is shared: the variants run interleaved in rounds (one daemon per variant
per round, the rounds' samples pooled), so that a busy minute hits them all alike; ratios to
bpf_all and to bare (placement_p50_ratio_to_bare_<variant>, p99) are reported beside absolutes.

    python -m benchmarks.overhead [--quick] [--rate 200] [--variants bpf,bare] [--baseline DIR] [--out NAME]
    (--baseline DIR: also run the shipped variant with the agentd package of another checkout,
    e.g. /work/main, interleaved in the same rounds: a code change measured before/after)
    (quick: 1,000 tool calls per variant in 2 rounds; full: 10,000 in 5 rounds)
    (--out NAME: write results/NAME.json instead of overhead.json, e.g. a quick run beside the full one)

    python -m benchmarks.overhead --vm [--quick] [--rate 1] [--count 400] [--rounds 2]
    (inside the test VM, tests/vm: pure cgroup v2, Debian 6.12, software emulation; variants bpf
    and bare at 1 tool call/s, 400 each in 2 rounds (quick: 100 in 1 round); writes
    results/overhead_vm.json, never overhead.json; emulation inflates absolute times: read
    placement_p50_ratio_to_bare_vm; about 20 min, 8 with --quick, docs/vm.md)
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

from agentd.api.client import ApiClient
from benchmarks import cgroup_mount
from benchmarks.daemon_process import DaemonProcess
from benchmarks.results_file import write_result

REPO = Path(__file__).resolve().parents[1]

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
    ("bare", "bare", (), False,
     "the floor, no daemon: the same BPF gate (BpfBackend, consumer at nice -10), its consumer thread "
     "makes a v2 tool cgroup, writes the pid to its cgroup.procs and sends SIGCONT, nothing else "
     "(benchmarks/overhead_bare.py; escapes checked on the v2 line only)"),
)
# What runs in the pure v2 VM (--vm): the shipped path and the floor (the others differ only
# in v1 hierarchies or the v1 gate-less tracker).
VM_VARIANTS = ("bpf", "bare")
# The rate the emulated guest follows: at 5/s the daemon's placements queued (p50 1.5 s, the
# agent itself slowed to 1.8/s; its own part alone takes p50 0.35 s there, 0.43 s of CPU per
# tool call); at 1/s it keeps up (docs/vm.md).
VM_RATE = 1.0
VM_COUNT = 400
VM_ROUNDS = 2  # interleaved like the host's rounds; each round is one daemon start (BCC: minutes)


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
# every v1 hierarchy whose controller the benchmark's limits use (memory, pids) where the
# host has one (a pure v2 host lists only the 0:: line).
V1_CHECKED = ("memory", "pids")


def split_blocks(text: str) -> list[list[str]]:
    """One block per cat: /proc/self/cgroup ends with its 0:: line (each cat writes once, O_APPEND)."""
    blocks, cur = [], []
    for line in text.splitlines():
        cur.append(line)
        if line.startswith("0::"):
            blocks.append(cur)
            cur = []
    return blocks


def escaped(block: list[str], v1: tuple[str, ...] = V1_CHECKED) -> bool:
    """v1: the v1 controllers whose lines must be in a tool cgroup too (the bare mover
    places in v2 only: ())."""
    v2 = [l for l in block if l.startswith("0::")]
    lines = v2 + [l for l in block if any(f":{c}:" in l for c in v1)]
    return not v2 or any("/tools/" not in l for l in lines)


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
            code: str | None = None, start_timeout: float = 30, settle_s: float = 30) -> dict:
    """One daemon, `count` tool calls: raw samples and counters (pooled over rounds by pool()).
    code: a checkout whose agentd the daemon runs (PYTHONPATH), None for this one.
    start_timeout: for the daemon's start (BCC's compile: minutes under emulation);
    settle_s: how long its last tool calls may take to be recorded as done."""
    env = dict(os.environ, PYTHONPATH=code) if code else None
    daemon = DaemonProcess(tracker=tracker, policy=POLICY, extra_args=extra_args, env=env)
    # A daemon working off a backlog on a loaded host (bpf_all, at load 18) can take more
    # than the client's 10 s to answer: a slow answer is a figure, not a failed run.
    daemon.client = ApiClient(str(daemon.socket), timeout=120)
    out = workdir / f"{label}-{time.monotonic_ns()}.out"
    try:
        t_start = time.monotonic()
        daemon.start(timeout=start_timeout)
        start_s = time.monotonic() - t_start
        pid = daemon.proc.pid
        rss_start = proc_rss_kb(pid)
        cpu0 = proc_cpu_s(pid)
        bpf0 = bpf_prog_stats(pid)
        agent = subprocess.Popen([str(Path(sys.executable).parent / "agentctl"), "--socket", str(daemon.socket), "run", "--name", "load",
                                  "--", sys.executable, "-c", AGENT, str(count), str(rate), str(out)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = agent.communicate(timeout=max(120, 2 * count / rate + 60))
        if agent.returncode != 0:
            raise RuntimeError(f"the load agent failed ({agent.returncode}): {stderr[-2000:]}")
        wall = float(stdout.strip().splitlines()[-1])
        deadline = time.monotonic() + settle_s
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
                "events_lost": status["tracker"]["lost_events"], "start_s": start_s}
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
                "daemon_rss_kb_start": rounds[0]["rss_kb_start"],
                "daemon_rss_kb_end": max((r["rss_kb_end"] for r in rounds if r["rss_kb_end"] is not None), default=None),
                "bpf_ns_per_event": round(sum(r["bpf_ns"] for r in rounds) / runs, 1) if runs else None,
                "events_lost": sum(r["events_lost"] for r in rounds),
                "start_s_max": round(max(r.get("start_s", 0.0) for r in rounds), 1)})
    if any("mover_errors" in r for r in rounds):
        out["mover_errors"] = sum(r.get("mover_errors", 0) for r in rounds)
    return out


def ratios_to_bare(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Each variant's full-path p50 and p99 over the bare mover's, from the same rounds:
    {label: {"placement_p50_ratio_to_bare": x, "placement_p99_ratio_to_bare": y}}; empty
    without a bare run, and a variant without full-path figures (cn_proc) gets none."""
    bare = results.get("bare") or {}
    out: dict[str, dict[str, float]] = {}
    for label, r in results.items():
        if label == "bare":
            continue
        ratios = {}
        for q in ("p50", "p99"):
            num, den = r.get(f"placement_{q}_us_full"), bare.get(f"placement_{q}_us_full")
            if num and den:
                ratios[f"placement_{q}_ratio_to_bare"] = round(num / den, 3)
        if ratios:
            out[label] = ratios
    return out


def measure(chosen: list[tuple], count: int, n_rounds: int, rate: float, baseline: str | None = None,
            start_timeout: float = 30, settle_s: float = 30) -> tuple[dict[str, dict], dict[str, str]]:
    """Every chosen variant, interleaved in n_rounds rounds: (pooled figures per label, notes
    on variants that could not run)."""
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
                    print(f"overhead: round {rnd + 1}/{n_rounds}: {per} tool calls at {rate:g}/s, {label} ...",
                          file=sys.stderr, flush=True)
                    if tracker == "bare":
                        from benchmarks.overhead_bare import run_bare

                        raw[label].append(run_bare(AGENT, per, Path(tmp), rate, label))
                        continue
                    if not favor:
                        code = str(Path(baseline).resolve()) if label == "bpf_baseline" else None
                        raw[label].append(run_one(tracker, per, Path(tmp), rate, extra, label, code,
                                                  start_timeout=start_timeout, settle_s=settle_s))
                        continue
                    with cgroup_mount.favordynmods() as why:
                        if why is None:
                            raw[label].append(run_one(tracker, per, Path(tmp), rate, extra, label))
                        else:
                            notes[label] = f"not run: {why}"
                            print(f"overhead: {label} not run: {why}", file=sys.stderr)
    finally:
        stats_path.write_text(old_stats)
    results = {label: pool(rounds, rate) for label, rounds in raw.items() if rounds}
    for label, ratios in ratios_to_bare(results).items():
        results[label].update(ratios)
    return results, notes


def host_metrics(results: dict[str, dict]) -> dict:
    """The results file's metrics: the contract's figures (the shipped bpf variant), every
    variant's figures suffixed with its label, ratios to bpf_all and to bare."""
    metrics: dict = {}
    final = results.get("bpf")
    if final is not None:  # the contract's figures: the shipped path (BPF gate, tool cgroups where needed)
        metrics["placement_p50_us_full"] = final["placement_p50_us_full"]
        metrics["placement_p99_us_full"] = final["placement_p99_us_full"]
        metrics["rate_per_s"] = final["execs_per_s"]
        metrics["escaped_pct"] = final["escaped_pct"]
        for q in ("p50", "p99"):  # the shipped path over the floor, same rounds
            if f"placement_{q}_ratio_to_bare" in final:
                metrics[f"placement_{q}_ratio_to_bare"] = final[f"placement_{q}_ratio_to_bare"]
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
    return metrics


def vm_metrics(guest: dict) -> dict:
    """The --vm results file's metrics (issue 9) from the guest's JSON (--guest-out):
    {"results": {label: pooled figures}, "seconds": {...}}. Raises ValueError naming
    what is missing (a guest run that did not finish both variants)."""
    results = guest.get("results") or {}
    missing = [v for v in VM_VARIANTS if not (results.get(v) or {}).get("placement_p50_us_full")]
    if missing:
        raise ValueError(f"the guest has no full-path figures for {', '.join(missing)}")
    bpf, bare = results["bpf"], results["bare"]
    ratios = ratios_to_bare({"bpf": bpf, "bare": bare})["bpf"]
    m = {"placement_p50_us_full_vm": bpf["placement_p50_us_full"],
         "placement_p99_us_full_vm": bpf["placement_p99_us_full"],
         "placement_p50_us_full_bare_vm": bare["placement_p50_us_full"],
         "placement_p99_us_full_bare_vm": bare["placement_p99_us_full"],
         "placement_p50_ratio_to_bare_vm": ratios["placement_p50_ratio_to_bare"],
         "placement_p99_ratio_to_bare_vm": ratios["placement_p99_ratio_to_bare"],
         "escaped_pct_vm": bpf["escaped_pct"],
         "escaped_pct_bare_vm": bare["escaped_pct"]}
    for label, r in (("bpf", bpf), ("bare", bare)):
        for k in ("tool_calls", "execs_per_s", "placement_p90_us_full", "placement_max_us_full", "events_lost"):
            if r.get(k) is not None:
                m[f"{k}_{label}_vm"] = r[k]
    m["daemon_start_s_vm"] = bpf.get("start_s_max")  # BCC's compile of the tracker, under emulation
    m["bare_tracker_load_s_vm"] = bare.get("start_s_max")
    m.update({f"{k}_vm": v for k, v in (guest.get("seconds") or {}).items()})
    return m


def print_table(results: dict[str, dict], notes: dict[str, str]) -> None:
    labels = list(results)
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    print(f"\n{'metric':<30}" + "".join(f"{l:>18}" for l in labels))
    for k in keys:
        print(f"{k:<30}" + "".join(f"{str(results[l].get(k)):>18}" for l in labels))
    for label, why in notes.items():
        print(f"{label}: {why}")


def run_vm(args) -> int:
    """--vm: this benchmark inside the test VM (pure cgroup v2, software emulation), the
    shipped variant and the floor, written to results/overhead_vm.json."""
    sys.path.insert(0, str(REPO))
    from tests.vm import harness

    rate = args.rate if args.rate_given else VM_RATE
    count = args.count or (VM_COUNT // 4 if args.quick else VM_COUNT)
    n_rounds = args.rounds or (1 if args.quick else VM_ROUNDS)
    rw = Path(tempfile.mkdtemp(prefix="agentd-bench-overhead-vm-"))
    guest_out = rw / "overhead_guest.json"
    cmd = [sys.executable, "-m", "benchmarks.overhead", "--variants", ",".join(VM_VARIANTS), "--rate", f"{rate:g}",
           "--count", str(count), "--rounds", str(n_rounds), "--guest-out", str(guest_out),
           "--start-timeout", "900", "--settle", "180"]
    t0 = time.monotonic()
    try:
        vm = harness.boot_and_run(cmd, timeout=args.timeout, files_dir=rw, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    except harness.VMError as exc:
        print(f"overhead --vm: {exc.describe()}", file=sys.stderr)
        return 1
    wall = time.monotonic() - t0
    if vm.rc != 0 or not guest_out.exists():
        print(f"overhead --vm: the guest run failed (rc {vm.rc}, files {rw}):\n{vm.stdout[-3000:]}\n{vm.stderr[-3000:]}",
              file=sys.stderr)
        return 1
    guest = json.loads(guest_out.read_text())
    guest.setdefault("seconds", {}).update(boot_s=round(vm.boot_s or 0.0, 1), guest_s=round(vm.command_s or 0.0, 1),
                                           wall_s=round(wall, 1))
    try:
        metrics = vm_metrics(guest)
    except ValueError as exc:
        print(f"overhead --vm: {exc} (files {rw})", file=sys.stderr)
        return 1
    metrics["qemu_peak_rss_mb"] = vm.host_maxrss_kb // 1024
    params = {"quick": args.quick, "variants": {v[0]: v[4] for v in VARIANTS if v[0] in VM_VARIANTS},
              "tool_calls_per_variant": count, "rounds": n_rounds, "rate_asked_per_s": rate,
              "tool": "cat /proc/self/cgroup, started open loop by a python agent",
              "kernel": guest.get("kernel"), "vm": vm.summary(),
              "emulation": "TCG (software): absolute times are inflated; read the ratios to bare",
              "clock": "full = SIGCONT sent (CLOCK_MONOTONIC) - the exec tracepoint's bpf_ktime_get_ns"}
    path = write_result("overhead_vm", metrics, params, results=guest["results"])
    print_table(guest["results"], {})
    print(f"\nin the VM ({guest.get('kernel')}, pure cgroup v2, emulated) at {rate:g}/s: full path p50 "
          f"{metrics['placement_p50_us_full_vm']} µs = {metrics['placement_p50_ratio_to_bare_vm']} x bare, p99 "
          f"{metrics['placement_p99_us_full_vm']} µs = {metrics['placement_p99_ratio_to_bare_vm']} x bare; "
          f"escaped {metrics['escaped_pct_vm']} %")
    print(f"boot {metrics['boot_s_vm']} s, daemon start (BCC compile) {metrics['daemon_start_s_vm']} s, "
          f"guest {metrics['guest_s_vm']} s, wall {metrics['wall_s_vm']} s")
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--count", type=int, default=None, help="tool calls per variant (all rounds together)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--rate", type=float, default=None,
                    help=f"tool calls started per second (open loop; default 200, --vm {VM_RATE:g})")
    ap.add_argument("--variants", default=",".join(v[0] for v in VARIANTS), help="which variants to run (comma list)")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="also run the bpf variant with the agentd of the checkout DIR (label bpf_baseline), interleaved")
    ap.add_argument("--out", default="overhead", metavar="NAME",
                    help="write benchmarks/results/NAME.json (default overhead; e.g. a quick run beside the full one)")
    ap.add_argument("--vm", action="store_true",
                    help=f"run {', '.join(VM_VARIANTS)} inside the test VM; writes results/overhead_vm.json")
    ap.add_argument("--timeout", type=float, default=2400, help="--vm: seconds for boot and guest run")
    ap.add_argument("--guest-out", default=None, help=argparse.SUPPRESS)  # the guest half of --vm: raw JSON here
    ap.add_argument("--start-timeout", type=float, default=30, help=argparse.SUPPRESS)
    ap.add_argument("--settle", type=float, default=30, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.rate_given = args.rate is not None
    if os.geteuid() != 0:
        print("overhead: needs root", file=sys.stderr)
        return 2
    if args.vm:
        return run_vm(args)
    rate = args.rate if args.rate_given else 200.0
    count = args.count or (1000 if args.quick else 10_000)
    n_rounds = args.rounds or (2 if args.quick else 5)
    wanted = args.variants.split(",")
    unknown = [w for w in wanted if w not in {v[0] for v in VARIANTS}]
    if unknown:
        print(f"overhead: unknown variant(s) {', '.join(unknown)}; known: {', '.join(v[0] for v in VARIANTS)}",
              file=sys.stderr)
        return 2
    chosen = [v for v in VARIANTS if v[0] in wanted]
    if args.baseline:
        if not (Path(args.baseline) / "agentd" / "__init__.py").exists():
            print(f"overhead: --baseline {args.baseline}: no agentd package there", file=sys.stderr)
            return 2
        shipped = next(v for v in VARIANTS if v[0] == "bpf")
        chosen.append(("bpf_baseline", "bpf", shipped[2], False, f"as bpf, with the agentd of {args.baseline}"))
    t0 = time.monotonic()
    results, notes = measure(chosen, count, n_rounds, rate, args.baseline, args.start_timeout, args.settle)
    if args.guest_out:  # the guest half of --vm: the host writes the results file
        Path(args.guest_out).write_text(json.dumps({"kernel": os.uname().release, "results": results, "notes": notes,
                                                    "seconds": {"measure_s": round(time.monotonic() - t0, 1)}}))
        print_table(results, notes)
        return 0
    metrics = host_metrics(results)
    path = write_result(args.out, metrics, {
        "tool_calls_per_variant": count, "rounds": n_rounds, "rate_asked_per_s": rate,
        "tool": "cat /proc/self/cgroup, started open loop by a python agent",
        "variants": {v[0]: v[4] for v in chosen}, "not_run": notes,
        "clock": "full = SIGCONT sent (CLOCK_MONOTONIC) - the exec tracepoint's bpf_ktime_get_ns; "
                 "placement_p50_us = the daemon's own clock, tracker thread pick-up to after SIGCONT"})
    print_table(results, notes)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
