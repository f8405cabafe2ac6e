"""Memory-tier placement: the planner's cost here, and in the 3-node VM (node 2 CPU-less,
a slower HMAT tier) migration throughput against its rate limit, the time to place a
process, pages on target after a placement, exact restore, and a memory-bound workload
with its hot set local and its cold set far against all-local, all-far and first-touch.

    python -m benchmarks.tiers [--quick]

Writes benchmarks/results/tiers.json; metrics: pages_on_target_pct (weighted interleave
3:1 over nodes 0 and 2, from the cgroup's memory.numa_stat), migration_mb_s (unlimited
move_pages), migration_rate_limit_mb_s (the limit) beside migration_limited_mb_s (what a
limited move achieved), restore_exact (1 when every page and setting came back),
planner_us_per_1000 (one planner round over 1,000 managed processes).

The VM is software-emulated (TCG): absolute times are inflated, and the far node is the
same host memory (HMAT latencies are tables the guest kernel reads, not emulated delays),
so the workload's ratios show the mechanism's overhead, not CXL's latency.
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

from benchmarks.results_file import write_result

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "unit" / "tiers" / "fixtures"
MiB = 1 << 20

SWEEP_C = r"""
/* Touch MB MiB, print the buffer's address and "ready", wait for a line on stdin, then
   do N random 8-byte reads, 80% into the first HOT% of the buffer; print ns per read. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
int main(int argc, char **argv) {
    size_t mb = atol(argv[1]); long n = atol(argv[2]); int hot = atoi(argv[3]);
    size_t len = mb << 20;
    uint64_t *buf = mmap(0, len, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < len / 8; i += 512) buf[i] = i;
    printf("%lu\nready\n", (unsigned long)buf); fflush(stdout);
    char line[16];
    size_t words = len / 8, hotw = words * hot / 100; uint64_t x = 88172645463325252ull, sum = 0;
    while (fgets(line, sizeof line, stdin)) {  /* one sweep per line */
        struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < n; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            size_t idx = (x % 100 < 80) ? (x >> 8) % hotw : (x >> 8) % words;
            sum += buf[idx];
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("%.2f %lu\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n, (unsigned long)(sum & 1));
        fflush(stdout);
    }
    return 0;
}
"""


# ----------------------------------------------------------------------------- host part


def planner_cost(n_procs: int = 1000, vmas_per_proc: int = 20, rounds: int = 5) -> dict:
    from agentd.tiers.model import ManagedProc, PlannerInput, PlannerState, Vma, decide, plan_class
    from agentd.tiers.policy import ClassMatch, Migrate, Placement, TierClass, TiersSection
    from agentd.tiers.topology import discover

    topo = discover(str(FIX / "two_cxl" / "sys"), str(FIX / "two_cxl" / "proc"))
    classes = (TierClass("opt", ClassMatch(argv="opt"), placement=Placement("interleave", (("local", 3), ("far", 1))),
                         migrate=Migrate(rate_mb_s=100)),
               TierClass("srv", ClassMatch(argv="srv"), placement=Placement("bind", (("local", 1),))),
               TierClass("batch", ClassMatch(argv="batch"), placement=Placement("bind", (("far", 1),))))
    sections = {"p": TiersSection(classes)}
    kinds = ("opt", "srv", "batch")
    procs = tuple(ManagedProc(1000 + i, i, "toolcalls", f"agents/a/tools/{i}-x", argv=(kinds[i % 3],))
                  for i in range(n_procs))
    vmas = {p.key: [Vma(j << 30, (j << 30) + 64 * MiB, {0: 16384}) for j in range(vmas_per_proc)] for p in procs}
    inp = PlannerInput(topo, procs, vmas, {p.cgroup: 0.0 for p in procs}, {})
    best_decide = best_plan = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        decide(PlannerState(), inp, sections, now=0.0)
        best_decide = min(best_decide, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(n_procs):
            plan_class(classes[i % 3], topo)
        best_plan = min(best_plan, time.perf_counter() - t0)
    scale = 1000 / n_procs * 1e6
    return {"planner_us_per_1000": round(best_decide * scale, 1), "plan_only_us_per_1000": round(best_plan * scale, 1),
            "vmas_per_proc": vmas_per_proc}


# ----------------------------------------------------------------------------- guest part


def _page_nodes(pid: int, start: int, end: int) -> list[int]:
    from agentd.tiers import numa

    page = os.sysconf("SC_PAGE_SIZE")
    out = []
    addrs = list(range(start, end, page))
    for i in range(0, len(addrs), 4096):
        out += numa.move_pages(pid, addrs[i:i + 4096], None)
    return out


def _cgroup(name: str) -> Path:
    root = Path("/sys/fs/cgroup")
    cg = root / name
    cg.mkdir(exist_ok=True)
    return cg


def _in_cgroup(cg: Path, argv: list[str], **kw) -> subprocess.Popen:
    procs = str(cg / "cgroup.procs")

    def join():
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    return subprocess.Popen(argv, preexec_fn=join, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kw)


def _holder(cg: Path, sweep: str, mb: int, reads: int, hot_pct: int, membind: str | None):
    argv = (["numactl", f"--membind={membind}"] if membind else []) + [sweep, str(mb), str(reads), str(hot_pct)]
    p = _in_cgroup(cg, argv)
    addr = int(p.stdout.readline())
    assert p.stdout.readline().strip() == "ready"
    return p, addr


def guest(out: Path, quick: bool, sweep: str) -> None:
    """Inside the VM: every measurement that needs several nodes."""
    from agentd.kinds.changes import ChangeLog
    from agentd.kinds.state import KindDatabase
    from agentd.tiers import actuators, model, observe
    from agentd.tiers.model import Move

    res: dict = {}
    mb = 64 if quick else 256
    rate = 4.0  # under the emulated guest's own speed (about 15 MB/s), so the limiter acts
    reads = 200_000 if quick else 1_000_000
    with open("/sys/fs/cgroup/cgroup.subtree_control", "w") as f:
        f.write("+memory +cpuset")
    cg = _cgroup("agentd-bench-tiers")
    try:
        # 1. unlimited migration of a whole process (node 0 -> 2), then back, page for page
        p, addr = _holder(cg, sweep, mb, 1, 20, "0")
        before = _page_nodes(p.pid, addr, addr + (mb << 20))
        r = actuators.move_ranges(p.pid, [Move(addr, addr + (mb << 20), 2, mb << 20)], rate_mb_s=0)
        res["migration_mb_s"] = round(r.mb_s, 1)
        res["placement_s"] = round(r.seconds, 3)
        res["placement_mb"] = mb
        res["placement_s_per_gib"] = round(r.seconds * 1024 / mb, 2)
        far = _page_nodes(p.pid, addr, addr + (mb << 20))
        res["moved_on_target_pct"] = round(100 * far.count(2) / max(1, len(far)), 2)
        back = actuators.restore_runs(p.pid, r.runs)
        now = _page_nodes(p.pid, addr, addr + (mb << 20))
        # every page that was there is back on its node (khugepaged may fill holes meanwhile)
        pages_exact = all(n == b for n, b in zip(now, before) if b >= 0)
        res["restore_s"] = round(back.seconds, 3)
        # 2. the same move at a rate limit
        lim_mb = min(mb, 16)
        r2 = actuators.move_ranges(p.pid, [Move(addr, addr + (lim_mb << 20), 2, lim_mb << 20)], rate_mb_s=rate)
        res["migration_rate_limit_mb_s"] = rate
        res["migration_limited_mb_s"] = round(r2.mb_s, 1)
        res["migration_limited_s"] = round(r2.seconds, 2)
        actuators.restore_runs(p.pid, r2.runs)
        p.kill()
        p.wait()
        # 3. settings put back: interleave weights and cpuset.mems through the saved-values log
        tmp = Path(tempfile.mkdtemp())
        db = KindDatabase(tmp / "kinds.db")
        changes = ChangeLog("tier", db.view("tiers"), lambda *a, **k: None, clock=time.time)
        wi = actuators.InterleaveWeight()
        from agentd.cgroups.detect import open_driver

        drv = open_driver(leaf_name="agentd-bench-tiers-drv")
        drv.create("jobs/b")
        knob = actuators.TierKnob(drv, "cpuset.mems")
        settings_before = (wi.read("node0"), wi.read("node2"), knob.read("jobs/b"))
        changes.apply(wi, "node0", "3")
        changes.apply(wi, "node2", "1")
        changes.apply(knob, "jobs/b", "2")
        # 4. pages on target after a weighted-interleave 3:1 placement (the launcher's way)
        plan = model.NodePlan("weighted_interleave", {0: 3, 2: 1})
        cg2 = _cgroup("agentd-bench-tiers-wi")
        q = subprocess.Popen([sys.executable, "-c", (
            "import os, sys; sys.path.insert(0, %r); from agentd.tiers import numa; "
            "numa.set_mempolicy('weighted_interleave', [0, 2]); os.execv(%r, [%r, '%d', '1', '20'])")
            % (str(REPO), sweep, sweep, mb)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=lambda: open(str(cg2 / "cgroup.procs"), "w").write("0"))
        q.stdout.readline()
        q.stdout.readline()
        anon = observe.parse_numa_stat((cg2 / "memory.numa_stat").read_text())["anon"]
        res["pages_on_target_pct"] = round(model.on_target_pct(plan, anon), 2)
        res["wi_node_mib"] = {str(k): v >> 20 for k, v in anon.items()}
        q.kill()
        q.wait()
        cg2.rmdir() if not (cg2 / "cgroup.procs").read_text().strip() else None
        changes.revert_all()
        settings_after = (wi.read("node0"), wi.read("node2"), knob.read("jobs/b"))
        res["restore_exact"] = int(pages_exact and settings_after == settings_before)
        res["restore_pages_exact"] = int(pages_exact)
        res["restore_settings_exact"] = int(settings_after == settings_before)
        drv.remove("jobs/b")
        drv.remove("")
        db.close()
        # 5. the workload: 80% of reads into a hot 20%; placements side by side, each
        # sweep ROUNDS times in turn (interleaved, so host noise hits every case), median
        work_mb = mb
        hot = work_mb * 20 // 100
        rounds = 3 if quick else 5
        holders = {}
        for name, membind, moves in (
                ("first_touch", None, lambda a: []),
                ("all_local", "0", lambda a: []),
                ("all_far", "2", lambda a: []),
                ("hot_local_cold_far", "0", lambda a: [Move(a + (hot << 20), a + (work_mb << 20), 2, 0)])):
            w, a = _holder(cg, sweep, work_mb, reads, 20, membind)
            mv = moves(a)
            if mv:
                actuators.move_ranges(w.pid, mv, rate_mb_s=0)
            holders[name] = (w, _page_nodes(w.pid, a, a + (work_mb << 20)))
        times: dict[str, list[float]] = {name: [] for name in holders}
        for _ in range(rounds):
            for name, (w, _) in holders.items():
                w.stdin.write("go\n")
                w.stdin.flush()
                times[name].append(float(w.stdout.readline().split()[0]))
        cases = {}
        for name, (w, nodes) in holders.items():
            w.stdin.close()
            w.wait()
            runs = sorted(times[name])
            cases[name] = {"ns_per_read": runs[len(runs) // 2], "runs_ns": runs,
                           "node0_pct": round(100 * nodes.count(0) / len(nodes), 1),
                           "node2_pct": round(100 * nodes.count(2) / len(nodes), 1)}
        base = cases["all_local"]["ns_per_read"]
        for c in cases.values():
            c["vs_all_local"] = round(c["ns_per_read"] / base, 3)
        res["workload"] = cases
    finally:
        for child in sorted(cg.parent.glob("agentd-bench-tiers*")):
            try:
                for pid in (child / "cgroup.procs").read_text().split():
                    os.kill(int(pid), 9)
                time.sleep(0.2)
                child.rmdir()
            except OSError:
                pass
    out.write_text(json.dumps(res))


def build_sweep(dest: Path) -> Path:
    src = dest / "sweep.c"
    src.write_text(SWEEP_C)
    binary = dest / "sweep"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(src)], check=True)
    return binary


def run_vm(quick: bool) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.vm import harness

    rw = Path(tempfile.mkdtemp(prefix="agentd-bench-tiers-"))
    sweep = build_sweep(rw)
    harness.precompile()
    out = rw / "guest.json"
    r = harness.boot_and_run([sys.executable, "-m", "benchmarks.tiers", "--guest", str(out), "--sweep", str(sweep)]
                             + (["--quick"] if quick else []), numa=True, timeout=1500, files_dir=rw, cwd=REPO)
    if r.rc != 0 or not out.exists():
        raise SystemExit(f"the guest part failed (rc {r.rc}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    data = json.loads(out.read_text())
    data["vm"] = r.summary()
    return data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--guest", help=argparse.SUPPRESS)
    ap.add_argument("--sweep", help=argparse.SUPPRESS)
    ap.add_argument("--no-vm", action="store_true", help="only the host part (planner cost)")
    args = ap.parse_args()
    if args.guest:
        guest(Path(args.guest), args.quick, args.sweep)
        return
    host = planner_cost(1000, 20 if not args.quick else 5, 3 if args.quick else 5)
    vm = {} if args.no_vm else run_vm(args.quick)
    metrics = {"pages_on_target_pct": vm.get("pages_on_target_pct"), "migration_mb_s": vm.get("migration_mb_s"),
               "migration_rate_limit_mb_s": vm.get("migration_rate_limit_mb_s"),
               "migration_limited_mb_s": vm.get("migration_limited_mb_s"), "restore_exact": vm.get("restore_exact"),
               "planner_us_per_1000": host["planner_us_per_1000"], "placement_s_per_gib": vm.get("placement_s_per_gib")}
    params = {"quick": args.quick, "planner_vmas_per_proc": host["vmas_per_proc"],
              "vm_buffer_mb": vm.get("placement_mb"), "vm": vm.get("vm")}
    path = write_result("tiers", metrics, params, host=host, guest=vm)
    print(f"{'metric':34} value")
    for k, v in metrics.items():
        print(f"{k:34} {v}")
    print(f"{'plan_only_us_per_1000':34} {host['plan_only_us_per_1000']}")
    if vm.get("workload"):
        print(f"\n{'workload (80% reads in hot 20%)':26} {'ns/read':>9} {'vs local':>9} {'node0%':>7} {'node2%':>7}")
        for name, c in vm["workload"].items():
            print(f"{name:26} {c['ns_per_read']:9.1f} {c['vs_all_local']:9.3f} {c['node0_pct']:7.1f} {c['node2_pct']:7.1f}")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
