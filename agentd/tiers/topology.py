"""The host's memory tiers, read from sysfs and procfs (pure reader; every root injectable).

Tiers come from the kernel's memory tiering (/sys/devices/virtual/memory_tiering/
memory_tier<N>/nodelist; tier N covers abstract distances [N*128, N*128+127], DRAM sits in
tier 4, slower memory such as CXL in higher-numbered tiers). Kernels without it: nodes with
CPUs and memory are the top tier, CPU-less memory nodes the far tier (CXL expanders appear
that way). Plus what the planner needs around them: node sizes and free memory, SLIT
distances, swap devices and what backs them (NVMe, SSD, disk, zram, file), zswap,
demotion_enabled and weighted interleave.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field

MEMTIER_CHUNK_BITS = 7  # include/linux/memory-tiers.h: a tier id is adistance >> 7
LOCAL = "local"
FAR = "far"
CXL = "cxl"  # alias of far: what users call CPU-less expander memory


@dataclass(frozen=True)
class Node:
    id: int
    has_cpu: bool
    has_memory: bool
    cpus: str  # cpulist text, "" when CPU-less
    total_bytes: int
    free_bytes: int
    distances: dict[int, int]  # SLIT: node id -> distance
    memory_tier: int | None  # kernel tier id (None when the kernel has no memory tiering)
    tier: str  # "local" (top tier) or "far"


@dataclass(frozen=True)
class SwapDevice:
    path: str
    type: str  # partition | file
    size_bytes: int
    used_bytes: int
    priority: int
    medium: str  # nvme | ssd | hdd | zram | unknown
    disk: str  # the whole disk under /sys/block ("" when not found)


@dataclass(frozen=True)
class Tier:
    name: str  # local | far
    memory_tier: int | None
    abstract_distance: int | None  # lower bound of the tier's adistance chunk
    nodes: tuple[int, ...]


@dataclass(frozen=True)
class Topology:
    nodes: dict[int, Node]
    tiers: tuple[Tier, ...]  # top first
    source: str  # "memory_tiering" | "has_cpu"
    swaps: tuple[SwapDevice, ...] = ()
    zswap: dict = field(default_factory=dict)  # enabled, compressor, max_pool_percent ("" if absent)
    zram: tuple[str, ...] = ()  # zram devices present (swap or not)
    demotion_enabled: bool | None = None
    weighted_interleave: bool = False
    interleave_weights: dict[int, int] = field(default_factory=dict)
    problems: tuple[str, ...] = ()  # files that could not be read or parsed

    # ---- queries the planner uses
    def memory_nodes(self) -> list[int]:
        return sorted(n.id for n in self.nodes.values() if n.has_memory)

    def nodes_of(self, tier: str) -> list[int]:
        """Memory nodes of a tier name: local, far/cxl, or node<N> / N."""
        name = tier.lower()
        if name == CXL:
            name = FAR
        if name in (LOCAL, FAR):
            return sorted(n.id for n in self.nodes.values() if n.tier == name and n.has_memory)
        m = re.fullmatch(r"(?:node)?(\d+)", name)
        if m and int(m.group(1)) in self.nodes:
            return [int(m.group(1))]
        return []

    def swap_bytes(self) -> int:
        return sum(s.size_bytes for s in self.swaps)

    def to_json(self) -> dict:
        out = asdict(self)
        out["nodes"] = [asdict(n) | {"distances": {str(k): v for k, v in n.distances.items()}}
                        for n in sorted(self.nodes.values(), key=lambda n: n.id)]
        out["interleave_weights"] = {str(k): v for k, v in self.interleave_weights.items()}
        out["swap_total_bytes"] = self.swap_bytes()
        return out


# ----------------------------------------------------------------------------- parsing


def parse_nodelist(text: str) -> list[int]:
    """The kernel's list format: "0-2,4" -> [0, 1, 2, 4]; "" -> []."""
    out: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if b < a or b - a > 4096:
            raise ValueError(f"bad node range {part!r}")
        out.extend(range(a, b + 1))
    return out


