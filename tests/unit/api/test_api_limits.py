"""Token buckets per peer uid, driven by an injected clock."""

from agentd.api.limits import RateLimiter, TokenBucket


def test_a_bucket_allows_its_burst_then_refills_at_its_rate():
    b = TokenBucket(rate=2.0, burst=3.0)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = b.take(0.0)
    assert wait == 0.5  # one token at 2 per second
    assert b.take(0.25) > 0  # half a token is not enough
    assert b.take(0.5) == 0.0
    assert [b.take(100.0) for _ in range(4)].count(0.0) == 3  # never more than the burst


def test_each_uid_has_its_own_bucket():
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=2.0, clock=lambda: now[0])
    assert limiter.check(1000) == 0 and limiter.check(1000) == 0
    assert limiter.check(1000) > 0
    assert limiter.check(0) == 0  # root is not starved by uid 1000
    now[0] = 1.0
    assert limiter.check(1000) == 0


def test_the_number_of_tracked_uids_is_bounded():
    limiter = RateLimiter(rate=1.0, burst=1.0, max_keys=3, clock=lambda: 0.0)
    for uid in range(10):
        limiter.check(uid)
    assert len(limiter.buckets) == 3
    assert list(limiter.buckets) == [7, 8, 9]
