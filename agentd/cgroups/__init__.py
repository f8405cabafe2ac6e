"""cgroup drivers: v2 (unified) and hybrid (v2 for grouping/freeze/kill/PSI, v1 controllers).

driver.py   the interface both drivers implement (CgroupDriver, Limits, CgroupStats, ...)
detect.py   open_driver(): v2 or hybrid from /proc/self/mounts, agentd's root in each hierarchy;
            move_self_to_daemon_cgroup()
v2.py       V2Driver: controllers enabled top-down, processes only in leaves
hybrid.py   HybridDriver: v1 memory (oom_pause + eventfd), cpu, cpuset, pids beside the v2 tree
unified.py  what both do in a v2 hierarchy: membership, freeze, kill, events, PSI, cgroup ids
psi.py      PSI triggers and PriWatcher (POLLPRI fds into an asyncio loop through one thread)
parse.py    pure parsers of cgroupfs formats;  fs.py  path checks, reads, writes, rmdir
"""
