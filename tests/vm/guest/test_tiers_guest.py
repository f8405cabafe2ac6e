"""Memory-tier placement in the VM (three NUMA nodes, node 2 CPU-less in its own slower
memory tier through HMAT, zram swap, pure cgroup v2), checked from the kernel's own
counters: numa_maps, memory.numa_stat, memory.swap.current, the per-page node query.

The launcher puts a new process's pages on the tier its class names (bind, weighted
interleave at a ratio); the real tiers kind (agentd.tiers.kind in a KindHost over a
V2Driver) moves a running job's pages to the far tier no faster than its rate limit and
puts every page back on its old node when the policy is removed; proactive reclaim pushes
cold memory into zram swap under the class's budget. Runs in the guest only.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from guestlib import MiB, alloc_argv

REPO = Path(__file__).resolve().parents[3]
_seq = itertools.count()


def _wait_line(proc: subprocess.Popen, want: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.strip() == want:
            return
    raise AssertionError(f"no {want!r} from {proc.args} within {timeout}s")


def _anon_by_node(cgroup_dir: Path) -> dict[int, int]:
    from agentd.tiers.observe import parse_numa_stat

    return parse_numa_stat((cgroup_dir / "memory.numa_stat").read_text())["anon"]


def _big_anon_vmas(pid: int):
    from agentd.tiers import observe

    return [v for v in observe.read_vmas(pid, anon_only=True) or [] if v.end - v.start >= MiB]


def _page_nodes(pid: int) -> dict[int, int]:
    """Every resident page of the process's big anonymous mappings -> its node (move_pages query)."""
    from agentd.tiers import numa

    page = os.sysconf("SC_PAGE_SIZE")
    out = {}
    for v in _big_anon_vmas(pid):
        addrs = list(range(v.start, v.end, page))
        for i in range(0, len(addrs), 4096):
            chunk = addrs[i:i + 4096]
            for a, n in zip(chunk, numa.move_pages(pid, chunk, None)):
                if n >= 0:
                    out[a] = n
    return out


def _node_free_mib(node: int) -> int:
    for line in Path(f"/sys/devices/system/node/node{node}/meminfo").read_text().splitlines():
        if "MemFree:" in line:
            return int(line.split()[-2]) // 1024
    raise AssertionError(f"no MemFree in node{node}/meminfo")


