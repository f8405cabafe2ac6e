"""cgroupfs file formats, from strings copied off real kernels."""

from __future__ import annotations

import pytest

from agentd.cgroups.parse import (
    format_v2_cpu_max,
    format_v2_max,
    parse_cgroup_file,
    parse_flat_keyed,
    parse_mounts,
    parse_psi,
    parse_size,
    weight_to_shares,
)

MEMORY_EVENTS = "low 0\nhigh 17\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n"
CPU_STAT = (
    "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnice_usec 0\n"
    "core_sched.force_idle_usec 0\nnr_periods 20\nnr_throttled 7\nthrottled_usec 91011\n"
    "nr_bursts 0\nburst_usec 0\n"
)
MEMORY_STAT_V2 = "anon 1048576\nfile 4096\nkernel 65536\nsock 0\nshmem 0\npgfault 300\n"
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
