"""Thin effects: move a process's pages at a rate limit (and back), one proactive reclaim
step on a cgroup, and the Settings the kind changes through ctx.changes (so every value is
saved before it is written and put back on revert): cgroup knobs (agentd.kinds.settings.CgroupKnob) and the
host's weighted-interleave weights (InterleaveWeight).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from agentd.cgroups import fs
from agentd.tiers import numa
from agentd.tiers.model import Move

BATCH_PAGES = 512  # pages per move_pages call (2 MiB of 4 KiB pages)


@dataclass
class MoveResult:
    moved_bytes: int = 0  # pages that changed node
    seen_bytes: int = 0  # resident pages looked at
    seconds: float = 0.0
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # message -> pages
    exited: bool = False
    runs: list[tuple[int, int, int]] = field(default_factory=list)  # (addr, pages, original node) of moved pages

    @property
    def mb_s(self) -> float:
        return self.moved_bytes / (1 << 20) / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {"moved_bytes": self.moved_bytes, "seen_bytes": self.seen_bytes, "seconds": round(self.seconds, 4),
                "mb_s": round(self.mb_s, 1), "calls": self.calls, "errors": dict(self.errors), "exited": self.exited}


def _add_run(runs: list, addr: int, node: int, page: int) -> None:
    if runs and runs[-1][2] == node and runs[-1][0] + runs[-1][1] * page == addr:
        a, n, nd = runs[-1]
        runs[-1] = (a, n + 1, nd)
    else:
        runs.append((addr, 1, node))


class RateLimiter:
    """Keeps bytes/elapsed at or under rate (MB/s) by sleeping; rate 0 = unlimited."""

    def __init__(self, rate_mb_s: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rate = rate_mb_s * (1 << 20)
        self.clock, self.sleep = clock, sleep
        self.t0 = clock()
        self.done = 0

    def account(self, nbytes: int) -> None:
        self.done += nbytes
        if self.rate <= 0:
            return
        ahead = self.done / self.rate - (self.clock() - self.t0)
        if ahead > 0:
            self.sleep(ahead)


def _batches(start: int, end: int, page: int):
    for base in range(start, end, BATCH_PAGES * page):
        yield list(range(base, min(end, base + BATCH_PAGES * page), page))


class _Exited(Exception):
    pass


def _query(pid: int, addrs: list[int], res: MoveResult) -> list[int]:
    try:
        res.calls += 1
        return numa.move_pages(pid, addrs, None)
    except numa.NumaError as exc:
        if exc.errno == errno.ESRCH:
            raise _Exited() from None
        raise


def move_ranges(pid: int, moves: list[Move] | tuple[Move, ...], rate_mb_s: float, interval_ms: float = 0.0,
                page: int = os.sysconf("SC_PAGE_SIZE"),
                record: bool = True, deadline_s: float = 600.0) -> MoveResult:
    """move_pages over each range in batches, no faster than rate_mb_s (counting the pages
    actually moved), pausing interval_ms between batches. Records where each moved page
    was (runs), so `restore_runs` can put it back. Stops cleanly when the process exits.

    Each range's pages are located first: a huge page moves whole at its first address,
    possibly from a neighbouring batch (the kernel reports its other pages EBUSY), so a
    page counts as moved when it is on the target now and was elsewhere before."""
    res = MoveResult()
    limiter = RateLimiter(rate_mb_s)
    t0 = time.monotonic()
    try:
        for mv in moves:
            orig: dict[int, int] = {}
            for addrs in _batches(mv.start, mv.end, page):
                for a, n in zip(addrs, _query(pid, addrs, res)):
                    if n >= 0:
                        orig[a] = n
            res.seen_bytes += len(orig) * page
            for addrs in _batches(mv.start, mv.end, page):
                todo = [a for a in addrs if orig.get(a, mv.node) != mv.node]
                if not todo:
                    continue
                now = _query(pid, todo, res)
                pending = [a for a, n in zip(todo, now) if n >= 0 and n != mv.node]
                status = {}
                if pending:
                    try:
                        res.calls += 1
                        status = dict(zip(pending, numa.move_pages(pid, pending, mv.node)))
                    except numa.NumaError as exc:
                        if exc.errno == errno.ESRCH:
                            raise _Exited() from None
                        res.errors[str(exc)] = res.errors.get(str(exc), 0) + len(pending)
                        continue
                moved = 0
                for a, n in zip(todo, _query(pid, todo, res)):
                    if n == mv.node:
                        moved += 1
                        if record:
                            _add_run(res.runs, a, orig[a], page)
                    elif status.get(a, 0) < 0 and status[a] != -errno.EBUSY:
                        msg = numa.describe_errno(status[a])
                        res.errors[msg] = res.errors.get(msg, 0) + 1
                    elif n >= 0:
                        res.errors["stayed where it was"] = res.errors.get("stayed where it was", 0) + 1
                res.moved_bytes += moved * page
                limiter.account(moved * page)
                if interval_ms > 0:
                    time.sleep(interval_ms / 1000)
                if time.monotonic() - t0 > deadline_s:
                    res.errors["stopped at the deadline"] = 1
                    break
    except _Exited:
        res.exited = True
    except numa.NumaError as exc:
        res.errors[str(exc)] = res.errors.get(str(exc), 0) + 1
    res.seconds = time.monotonic() - t0
    return res


def restore_runs(pid: int, runs: list[tuple[int, int, int]], rate_mb_s: float = 0.0,
                 page: int = os.sysconf("SC_PAGE_SIZE")) -> MoveResult:
    """Put pages back on the nodes they were on (the runs move_ranges recorded)."""
    moves = [Move(addr, addr + n * page, node, n * page) for addr, n, node in runs]
    return move_ranges(pid, moves, rate_mb_s, page=page, record=False)


def reclaim(driver, cgroup: str, nbytes: int, swappiness: int | None = None) -> tuple[int, str]:
    """One proactive reclaim step: (bytes asked, how). cgroup v2 memory.reclaim (EAGAIN when
    the kernel could not find that much: reported, not raised), with swappiness= where the
    kernel takes it (older kernels refuse the key with EINVAL: retried without, said so);
    a v1 memory cgroup has no memory.reclaim: its limit is lowered below usage for a moment
    and put back."""
    try:
        path = driver.knob_path(cgroup, "memory.reclaim")
    except OSError:
        path = None
    if path and os.path.exists(path):
        how = "memory.reclaim"
        request = str(nbytes)
        if swappiness is not None:
            request += f" swappiness={swappiness}"
            how += f" swappiness={swappiness}"
        for attempt in (0, 1):
            try:
                fs.write(path, request)
                return nbytes, how
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return 0, how + " (EAGAIN: less was reclaimable)"
                if exc.errno == errno.EINVAL and swappiness is not None and attempt == 0:
                    request, how = str(nbytes), "memory.reclaim (this kernel takes no swappiness=)"
                    continue
                raise
    return reclaim_v1(driver, cgroup, nbytes)


def reclaim_v1(driver, cgroup: str, nbytes: int) -> tuple[int, str]:
    limit_path = driver.knob_path(cgroup, "memory.limit_in_bytes")
    usage = int(fs.read(driver.knob_path(cgroup, "memory.usage_in_bytes")).strip())
    old = fs.read(limit_path).strip()
    target = max(1 << 20, usage - nbytes)
    try:
        try:
            fs.write(limit_path, str(target))
            how = "v1 limit lowered"
        except OSError as exc:  # EBUSY: the kernel could not get under it (anon memory, no swap)
            how = f"v1 limit lowered (partial: {exc.strerror})"
    finally:
        fs.write(limit_path, old)
    after = int(fs.read(driver.knob_path(cgroup, "memory.usage_in_bytes")).strip())
    return max(0, usage - after), how


class InterleaveWeight:
    """A Setting: /sys/kernel/mm/mempolicy/weighted_interleave/node<N> (global weights the
    kernel's weighted interleave uses); target "node<N>"."""

    name = "sysfs:weighted_interleave"

    def __init__(self, root: str = "/sys/kernel/mm/mempolicy/weighted_interleave"):
        self.root = root

    def read(self, target: str) -> str:
        with open(os.path.join(self.root, target), encoding="ascii") as f:
            return f.read().strip()

    def write(self, target: str, value: str) -> None:
        with open(os.path.join(self.root, target), "w", encoding="ascii") as f:
            f.write(str(value))
