"""GPU process attribution against the real kernel: a process in its own pid namespace
(NVML would report its host pid) and a process in an agentd-shaped v2 cgroup."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from agentd.gpu.procinfo import identify
from agentd.gpu.fake_nvml import FakeNvmlBackend
from agentd.gpu.sampler import NvmlSampler

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(os.geteuid() != 0, reason="pid namespaces and cgroups need root")]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(x) for x in (task / "children").read_text().split()]
    return out


def test_a_container_pid_is_mapped_to_its_host_pid():
    unshare = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "30"])
    try:
        host_pid = None
        for _ in range(500):  # until the forked child has exec'd sleep (its comm says so)
            inner = _children(unshare.pid)
            if inner and Path(f"/proc/{inner[0]}/comm").read_text().strip() == "sleep":
                host_pid = inner[0]
                break
            time.sleep(0.01)
        assert host_pid, "unshare did not start sleep in its pid namespace"
        ident = identify(host_pid)
        assert ident.ns_pids == (host_pid, 1) and ident.container_pid == 1
        # NVML reports the host pid; the sampler shows both
        snap = NvmlSampler(backend=FakeNvmlBackend(gpus=1, processes={0: [(host_pid, 2**30)]})).sample()
        p = snap.processes()[0]
        assert p.host_pid == host_pid and p.container_pid == 1 and p.ns_pids == [host_pid, 1]
        assert p.comm == "sleep"
    finally:
        unshare.send_signal(signal.SIGKILL)
        unshare.wait()


def _v2_mount_and_own_path() -> tuple[Path, str]:
    mount = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[sep + 1] == "cgroup2":
            mount = Path(fields[4])
            break
    own = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
               if line.startswith("0::"))
    if mount is None:
        pytest.skip("no cgroup2 mount on this host")
    return mount, own


def test_the_unit_is_the_cgroup_under_agents():
    mount, own = _v2_mount_and_own_path()
    top = mount / own.lstrip("/") / f"agentd-gpu-test-{uuid.uuid4().hex[:8]}"
    leaf = top / "agents" / "a1" / "tools" / "0003-pytest"
    leaf.mkdir(parents=True)
    child = subprocess.Popen(["sleep", "30"])
    try:
        (leaf / "cgroup.procs").write_text(str(child.pid))
        ident = identify(child.pid)
        assert ident.cgroup.endswith("/agents/a1/tools/0003-pytest")
        assert ident.unit == "agents/a1/tools/0003-pytest"
        snap = NvmlSampler(backend=FakeNvmlBackend(gpus=1, processes={0: [(child.pid, 1)]})).sample()
        assert snap.processes()[0].unit == "agents/a1/tools/0003-pytest"
    finally:
        child.kill()
        child.wait()
        for d in (leaf, leaf.parent, leaf.parent.parent, leaf.parent.parent.parent, top):
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.01)
