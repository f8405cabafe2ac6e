"""GPU PCI locality from fixture /proc/driver/nvidia and sysfs trees."""
import os

import pytest

from agentd.colocation.topology import format_cpulist, parse_cpulist, read_topology


def write(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_cpulists():
    assert parse_cpulist("0-3,8,10-11\n") == (0, 1, 2, 3, 8, 10, 11)
    assert format_cpulist((5, 0, 1, 2, 8, 9)) == "0-2,5,8-9"
    assert parse_cpulist("") == ()
    for bad in ("3-1", "x", "-2"):
        with pytest.raises(ValueError):
            parse_cpulist(bad)


def test_two_node_host_with_two_gpus(tmp_path):
    root = str(tmp_path)
    write(root, "sys/devices/system/cpu/online", "0-7\n")
    write(root, "sys/devices/system/node/node0/cpulist", "0-3\n")
    write(root, "sys/devices/system/node/node1/cpulist", "4-7\n")
    for bus, uuid, node, cpus in (("0000:17:00.0", "GPU-aaaa", "0", "0-3"), ("0000:B1:00.0", "GPU-bbbb", "1", "")):
        write(root, f"proc/driver/nvidia/gpus/{bus}/information",
              f"Model: \t\t NVIDIA H100\nIRQ:   \t\t 100\nGPU UUID: \t {uuid}\nBus Location: \t {bus}\n")
        write(root, f"sys/bus/pci/devices/{bus.lower()}/numa_node", node + "\n")
        write(root, f"sys/bus/pci/devices/{bus.lower()}/local_cpulist", cpus + "\n")
    t = read_topology(root)
    assert t.nodes == {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)} and t.online == tuple(range(8))
    assert t.locality("GPU-aaaa").numa_node == 0 and t.locality("GPU-aaaa").local_cpus == (0, 1, 2, 3)
    # no local_cpulist: the node's CPUs
    assert t.locality("GPU-bbbb").numa_node == 1 and t.locality("GPU-bbbb").local_cpus == (4, 5, 6, 7)
    assert t.notes == []


def test_no_driver_files_says_so_and_still_knows_the_cpus(tmp_path):
    root = str(tmp_path)
    write(root, "sys/devices/system/cpu/online", "0-1\n")
    t = read_topology(root)
    assert t.gpus == {} and t.nodes == {0: (0, 1)}
    assert any("locality unknown" in n for n in t.notes) and any("no NUMA nodes" in n for n in t.notes)


def test_this_host():
    t = read_topology("/")
    assert t.online and 0 in t.nodes
