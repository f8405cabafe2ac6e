"""Topology discovery against fixture trees of real layouts and against this machine."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agentd.tiers.topology import discover, parse_node_meminfo, parse_nodelist, parse_swaps

FIX = Path(__file__).resolve().parent / "fixtures"


def fixture(name: str):
    return discover(str(FIX / name / "sys"), str(FIX / name / "proc"))


def test_two_socket_dram_is_one_top_tier_with_slit_distances():
    t = fixture("two_socket_dram")
    assert t.source == "memory_tiering"
    assert [(x.name, x.memory_tier, x.abstract_distance, x.nodes) for x in t.tiers] == [("local", 4, 512, (0, 1))]
    assert t.nodes[0].distances == {0: 10, 1: 21} and t.nodes[1].cpus == "32-63"
    assert t.nodes[0].total_bytes == 256 << 30 and t.nodes[0].free_bytes == 200 << 30
    assert t.nodes_of("far") == [] and t.nodes_of("local") == [0, 1]
    assert t.swaps == () and t.weighted_interleave and t.interleave_weights == {0: 1, 1: 1}
    assert t.demotion_enabled is False


def test_one_cxl_node_is_a_far_tier_from_the_kernels_memory_tiers():
    t = fixture("one_cxl")
    assert [(x.name, x.memory_tier, x.nodes) for x in t.tiers] == [("local", 4, (0, 1)), ("far", 22, (2,))]
    assert t.nodes[2].has_cpu is False and t.nodes[2].cpus == ""
    assert t.nodes_of("cxl") == [2] == t.nodes_of("far") and t.nodes_of("node2") == [2] and t.nodes_of("7") == []
    assert t.demotion_enabled is True and t.nodes[2].distances[0] == 14


def test_two_cxl_nodes_share_the_far_tier():
    t = fixture("two_cxl")
    assert t.nodes_of("cxl") == [2, 3] and t.memory_nodes() == [0, 1, 2, 3]
    assert t.tiers[1].abstract_distance == 22 * 128


def test_nvme_swap_host_without_memory_tiering_falls_back_to_has_cpu():
    t = fixture("nvme_swap")
    assert t.source == "has_cpu" and t.tiers[0].memory_tier is None and t.tiers[0].nodes == (0,)
    (swap,) = t.swaps
    assert (swap.path, swap.type, swap.medium, swap.disk) == ("/dev/nvme0n1p3", "partition", "nvme", "nvme0n1")
    assert swap.size_bytes == 67108860 * 1024 and swap.used_bytes == 1 << 30 and swap.priority == -2
    assert t.zswap["enabled"] == "Y" and t.zswap["compressor"] == "zstd"
    assert t.weighted_interleave is False and t.demotion_enabled is None


def test_a_cxl_node_without_onlined_memory_is_no_memory_node():
    t = fixture("cxl_not_onlined")
    assert 2 in t.nodes and not t.nodes[2].has_memory and t.nodes[2].tier == "far"
    assert t.nodes_of("cxl") == [] and t.memory_nodes() == [0, 1]


def test_fallback_without_tiers_puts_cpuless_memory_nodes_far(tmp_path):
    shutil.copytree(FIX / "one_cxl", tmp_path / "h")
    shutil.rmtree(tmp_path / "h/sys/devices/virtual/memory_tiering")
    t = discover(str(tmp_path / "h/sys"), str(tmp_path / "h/proc"))
    assert t.source == "has_cpu" and t.nodes_of("far") == [2] and t.nodes_of("local") == [0, 1]


def test_broken_files_become_problem_lines_not_exceptions(tmp_path):
    shutil.copytree(FIX / "two_socket_dram", tmp_path / "h")
    (tmp_path / "h/sys/devices/virtual/memory_tiering/memory_tier4/nodelist").write_text("zz\n")
    (tmp_path / "h/sys/devices/system/node/node1/distance").write_text("10 x\n")
    t = discover(str(tmp_path / "h/sys"), str(tmp_path / "h/proc"))
    assert t.source == "has_cpu" and t.nodes[1].distances == {}
    assert any("nodelist" in p for p in t.problems) and any("distance" in p for p in t.problems)
    assert discover(str(tmp_path / "none"), str(tmp_path / "none")).memory_nodes() == [0]


def test_parsers():
    assert parse_nodelist("0-2,4\n") == [0, 1, 2, 4] and parse_nodelist("\n") == []
    with pytest.raises(ValueError):
        parse_nodelist("3-1")
    assert parse_node_meminfo("Node 0 MemTotal:   4 kB\nNode 0 HugePages_Total: 2\n") == {"MemTotal": 4096, "HugePages_Total": 2}
    assert parse_swaps("Filename Type Size Used Priority\n/dev/zram0 partition 100 1 100\nbad\n") == [
        ("/dev/zram0", "partition", 102400, 1024, 100)]


@pytest.mark.skipif(not os.path.isdir("/sys/devices/system/node/node0"), reason="needs a NUMA sysfs")
def test_this_machine_matches_the_kernels_own_files():
    t = discover()
    online = parse_nodelist(Path("/sys/devices/system/node/online").read_text())
    assert sorted(t.nodes) == online and t.problems == ()
    assert t.nodes_of("local")  # every host has a top tier
    swaps = Path("/proc/swaps").read_text().splitlines()[1:]
    assert len(t.swaps) == len([s for s in swaps if s.strip()])
    for n in t.nodes.values():  # (/proc/meminfo may count memory no node holds here: not compared)
        assert 0 < n.free_bytes < n.total_bytes if n.has_memory else n.total_bytes == 0
