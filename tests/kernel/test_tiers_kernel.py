"""The tiers kind's kernel paths on this machine (one NUMA node, no swap, hybrid cgroups
with the v1 memory controller): real set_mempolicy / get_mempolicy / migrate_pages /
move_pages, numa_maps and memory.numa_stat read from the kernel, proactive reclaim on a v1
memory cgroup, and the launcher's policy inherited across exec."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentd.cgroups import fs
from agentd.tiers import actuators, numa, observe
from agentd.tiers.model import Move
from tests.kernel.cgroup_fixtures import children, driver, needs_root  # noqa: F401 - fixtures

pytestmark = [pytest.mark.kernel]
PAGE = os.sysconf("SC_PAGE_SIZE")
REPO = Path(__file__).resolve().parents[2]

# A child that maps `mb` MiB of anonymous memory, touches every page, prints the address,
# and sleeps until killed.
HOLDER = """
import mmap, ctypes, sys, time
mb = int(sys.argv[1]) if len(sys.argv) > 1 else {mb}
m = mmap.mmap(-1, mb << 20)
for i in range(0, mb << 20, 4096):
    m[i] = 1
print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)
time.sleep(600)
"""


def _holder(children, mb: int):  # noqa: F811
    p = children.python(HOLDER.format(mb=mb))
    children.go(p)
    addr = int(p.stdout.readline())
    return p, addr


def test_set_and_get_mempolicy_in_this_thread():
    try:
        numa.set_mempolicy("bind", [0])
        assert numa.get_mempolicy() == ("bind", [0])
        numa.set_mempolicy("preferred", [0])
        assert numa.get_mempolicy() == ("preferred", [0])
    finally:
        numa.set_mempolicy("default")
    assert numa.get_mempolicy() == ("default", [])
    assert numa.mems_allowed() == [0]


def test_a_node_that_does_not_exist_is_a_clear_error_and_changes_nothing():
    with pytest.raises(numa.NumaError) as exc:
        numa.set_mempolicy("bind", [7])
    assert exc.value.errno == errno.EINVAL and "does not exist or is offline" in str(exc.value)
    assert numa.get_mempolicy() == ("default", [])


def test_migrate_pages_and_move_pages_on_a_real_process(children):  # noqa: F811
    p, addr = _holder(children, 16)
    vmas = observe.read_vmas(p.pid)
    buf = next(v for v in vmas if v.start <= addr < v.end)
    assert buf.pages.get(0, 0) >= 16 * (1 << 20) // PAGE  # numa_maps: every page on node 0
    assert numa.migrate_pages(p.pid, [0], [0]) == 0  # nothing left unmoved
    status = numa.move_pages(p.pid, [addr, addr + PAGE], None)
    assert status == [0, 0]
    res = actuators.move_ranges(p.pid, [Move(addr, addr + (16 << 20), 0, 16 << 20)], rate_mb_s=0)
    assert res.moved_bytes == 0 and res.seen_bytes == 16 << 20 and not res.errors  # already there
    with pytest.raises(numa.NumaError) as exc:
        numa.move_pages(p.pid, [addr], 1)  # node 1 has no memory here
    assert exc.value.errno in (errno.ENODEV, errno.EINVAL)


def test_a_process_that_exits_mid_migration_stops_the_move_cleanly(children):  # noqa: F811
    p, addr = _holder(children, 4)
    p.kill()
    p.wait()
    res = actuators.move_ranges(p.pid, [Move(addr, addr + (4 << 20), 0, 4 << 20)], rate_mb_s=1)
    assert res.exited and res.moved_bytes == 0
    with pytest.raises(numa.NumaError, match="the process has exited"):
        numa.migrate_pages(p.pid, [0], [0])


@needs_root
def test_memory_numa_stat_of_a_v1_memory_cgroup_counts_the_childs_pages(driver, children):  # noqa: F811
    driver.create("jobs/tiers-a")
    # v1 charges pages to the cgroup that was current when they were touched: move, then allocate
    q = children.python(HOLDER.format(mb=32))
    assert driver.move(q.pid, "jobs/tiers-a")
    children.go(q)
    q.stdout.readline()
    stat = observe.parse_numa_stat(fs.read(driver.knob_path("jobs/tiers-a", "memory.numa_stat")))
    assert stat["anon"].get(0, 0) >= 32 << 20
    assert set(stat["anon"]) == {0}


@needs_root
def test_proactive_reclaim_on_a_v1_memory_cgroup_drops_its_page_cache(driver, children, tmp_path):  # noqa: F811
    driver.create("jobs/tiers-r")
    data = Path("/var/tmp") / f"agentd-tiers-{os.getpid()}"
    try:
        w = children.python(f"""
