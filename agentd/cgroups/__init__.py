"""cgroup drivers: v2 (unified) and hybrid (v2 for grouping/freeze/kill/PSI, v1 controllers)."""
