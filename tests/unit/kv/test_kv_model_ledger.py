"""The pin decision (keep / demote / free, and Continuum's rules) and the ledger (budget by
benefit per byte, release on next turn / expiry / kill / engine gone, hit and miss counts)."""

from __future__ import annotations

import pytest

from agentd.kv.durations import DurationModel
from agentd.kv.ledger import Ledger, Pin
from agentd.kv.model import KvPolicy, PinInput, decide

MB = 1 << 20


def bimodal(short=1.0, long=100.0, n=100):
    m = DurationModel()
    for _ in range(n):
        m.observe(["k"], short)
        m.observe(["k"], long)
    return m.dist(["k"])


def fixed(d, n=200):
    m = DurationModel()
    for _ in range(n):
        m.observe(["k"], d)
    return m.dist(["k"])


def inp(dist, **kw):
    base = dict(tokens=20_000, bytes_per_token=160 * 1024, prefill_tps=5_000.0, dist=dist, pressure=1.0)
    base.update(kw)
    return PinInput(**base)


SOFT = KvPolicy(hold_cost_per_s=1 / 30)  # a gentler memory price than the default, for the shapes below


def test_a_short_tool_is_kept_a_long_one_freed_or_demoted():
    pol = SOFT
    short = decide(inp(fixed(0.5)), pol)
    assert short.action == "keep" and short.p_resume > 0.9 and 0.5 <= short.ttl_s < 5
    long = decide(inp(fixed(300.0)), pol)
    assert long.action == "free"
    demoted = decide(inp(fixed(300.0), host_available=True), pol)
    assert demoted.action == "demote" and demoted.ttl_s >= 300 * 0.9
    assert demoted.benefit_s < inp(fixed(300)).reprefill_s  # the unhidden part of the reload is charged


def test_re_deciding_while_the_tool_runs_uses_the_remaining_time():
    pol = SOFT
    d = bimodal()
    at_start = decide(inp(d, elapsed_s=0.0), pol)
    assert at_start.action == "keep"  # half of these end within a second
    later = decide(inp(d, elapsed_s=5.0), pol)
    assert later.action == "free"  # it is one of the 100 s ones: not worth the memory
    assert later.expected_resume_s == pytest.approx(95, rel=0.2)
    # Continuum's TTL is fixed from the unconditional distribution: it does not change its mind.
    c0 = decide(inp(d, elapsed_s=0.0), KvPolicy(rule="continuum", hold_cost_per_s=1 / 30))
    c5 = decide(inp(d, elapsed_s=5.0), KvPolicy(rule="continuum", hold_cost_per_s=1 / 30))
    assert c0.action == c5.action == "keep" and c0.ttl_s == c5.ttl_s


def test_pressure_remaining_turns_and_tool_end_steer_the_decision():
    pol = SOFT
    mid = fixed(40.0)
    assert decide(inp(mid, pressure=1.0), pol).action == "free"
    assert decide(inp(mid, pressure=0.05), pol).action == "keep"  # an idle engine may as well keep it
    assert decide(inp(fixed(0.5), remaining_turns=0), pol).action == "free"
    ended = decide(inp(fixed(300.0), tool_ended=True), pol)
    assert ended.action == "keep" and ended.ttl_s == pol.resume_grace_s and ended.expected_resume_s == 0


def test_continuum_public_rule_and_never_always():
    pol = KvPolicy(rule="ttl_fixed")
    assert decide(inp(fixed(0.5)), pol).ttl_s == 2.0
    assert decide(inp(fixed(5.0)), pol).action == "free"
    assert decide(inp(fixed(0.5)), KvPolicy(rule="never")).action == "free"
    # The default price (chosen on the training traces) still keeps a 40 s tool's cache on an idle engine.
    assert decide(inp(fixed(40.0), pressure=0.0), KvPolicy()).action == "keep"
    assert decide(inp(fixed(40.0), pressure=1.0), KvPolicy()).action == "free"
    assert decide(inp(fixed(500)), KvPolicy(rule="always")).action == "keep"
    assert decide(inp(fixed(0.5), tokens=0), pol).action == "free"


def pin(program, mb, benefit, tier="gpu", engine="e1", tool_call=None, expires=100.0):
    return Pin(engine, program, tokens=mb, bytes=mb * MB, tier=tier, benefit_s=benefit, reason="t", since=0.0,
               expires=expires, tool_call=tool_call)