def _free_the_far_node() -> dict[int, int]:
    """Drop the page cache that demotion parks on the small far node (512 MiB): a node below
    its watermark makes interleaving fall back to node 0. Returns free MiB per node."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")
    return {n: _node_free_mib(n) for n in (0, 2)}


def _policy(tmp_path: Path, body: str) -> Path:
    p = tmp_path / f"tiers-{next(_seq)}.yaml"
    p.write_text("version: 1\nname: vmtiers\ntiers:\n  classes:\n" + body)
    return p


def _launch(cgroup, policy: Path, cls: str, mb: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return cgroup.popen([sys.executable, "-m", "agentd.tiers.launch", "--policy", str(policy), "--class", cls, "--",
                         *alloc_argv(mb, step_mb=8, hold=True)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture
def v2_driver(cgroup_root):
    from agentd.cgroups import fs
    from agentd.cgroups.detect import open_driver

    drv = open_driver(leaf_name=f"agentd-tierstest-{os.getpid()}-{next(_seq)}")
    procs: list[subprocess.Popen] = []
    drv.test_procs = procs
    try:
        yield drv
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
        try:
            fs.write(drv.tree.file("", "cgroup.freeze"), "0")
            drv.kill("")
        except OSError:
            pass
        for _ in range(100):
            try:
                drv.remove("")
                break
            except OSError:
                time.sleep(0.1)


def test_tiers_topology_of_the_vm(zram_swap, numa_nodes):
    from agentd.tiers.topology import discover

    t = discover()
    assert t.source == "memory_tiering"  # HMAT put node 2 into its own, lower tier
    assert t.nodes_of("local") == [0, 1] and t.nodes_of("cxl") == [2]
    assert not t.nodes[2].has_cpu and t.nodes[2].distances[0] == 40 and t.nodes[0].distances[1] == 20
    assert t.tiers[0].memory_tier < t.tiers[1].memory_tier
    [swap] = [s for s in t.swaps if s.path == os.path.realpath(zram_swap) or s.path == zram_swap]
    assert swap.medium == "zram" and swap.size_bytes > 0
    # `agentctl tiers` without a daemon: the same picture, read locally
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "cli.agentctl", "--socket", "/nonexistent.sock", "--json", "tiers"],
                       capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr
    host = json.loads(r.stdout)["host"]
    assert [x["nodes"] for x in host["tiers"]] == [[0, 1], [2]] and host["swaps"][0]["medium"] == "zram"


def test_the_launcher_binds_a_new_process_to_the_far_tier(numa_nodes, cgroup, tmp_path):
    policy = _policy(tmp_path, "    - name: far\n      match: {comm: x}\n"
                               "      placement: {mode: bind, weights: {cxl: 1}}\n")
    proc = _launch(cgroup, policy, "far", 32)
    try:
        _wait_line(proc, "done")
        anon = _anon_by_node(cgroup.path)
        assert anon.get(2, 0) >= 30 * MiB, anon
        nodes = list(_page_nodes(proc.pid).values())
        assert nodes and nodes.count(2) / len(nodes) >= 0.99
    finally:
        proc.kill()
        proc.wait()


def test_weighted_interleave_at_the_policys_ratio_and_the_weights_put_back(numa_nodes, cgroup, tmp_path):
    from agentd.kinds.changes import ChangeLog
    from agentd.kinds.state import KindDatabase
    from agentd.tiers.actuators import InterleaveWeight

    base = Path("/sys/kernel/mm/mempolicy/weighted_interleave")
    assert base.is_dir(), "the 6.12 guest kernel has weighted interleave"
    before = {n: (base / f"node{n}").read_text().strip() for n in (0, 2)}
    db = KindDatabase(tmp_path / "kinds.db")
    changes = ChangeLog("tier", db.view("tiers"), lambda *a, **k: None, clock=time.time)
    weights = InterleaveWeight()
    changes.apply(weights, "node0", "3")  # what the kind writes when every class agrees
    changes.apply(weights, "node2", "1")
    policy = _policy(tmp_path, "    - name: ratio\n      match: {comm: x}\n"
                               "      placement: {mode: interleave, weights: {node0: 3, node2: 1}}\n")
    free_before = _free_the_far_node()
    # Transparent huge pages would count 512 pages per allocation (seen: 0.94 on node 0 with
    # node 2 434 MiB free); the ratio is per allocation, so the check runs on 4 KiB pages.
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    thp_before = thp.read_text().split("[")[1].split("]")[0] if thp.exists() else None
    if thp_before is not None:
        thp.write_text("never")
    proc = _launch(cgroup, policy, "ratio", 64)
    try:
        _wait_line(proc, "done")
        nodes = list(_page_nodes(proc.pid).values())
        share0 = nodes.count(0) / len(nodes)
        maps = [ln for ln in Path(f"/proc/{proc.pid}/numa_maps").read_text().splitlines() if "file=" not in ln]
        weights_now = {n: (base / f"node{n}").read_text().strip() for n in (0, 2)}
        free_after = {n: _node_free_mib(n) for n in (0, 2)}
        assert 0.65 <= share0 <= 0.85 and nodes.count(2) / len(nodes) >= 0.15, (
            share0, len(nodes), weights_now, f"free MiB before {free_before} after {free_after}", maps)
    finally:
        proc.kill()
        proc.wait()
        if thp_before is not None:
            thp.write_text(thp_before)
        changes.revert_all()
        db.close()
    assert {n: (base / f"node{n}").read_text().strip() for n in (0, 2)} == before


def _host(drv, tmp_path, policy_text: str):
    from agentd.kinds.context import SharedModel
    from agentd.kinds.host import KindHost
    from agentd.kinds.state import KindDatabase
    from agentd.policy.loader import parse_text
    from agentd.tiers.kind import TiersKind

    events: list[dict] = []

    def emit(kind, message, **data):
        events.append({"kind": kind, "message": message, "data": data})
        return events[-1]

    db = KindDatabase(tmp_path / f"kinds-{next(_seq)}.db")
    kind = TiersKind()
    host = KindHost([kind], driver=drv, model=SharedModel(), db=db, journal_emit=emit, clock=time.time)
    policy, problems = parse_text(policy_text, "vm-policy.yaml")
    assert not problems, problems
    return host, kind, policy, events


def _tick_until(host, pred, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        host.on_tick(time.time())
        if pred():
            return True
        time.sleep(0.3)
    return pred()


def test_the_kind_moves_a_jobs_pages_far_at_its_rate_and_removing_the_policy_restores_them(
        numa_nodes, v2_driver, tmp_path):
    drv = v2_driver
    drv.create("jobs/mover")
    rate = 8.0
    host, kind, policy, events = _host(drv, tmp_path, (
        "version: 1\nname: vmtiers\ntiers:\n  classes:\n"
        "    - name: mover\n      match: {cgroup: mover}\n      scope: [jobs]\n"
        f"      placement: {{mode: bind, weights: {{cxl: 1}}}}\n      migrate: {{rate_mb_s: {rate}}}\n"))
    cg = Path(drv.tree.file("jobs/mover", "cgroup.procs")).parent
    mems_before = (cg / "cpuset.mems").read_text().strip()
    effective_before = (cg / "cpuset.mems.effective").read_text().strip()
    # started inside the cgroup (v2 charges pages where they were first touched)
    proc = _in_cgroup(cg, ["numactl", "--membind=0", *alloc_argv(32, step_mb=8, hold=True)])
    drv.test_procs.append(proc)
    try:
        _wait_line(proc, "done")
        before = _page_nodes(proc.pid)
        assert before and set(before.values()) == {0}, Path(f"/proc/{proc.pid}/numa_maps").read_text()
        host.on_policy([policy])
        assert _tick_until(host, lambda: any(e["kind"] == "tier.migrated" for e in events), 120)
        [mig] = [e["data"] for e in events if e["kind"] == "tier.migrated"][:1]
        assert mig["moved_bytes"] >= 30 * MiB
        assert mig["mb_s"] <= rate * 1.1  # the rate limit held...
        assert mig["seconds"] >= 0.9 * mig["moved_bytes"] / MiB / rate  # ...for the whole move
        anon = _anon_by_node(cg)
        assert anon.get(2, 0) >= 30 * MiB, anon  # the kernel's counters: the pages are far
        # settled: now the cgroup's cpuset.mems binds future allocations too
        assert _tick_until(host, lambda: (cg / "cpuset.mems").read_text().strip() == "2", 60)
        # removing the policy: cpuset.mems and every page back where they were
        host.on_policy([])
        # the same nodes as before; an inherited (empty) cpuset cannot be emptied again while
        # the cgroup has tasks (ENOSPC), so it holds the parent's nodes spelled out
        assert (cg / "cpuset.mems.effective").read_text().strip() == effective_before
        assert (cg / "cpuset.mems").read_text().strip() in (mems_before, effective_before)
        assert not kind.ctx.changes.saved() and not [e for e in events if e["kind"] == "tier.revert_failed"]
        assert any(e["kind"] == "tier.restored" for e in events)
        after = _page_nodes(proc.pid)
        # restore_exact: every page that was there is back on its node, page for page (pages
        # that appeared since - khugepaged fills the holes of a range it collapses - are new)
        assert {a: after.get(a) for a in before} == before
    finally:
        proc.kill()


def test_proactive_reclaim_pushes_cold_memory_to_zram_under_its_budget(zram_swap, numa_nodes, v2_driver, tmp_path):
    drv = v2_driver
    drv.create("jobs/cold")
    budget = 24 * MiB
    host, kind, policy, events = _host(drv, tmp_path, (
        "version: 1\nname: vmtiers\ntiers:\n  classes:\n"
        "    - name: cold\n      match: {cgroup: cold}\n      scope: [jobs]\n"
        "      reclaim: {to: swap, budget: 24M, step: 8M, interval_s: 1, psi_target_pct: 50}\n"))
    cg = Path(drv.tree.file("jobs/cold", "cgroup.procs")).parent
    swap_max_before = (cg / "memory.swap.max").read_text().strip()
    proc = _in_cgroup(cg, alloc_argv(64, step_mb=8, hold=True))
    drv.test_procs.append(proc)
    try:
        _wait_line(proc, "done")
        host.on_policy([policy])
        swap = lambda: int((cg / "memory.swap.current").read_text())  # noqa: E731
        assert _tick_until(host, lambda: swap() >= 16 * MiB, 120), (swap(), [e["message"] for e in events][-5:])
        assert (cg / "memory.swap.max").read_text().strip() == str(budget)
        steps = [e["data"] for e in events if e["kind"] == "tier.reclaimed"]
        assert steps and all(s["asked"] <= 8 * MiB for s in steps)
        _tick_until(host, lambda: False, 4)  # more rounds: the budget holds
        assert swap() <= budget
        host.on_policy([])
        assert (cg / "memory.swap.max").read_text().strip() == swap_max_before
    finally:
        proc.kill()


def _in_cgroup(cg: Path, argv: list[str]) -> subprocess.Popen:
    procs = str(cg / "cgroup.procs")

    def join():
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    return subprocess.Popen(argv, preexec_fn=join, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _numa_maps_anon_by_node(pid: int) -> tuple[dict[int, int], set[str]]:
    """Resident anonymous pages per node and the policies numa_maps shows, from the kernel."""
    from agentd.tiers import observe

    pages: dict[int, int] = {}
    policies = set()
    for v in observe.read_vmas(pid, anon_only=True) or []:
        policies.add(v.policy)
        for n, c in v.pages.items():
            pages[n] = pages.get(n, 0) + c
    return pages, policies


def test_agentctl_run_places_an_agents_memory_on_the_far_node_from_its_first_page(numa_nodes, cgroup_root):
    """`agentctl run` asks the real daemon (its tiers policy) for the plan and binds the
    command to node 2 before exec: the pages land there as they are first touched, none on
    node 0, and the kind moves nothing (the launch placed it). --no-tiers: first touch."""
    from agentd.api.client import ApiClient
    from benchmarks.daemon_process import DaemonProcess

    policy = ("version: 1\nname: vmlaunch\ntiers:\n  classes:\n"
              "    - name: far\n      match: {argv: alloc.py}\n      scope: [runtimes]\n"
              "      placement: {mode: bind, weights: {cxl: 1}}\n      migrate: {rate_mb_s: 50}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    _free_the_far_node()
    d = DaemonProcess(tracker="cn_proc", policies={"vmlaunch": policy}, env=env)
    procs: list[subprocess.Popen] = []
    try:
        d.start(timeout=300)

        def run(name: str, *extra: str) -> subprocess.Popen:
            p = subprocess.Popen([sys.executable, "-m", "cli.agentctl", "--socket", str(d.socket), "run", "--name", name,
                                  *extra, "--", *alloc_argv(48, step_mb=8, hold=True)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
            procs.append(p)
            return p

        def wait_done(p: subprocess.Popen) -> None:
            try:
                _wait_line(p, "done", timeout=240)
            except AssertionError as e:
                p.kill()
                why = f"rc {p.wait()}, stderr: {p.stderr.read()[-1500:]}"
                events = [f"{e['kind']}: {e['message']}" for e in ApiClient(str(d.socket), timeout=120)
                          .recent_events(limit=40)]
                raise AssertionError(f"{e}; {why}; daemon log: {d.log.read_text()[-1500:]}; events: {events}") from None

        placed = run("far-agent")
        wait_done(placed)
        pages, policies = _numa_maps_anon_by_node(placed.pid)
        print(f"agentctl run (class far): anon pages per node {pages} (4 KiB pages), policies {policies}")
        assert policies == {"bind:2"}, policies
        assert pages.get(2, 0) * 4096 >= 46 * MiB and pages.get(0, 0) == 0 and pages.get(1, 0) == 0, pages
        # the agent's cgroup, from the kernel's per-node counters
        rel = Path(f"/proc/{placed.pid}/cgroup").read_text().strip().split("::", 1)[1]
        anon = _anon_by_node(Path("/sys/fs/cgroup") / rel.lstrip("/"))
        print(f"memory.numa_stat anon of {rel}: {anon}")
        assert anon.get(2, 0) >= 46 * MiB and anon.get(0, 0) < 4 * MiB, anon
        unplaced = run("first-touch", "--no-tiers")
        wait_done(unplaced)
        pages_u, policies_u = _numa_maps_anon_by_node(unplaced.pid)
        print(f"agentctl run --no-tiers: anon pages per node {pages_u}, policies {policies_u}")
        # no launch policy: first touch on the CPU's node; the kind then moves its pages to
        # node 2 (the class still matches the running process), while they are being read
        assert policies_u == {"default"} and pages_u.get(0, 0) + pages_u.get(1, 0) > 0, pages_u
        # the kind sees the launch placement and moves nothing of it (it is busy moving the
        # --no-tiers agent's pages to node 2 meanwhile, slowly under emulation: a patient client)
        client = ApiClient(str(d.socket), timeout=120)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and client.kind_get("tiers", "status")["placed_at_launch"] < 1:
            time.sleep(1)
        st = client.kind_get("tiers", "status")
        assert st["placed_at_launch"] == 1 and st["launch_plans_total"] == 1, st
        events = client.recent_events(limit=500)
        [launch] = [e for e in events if e["kind"] == "tier.launch"]
        assert launch["data"]["pid"] == placed.pid and launch["data"]["nodes"] == [2], launch
        moved = [e for e in events if e["kind"] == "tier.migrated" and e["data"].get("pid") == placed.pid]
        assert not moved, moved
        # the --no-tiers agent's pages are the ones the kind had to move (rounds of rate-limited
        # moves), from node 0/1 to 2. A round is journaled when its whole move ends, after its
        # pages are already on node 2: wait for both
        def moved_so_far() -> tuple[dict, list]:
            pages = _numa_maps_anon_by_node(unplaced.pid)[0]
            return pages, [e["data"]["moved_bytes"] for e in client.recent_events(limit=500)
                           if e["kind"] == "tier.migrated" and e["data"].get("pid") == unplaced.pid]

        deadline = time.monotonic() + 240
        pages_u, migrated = moved_so_far()
        while time.monotonic() < deadline and not (pages_u.get(2, 0) * 4096 >= 40 * MiB and migrated):
            time.sleep(2)
            pages_u, migrated = moved_so_far()
        print(f"--no-tiers agent after the kind's migration: anon pages per node {pages_u}, moves {migrated}")
        assert pages_u.get(2, 0) * 4096 >= 40 * MiB and migrated, (pages_u, migrated)
        for p in (placed, unplaced):
            p.stdin.close()
        placed_err = placed.stderr.read()
        assert "agentctl: tiers: class far (policy vmlaunch): bind node 2" in placed_err, placed_err
        assert "tiers" not in unplaced.stderr.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
        d.cleanup()
