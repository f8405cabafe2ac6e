"""What agentd costs: the full policy path on real execs. An agent (a shell loop) runs
short tool calls back to back (`cat /proc/self/cgroup`, each one its own tool call with its
own cgroup); we measure

  - placement latency exec -> in its cgroup and running (the daemon's own clock, gated path)
  - the share of tool calls that saw themselves outside their tool cgroup (their own output)
  - daemon CPU time per 1,000 tool calls and its RSS after N tool calls (records rotated)
  - BPF program run time per event (kernel.bpf_stats_enabled, the kernel's own counters)
  - tracker events lost

side by side for the bpf (gated) and cn_proc (ungated) trackers.

    python -m benchmarks.overhead [--quick]     (quick: 300 tool calls per tracker; full: 10,000)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.daemon_process import DaemonProcess
from benchmarks.results_file import write_result

REPO = Path(__file__).resolve().parents[1]
POLICY = """version: 1
name: default
toolcalls:
  defaults: {memory_high: 64M, memory_max: 128M, pids_max: 64, timeout_s: 60}
"""


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


def run_one(tracker: str, count: int, workdir: Path) -> dict:
    daemon = DaemonProcess(tracker=tracker, policy=POLICY)
    out = workdir / f"{tracker}.out"
    try:
        daemon.start()
        pid = daemon.proc.pid
        rss_start = proc_rss_kb(pid)
        cpu0 = proc_cpu_s(pid)
        bpf0 = bpf_prog_stats(pid)
        script = f"i=0; while [ $i -lt {count} ]; do cat /proc/self/cgroup; i=$((i+1)); done > {out}"
        t0 = time.monotonic()
        agent = subprocess.Popen([str(Path(sys.executable).parent / "agentctl"), "--socket", str(daemon.socket), "run", "--name", "load",
                                  "--", "sh", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        agent.wait(timeout=max(120, count / 20))
        wall = time.monotonic() - t0
        deadline = time.monotonic() + 30
        while daemon.client.tool_calls(live=True) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        cpu = proc_cpu_s(pid) - cpu0
        bpf1 = bpf_prog_stats(pid)
        status = daemon.client.status()
        rss_end = proc_rss_kb(pid)
        lines = [l for l in out.read_text().splitlines() if l.startswith("0::")]
        escaped = sum(1 for l in lines if "/tools/" not in l)
        runs = max(1, bpf1[1] - bpf0[1])
        return {"tool_calls": len(lines), "wall_s": round(wall, 2), "execs_per_s": round(len(lines) / wall, 1),
                "escaped_pct": round(100 * escaped / max(1, len(lines)), 2),
                "placement_p50_us": status["tracker"]["placement_p50_us"], "placement_p99_us": status["tracker"]["placement_p99_us"],
                "placement_max_us": status["tracker"].get("placement_max_us"),
                "daemon_cpu_s_per_1000": round(cpu / max(1, len(lines)) * 1000, 3),
                "daemon_rss_kb_start": rss_start, "daemon_rss_kb_end": rss_end,
                "bpf_ns_per_event": round((bpf1[0] - bpf0[0]) / runs, 1) if bpf1[1] > bpf0[1] else None,
                "events_lost": status["tracker"]["lost_events"]}
    finally:
        daemon.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--count", type=int, default=None)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("overhead: needs root", file=sys.stderr)
        return 2
    count = args.count or (300 if args.quick else 10_000)
    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old_stats = stats_path.read_text().strip()
    stats_path.write_text("1")
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="agentd-overhead-") as tmp:
            for tracker in ("bpf", "cn_proc"):
                print(f"overhead: {count} tool calls with the {tracker} tracker ...", file=sys.stderr, flush=True)
                results[tracker] = run_one(tracker, count, Path(tmp))
    finally:
        stats_path.write_text(old_stats)
    metrics = {}
    for tracker, r in results.items():
        for k, v in r.items():
            if v is not None:
                metrics[f"{k}_{tracker}"] = v
    path = write_result("overhead", metrics, {"tool_calls": count, "tool": "cat /proc/self/cgroup from a sh loop"})
    keys = list(results["bpf"].keys())
    print(f"\n{'metric':<26} {'bpf (gated)':>14} {'cn_proc':>14}")
    for k in keys:
        print(f"{k:<26} {str(results['bpf'].get(k)):>14} {str(results['cn_proc'].get(k)):>14}")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