def test_budget_evicts_lowest_benefit_per_byte_not_the_oldest():
    led = Ledger()
    assert led.place(pin("old-valuable", 40, 4.0), 100 * MB, 0.0) == (True, [])
    assert led.place(pin("cheap", 40, 0.4), 100 * MB, 1.0)[0]
    placed, evicted = led.place(pin("new", 40, 2.0), 100 * MB, 2.0)
    assert placed and [p.program for p in evicted] == ["cheap"]
    # A pin worth less per byte than everything held is refused, and nothing changes.
    placed, evicted = led.place(pin("poor", 40, 0.1), 100 * MB, 3.0)
    assert (placed, evicted) == (False, []) and set(p for _, p in led.pins) == {"old-valuable", "new"}
    assert led.counters.evictions == 1 and led.counters.refused == 1
    # Budgets are per tier and per engine.
    assert led.place(pin("h", 90, 0.1, tier="host"), 100 * MB, 4.0)[0]
    assert led.place(pin("other-engine", 90, 0.1, engine="e2"), 100 * MB, 4.0)[0]
    # Bigger than the whole budget: refused.
    assert led.place(pin("huge", 200, 100.0), 100 * MB, 5.0) == (False, [])


def test_release_paths_and_counters():
    led = Ledger()
    led.place(pin("p1", 10, 1.0, tool_call="a/1-pytest"), 100 * MB, 0.0)
    led.place(pin("p2", 10, 1.0, tier="host", tool_call="a/2-git"), 100 * MB, 0.0)
    led.place(pin("p3", 10, 1.0, expires=5.0), 100 * MB, 0.0)
    led.place(pin("p4", 10, 1.0, engine="e2"), 100 * MB, 0.0)
    ended = led.tool_ended("a/2-git", 10.0, grace_s=5.0)
    assert [p.program for p in ended] == ["p2"] and ended[0].state == "awaiting_turn" and ended[0].expires == 15.0
    assert [p.program for p in led.expire(10.0)] == ["p3"]
    assert led.next_turn("e1", "p2", 11.0)[0] == "host_hit"
    assert led.next_turn("e1", "p1", 11.0)[0] == "hit"
    assert led.next_turn("e1", "p3", 11.0)[0] == "miss"
    assert [p.program for p in led.drop_where(12.0, lambda p: p.engine == "e2")] == ["p4"]
    c = led.counters.to_json()
    assert (c["hits"], c["host_hits"], c["misses"], c["expiries"]) == (1, 1, 1, 1)
    assert c["hit_rate"] == pytest.approx(2 / 3, abs=1e-3)
    # GB·s: four 10 MiB pins for their lifetimes.
    assert led.counters.gpu_byte_s == pytest.approx(10 * MB * (11 + 10 + 12), rel=1e-6)
    assert led.counters.host_byte_s == pytest.approx(10 * MB * 11, rel=1e-6)


def test_a_demoted_cache_is_prefetched_once_the_tool_likely_ends_within_the_copy_time():
    from agentd.kv.model import prefetch_now

    d = fixed(10.0)
    pol = KvPolicy(host_gbps=1.0)
    two_s = 2 * 10**9  # 2 s to copy back at 1 GB/s
    assert not prefetch_now(d, 1.0, two_s, pol)  # 9 s to go: copying now would hold GPU memory for nothing
    assert prefetch_now(d, 10.5, two_s, pol)  # (10 s lands in the 10-13.3 s bin) likely ending within the copy
    assert not prefetch_now(d, 10.5, two_s, KvPolicy(host_gbps=1.0, early_prefetch_p=1.0))


def test_gpu_memory_is_priced_by_whether_a_host_copy_would_be_cheap():
    from agentd.kv.model import host_is_cheap

    # 20k tokens x 160 KiB = 3.3 GB; re-prefill 4 s
    assert host_is_cheap(inp(fixed(5.0), host_available=True), KvPolicy(host_gbps=25))  # 0.13 s a copy
    assert not host_is_cheap(inp(fixed(5.0), host_available=True), KvPolicy(host_gbps=2))  # 1.6 s a copy
    assert not host_is_cheap(inp(fixed(5.0), host_available=False), KvPolicy(host_gbps=25))
    assert not host_is_cheap(inp(fixed(5.0), host_available=True), KvPolicy(host_gbps=25, demote=False))
    # Same tool, same pressure: with a cheap host tier the GPU copy is let go (demoted), without one kept.
    assert decide(inp(fixed(5.0), pressure=0.5, host_available=True), KvPolicy()).action == "demote"
    assert decide(inp(fixed(5.0), pressure=0.5), KvPolicy()).action == "keep"
