"""Where a process's memory sits, read from the kernel's own counters: /proc/PID/numa_maps
(+ /proc/PID/maps for VMA ends), memory.numa_stat (v2 bytes, v1 pages), VmSwap, PSI, and
taskstats delay accounting (swap-in, thrashing, reclaim delays) when the kernel counts them.
Pure parsers plus thin readers (agentd.procfs's bounded reads) with an injectable /proc root.
"""

from __future__ import annotations

import os
import re

from agentd import procfs
from agentd.tiers.model import Vma

PROC = procfs.PROC
PAGE = os.sysconf("SC_PAGE_SIZE")
_NODE = re.compile(r"N(\d+)=(\d+)")
# the kernel's mpol_to_str: mode (two words for some), =flags, :nodelist
_POLICY = re.compile(r"[0-9a-f]+ ((?:weighted )?[a-z]+(?: \(many\))?(?:=[a-z|]+)?(?::[0-9,-]+)?)")


def parse_maps_ends(text: str) -> dict[int, int]:
    """/proc/PID/maps -> {start: end}."""
    out = {}
    for line in text.splitlines():
        rng = line.split(" ", 1)[0]
        lo, _, hi = rng.partition("-")
        try:
            out[int(lo, 16)] = int(hi, 16)
        except ValueError:
            continue
    return out


def parse_numa_maps(text: str, ends: dict[int, int] | None = None, page: int = PAGE) -> list[Vma]:
    """/proc/PID/numa_maps -> Vmas with resident pages per node, counted in `page` units
    (huge pages count as page-size multiples). VMAs without an end in `ends` are skipped
    when ends are given (the mapping went away between the two reads)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            start = int(parts[0], 16)
        except ValueError:
            continue
        kps = 4
        for p in parts:
            if p.startswith("kernelpagesize_kB="):
                kps = int(p.split("=", 1)[1])
        mult = max(1, kps * 1024 // page)
        pages = {int(n): int(c) * mult for n, c in _NODE.findall(line)}
        if ends is not None:
            if start not in ends:
                continue
            end = ends[start]
        else:
            end = start + sum(pages.values()) * page
        # anonymous mappings only: a file mapping with copied-on-write pages also shows
        # anon=, but its page-cache pages are shared and sit wherever they were read
        anon = not any(p.startswith("file=") for p in parts)
        pol = _POLICY.match(line)
        out.append(Vma(start, end, pages, anon, pol.group(1) if pol else ""))
    return out


def read_vmas(pid: int, root: str = PROC, anon_only: bool = False) -> list[Vma] | None:
    """None when the process is gone or not readable."""
    maps = procfs.read_text(pid, "maps", root)
    numa_maps = procfs.read_text(pid, "numa_maps", root) if maps is not None else None
    if numa_maps is None:
        return None
    vmas = parse_numa_maps(numa_maps, parse_maps_ends(maps))
    return [v for v in vmas if v.anon] if anon_only else vmas


def node_bytes_of_pid(pid: int, root: str = PROC) -> dict[int, int] | None:
    vmas = read_vmas(pid, root)
    if vmas is None:
        return None
    out: dict[int, int] = {}
    for v in vmas:
        for n, c in v.pages.items():
            out[n] = out.get(n, 0) + c * PAGE
    return out


def parse_numa_stat(text: str, page: int = PAGE) -> dict[str, dict[int, int]]:
    """memory.numa_stat -> {"anon": {node: bytes}, "file": ...}. v2 lines are
    "anon N0=bytes ..."; v1 lines are "anon=pages N0=pages ..." (converted to bytes)."""
    out: dict[str, dict[int, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        v1 = "=" in parts[0]
        key = parts[0].split("=", 1)[0]
        mult = page if v1 else 1
        out[key] = {int(n): int(c) * mult for n, c in _NODE.findall(" ".join(parts[1:]))}
    return out


def parse_psi(text: str) -> dict[str, dict[str, float]]:
    """memory.pressure / /proc/pressure/memory -> {"some": {"avg10": .., "total": ..}, "full": ...}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("some", "full"):
            out[parts[0]] = {k: float(v) for k, v in (p.split("=", 1) for p in parts[1:] if "=" in p)}
    return out


def read_swap_of_pid(pid: int, root: str = PROC) -> int | None:
    text = procfs.read_text(pid, "status", root)
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("VmSwap:"):
            return int(line.split()[1]) * 1024
    return 0


# ----------------------------------------------------------------------------- taskstats

DELAY_FIELDS = ("swapin_delay_total", "thrashing_delay_total", "freepages_delay_total", "blkio_delay_total",
                "compact_delay_total", "wpcopy_delay_total")


class DelayReader:
    """Taskstats over generic netlink (pyroute2): per-pid delay totals in nanoseconds.
    Opened once; `read(pid)` -> {field: ns} or None when the kernel has no such pid."""

    def __init__(self):
        from pyroute2 import TaskStats  # the daemon's dependency; imported only when used

        self.ts = TaskStats()
        self.ts.bind()

    def read(self, pid: int) -> dict[str, int] | None:
        try:
            msgs = self.ts.get_pid_stat(pid)
        except Exception:  # netlink errors for an exited pid (NetlinkError ESRCH)
            return None
        for msg in msgs:
            aggr = msg.get_attr("TASKSTATS_TYPE_AGGR_PID")
            if aggr is None:
                continue
            stats = aggr.get_attr("TASKSTATS_TYPE_STATS")
            if stats is None:
                continue
            return {f: int(stats.get(f, 0) or 0) for f in DELAY_FIELDS if f in stats}
        return None

    def close(self) -> None:
        self.ts.close()
