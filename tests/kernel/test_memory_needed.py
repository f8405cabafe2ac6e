"""What of a cgroup's charged memory reclaim cannot free, as the budget's fit test reads it
(driver.memory_stat + unreclaimable_bytes, issue 10), against the real kernel: an agent
whose runtime holds anon memory and shmem and has written a file is charged for the page
cache too, the figure leaves that out, and the kernel itself proves it: the agent's limit
set just above the figure is accepted by reclaiming the page cache, and the process lives."""

from __future__ import annotations

import pytest

from agentd.cgroups.driver import Limits
from agentd.cgroups.parse import unreclaimable_bytes

from cgroup_fixtures import children, driver, needs_root, wait_for  # noqa: F401

pytestmark = [pytest.mark.kernel, needs_root]

MiB = 1 << 20

# 48 MiB anon, 16 MiB shmem (a memfd: no swap, so it stays), 96 MiB of a file written and
# synced (clean page cache: reclaim drops it at once).
RUNTIME = """
import os, sys
anon = [bytearray(b"a" * (1 << 20)) for _ in range(48)]
shm = os.memfd_create("needed-test")
for _ in range(16):
    os.write(shm, b"s" * (1 << 20))
with open(sys.argv[1], "wb") as f:
    for _ in range(96):
        f.write(b"f" * (1 << 20))
    f.flush()
    os.fsync(f.fileno())
print("ready", flush=True)
sys.stdin.readline()
"""


def test_page_cache_is_charged_but_not_needed_and_reclaim_proves_it(driver, children, tmp_path):
    agent, runtime = "agents/a1", "agents/a1/runtime"
    driver.create(runtime)
    p = children.python(RUNTIME.replace("sys.argv[1]", repr(str(tmp_path / "written"))))
    assert driver.move(p.pid, runtime)
    children.go(p)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()

    current = driver.stats(agent).memory_current
    stat = driver.memory_stat(agent)  # the subtree's: the process sits in runtime/
    if not stat:
        pytest.skip("no memory controller on this host's hierarchies")
    needed = unreclaimable_bytes(current, stat)
    assert current >= 150 * MiB  # the kernel charges the page cache to the agent
    assert 64 * MiB <= needed <= 64 * MiB + 40 * MiB  # anon + shmem (+ the interpreter's own)
    assert needed <= current - 90 * MiB  # the written file's pages are left out
    assert unreclaimable_bytes(driver.stats(runtime).memory_current, driver.memory_stat(runtime)) >= 64 * MiB

    # The kernel agrees: a limit just above the figure is reached by reclaim, nobody is killed.
    limit = needed + 16 * MiB
    driver.apply_limits(agent, Limits(memory_max=limit))
    assert wait_for(lambda: driver.stats(agent).memory_current <= limit, timeout_s=10)
    assert p.poll() is None
    assert driver.stats(agent).memory_events.get("oom_kill", 0) == 0
    assert unreclaimable_bytes(driver.stats(agent).memory_current, driver.memory_stat(agent)) >= 64 * MiB