def parse_node_meminfo(text: str) -> dict[str, int]:
    """node<N>/meminfo ("Node 0 MemTotal:  6252748 kB") -> {"MemTotal": bytes, ...}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "Node" and parts[2].endswith(":"):
            try:
                value = int(parts[3])
            except ValueError:
                continue
            out[parts[2][:-1]] = value * 1024 if len(parts) > 4 and parts[4] == "kB" else value
    return out


def parse_swaps(text: str) -> list[tuple[str, str, int, int, int]]:
    """/proc/swaps -> (path, type, size bytes, used bytes, priority)."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5:
            continue
        try:
            out.append((parts[0].replace("\\040", " "), parts[1], int(parts[2]) * 1024, int(parts[3]) * 1024,
                        int(parts[4])))
        except ValueError:
            continue
    return out


class _Reader:
    def __init__(self, sys_root: str, proc_root: str):
        self.sys_root = sys_root
        self.proc_root = proc_root
        self.problems: list[str] = []

    def sys(self, *parts: str) -> str:
        return os.path.join(self.sys_root, *parts)

    def text(self, path: str, default: str | None = None) -> str | None:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return default
        except OSError as exc:
            self.problems.append(f"{path}: {exc.strerror}")
            return default

    def nodelist(self, path: str) -> list[int] | None:
        text = self.text(path)
        if text is None:
            return None
        try:
            return parse_nodelist(text)
        except ValueError as exc:
            self.problems.append(f"{path}: {exc}")
            return None


def _disk_of(r: _Reader, dev: str) -> str:
    """The whole disk a block device (or partition) belongs to, by name under /sys/block."""
    if os.path.isdir(r.sys("block", dev)):
        return dev
    try:
        disks = sorted(os.listdir(r.sys("block")))
    except OSError:
        return ""
    for disk in disks:
        if os.path.isdir(r.sys("block", disk, dev)):
            return disk
    return ""


def _medium(r: _Reader, disk: str) -> str:
    if not disk:
        return "unknown"
    if disk.startswith("zram"):
        return "zram"
    # NVMe namespaces are nvme<c>n<ns>; their device/ is the controller (transport pcie/tcp/rdma)
    if disk.startswith("nvme") or os.path.exists(r.sys("block", disk, "device", "transport")):
        return "nvme"
    rot = (r.text(r.sys("block", disk, "queue", "rotational")) or "").strip()
    return {"0": "ssd", "1": "hdd"}.get(rot, "unknown")


