"""Where each GPU sits: its PCI address, NUMA node and local CPUs, read from the NVIDIA
driver's /proc files and sysfs. `root` is injectable so fixtures test it without a GPU.

    /proc/driver/nvidia/gpus/<bus>/information   "GPU UUID: GPU-..." (the UUID NVML reports)
    /sys/bus/pci/devices/<bus>/numa_node         -1 when the platform does not say
    /sys/bus/pci/devices/<bus>/local_cpulist     the CPUs closest to the device
    /sys/devices/system/node/node<N>/cpulist     a NUMA node's CPUs
    /sys/devices/system/cpu/online               every online CPU
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def parse_cpulist(text: str) -> tuple[int, ...]:
    """'0-3,8,10-11' -> (0, 1, 2, 3, 8, 10, 11); ValueError on anything else."""
    out: set[int] = set()
    text = text.strip()
    if not text:
        return ()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        a, b = int(lo), int(hi) if sep else int(lo)
        if a < 0 or b < a or b - a > 65536:
            raise ValueError(f"bad cpu range {part!r}")
        out.update(range(a, b + 1))
    return tuple(sorted(out))


def format_cpulist(cpus) -> str:
    """(0, 1, 2, 5) -> '0-2,5' (what cpuset.cpus takes)."""
    cpus = sorted(set(cpus))
    runs: list[str] = []
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        runs.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(runs)


@dataclass(frozen=True)
class GpuLocality:
    uuid: str
    bus_id: str
    numa_node: int | None  # None: the platform does not say
    local_cpus: tuple[int, ...]


@dataclass
class Topology:
    nodes: dict = field(default_factory=dict)  # NUMA node -> tuple of CPUs
    online: tuple = ()
    gpus: dict = field(default_factory=dict)  # GPU UUID -> GpuLocality
    notes: list = field(default_factory=list)  # what could not be read, one line each

    def locality(self, uuid: str) -> GpuLocality | None:
        return self.gpus.get(uuid)

    def node_of_cpu(self, cpu: int) -> int:
        for node, cpus in self.nodes.items():
            if cpu in cpus:
                return node
        return 0


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_topology(root: str = "/") -> Topology:
    topo = Topology()
    sysd = os.path.join(root, "sys/devices/system")
    online = _read(os.path.join(sysd, "cpu/online"))
    try:
        topo.online = parse_cpulist(online or "")
    except ValueError:
        topo.online = ()
    node_dir = os.path.join(sysd, "node")
    try:
        names = sorted(n for n in os.listdir(node_dir) if n.startswith("node") and n[4:].isdigit())
    except OSError:
        names = []
    for n in names:
        try:
            topo.nodes[int(n[4:])] = parse_cpulist(_read(os.path.join(node_dir, n, "cpulist")) or "")
        except ValueError:
            continue
    if not topo.nodes:
        topo.nodes = {0: topo.online or tuple(range(os.cpu_count() or 1))}
        topo.notes.append("no NUMA nodes in sysfs: one node holding every CPU assumed")
    if not topo.online:
        topo.online = tuple(sorted({c for cpus in topo.nodes.values() for c in cpus}))
    gpu_dir = os.path.join(root, "proc/driver/nvidia/gpus")
    try:
        buses = sorted(os.listdir(gpu_dir))
    except OSError:
        buses = []
        topo.notes.append("no /proc/driver/nvidia/gpus: GPU PCI locality unknown, CPUs chosen from every node")
    for bus in buses:
        info = _read(os.path.join(gpu_dir, bus, "information")) or ""
        uuid = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                     if line.strip().lower().startswith("gpu uuid")), "")
        if not uuid:
            continue
        dev = os.path.join(root, "sys/bus/pci/devices", bus.lower())
        node_text = (_read(os.path.join(dev, "numa_node")) or "").strip()
        node = int(node_text) if node_text.lstrip("-").isdigit() and int(node_text) >= 0 else None
        try:
            local = parse_cpulist(_read(os.path.join(dev, "local_cpulist")) or "")
        except ValueError:
            local = ()
        if not local and node is not None:
            local = topo.nodes.get(node, ())
        topo.gpus[uuid] = GpuLocality(uuid=uuid, bus_id=bus, numa_node=node, local_cpus=local)
    return topo
