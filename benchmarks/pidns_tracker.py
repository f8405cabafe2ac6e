"""What reading pids in a child pid namespace costs the tracker's BPF programs.

The same tracker, loaded in the init namespace and inside `unshare --pid --fork --mount-proc`
(where exec/exit name pids with bpf_get_ns_current_pid_tgid and fork reads the child's pid
through BTF), runs N spawns of /bin/true (fork, exec, exit each). The kernel's own run-time
counters (BPF_ENABLE_STATS: a reference held by this process only, so the global sysctl other
benchmarks set is left alone) give ns per program run; every task on the host is counted, so
it is an average over whatever ran. Also: events seen for our spawns, and pidns_unseen.

    python -m benchmarks.pidns_tracker [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

from benchmarks.results_file import write_result

PROGRAMS = ("sched_process_fork", "sched_process_exec", "sched_process_exit")
BPF_ENABLE_STATS, BPF_STATS_RUN_TIME, SYS_BPF = 32, 0, 321  # x86_64


def enable_stats() -> int:
    """An fd that keeps BPF run-time stats on while open (-1 where the kernel refuses)."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 32)(BPF_STATS_RUN_TIME)
    return libc.syscall(SYS_BPF, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))


def measure(n: int) -> dict:
    from agentd.events import ProcEventKind as K
    from agentd.tracking.bpf_backend import BpfBackend

    seen: list = []
    backend = BpfBackend(guard=False)
    backend.start(seen.append)
    fd = enable_stats()
    try:
        before = backend.program_run_stats()
        pids = set()
        t0 = time.perf_counter()
        for _ in range(n):
            p = subprocess.Popen(["/bin/true"])
            p.wait()
            pids.add(p.pid)
        wall = time.perf_counter() - t0
        time.sleep(0.2)  # the consumer's poll picks up the last events
        after = backend.program_run_stats()
        stats = backend.stats()
    finally:
        if fd >= 0:
            os.close(fd)
        backend.stop()
    out = {"spawn_us": round(wall / n * 1e6, 1), "pidns": backend.pid_ns is not None,
           "pidns_unseen": stats.get("pidns_unseen", 0), "stats_on": fd >= 0}
    for prog in PROGRAMS:
        a, b = after.get(f"agentd__{prog}", {}), before.get(f"agentd__{prog}", {})
        runs = a.get("run_cnt", 0) - b.get("run_cnt", 0)
        out[f"{prog}_ns"] = round((a.get("run_time_ns", 0) - b.get("run_time_ns", 0)) / runs, 1) if runs else None
    for kind in (K.FORK, K.EXEC, K.EXIT):
        out[f"{kind.value}_seen_pct"] = round(100 * len({e.pid for e in seen if e.kind == kind and e.pid in pids}) / n, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pidns_tracker")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the run inside the namespace
    args = ap.parse_args(argv)
    n = args.count or (300 if args.quick else 2000)
    if args.child:
        print(json.dumps(measure(n)))
        return 0
    if os.geteuid() != 0:
        print("pidns_tracker: needs root", file=sys.stderr)
        return 2
    init = measure(n)
    proc = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL", "--", sys.executable,
                           "-m", "benchmarks.pidns_tracker", "--child", "--count", str(n)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return 1
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    keys = ["spawn_us", *(f"{p}_ns" for p in PROGRAMS), "fork_seen_pct", "exec_seen_pct", "exit_seen_pct", "pidns_unseen"]
    print(f"{'':28}{'init ns':>12}{'child ns':>12}")
    for k in keys:
        print(f"{k:28}{str(init[k]):>12}{str(child[k]):>12}")
    metrics = {f"{k}_init": init[k] for k in keys} | {f"{k}_pidns": child[k] for k in keys}
    path = write_result("pidns_tracker", metrics, {"spawns": n, "stats_on": init["stats_on"] and child["stats_on"]})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
