"""Pure parsers for cgroupfs file formats; no file access here, so they are unit-tested from strings."""

from __future__ import annotations

from agentd.cgroups.driver import PressureStats

# v1 page_counter reports "unlimited" as PAGE_COUNTER_MAX * PAGE_SIZE (9223372036854771712 on
# x86-64); anything at or above 2**62 is no limit a person could have meant.
V1_UNLIMITED_THRESHOLD = 1 << 62

# systemd's mapping between v2 cpu.weight and v1 cpu.shares: weight 100 <-> 1024 shares.
CPU_SHARES_MIN = 2
CPU_SHARES_MAX = 262_144
CPU_WEIGHT_MIN = 1
CPU_WEIGHT_MAX = 10_000


def parse_flat_keyed(text: str) -> dict[str, int]:
    """"key value" lines (memory.events, memory.stat, cpu.stat, pids.events, oom_control)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        try:
            out[parts[0]] = int(parts[1])
        except ValueError:
            continue
    return out


def hierarchical_memory_stat(stat: dict[str, int]) -> dict[str, int]:
    """memory.stat for a cgroup's whole subtree. v1 keeps the subtree's figures under total_*
    (the plain keys count only the cgroup's own processes, none for agents/<name>, whose
    processes sit in children); v2's keys are already the subtree's."""
    if any(k.startswith("total_") for k in stat):
        return {k[len("total_"):]: v for k, v in stat.items() if k.startswith("total_")}
    return dict(stat)


# What reclaim frees without swap: page cache on the file LRU, and (v2 lists it) reclaimable
# slab. Not the "file"/"cache" figures: they include shmem/tmpfs, which without swap stays.
RECLAIMABLE_KEYS = ("active_file", "inactive_file", "slab_reclaimable")


def unreclaimable_bytes(memory_current: int, stat: dict[str, int]) -> int:
    """What of a cgroup's charged memory reclaim cannot free: its usage less the page cache
    and reclaimable slab in its memory.stat (anon, shmem, mlocked and kernel memory remain).
    A memory.stat without the file LRU keys (none read) counts all of the usage."""
    if "active_file" not in stat and "inactive_file" not in stat:
        return memory_current
    return max(0, memory_current - sum(stat.get(k, 0) for k in RECLAIMABLE_KEYS))


def parse_psi(text: str) -> PressureStats:
    """A <resource>.pressure file: "some avg10=.. avg60=.. avg300=.. total=.." and "full ..."."""
    stats = PressureStats()
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("some", "full"):
            continue
        fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        avg10 = float(fields.get("avg10", 0.0))
        total = int(fields.get("total", 0))
        if parts[0] == "some":
            stats.some_avg10, stats.some_total_us = avg10, total
        else:
            stats.full_avg10, stats.full_total_us = avg10, total
    return stats


def parse_size(text: str) -> int | None:
    """A v2 size ("max" -> None) or a v1 *_in_bytes value (the unlimited sentinel -> None)."""
    value = text.strip()
    if value == "max":
        return None
    n = int(value)
    if n >= V1_UNLIMITED_THRESHOLD:
        return None
    return n


def format_v2_max(value: int | None) -> str:
    """Bytes or a count for memory.max/high, memory.swap.max, pids.max: None is "max"."""
    if value is None:
        return "max"
    if value < 0:
        raise ValueError(f"a limit cannot be negative: {value}")
    return str(int(value))


def format_v2_cpu_max(quota_us: int | None, period_us: int) -> str:
    """cpu.max: "<quota> <period>" or "max <period>"."""
    if period_us <= 0:
        raise ValueError(f"cpu period must be positive: {period_us}")
    if quota_us is None:
        return f"max {period_us}"
    if quota_us <= 0:
        raise ValueError(f"cpu quota must be positive or None: {quota_us}")
    return f"{quota_us} {period_us}"


def weight_to_shares(weight: int) -> int:
    """v2 cpu.weight (1..10000, default 100) to v1 cpu.shares (default 1024), as systemd maps it."""
    if not CPU_WEIGHT_MIN <= weight <= CPU_WEIGHT_MAX:
        raise ValueError(f"cpu weight must be within 1..10000: {weight}")
    return max(CPU_SHARES_MIN, min(CPU_SHARES_MAX, weight * 1024 // 100))


def parse_cgroup_file(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup: hierarchy key -> path. v2 is keyed "" ; v1 by each controller
    ("cpu,cpuacct" gives both keys) and named hierarchies as "name=systemd"."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[""] = path
            continue
        for c in controllers.split(","):
            out[c] = path
    return out


def parse_mounts(text: str) -> list[tuple[str, str, set[str]]]:
    """/proc/self/mounts -> [(fstype, mountpoint, options)] for cgroup and cgroup2 mounts."""
    out: list[tuple[str, str, set[str]]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[2] not in ("cgroup", "cgroup2"):
            continue
        mountpoint = parts[1].replace("\\040", " ")
        out.append((parts[2], mountpoint, set(parts[3].split(","))))
    return out
