"""Settings shared by kinds (agentd.kinds.changes.Setting): a cgroup knob and a sysctl.
Each reads and writes exactly one file; values are the file's text, stripped."""

from __future__ import annotations

import os

from agentd.cgroups import fs
from agentd.cgroups.driver import CgroupDriver


class CgroupKnob:
    """One cgroup file (cpuset.mems, cpu.weight, memory.swap.max, ...) of a cgroup under the
    daemon's root; the target is the cgroup's path relative to that root."""

    def __init__(self, driver: CgroupDriver, file: str):
        self.driver = driver
        self.file = file
        self.name = f"cgroup:{file}"

    def read(self, target: str) -> str:
        return fs.read(self.driver.knob_path(target, self.file)).strip()

    def write(self, target: str, value: str) -> None:
        fs.write(self.driver.knob_path(target, self.file), str(value))


class Sysctl:
    """One /proc/sys entry ("kernel.task_delayacct"); target is ignored ("host")."""

    def __init__(self, key: str, root: str = "/proc/sys"):
        self.key = key
        self.root = root
        self.name = f"sysctl:{key}"

    def _path(self) -> str:
        return os.path.join(self.root, *self.key.split("."))

    def read(self, target: str = "host") -> str:
        with open(self._path(), encoding="ascii") as f:
            return f.read().strip()

    def write(self, target: str, value: str) -> None:
        with open(self._path(), "w", encoding="ascii") as f:
            f.write(str(value))
