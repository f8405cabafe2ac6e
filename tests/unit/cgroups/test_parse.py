"""cgroupfs file formats, from strings copied off real kernels."""

from __future__ import annotations

import pytest

from agentd.cgroups.parse import (
    format_v2_cpu_max,
    format_v2_max,
    hierarchical_memory_stat,
    parse_cgroup_file,
    parse_flat_keyed,
    parse_mounts,
    parse_psi,
    parse_size,
    unreclaimable_bytes,
    weight_to_shares,
)

MiB = 1 << 20
MEMORY_EVENTS = "low 0\nhigh 17\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n"
CPU_STAT = (
    "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnice_usec 0\n"
    "core_sched.force_idle_usec 0\nnr_periods 20\nnr_throttled 7\nthrottled_usec 91011\n"
    "nr_bursts 0\nburst_usec 0\n"
)
MEMORY_STAT_V2 = "anon 1048576\nfile 4096\nkernel 65536\nsock 0\nshmem 0\npgfault 300\n"
# v1 memory.stat of a cgroup whose processes sit in a child (agents/<name>: runtime, tools):
# its own keys are zero, the subtree's are the total_* ones.
MEMORY_STAT_V1_PARENT = (
    "cache 0\nrss 0\nshmem 0\ninactive_anon 0\nactive_anon 0\ninactive_file 0\nactive_file 0\n"
    "unevictable 0\nhierarchical_memory_limit 9223372036854771712\n"
    "total_cache 220200960\ntotal_rss 157286400\ntotal_shmem 16777216\ntotal_mapped_file 0\n"
    "total_inactive_anon 174063616\ntotal_active_anon 0\ntotal_inactive_file 150994944\n"
    "total_active_file 52428800\ntotal_unevictable 0\n"
)
MEMORY_STAT_V2_FULL = (
    "anon 157286400\nfile 220200960\nkernel 4194304\nshmem 16777216\nfile_mapped 0\n"
    "inactive_anon 174063616\nactive_anon 0\ninactive_file 150994944\nactive_file 52428800\n"
    "unevictable 0\nslab_reclaimable 2097152\nslab_unreclaimable 1048576\nslab 3145728\n"
)
OOM_CONTROL_V1 = "oom_kill_disable 1\nunder_oom 1\noom_kill 0\n"
PSI = (
    "some avg10=1.53 avg60=0.40 avg300=0.09 total=2041811\n"
    "full avg10=0.75 avg60=0.20 avg300=0.04 total=1011111\n"
)
PSI_CPU_ROOT = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
HYBRID_CGROUP = (
    "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/9dd4\n2:cpu,cpuacct:/user.slice\n0::/\n"
)
MOUNTS = (
    "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n"
    "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n"
    "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
    "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n"
    "proc /proc proc rw 0 0\n"
)


def test_flat_keyed_files():
    assert parse_flat_keyed(MEMORY_EVENTS) == {
        "low": 0, "high": 17, "max": 4, "oom": 1, "oom_kill": 1, "oom_group_kill": 0,
    }
    cpu = parse_flat_keyed(CPU_STAT)
    assert cpu["usage_usec"] == 1234567 and cpu["nr_throttled"] == 7
    assert parse_flat_keyed(MEMORY_STAT_V2)["anon"] == 1 << 20
    assert parse_flat_keyed(OOM_CONTROL_V1) == {"oom_kill_disable": 1, "under_oom": 1, "oom_kill": 0}
    assert parse_flat_keyed("") == {}
    assert parse_flat_keyed("garbage\nx y z\nk notanint\nok 3\n") == {"ok": 3}


def test_memory_stat_of_the_subtree_on_v1_and_v2():
    v1 = hierarchical_memory_stat(parse_flat_keyed(MEMORY_STAT_V1_PARENT))
    assert v1["inactive_file"] == 144 * MiB and v1["active_file"] == 50 * MiB and v1["rss"] == 150 * MiB
    assert "hierarchical_memory_limit" not in v1
    v2 = hierarchical_memory_stat(parse_flat_keyed(MEMORY_STAT_V2_FULL))
    assert v2 == parse_flat_keyed(MEMORY_STAT_V2_FULL)


def test_unreclaimable_leaves_out_page_cache_but_keeps_shmem_and_kernel_memory():
    # charged: 150 MiB anon + 16 MiB shmem + 194 MiB page cache (+ 4 MiB kernel on v2)
    v1 = hierarchical_memory_stat(parse_flat_keyed(MEMORY_STAT_V1_PARENT))
    assert unreclaimable_bytes(360 * MiB, v1) == 166 * MiB  # shmem has no swap to go to: it stays
    v2 = parse_flat_keyed(MEMORY_STAT_V2_FULL)
    assert unreclaimable_bytes(364 * MiB, v2) == 364 * MiB - 194 * MiB - 2 * MiB  # reclaimable slab goes too
    assert unreclaimable_bytes(360 * MiB, {}) == 360 * MiB  # nothing read: all of it counts
    assert unreclaimable_bytes(100 * MiB, v1) == 0  # read a moment apart: never below 0


def test_psi_lines():
    p = parse_psi(PSI)
    assert p.some_avg10 == 1.53 and p.full_avg10 == 0.75
    assert p.some_total_us == 2041811 and p.full_total_us == 1011111
    root = parse_psi(PSI_CPU_ROOT)  # the root's cpu.pressure may have no "full" line
    assert root.some_total_us == 0 and root.full_total_us == 0


def test_sizes():
    assert parse_size("max\n") is None
    assert parse_size("9223372036854771712\n") is None  # v1 unlimited
    assert parse_size("67108864\n") == 64 << 20
    assert parse_size("0") == 0
    assert format_v2_max(None) == "max" and format_v2_max(4096) == "4096"
    with pytest.raises(ValueError):
        format_v2_max(-1)


def test_cpu_max_and_weight_mapping():
    assert format_v2_cpu_max(None, 100_000) == "max 100000"
    assert format_v2_cpu_max(50_000, 100_000) == "50000 100000"
    for bad in ((0, 100_000), (10, 0)):
        with pytest.raises(ValueError):
            format_v2_cpu_max(*bad)
    assert weight_to_shares(100) == 1024  # the defaults meet, as in systemd
    assert weight_to_shares(50) == 512
    assert weight_to_shares(1) == 10
    assert weight_to_shares(10_000) == 102_400
    for bad in (0, 10_001):
        with pytest.raises(ValueError):
            weight_to_shares(bad)


def test_proc_cgroup_and_mounts():
    own = parse_cgroup_file(HYBRID_CGROUP)
    assert own[""] == "/" and own["memory"] == "/process_api/9dd4"
    assert own["cpu"] == own["cpuacct"] == "/user.slice"
    assert own["name=systemd"] == "/"
    mounts = parse_mounts(MOUNTS)
    assert ("cgroup2", "/sys/fs/cgroup/unified", {"rw", "relatime"}) in mounts
    assert [m[1] for m in mounts] == [
        "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified",
    ]
