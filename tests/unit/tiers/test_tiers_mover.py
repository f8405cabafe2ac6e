"""The page mover's accounting against a fake move_pages that behaves like the kernel with
huge pages: moving any page of a 2 MiB folio moves all 512 of them, and the folio's other
pages in the same call report EBUSY. The kernel-facing path runs for real in the VM."""
from __future__ import annotations

import errno

from agentd.tiers import actuators, numa
from agentd.tiers.model import Move

P = 4096
HUGE = 512


class FakeKernel:
    def __init__(self, npages: int, base: int, node: int = 0, huge_from: int = 0):
        self.base = base
        self.nodes = {base + i * P: node for i in range(npages)}
        self.huge_from = huge_from  # pages from this index on are in 2 MiB folios
        self.calls = 0

    def folio(self, a):
        i = (a - self.base) // P
        if i < self.huge_from:
            return [a]
        start = self.base + (i - (i - self.huge_from) % HUGE) * P
        return [start + j * P for j in range(HUGE) if start + j * P in self.nodes]

    def move_pages(self, pid, addrs, nodes, move_all=False):
        self.calls += 1
        if pid == 99:
            raise numa.NumaError("move_pages", errno.ESRCH)
        if nodes is None:
            return [self.nodes.get(a, -errno.ENOENT) for a in addrs]
        targets = [nodes] * len(addrs) if isinstance(nodes, int) else nodes
        out, busy = [], set()
        for a, t in zip(addrs, targets):
            if a in busy:
                out.append(-errno.EBUSY)
                continue
            for b in self.folio(a):
                self.nodes[b] = t
                busy.add(b)
            out.append(t)
        return out


def test_huge_pages_straddling_batches_are_counted_once_and_restored(monkeypatch):
    base = 0x7F0000000000 + 100 * P  # not 2 MiB aligned: folios straddle the mover's batches
    k = FakeKernel(4 * HUGE, base, huge_from=100)
    monkeypatch.setattr(numa, "move_pages", k.move_pages)
    res = actuators.move_ranges(1, [Move(base, base + 4 * HUGE * P, 2, 0)], rate_mb_s=0)
    assert res.moved_bytes == 4 * HUGE * P and set(k.nodes.values()) == {2}
    assert sum(n for _, n, _ in res.runs) == 4 * HUGE and not res.errors
    back = actuators.restore_runs(1, res.runs)
    assert set(k.nodes.values()) == {0} and back.moved_bytes == 4 * HUGE * P


def test_rate_limit_sleeps_for_the_bytes_moved():
    now = [0.0]
    slept = []
    lim = actuators.RateLimiter(10, clock=lambda: now[0], sleep=lambda s: (slept.append(s), now.__setitem__(0, now[0] + s)))
    for _ in range(10):
        lim.account(2 << 20)  # 20 MiB at 10 MB/s: 2 s
    assert abs(now[0] - 2.0) < 1e-9 and slept
    free = actuators.RateLimiter(0, clock=lambda: 0.0, sleep=lambda s: 1 / 0)
    free.account(1 << 30)  # unlimited never sleeps


def test_an_exited_process_stops_the_move(monkeypatch):
    k = FakeKernel(8, 0x1000 * P)
    monkeypatch.setattr(numa, "move_pages", k.move_pages)
    res = actuators.move_ranges(99, [Move(0x1000 * P, 0x1008 * P, 2, 0)], rate_mb_s=0)
    assert res.exited and res.moved_bytes == 0


class FileDriver:
    """knob_path onto files in a folder; memory.reclaim refuses keys like an old kernel."""

    def __init__(self, root, refuse_keys: bool):
        self.root = root
        self.refuse_keys = refuse_keys

    def knob_path(self, rel, name):
        return str(self.root / name)


def test_reclaim_step_with_swappiness_and_the_fallback_for_kernels_without_it(tmp_path, monkeypatch):
    from agentd.cgroups import fs

    (tmp_path / "memory.reclaim").write_text("")
    written = []

    def write(path, value):
        if " swappiness=" in value and refuse[0]:
            raise OSError(errno.EINVAL, "Invalid argument")
        written.append(value)

    refuse = [False]
    monkeypatch.setattr(fs, "write", write)
    drv = FileDriver(tmp_path, False)
    assert actuators.reclaim(drv, "jobs/a", 8 << 20, swappiness=100) == (8 << 20, "memory.reclaim swappiness=100")
    assert written == [f"{8 << 20} swappiness=100"]
    refuse[0] = True
    got, how = actuators.reclaim(drv, "jobs/a", 8 << 20, swappiness=100)
    assert got == 8 << 20 and "takes no swappiness" in how and written[-1] == str(8 << 20)
