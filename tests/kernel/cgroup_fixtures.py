"""Shared fixtures for the cgroup kernel tests: a private driver root that is always removed,
and child processes that wait for "go" on stdin so they can be moved before they act."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from agentd.cgroups import fs
from agentd.cgroups.detect import open_driver


def _is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not _is_root(), reason="cgroup kernel tests need root")


class Children:
    """Popen handles that are all killed at teardown, even when a test fails."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def python(self, code: str, **kw) -> subprocess.Popen:
        """A Python child that blocks until it reads a line on stdin, then runs code."""
        wrapped = "import sys\nsys.stdin.readline()\n" + code
        p = subprocess.Popen(
            [sys.executable, "-c", wrapped],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,
        )
        self.procs.append(p)
        return p

    def cmd(self, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        return p

    @staticmethod
    def go(p: subprocess.Popen) -> None:
        p.stdin.write("go\n")
        p.stdin.flush()

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass


def _force_remove(root_dir: str) -> None:
    """Last resort at teardown: thaw, SIGKILL whatever is left, rmdir deepest first."""
    if not os.path.isdir(root_dir):
        return
    freeze = os.path.join(root_dir, "cgroup.freeze")
    if os.path.exists(freeze):
        try:
            fs.write(freeze, "0")
        except OSError:
            pass
    for _ in range(50):
        pids = fs.subtree_pids(root_dir)
        if not pids:
            break
        fs.signal_pids(pids, signal.SIGKILL)
        time.sleep(0.05)
    fs.rmdir_tree(root_dir)


@pytest.fixture
def children():
    c = Children()
    yield c
    c.cleanup()


def _own_v2_path() -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return "/"


@pytest.fixture
def driver(children):
    """A driver rooted at <own cgroup>/agentd-test-<random> in every hierarchy; teardown kills
    what is left, removes every cgroup it created and checks that none remains."""
    leaf = f"agentd-test-{uuid.uuid4().hex[:8]}"
    drv = open_driver(leaf_name=leaf)
    yield from _cleanup_after(drv, children)


@pytest.fixture
def unified_v2_driver(children):
    """A V2Driver on whatever cgroup2 mount this host has (on a hybrid host the unified one,
    with no controllers), rooted below this process's own v2 cgroup; cleaned up like driver."""
    from agentd.cgroups.detect import detect_layout
    from agentd.cgroups.v2 import V2Driver

    with open("/proc/self/mounts") as f:
        mounts = f.read()
    with open("/proc/self/cgroup") as f:
        layout = detect_layout(mounts, f.read())
    root = _own_v2_path().rstrip("/") + f"/agentd-test-v2-{uuid.uuid4().hex[:8]}"
    drv = V2Driver(layout.unified_mount, root)
    yield from _cleanup_after(drv, children)


def _cleanup_after(drv, children):
    trees = [drv.tree, *drv.v1.values()] if hasattr(drv, "v1") else [drv.tree]
    root_dirs = [t.root_dir for t in trees]
    try:
        yield drv
    finally:
        try:
            for t in trees:
                freeze = os.path.join(t.root_dir, "cgroup.freeze")
                if os.path.exists(freeze):
                    fs.write(freeze, "0")
            drv.kill("")
        except Exception:
            pass
        children.cleanup()
        for d in root_dirs:
            _force_remove(d)
        left = [d for d in root_dirs if os.path.exists(d)]
        assert not left, f"test cgroups left behind: {left}"


def wait_for(pred, timeout_s: float = 5.0, step_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(step_s)


def proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat, None when the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def proc_cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime
