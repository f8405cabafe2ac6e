"""Bounds on what callers may cost the daemon: body size, request rate per uid, streams."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Hashable


@dataclass(frozen=True)
class ApiLimits:
    max_body_bytes: int = 256 * 1024  # larger bodies get 413
    # Requests per second, per caller: each managed agent has its own bucket, and the
    # processes of a uid outside any agent share one (so a runaway root agent cannot
    # starve root's agentctl). 429 beyond.
    rate_per_s: float = 100.0  # sustained
    rate_burst: float = 400.0  # at once
    max_streams: int = 64  # open event streams, all callers together (503 beyond)
    max_streams_per_uid: int = 8  # one non-admin uid's share of them (429 beyond)
    streams_kept_for_admins: int = 8  # of max_streams, only admins may open these
    stream_idle_timeout_s: float = 600.0  # a non-admin stream that carried no event this long ends
    # Policy parsing (validate, diff) by non-admins: it runs in a worker process, but each
    # parse still costs a worker for up to its time limit. Admins are not limited here.
    policy_rate_per_s: float = 1.0
    policy_rate_burst: float = 8.0
    policy_parses_per_uid: int = 1  # at once (429 beyond)
    policy_parses_non_admin: int = 2  # all non-admins together; the pool keeps one for admins
    max_connections_per_uid: int = 256  # open connections of one uid (answered 503 and closed)
    # Agents of one non-admin uid: each live one holds cgroups in every hierarchy, and each
    # name it ever used keeps a record (a name stays its uid's for good). 403 beyond; reusing
    # one of its names is always allowed. Admins are not limited.
    live_agents_per_uid: int = 256
    agent_names_per_uid: int = 4096
    stream_queue: int = 2048  # events buffered per follower before the oldest are dropped
    write_timeout_s: float = 5.0  # a client that reads nothing for this long is dropped
    idle_timeout_s: float = 15.0  # a connection idle (or stuck mid-request) this long is closed
    max_buckets: int = 4096  # token buckets kept; the least recently used go first


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else float("inf")


@dataclass
class RateLimiter:
    """One token bucket per key (a uid, or a uid and an agent)."""

    rate: float
    burst: float
    max_keys: int = 4096
    clock: Callable[[], float] = time.monotonic
    buckets: dict[Hashable, TokenBucket] = field(default_factory=dict)

    def check(self, key: Hashable) -> float:
        bucket = self.buckets.pop(key, None)  # re-insert: dict order is recency
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst)
            while len(self.buckets) >= self.max_keys:
                del self.buckets[next(iter(self.buckets))]
        self.buckets[key] = bucket
        return bucket.take(self.clock())
