"""The pin decision: keep a program's KV cache in GPU memory, demote it to host memory (and
prefetch it back when the tool call ends), or free it. Pure: state and input in, a Decision
out; no clock (times are arguments), no engine, no kernel.

What a pin is worth, in seconds of the program's completion time:
    saved(τ)  = P(the next turn arrives within τ) · w · (tokens / prefill rate + readmission queueing)
    held(τ)   = pressure · price · (tokens / prefill rate) · E[min(remaining, τ)]
                price = hold_cost_per_s where a host copy is cheap (host_is_cheap), else hold_cost_no_host_per_s
    keep      = max over τ of saved(τ) − held(τ)
    demote    = the same with host memory (free while the host budget lasts), minus the part of
                the reload the prefetch cannot hide, max(0, bytes / host bandwidth − prefetch lead),
                and transfer_cost x the two copies' time
    free      = 0
`remaining` is the tool call's conditional remaining time given how long it has run
(agentd.kv.durations.Dist), which is why agentd re-decides while the tool runs instead of
fixing a TTL up front; w = min(1, expected remaining turns) (a final answer holds nothing).
held(τ) prices GPU memory by what it would cost others: at full pressure, holding a cache
for 1 / price seconds costs as much as re-prefilling it.

Continuum's rules are options (policy `rule`):
  ttl_fixed   its public code: TTL 2 s, 0 when the tool's mean duration is over 2 s
  continuum   the paper's shape: a TTL chosen once at the turn's end from the tool's
              unconditional distribution (same value function, elapsed = 0), freed at expiry
  agentd      the conditional decision above, re-decided while the tool runs, with demotion
"""

from __future__ import annotations

from dataclasses import dataclass

from agentd.kv.durations import Dist

RULES = ("agentd", "continuum", "ttl_fixed", "never", "always")
ACTIONS = ("keep", "demote", "free")
# The TTLs a decision chooses among, as quantiles of the remaining time (plus the grace).
_TTL_QUANTILES = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


@dataclass(frozen=True)
class KvPolicy:
    """Every knob of the decision (the `kv:` policy section; defaults in agentd/kv/policy.py)."""

    rule: str = "agentd"
    fixed_ttl_s: float = 2.0  # Continuum's public code
    hold_cost_per_s: float = 2.0  # with a host tier: at full pressure a 0.5 s hold costs one re-prefill (kvttl --tune)
    hold_cost_no_host_per_s: float = 0.03  # without one (or demote off): freeing means re-prefilling (kvttl --tune)
    min_pressure: float = 0.01  # memory is never quite free: another request may need it any moment
    budget_fraction: float = 0.5  # pinned bytes on GPU <= this share of the engine's KV capacity
    host_budget_fraction: float = 1.0  # demoted bytes <= this share of the engine's host tier
    demote: bool = True
    host_gbps: float = 25.0  # host<->GPU copy bandwidth (PCIe 5.0 x16 pinned-memory copies, ~25 GB/s sustained)
    transfer_cost: float = 1.0  # a copy's seconds, counted against demotion (the link and copy engine are shared)
    prefetch_lead_s: float = 0.05  # tool end -> next request: agentd's prefetch starts this much earlier
    early_prefetch_p: float = 0.5  # copy a demoted cache back once the tool likely ends within the copy's time
    resume_grace_s: float = 5.0  # after the tool ends, how long the pin waits for the next turn
    max_ttl_s: float = 600.0
    min_benefit_s: float = 0.01  # a pin worth less than this is not worth the bookkeeping
    recheck_s: float = 1.0  # re-decide running tool calls' pins this often
    # the duration model
    prior_median_s: float = 2.0
    prior_sigma: float = 2.0
    backoff_weight: float = 4.0
    max_keys: int = 4096
    max_weight: float = 200.0


@dataclass(frozen=True)
class PinInput:
    tokens: int
    bytes_per_token: int
    prefill_tps: float  # the engine's measured prefill rate, tokens/s
    dist: Dist  # the tool call's duration distribution
    elapsed_s: float = 0.0  # how long the tool call has run (0: not started yet)
    tool_ended: bool = False
    queue_s: float = 0.0  # the queueing a re-admitted request suffers (engine-reported)
    remaining_turns: float = 1.0
    pressure: float = 1.0  # share of the engine's KV capacity in use, 0..1
    host_available: bool = False

    @property
    def bytes(self) -> int:
        return self.tokens * self.bytes_per_token

    @property
    def reprefill_s(self) -> float:
        return self.tokens / max(self.prefill_tps, 1e-9)


@dataclass(frozen=True)
class Decision:
    action: str  # keep | demote | free
    ttl_s: float  # how long to hold before asking again / freeing (0 for free)
    benefit_s: float  # expected seconds of completion time saved (net of the memory's price)
    p_resume: float  # P(next turn within ttl)
    expected_resume_s: float  # median remaining time of the tool call (0 once it ended)
    reason: str
    keep_value_s: float = 0.0
    demote_value_s: float = 0.0

    def to_json(self) -> dict:
        return {"action": self.action, "ttl_s": round(self.ttl_s, 3), "benefit_s": round(self.benefit_s, 4),
                "p_resume": round(self.p_resume, 4), "expected_resume_s": round(self.expected_resume_s, 3),
                "reason": self.reason, "keep_value_s": round(self.keep_value_s, 4),
                "demote_value_s": round(self.demote_value_s, 4)}



def _free(reason: str, resume: float = 0.0, keep_v: float = 0.0, demote_v: float = 0.0) -> Decision:
    return Decision("free", 0.0, 0.0, 0.0, resume, reason, keep_v, demote_v)