def _swap_disk(r: _Reader, path: str, kind: str) -> str:
    if kind == "partition" and path.startswith("/dev/"):
        return _disk_of(r, os.path.basename(os.path.realpath(path) if r.sys_root == "/sys" else path))
    if kind == "file" and r.proc_root == "/proc":
        # a swap file: the block device of its file system (major:minor in /sys/dev/block)
        try:
            st = os.stat(path)
        except OSError:
            return ""
        link = r.sys("dev", "block", f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
        return _disk_of(r, os.path.basename(os.path.realpath(link))) if os.path.exists(link) else ""
    return ""


def discover(sys_root: str = "/sys", proc_root: str = "/proc") -> Topology:
    """Read the topology; a missing or unreadable file becomes a problem line, not an error."""
    r = _Reader(sys_root, proc_root)
    node_dir = r.sys("devices", "system", "node")
    online = r.nodelist(os.path.join(node_dir, "online"))
    if online is None:  # a kernel without NUMA: one node 0 holding everything
        online = [0]
    has_cpu = set(r.nodelist(os.path.join(node_dir, "has_cpu")) or [])
    has_memory_list = r.nodelist(os.path.join(node_dir, "has_memory"))
    has_memory = set(online if has_memory_list is None else has_memory_list)
    if not has_cpu and not os.path.exists(os.path.join(node_dir, "has_cpu")):
        has_cpu = set(online)

    # memory tiers (abstract distance); kernels before 6.1 have none
    tier_of: dict[int, int] = {}
    tier_dir = r.sys("devices", "virtual", "memory_tiering")
    try:
        tier_names = [d for d in os.listdir(tier_dir) if re.fullmatch(r"memory_tier\d+", d)]
    except OSError:
        tier_names = []
    for name in tier_names:
        tid = int(name[len("memory_tier"):])
        for n in r.nodelist(os.path.join(tier_dir, name, "nodelist")) or []:
            tier_of[n] = tid
    source = "memory_tiering" if tier_of else "has_cpu"
    if tier_of:
        top = min(tier_of[n] for n in tier_of)
        label = {n: (LOCAL if t == top else FAR) for n, t in tier_of.items()}
    else:
        label = {n: (LOCAL if n in has_cpu else FAR) for n in online}

    nodes: dict[int, Node] = {}
    for n in online:
        nd = os.path.join(node_dir, f"node{n}")
        mem = parse_node_meminfo(r.text(os.path.join(nd, "meminfo"), "") or "")
        dist_text = (r.text(os.path.join(nd, "distance"), "") or "").split()
        distances: dict[int, int] = {}
        if len(dist_text) == len(online):
            try:
                distances = {o: int(d) for o, d in zip(online, dist_text)}
            except ValueError:
                r.problems.append(f"{nd}/distance: not a list of integers")
        cpus = (r.text(os.path.join(nd, "cpulist"), "") or "").strip()
        nodes[n] = Node(id=n, has_cpu=n in has_cpu, has_memory=n in has_memory, cpus=cpus,
                        total_bytes=mem.get("MemTotal", 0), free_bytes=mem.get("MemFree", 0),
                        distances=distances, memory_tier=tier_of.get(n), tier=label.get(n, LOCAL if n in has_cpu else FAR))

    tiers: dict[tuple, list[int]] = {}
    for node in nodes.values():
        if node.has_memory:
            tiers.setdefault((node.memory_tier if node.memory_tier is not None else (0 if node.tier == LOCAL else 1),
                              node.tier, node.memory_tier), []).append(node.id)
    tier_list = tuple(Tier(name=t[1], memory_tier=t[2],
                           abstract_distance=(t[2] << MEMTIER_CHUNK_BITS) if t[2] is not None else None,
                           nodes=tuple(sorted(ns))) for t, ns in sorted(tiers.items()))

    swaps = []
    for path, kind, size, used, prio in parse_swaps(r.text(os.path.join(proc_root, "swaps"), "") or ""):
        disk = _swap_disk(r, path, kind)
        swaps.append(SwapDevice(path=path, type=kind, size_bytes=size, used_bytes=used, priority=prio,
                                medium=_medium(r, disk) if disk else ("zram" if "zram" in path else "unknown"), disk=disk))

    zswap = {}
    zdir = r.sys("module", "zswap", "parameters")
    if os.path.isdir(zdir):
        for key in ("enabled", "compressor", "max_pool_percent", "shrinker_enabled"):
            value = r.text(os.path.join(zdir, key))
            if value is not None:
                zswap[key] = value.strip()
    try:
        zram = tuple(sorted(d for d in os.listdir(r.sys("block")) if d.startswith("zram")))
    except OSError:
        zram = ()

    demotion = r.text(r.sys("kernel", "mm", "numa", "demotion_enabled"))
    wi_dir = r.sys("kernel", "mm", "mempolicy", "weighted_interleave")
    weights: dict[int, int] = {}
    if os.path.isdir(wi_dir):
        for name in os.listdir(wi_dir):
            m = re.fullmatch(r"node(\d+)", name)
            value = (r.text(os.path.join(wi_dir, name)) or "").strip() if m else ""
            if m and value.isdigit():
                weights[int(m.group(1))] = int(value)

    return Topology(nodes=nodes, tiers=tier_list, source=source, swaps=tuple(swaps), zswap=zswap, zram=zram,
                    demotion_enabled=None if demotion is None else demotion.strip() in ("true", "1", "Y"),
                    weighted_interleave=os.path.isdir(wi_dir), interleave_weights=weights,
                    problems=tuple(r.problems))
