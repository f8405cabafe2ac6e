"""Writes the fixture trees under fixtures/ (committed; rerun only to change them).

Each tree is the subset of a real host's /sys and /proc that agentd.tiers.topology reads,
with the kernel's file formats: a 2-socket DRAM host (6.8 kernel, memory tiering, all DRAM
in tier 4), a host with one and one with two CXL expanders (CPU-less nodes in memory tier
22, as HMAT/CDAT put them on Sapphire Rapids), a 5.15 host with NVMe swap and zswap (no
memory tiering: the has_cpu fallback), and a host whose CXL node is online but has no
memory onlined (the "empty CXL node").

    python tests/unit/tiers/make_tiers_fixtures.py
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent / "fixtures"
GIB = 1 << 30


def w(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def meminfo(n: int, total: int, free: int) -> str:
    kb = lambda b: b // 1024  # noqa: E731
    return (f"Node {n} MemTotal:       {kb(total):>10} kB\nNode {n} MemFree:        {kb(free):>10} kB\n"
            f"Node {n} MemUsed:        {kb(total - free):>10} kB\nNode {n} SwapCached:            0 kB\n"
            f"Node {n} Active:          {kb((total - free) // 2):>10} kB\n")


def host(name: str, nodes: dict, dist: list[list[int]], tiers: dict | None, swaps: str = "",
         demotion: str | None = "false", weights: bool = True, zswap: dict | None = None, disks: dict | None = None,
         has_memory: str | None = None):
    root = HERE / name
    shutil.rmtree(root, ignore_errors=True)
    nd = "sys/devices/system/node"
    ids = sorted(nodes)
    w(root, f"{nd}/online", ",".join(map(str, ids)) + "\n")
    w(root, f"{nd}/possible", ",".join(map(str, ids)) + "\n")
    w(root, f"{nd}/has_cpu", ",".join(str(n) for n in ids if nodes[n]["cpus"]) + "\n")
    w(root, f"{nd}/has_memory", (has_memory if has_memory is not None
                                 else ",".join(str(n) for n in ids if nodes[n]["total"])) + "\n")
    for i, n in enumerate(ids):
        spec = nodes[n]
        w(root, f"{nd}/node{n}/meminfo", meminfo(n, spec["total"], spec["free"]))
        w(root, f"{nd}/node{n}/distance", " ".join(map(str, dist[i])) + "\n")
        w(root, f"{nd}/node{n}/cpulist", spec["cpus"] + "\n")
    for tid, nl in (tiers or {}).items():
        w(root, f"sys/devices/virtual/memory_tiering/memory_tier{tid}/nodelist", nl + "\n")
    if demotion is not None:
        w(root, "sys/kernel/mm/numa/demotion_enabled", demotion + "\n")
    if weights:
        for n in ids:
            w(root, f"sys/kernel/mm/mempolicy/weighted_interleave/node{n}", "1\n")
    for k, v in (zswap or {"enabled": "N", "compressor": "lzo", "max_pool_percent": "20"}).items():
        w(root, f"sys/module/zswap/parameters/{k}", v + "\n")
    for disk, spec in (disks or {}).items():
        w(root, f"sys/block/{disk}/queue/rotational", spec.get("rotational", "0") + "\n")
        if spec.get("transport"):
            w(root, f"sys/block/{disk}/device/transport", spec["transport"] + "\n")
        for part in spec.get("parts", ()):
            w(root, f"sys/block/{disk}/{part}/partition", part[-1] + "\n")
    w(root, "proc/swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n" + swaps)


def main() -> None:
    sock = lambda lo, hi: {"cpus": f"{lo}-{hi}", "total": 256 * GIB, "free": 200 * GIB}  # noqa: E731
    cxl = lambda size: {"cpus": "", "total": size, "free": size - GIB}  # noqa: E731
    sata = {"sda": {"rotational": "1", "parts": ["sda1"]}}
    host("two_socket_dram", {0: sock(0, 31), 1: sock(32, 63)}, [[10, 21], [21, 10]], {4: "0-1"}, disks=sata)
    host("one_cxl", {0: sock(0, 31), 1: sock(32, 63), 2: cxl(128 * GIB)},
         [[10, 21, 14], [21, 10, 24], [14, 24, 10]], {4: "0-1", 22: "2"}, demotion="true")
    host("two_cxl", {0: sock(0, 31), 1: sock(32, 63), 2: cxl(128 * GIB), 3: cxl(128 * GIB)},
         [[10, 21, 14, 24], [21, 10, 24, 14], [14, 24, 10, 26], [24, 14, 26, 10]], {4: "0-1", 22: "2-3"},
         demotion="true")
    host("nvme_swap", {0: {"cpus": "0-15", "total": 64 * GIB, "free": 20 * GIB}}, [[10]], None, demotion=None,
         weights=False,
         swaps="/dev/nvme0n1p3                          partition\t67108860\t1048576\t\t-2\n",
         zswap={"enabled": "Y", "compressor": "zstd", "max_pool_percent": "20"},
         disks={"nvme0n1": {"rotational": "0", "transport": "pcie", "parts": ["nvme0n1p1", "nvme0n1p3"]},
                "sda": {"rotational": "1"}})
    # CXL expander whose memory is not onlined (dax device not onlined as system-ram): the
    # node is online, CPU-less, with no memory.
    host("cxl_not_onlined", {0: sock(0, 31), 1: sock(32, 63), 2: {"cpus": "", "total": 0, "free": 0}},
         [[10, 21, 14], [21, 10, 24], [14, 24, 10]], {4: "0-1"}, demotion="true", has_memory="0-1")


if __name__ == "__main__":
    main()
    print("fixtures written under", os.path.relpath(HERE))