def value_of_hold(inp: PinInput, policy: KvPolicy, ttl: float, *, elapsed: float, host: bool) -> tuple[float, float]:
    """(net seconds saved, P(resume within ttl)) for holding `ttl` more seconds, on GPU or host."""
    w = min(1.0, max(0.0, inp.remaining_turns))
    p = 1.0 if inp.tool_ended else inp.dist.p_end_within(elapsed, ttl)
    saved = inp.reprefill_s + inp.queue_s
    if host:
        reload_s = inp.bytes / (policy.host_gbps * 1e9)
        saved -= max(0.0, reload_s - policy.prefetch_lead_s)  # the prefetch starts at the tool's end
        # Host memory is not what the GPU's other requests wait for; the two copies are.
        return p * w * saved - policy.transfer_cost * 2 * reload_s, p
    # Once the tool has ended the next request is milliseconds away: the hold is about the lead.
    held = policy.prefetch_lead_s if inp.tool_ended else inp.dist.expected_remaining_capped(elapsed, ttl)
    pressure = max(policy.min_pressure, min(1.0, inp.pressure))
    # Where the host tier makes losing the GPU copy cheap, GPU memory is dearer to hold.
    price = policy.hold_cost_per_s if host_is_cheap(inp, policy) else policy.hold_cost_no_host_per_s
    cost = pressure * price * inp.reprefill_s * held
    return p * w * saved - cost, p


def host_is_cheap(inp: PinInput, policy: KvPolicy) -> bool:
    """A host copy costs (both copies, and the reload the prefetch cannot hide) under half a re-prefill."""
    if not (inp.host_available and policy.demote):
        return False
    reload_s = inp.bytes / (policy.host_gbps * 1e9)
    return policy.transfer_cost * 2 * reload_s + max(0.0, reload_s - policy.prefetch_lead_s) < 0.5 * inp.reprefill_s


def _ttl_candidates(inp: PinInput, policy: KvPolicy, elapsed: float) -> list[float]:
    if inp.tool_ended:
        return [policy.resume_grace_s]
    out = {min(policy.max_ttl_s, max(0.05, inp.dist.remaining_quantile(elapsed, q))) for q in _TTL_QUANTILES}
    return sorted(out)


def decide(inp: PinInput, policy: KvPolicy) -> Decision:
    """Keep, demote or free this program's KV cache now (see the module docstring)."""
    if inp.tokens <= 0:
        return _free("no tokens to keep")
    if inp.remaining_turns <= 0:
        return _free("the program expects no further turn")
    resume = 0.0 if inp.tool_ended else inp.dist.remaining_quantile(inp.elapsed_s, 0.5)
    rule = policy.rule
    if rule == "never":
        return _free("policy rule never pins", resume)
    if rule == "always":
        return Decision("keep", policy.max_ttl_s, inp.reprefill_s, 1.0, resume, "policy rule always pins")
    if rule == "ttl_fixed":
        # Continuum's public code: a fixed TTL, none for tools whose mean is over it.
        if inp.tool_ended:
            return Decision("keep", policy.resume_grace_s, inp.reprefill_s, 1.0, 0.0, "tool ended: next turn is near")
        if inp.dist.mean() > policy.fixed_ttl_s:
            return _free(f"tool's mean duration {inp.dist.mean():.1f} s is over the fixed TTL {policy.fixed_ttl_s:g} s", resume)
        p = inp.dist.p_end_within(0.0, policy.fixed_ttl_s)
        return Decision("keep", policy.fixed_ttl_s, p * inp.reprefill_s, p, resume, f"fixed TTL {policy.fixed_ttl_s:g} s")
    # continuum: a TTL fixed once from the unconditional distribution; agentd: conditional on elapsed.
    elapsed = 0.0 if rule == "continuum" else inp.elapsed_s
    best_keep = (float("-inf"), 0.0, 0.0)
    for ttl in _ttl_candidates(inp, policy, elapsed):
        v, p = value_of_hold(inp, policy, ttl, elapsed=elapsed, host=False)
        if v > best_keep[0]:
            best_keep = (v, ttl, p)
    best_demote = (float("-inf"), 0.0, 0.0)
    if rule == "agentd" and policy.demote and inp.host_available:
        # On the host tier the cache waits for the tool's end (agentd prefetches it then), up to max_ttl.
        ttl = policy.resume_grace_s if inp.tool_ended else min(policy.max_ttl_s, max(
            policy.resume_grace_s, inp.dist.remaining_quantile(elapsed, 0.98)))
        v, p = value_of_hold(inp, policy, ttl, elapsed=elapsed, host=True)
        best_demote = (v, ttl, p)
    kv, dv = best_keep[0], best_demote[0]
    if max(kv, dv) < policy.min_benefit_s:
        return _free(f"expected saving {max(kv, dv, 0.0):.3f} s is below {policy.min_benefit_s:g} s", resume,
                     max(kv, 0.0), max(dv, 0.0))
    if dv > kv:
        return Decision("demote", best_demote[1], dv, best_demote[2], resume,
                        f"tool likely runs {resume:.1f} s more: host memory, prefetch on its end", max(kv, 0.0), dv)
    why = "tool ended: next turn is near" if inp.tool_ended else f"P(resume within {best_keep[1]:.1f} s) = {best_keep[2]:.2f}"
    return Decision("keep", best_keep[1], kv, best_keep[2], resume, why, kv, max(dv, 0.0))


def prefetch_now(dist: Dist, elapsed_s: float, bytes_: int, policy: KvPolicy) -> bool:
    """Start copying a demoted cache back before the tool ends: once the tool is more likely than
    early_prefetch_p to end within the copy's own time, the copy would otherwise be late."""
    reload_s = bytes_ / (policy.host_gbps * 1e9)
    return dist.p_end_within(elapsed_s, reload_s) >= policy.early_prefetch_p
