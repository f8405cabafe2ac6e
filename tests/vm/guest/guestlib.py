"""Helpers for the tests that run inside the VM (imported by conftest.py and the tests:
`from guestlib import Cgroup, ...`; tests/vm/guest is on sys.path in pytest's default
import mode). Light imports only: the guest runs Python about 12x slower."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
V2_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")
ALLOC = Path(__file__).with_name("alloc.py")
MiB = 1 << 20


class Cgroup:
    """A cgroup v2 directory with small helpers."""

    def __init__(self, path: Path):
        self.path = path

    def __repr__(self) -> str:
        return f"Cgroup({str(self.path)!r})"

    def read(self, name: str) -> str:
        return (self.path / name).read_text()

    def write(self, name: str, value) -> None:
        with open(self.path / name, "w") as f:
            f.write(str(value))

    def keyed(self, name: str) -> dict[str, int]:
        """A flat keyed file (memory.events, cpu.stat, ...) as {key: int}."""
        out = {}
        for line in self.read(name).splitlines():
            k, _, v = line.partition(" ")
            out[k] = int(v)
        return out

    def pressure(self, resource: str) -> dict[str, dict[str, float]]:
        """memory.pressure etc. as {"some": {"avg10": .., "total": ..}, "full": {..}}."""
        out = {}
        for line in self.read(f"{resource}.pressure").splitlines():
            kind, *fields = line.split()
            out[kind] = {k: float(v) for k, v in (f.split("=") for f in fields)}
        return out

    def enable(self, controllers=V2_CONTROLLERS) -> None:
        self.write("cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))

    def child(self, name: str) -> "Cgroup":
        p = self.path / name
        p.mkdir()
        return Cgroup(p)

    def pids(self) -> list[int]:
        return [int(x) for x in self.read("cgroup.procs").split()]

    def populated(self) -> bool:
        return self.keyed("cgroup.events").get("populated", 0) == 1

    def popen(self, argv, **kw) -> subprocess.Popen:
        """Start argv as a member of this cgroup from its first instruction."""
        procs = str(self.path / "cgroup.procs")

        def join():
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

        return subprocess.Popen(argv, preexec_fn=join, **kw)

    def remove(self, timeout: float = 10.0) -> None:
        """Kill every process below this cgroup and remove it with its children."""
        if not self.path.exists():
            return
        for sub in sorted((p for p in self.path.rglob("*") if p.is_dir()),
                          key=lambda p: len(p.parts), reverse=True):
            Cgroup(sub).remove(timeout)
        try:
            self.write("cgroup.kill", 1)
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        while self.populated() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.path.rmdir()


def alloc_argv(mb: int, *, step_mb: int = 1, hold: bool = False) -> list[str]:
    """A light allocator (python -S, no site: fast start in the emulated guest) that
    touches `mb` MiB of anonymous memory, printing its progress; with hold=True it then
    prints "done" and waits for stdin to close."""
    return [sys.executable, "-S", str(ALLOC), str(mb), str(step_mb), "1" if hold else "0"]


def parse_cpulist(text: str) -> list[int]:
    """"0-2,5" -> [0, 1, 2, 5] (cpulist/nodelist format); "" -> []."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out
