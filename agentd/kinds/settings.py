"""Settings shared by kinds (agentd.kinds.changes.Setting): a cgroup knob and a sysctl.
Each reads and writes exactly one file; values are the file's text, stripped."""

from __future__ import annotations

import errno
import os

from agentd.cgroups import fs
from agentd.cgroups.driver import CgroupDriver


class CgroupKnob:
    """One cgroup file (cpuset.mems, cpu.weight, memory.swap.max, ...) of a cgroup under the
    daemon's root; the target is the cgroup's path relative to that root.

    An empty cpuset can be put back too: cpuset.cpus/mems of a v2 cgroup read "" while it
    inherits its parent's. A zero-length write() never reaches the kernel, so "" is written
    as a newline; and the kernel refuses an empty cpuset while the cgroup has tasks (ENOSPC),
    so then the parent's effective set is written: the same CPUs or nodes, spelled out."""

    def __init__(self, driver: CgroupDriver, file: str):
        self.driver = driver
        self.file = file
        self.name = f"cgroup:{file}"

    def read(self, target: str) -> str:
        return fs.read(self.driver.knob_path(target, self.file)).strip()

    def write(self, target: str, value: str) -> None:
        path = self.driver.knob_path(target, self.file)
        value = str(value)
        if value or not self.file.startswith("cpuset."):
            fs.write(path, value)
            return
        try:
            fs.write(path, "\n")
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            parent = target.rsplit("/", 1)[0] if "/" in target else ""
            fs.write(path, fs.read(self.driver.knob_path(parent, self.file + ".effective")).strip())


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
