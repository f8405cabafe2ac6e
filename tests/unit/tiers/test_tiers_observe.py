"""Parsers of the kernel's per-node counters, on their real formats."""
from __future__ import annotations

from agentd.tiers.observe import parse_maps_ends, parse_numa_maps, parse_numa_stat, parse_psi

NUMA_MAPS = """\
55b5f66df000 default file=/usr/bin/head mapped=2 mapmax=2 N0=2 kernelpagesize_kB=4
55b5f66ea000 default file=/usr/bin/head anon=1 dirty=1 active=0 N0=1 kernelpagesize_kB=4
55b5f7000000 default heap anon=30 dirty=30 N0=30 kernelpagesize_kB=4
7f0000000000 weighted interleave:0,2 anon=16384 dirty=16384 N0=12288 N2=4096 kernelpagesize_kB=4
7f1000000000 bind:2 anon=2 dirty=2 N2=2 kernelpagesize_kB=2048
7fff00000000 default stack anon=3 dirty=3 N1=3 kernelpagesize_kB=4
"""
MAPS = """\
55b5f66df000-55b5f66e1000 r--p 00000000 fe:01 123 /usr/bin/head
55b5f66ea000-55b5f66eb000 rw-p 0000b000 fe:01 123 /usr/bin/head
55b5f7000000-55b5f7021000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0004000000 rw-p 00000000 00:00 0
7f1000000000-7f1000400000 rw-p 00000000 00:00 0
7fff00000000-7fff00021000 rw-p 00000000 00:00 0 [stack]
"""


def test_numa_maps_with_vma_ends_huge_pages_and_file_mappings():
    vmas = parse_numa_maps(NUMA_MAPS, parse_maps_ends(MAPS), page=4096)
    by = {v.start: v for v in vmas}
    assert by[0x7F0000000000].pages == {0: 12288, 2: 4096} and by[0x7F0000000000].end == 0x7F0004000000
    assert by[0x7F1000000000].pages == {2: 1024}  # two 2 MiB pages = 1024 base pages
    assert [v.anon for v in vmas] == [False, False, True, True, True, True]  # file COW pages are not movable anon
    gone = parse_numa_maps(NUMA_MAPS, {0x7F0000000000: 0x7F0004000000}, page=4096)
    assert [v.start for v in gone] == [0x7F0000000000]  # mappings gone between the reads are skipped


def test_numa_stat_v2_bytes_and_v1_pages():
    v2 = parse_numa_stat("anon N0=1048576 N1=0 N2=4096\nfile N0=8192 N1=0 N2=0\n")
    assert v2["anon"] == {0: 1 << 20, 1: 0, 2: 4096} and v2["file"][0] == 8192
    v1 = parse_numa_stat("total=5365 N0=5365\nfile=343 N0=343\nanon=374 N0=374\n", page=4096)
    assert v1["anon"] == {0: 374 * 4096} and v1["total"] == {0: 5365 * 4096}


def test_psi():
    psi = parse_psi("some avg10=1.50 avg60=0.20 avg300=0.00 total=26488\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1\n")
    assert psi["some"]["avg10"] == 1.5 and psi["full"]["total"] == 1