import os, time
with open({str(data)!r}, 'wb') as f:
    for _ in range(64):
        f.write(os.urandom(1 << 20))
    f.flush(); os.fsync(f.fileno())
print('written', flush=True)
time.sleep(600)
""")
        assert driver.move(w.pid, "jobs/tiers-r")
        children.go(w)
        assert w.stdout.readline().strip() == "written"
        usage = lambda: int(fs.read(driver.knob_path("jobs/tiers-r", "memory.usage_in_bytes")))  # noqa: E731
        limit_before = fs.read(driver.knob_path("jobs/tiers-r", "memory.limit_in_bytes")).strip()
        before = usage()
        assert before >= 48 << 20
        got, how = actuators.reclaim(driver, "jobs/tiers-r", 32 << 20)
        assert how.startswith("v1 limit lowered") and got >= 24 << 20
        assert usage() <= before - (24 << 20)
        assert fs.read(driver.knob_path("jobs/tiers-r", "memory.limit_in_bytes")).strip() == limit_before
    finally:
        data.unlink(missing_ok=True)


def test_the_launcher_sets_the_policy_before_exec(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nname: t\ntiers:\n  classes:\n    - name: pinned\n      match: {argv: numa_maps}\n"
                      "      placement: {mode: bind, weights: {node0: 1}}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "agentd.tiers.launch", "--policy", str(policy), "--",
                        sys.executable, "-c", "print(open('/proc/self/numa_maps').read())"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "heap" in ln or "anon=" in ln]
    assert lines and all(" bind:0 " in ln for ln in lines)
    r = subprocess.run([sys.executable, "-c", "print(open('/proc/self/numa_maps').read())"], capture_output=True,
                       text=True, timeout=60)
    assert " bind:0 " not in r.stdout  # without the launcher: the default policy


def test_the_launcher_refuses_a_missing_node_and_runs_nothing(tmp_path):
    policy = tmp_path / "p.yaml"
    marker = tmp_path / "ran"
    policy.write_text("version: 1\nname: t\ntiers:\n  classes:\n    - name: far\n      match: {argv: touch}\n"
                      "      placement: {mode: bind, weights: {node3: 1}, fallback: refuse}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "agentd.tiers.launch", "--policy", str(policy), "--", "touch",
                        str(marker)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "node 3 does not exist" in r.stderr and f"{policy}:5" in r.stderr
    assert not marker.exists()


def test_the_launcher_runs_unplaced_and_says_so_when_the_class_allows_it(tmp_path):
    # the same semantics as `agentctl run`: only `fallback: refuse` makes placement mandatory
    policy = tmp_path / "p.yaml"
    marker = tmp_path / "ran"
    policy.write_text("version: 1\nname: t\ntiers:\n  classes:\n    - name: far\n      match: {argv: touch}\n"
                      "      placement: {mode: bind, weights: {node3: 1}}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "agentd.tiers.launch", "--policy", str(policy), "--", "touch",
                        str(marker)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and marker.exists(), r.stderr
    assert "node 3 does not exist" in r.stderr and "running it unplaced" in r.stderr


def test_taskstats_delay_accounting_reads_a_live_pid():
    try:
        reader = observe.DelayReader()
    except Exception as exc:  # no taskstats genl family in this kernel
        pytest.skip(f"taskstats unavailable: {exc}")
    try:
        d = reader.read(os.getpid())
        assert d is not None and "swapin_delay_total" in d
        assert reader.read(2 ** 22 + 1) is None
    finally:
        reader.close()
