"""KV-cache pinning for multi-turn agents: seven policies on one simulated engine, same programs.

    python -m benchmarks.kvttl [--quick] [--traces FILE] [--tune]

A discrete-time simulation (0.1 s steps) of one inference engine serving multi-turn agent
programs. Each program is one real run from data/agent-traces (its tool-call phases, their
tools, commands and durations, in order; parallel calls form one phase); between phases the
engine runs the program's turn: prefill of whatever part of the context is not cached, then
decode. The policies decide what happens to the program's KV cache while its tools run.
agentd, continuum and ttl_fixed run the real agentd.kv code (DurationModel, decide, Ledger).

Engine (Llama-3.1-70B, TP=4 on H100-80GB, as in Continuum's evaluation):
  KV 327,680 bytes/token (80 layers x 8 KV heads x 128 x K,V x bf16); KV capacity 160 GB
  = 320 GB HBM - 141 GB weights - ~19 GB activations/graphs -> 488k tokens; prefill 10,000
  tokens/s (2 x 70.6 GFLOP/token at 36 % of 4 x 989 TFLOP/s dense bf16); decode iteration
  25 ms + 0.15 ms per running sequence; chunked prefill shares a step half and half with
  decode; host tier 4x the GPU KV at 25 GB/s (PCIe 5.0 x16). No GPU was available to measure
  them; they are derived from the published configuration, stated here, and recorded in params.
Context growth (published statistics): turn counts are the traces' own (median 29 phases per
run; SWE-Bench Pro trajectories have median 29-78 steps, nilenso's analysis of 2,920
SWE-agent trajectories); the prompt starts at 8,000 tokens (system prompt, tool schemas,
issue) and grows by each turn's output (log-normal, median 120 tokens) and its tool results
(per tool: Read 900, Bash 350, Grep 250, Glob 120, Edit/Write 120, TodoWrite 80, Task and
web tools 1,500 tokens); runs end at 25k tokens (median; p10 13k, p90 62k), the order Raju
et al. (2026, arXiv 2602.16069) report for SWE-bench Verified agents (successful mini-SWE-agent
trajectories stay under 20k tokens).
The agent sends its next request 50 ms after its tools end.

Policies (all with LRU eviction of unpinned cached prefixes, as vLLM's prefix cache):
  nopin           LRU only.
  pin_budget      pin every program's cache at its tool call while pinned bytes fit 50 % of KV.
  ttl_fixed       Continuum's public code: TTL 2 s, none when the tool's mean is over 2 s.
  ttl_refresh     SGLang PR 18941: TTL 300 s refreshed on each hit, pinned ratio 0.6.
  learned_window  TTL = p90 of a log-normal fitted to the inter-turn gaps seen so far.
  continuum       the paper's shape: a TTL chosen at the turn's end from per-tool duration
                  distributions (agentd.kv.model rule "continuum"), program-level FCFS.
  agentd          agentd.kv rule "agentd": per tool/command shape/agent distributions,
                  re-decided each second on the remaining time, demotion to host with
                  prefetch at the tool's end, program-level FCFS (the scheduling hint).
  nopin_offload   LRU on an engine with a host tier (vLLM's CPU offload, LMCache): evicted
                  prefixes go to host memory and come back on demand; the fair baseline for
                  agentd's demotion, which runs on such an engine too.
  agentd_nodemote, agentd_reqfcfs, agentd_noearly take out demotion (GPU-only engine),
  program FCFS, and the predicted-end prefetch, to show what each contributes.

Held out: the duration models of continuum, ttl_fixed, learned_window and agentd start
from the runs with an even index in the trace file (their training half); the evaluated
programs are the runs with an odd index. agentd's parameters (hold_cost_per_s) were chosen
with `--tune`, which runs only the training half.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from agentd.kv.durations import DurationModel, trace_keys
from agentd.kv.ledger import Ledger, Pin
from agentd.kv.model import KvPolicy, PinInput, decide, prefetch_now
from benchmarks.results_file import write_result

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO / "data" / "agent-traces" / "swe-agent-traces.json"

POLICIES = ("nopin", "pin_budget", "ttl_fixed", "ttl_refresh", "learned_window", "continuum", "agentd")
EXTRA = ("nopin_offload", "agentd_nodemote", "agentd_reqfcfs", "agentd_noearly")

# ---------------------------------------------------------------- engine (see the docstring)
BYTES_PER_TOKEN = 327_680
CAPACITY_TOKENS = 488_000
PREFILL_TPS = 10_000.0
T_BASE = 0.025
T_SEQ = 0.00015
HOST_GBPS = 25.0
HOST_TOKENS = 4 * CAPACITY_TOKENS
DT = 0.1
LEAD_S = 0.05
# ---------------------------------------------------------------- context growth
PROMPT_TOKENS = 8_000
OUT_MEDIAN, OUT_SIGMA = 120, 0.8
RESULT_TOKENS = {"Read": 900, "Bash": 350, "Grep": 250, "Glob": 120, "Edit": 120, "Write": 120, "TodoWrite": 80,
                 "Task": 1500, "WebFetch": 1500, "WebSearch": 1500}
MAX_CONTEXT = 128_000


@dataclass
class Turn:
    out_tokens: int
    tools: list  # (tool, command, duration) of the phase after this turn; [] for the last turn
    tool_s: float
    growth: int  # tool-result tokens appended before the next turn


@dataclass
class ProgramSpec:
    name: str
    turns: list


def load_runs(path: Path) -> list[dict]:
    runs = json.loads(Path(path).read_text())
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "tool_calls" in r for r in runs):
        raise SystemExit(f"{path}: expected a list of runs with tool_calls (data/agent-traces/README.md)")
    return runs


def phases_of(run: dict) -> list[list[dict]]:
    """Tool calls that overlap (or start within 0.5 s of the phase's end) are one phase: the
    agent's one turn asked for all of them."""
    out: list[list[dict]] = []
    end = -1e9
    for t in sorted(run["tool_calls"], key=lambda t: t["start"]):
        if out and t["start"] <= end + 0.5:
            out[-1].append(t)
        else:
            out.append([t])
            end = t["start"]
        end = max(end, t["start"] + t["duration"])
    return out


def program_of(run: dict, index: int) -> ProgramSpec:
    rng = random.Random(f"{run.get('task')}-{index}")
    turns = []
    phases = phases_of(run)
    for ph in phases:
        start = min(t["start"] for t in ph)
        end = max(t["start"] + t["duration"] for t in ph)
        tools = [(t["tool"], t.get("command"), t["duration"]) for t in ph]
        growth = min(4000, sum(RESULT_TOKENS.get(t["tool"], 150) for t in ph))
        out = min(2000, int(rng.lognormvariate(math.log(OUT_MEDIAN), OUT_SIGMA)) + 1)
        turns.append(Turn(out, tools, max(0.0, end - start), growth))
    turns.append(Turn(min(2000, int(rng.lognormvariate(math.log(OUT_MEDIAN), OUT_SIGMA)) + 1), [], 0.0, 0))
    return ProgramSpec(f"{index}:{run.get('task', 'run')}", turns)


# ---------------------------------------------------------------- simulation state
@dataclass
class Prog:
    spec: ProgramSpec
    arrival: float
    k: int = 0  # current turn
    ctx: int = 0  # tokens in the KV cache after the last finished turn (what a hit reuses)
    gpu: int = 0  # tokens of this program's prefix cached on the GPU (0: none)
    host: bool = False  # a copy on the host tier
    pinned: bool = False
    pin_expires: float = math.inf
    last_use: float = 0.0
    state: str = "new"  # new | queued | running | tool | done
    req_arrival: float = 0.0
    tool_start: float = 0.0
    tool_end: float = 0.0
    finished: float = 0.0
    # running request
    need: int = 0  # tokens reserved while running
    prefill_left: float = 0.0
    decode_left: float = 0.0
    reload_until: float = 0.0
    prefetch_at: float | None = None  # agentd started copying the host copy back at the tool's end
    decided_at: float = -1e9


@dataclass
class Stats:
    reprefill_tokens: int = 0
    prefill_tokens: int = 0
    hits: int = 0
    host_hits: int = 0
    misses: int = 0
    pinned_token_s: float = 0.0
    demotions: int = 0
    host_reload_s: float = 0.0


class Policy:
    program_fcfs = False
    offload_on_evict = False  # an LRU eviction copies the prefix to the host tier (vLLM CPU offload, LMCache)

    def __init__(self, sim: "Sim"):
        self.sim = sim

    def turn_ended(self, p: Prog, now: float) -> None: ...

    def tick(self, now: float) -> None: ...

    def tool_ended(self, p: Prog, now: float) -> None: ...

    def next_turn(self, p: Prog, now: float) -> None:
        self.sim.unpin(p)


class NoPin(Policy):
    pass


class NoPinOffload(Policy):
    """LRU with a host tier: evicted prefixes go to host memory, reloaded on demand at the next turn."""

    offload_on_evict = True


class PinBudget(Policy):
    def turn_ended(self, p, now):
        if self.sim.pinned_tokens() + p.ctx <= 0.5 * CAPACITY_TOKENS:
            self.sim.pin(p, math.inf)


class TtlRefresh(Policy):
    """SGLang's merged design: TTL pins refreshed on every hit, within a pinned-ratio budget."""

    TTL, RATIO = 300.0, 0.6

    def turn_ended(self, p, now):
        if self.sim.pinned_tokens() + p.ctx <= self.RATIO * CAPACITY_TOKENS:
            self.sim.pin(p, now + self.TTL)

    def next_turn(self, p, now):
        pass  # the pin stays and is refreshed at the turn's end (refresh on hit)


class LearnedWindow(Policy):
    """TTL = p90 of a log-normal fitted online to inter-turn gaps (tool phase + lead)."""

    def __init__(self, sim, train_gaps):
        super().__init__(sim)
        self.logs = [math.log(max(g, 1e-3)) for g in train_gaps]

    def ttl(self):
        mu = statistics.fmean(self.logs)
        sd = statistics.pstdev(self.logs) if len(self.logs) > 1 else 1.0
        return math.exp(mu + 1.2816 * sd)

    def turn_ended(self, p, now):
        if self.sim.pinned_tokens() + p.ctx <= 0.5 * CAPACITY_TOKENS:
            self.sim.pin(p, now + self.ttl())

    def next_turn(self, p, now):
        self.logs.append(math.log(max(now - p.tool_start, 1e-3)))
        if len(self.logs) > 5000:
            self.logs = self.logs[-5000:]
        self.sim.unpin(p)


class KvCode(Policy):
    """ttl_fixed, continuum and agentd: the real DurationModel, decide() and Ledger."""

    def __init__(self, sim, rule, model: DurationModel, per_tool: bool, demote=True, program_fcfs=True,
                 kv: KvPolicy | None = None, early_prefetch=True):
        super().__init__(sim)
        self.early_prefetch = early_prefetch
        # agentd with demotion runs on an engine with a host tier, whose LRU evictions go there too
        self.offload_on_evict = rule == "agentd" and demote
        self.kv = kv or KvPolicy()
        self.pol = KvPolicy(**{**self.kv.__dict__, "rule": rule, "demote": demote})
        self.model = model
        self.per_tool = per_tool  # Continuum: one distribution per tool name
        self.ledger = Ledger()
        self.program_fcfs = program_fcfs
        self.budget = int(self.pol.budget_fraction * CAPACITY_TOKENS * BYTES_PER_TOKEN)
        self.host_budget = int(self.pol.host_budget_fraction * HOST_TOKENS * BYTES_PER_TOKEN)

    def keys(self, p: Prog, tool, command):
        if self.per_tool:
            return [tool, "*"]
        return trace_keys(p.spec.name, tool, command)

    def dist(self, p: Prog):
        """The phase's dominant tool: the one expected to run longest (its end is the phase's end)."""
        tools = p.spec.turns[p.k].tools
        best = None
        for tool, command, _ in tools:
            d = self.model.dist(self.keys(p, tool, command))
            if best is None or d.quantile(0.5) > best.quantile(0.5):
                best = d
        return best

    def _decide(self, p: Prog, now: float, ended: bool):
        sim = self.sim
        elapsed = max(0.0, now - p.tool_start)
        inp = PinInput(tokens=p.ctx, bytes_per_token=BYTES_PER_TOKEN, prefill_tps=PREFILL_TPS, dist=self.dist(p),
                       elapsed_s=elapsed, tool_ended=ended, pressure=sim.pressure(),
                       remaining_turns=1.0, host_available=True)
        d = decide(inp, self.pol)
        p.decided_at = now
        key = ("e", p.spec.name)
        tier = {"keep": "gpu", "demote": "host"}.get(d.action)
        if tier is None:
            self.ledger.release(*key, now)
            sim.unpin(p)
            return
        pin = Pin("e", p.spec.name, p.ctx, inp.bytes, tier, d.benefit_s, d.reason, now, now + d.ttl_s,
                  tool_call=p.spec.name, state="awaiting_turn" if ended else "tool_running")
        placed, victims = self.ledger.place(pin, self.budget if tier == "gpu" else self.host_budget, now)
        for v in victims:
            sim.unpin(sim.by_name[v.program])
        if not placed:
            self.ledger.release(*key, now)
            sim.unpin(p)
            return
        if tier == "gpu":
            sim.pin(p, pin.expires)
        else:
            sim.unpin(p)  # the GPU copy stays, evictable; the host copy waits for the prefetch
            if not p.host:
                p.host = True
                sim.stats.demotions += 1

    def turn_ended(self, p, now):
        self._decide(p, now, ended=False)

    def tick(self, now):
        for pin in self.ledger.expire(now):
            q = self.sim.by_name[pin.program]
            if self.pol.rule == "agentd" and q.state == "tool":
                self._decide(q, now, ended=False)  # agentd sees the tool still running: decide again
            else:
                self.sim.unpin(q)
                q.host = q.host and self.pol.rule == "agentd"
        if self.pol.rule == "agentd":
            for pin in list(self.ledger.pins.values()):
                q = self.sim.by_name[pin.program]
                if q.state == "tool" and now - q.decided_at >= self.pol.recheck_s:
                    self._decide(q, now, ended=False)
            for pin in list(self.ledger.pins.values()):
                q = self.sim.by_name[pin.program]
                if pin.tier == "host" and q.state == "tool" and q.prefetch_at is None and self.early_prefetch \
                        and prefetch_now(self.dist(q), now - q.tool_start, pin.bytes, self.pol):
                    self.prefetch(q, now)

    def prefetch(self, q: Prog, now: float) -> None:
        """Copy the host copy back now; it takes GPU memory from the start of the copy."""
        sim = self.sim
        if q.gpu:  # the GPU copy was never evicted: nothing to copy, hold it
            sim.pin(q, now + self.pol.max_ttl_s)
            return
        if sim.evict_for(q.ctx, q):
            q.prefetch_at = now
            q.gpu = q.ctx
            sim.cached[q.spec.name] = q
            q.reload_until = now + q.ctx * BYTES_PER_TOKEN / (HOST_GBPS * 1e9)
            sim.pin(q, now + self.pol.max_ttl_s)

    def tool_ended(self, p, now):
        for tool, command, dur in p.spec.turns[p.k].tools:
            self.model.observe(self.keys(p, tool, command), dur)
        if self.pol.rule == "agentd":
            for pin in self.ledger.tool_ended(p.spec.name, now, self.pol.resume_grace_s):
                if pin.tier == "host":
                    if p.prefetch_at is None:
                        self.prefetch(p, now)  # the kernel saw the tool end: copy the cache back now
                        if p.prefetch_at is None and p.host and not p.gpu:
                            p.prefetch_at = now  # no GPU room yet: the copy starts at admission at the latest
                else:
                    self.sim.pin(p, pin.expires)

    def next_turn(self, p, now):
        self.ledger.release("e", p.spec.name, now)
        self.sim.unpin(p)


# ---------------------------------------------------------------- the engine
class Sim:
    def __init__(self, specs: list[ProgramSpec], arrivals: list[float]):
        self.progs = [Prog(s, a) for s, a in zip(specs, arrivals)]
        self.by_name = {p.spec.name: p for p in self.progs}
        self.stats = Stats()
        self.policy: Policy = NoPin(self)
        self.queue: list[Prog] = []
        self.running: list[Prog] = []
        self.tools: list[tuple[float, str, Prog]] = []  # heap by tool end (names break ties: runs repeat exactly)
        self.cached: dict[str, Prog] = {}  # programs with a GPU prefix, not running
        self.reserved = 0

    # memory
    def used(self) -> int:
        return self.reserved + sum(p.gpu for p in self.cached.values())

    def pinned_tokens(self) -> int:
        return sum(p.gpu for p in self.cached.values() if p.pinned)

    def pressure(self) -> float:
        demand = sum(q.spec.turns[q.k].out_tokens + q.ctx for q in self.queue)
        return min(1.0, (self.reserved + self.pinned_tokens() + demand) / CAPACITY_TOKENS)

    def pin(self, p: Prog, expires: float) -> None:
        if p.gpu:
            p.pinned, p.pin_expires = True, expires

    def unpin(self, p: Prog) -> None:
        p.pinned, p.pin_expires = False, math.inf

    def evict_for(self, need: int, exclude: Prog) -> bool:
        free = CAPACITY_TOKENS - self.used()
        if free >= need:
            return True
        victims = sorted((q for q in self.cached.values() if not q.pinned and q is not exclude), key=lambda q: q.last_use)
        for q in victims:
            if free >= need:
                break
            free += q.gpu
            q.gpu = 0
            q.host = q.host or self.policy.offload_on_evict
            del self.cached[q.spec.name]
        return free >= need

    def admit(self, now: float) -> None:
        if self.policy.program_fcfs:
            self.queue.sort(key=lambda q: (q.arrival, q.req_arrival))
        while self.queue:
            p = self.queue[0]
            turn = p.spec.turns[p.k]
            ctx_in = min(MAX_CONTEXT, p.ctx + (p.spec.turns[p.k - 1].growth if p.k else PROMPT_TOKENS))
            need = ctx_in + turn.out_tokens
            own = p.gpu
            if not self.evict_for(need - own, p):
                return
            self.queue.pop(0)
            if p.spec.name in self.cached:
                del self.cached[p.spec.name]
            reuse = 0
            if p.k:
                if p.gpu and p.prefetch_at is not None:  # agentd's prefetched copy (maybe still arriving)
                    reuse = p.gpu
                    self.stats.host_hits += 1
                    self.stats.host_reload_s += max(0.0, p.reload_until - now)
                elif p.gpu:
                    reuse = p.gpu
                    self.stats.hits += 1
                elif p.host:
                    reuse = p.ctx
                    self.stats.host_hits += 1
                    start = p.prefetch_at if p.prefetch_at is not None else now
                    p.reload_until = start + p.ctx * BYTES_PER_TOKEN / (HOST_GBPS * 1e9)
                    self.stats.host_reload_s += max(0.0, p.reload_until - now)
                else:
                    self.stats.misses += 1
                    self.stats.reprefill_tokens += p.ctx
            p.gpu = 0
            p.host = False
            p.prefetch_at = None
            p.pinned = False
            p.need = need
            self.reserved += need
            p.prefill_left = ctx_in - reuse
            self.stats.prefill_tokens += ctx_in - reuse
            p.decode_left = turn.out_tokens
            p.state = "running"
            self.running.append(p)

    def step(self, now: float) -> None:
        # pinned memory x time
        self.stats.pinned_token_s += self.pinned_tokens() * DT
        for p in list(self.cached.values()):
            if p.pinned and p.pin_expires <= now:
                self.unpin(p)
        self.policy.tick(now)
        # tool ends -> the next request 50 ms later (it arrives in the queue at the next step)
        while self.tools and self.tools[0][0] <= now:
            _, _, p = heapq.heappop(self.tools)
            if p.state == "tool":
                self.policy.tool_ended(p, p.tool_end)
                p.state = "returning"
                p.req_arrival = p.tool_end + LEAD_S
                heapq.heappush(self.tools, (p.req_arrival, p.spec.name, p))
            elif p.state == "returning":
                p.k += 1
                self.policy.next_turn(p, now)
                p.state = "queued"
                self.queue.append(p)
        self.admit(now)
        # engine work in this step
        pre = [p for p in self.running if p.prefill_left > 0 and p.reload_until <= now]
        dec = [p for p in self.running if p.prefill_left <= 0]
        f = 0.5 if pre and dec else (1.0 if pre else 0.0)
        budget = PREFILL_TPS * DT * f
        for p in pre:
            take = min(budget, p.prefill_left)
            p.prefill_left -= take
            budget -= take
            if budget <= 0:
                break
        if dec:
            iters = DT * (1 - f) / (T_BASE + T_SEQ * len(dec))
            for p in dec:
                p.decode_left -= iters
        done = [p for p in self.running if p.prefill_left <= 0 and p.decode_left <= 0]
        for p in done:
            self.running.remove(p)
            self.reserved -= p.need
            turn = p.spec.turns[p.k]
            p.ctx = min(MAX_CONTEXT, p.need)
            p.last_use = now
            if not turn.tools:
                p.state, p.finished, p.gpu = "done", now, 0
                continue
            p.gpu = p.ctx
            self.cached[p.spec.name] = p
            p.state, p.tool_start, p.tool_end = "tool", now, now + turn.tool_s
            heapq.heappush(self.tools, (p.tool_end, p.spec.name, p))
            self.policy.turn_ended(p, now)

    def run(self, policy: Policy, horizon: float) -> dict:
        self.policy = policy
        pending = sorted(self.progs, key=lambda p: p.arrival)
        i, now = 0, 0.0
        while now < horizon:
            while i < len(pending) and pending[i].arrival <= now:
                p = pending[i]
                p.state, p.req_arrival = "queued", p.arrival
                self.queue.append(p)
                i += 1
            self.step(now)
            if i == len(pending) and all(p.state == "done" for p in self.progs):
                break
            now += DT
        jct = sorted(p.finished - p.arrival for p in self.progs if p.state == "done")
        unfinished = sum(1 for p in self.progs if p.state != "done")
        s = self.stats
        turns = s.hits + s.host_hits + s.misses
        return {"avg_jct_s": statistics.fmean(jct) if jct else math.inf,
                "p95_jct_s": jct[min(len(jct) - 1, int(0.95 * len(jct)))] if jct else math.inf,
                "reprefill_tokens": s.reprefill_tokens, "prefill_tokens": s.prefill_tokens,
                "pinned_gb_s": s.pinned_token_s * BYTES_PER_TOKEN / 1e9,
                "hit_rate": (s.hits + s.host_hits) / turns if turns else 0.0,
                "gpu_hit_rate": s.hits / turns if turns else 0.0, "demotions": s.demotions,
                "unfinished": unfinished, "sim_s": now}


# ---------------------------------------------------------------- experiment
def trained_model(runs: list[dict], per_tool: bool) -> DurationModel:
    m = DurationModel()
    for r in runs:
        for t in r["tool_calls"]:
            m.observe([t["tool"], "*"] if per_tool else trace_keys(None, t["tool"], t.get("command")), t["duration"])
    return m


def train_gaps(runs: list[dict]) -> list[float]:
    gaps = []
    for r in runs:
        for ph in phases_of(r):
            s = min(t["start"] for t in ph)
            e = max(t["start"] + t["duration"] for t in ph)
            gaps.append(e - s + LEAD_S)
    return gaps


def make_policy(name: str, sim: Sim, train: list[dict], kv: KvPolicy | None = None) -> Policy:
    if name == "nopin":
        return NoPin(sim)
    if name == "nopin_offload":
        return NoPinOffload(sim)
    if name == "pin_budget":
        return PinBudget(sim)
    if name == "ttl_refresh":
        return TtlRefresh(sim)
    if name == "learned_window":
        return LearnedWindow(sim, train_gaps(train))
    if name == "ttl_fixed":
        return KvCode(sim, "ttl_fixed", trained_model(train, True), per_tool=True, program_fcfs=False, kv=kv)
    if name == "continuum":
        return KvCode(sim, "continuum", trained_model(train, True), per_tool=True, demote=False, kv=kv)
    if name == "agentd":
        return KvCode(sim, "agentd", trained_model(train, False), per_tool=False, kv=kv)
    if name == "agentd_nodemote":
        return KvCode(sim, "agentd", trained_model(train, False), per_tool=False, demote=False, kv=kv)
    if name == "agentd_noearly":
        return KvCode(sim, "agentd", trained_model(train, False), per_tool=False, kv=kv, early_prefetch=False)
    if name == "agentd_reqfcfs":
        return KvCode(sim, "agentd", trained_model(train, False), per_tool=False, program_fcfs=False, kv=kv)
    raise ValueError(name)


def arrivals_for(n: int, mean_gap: float, bursty: bool, seed: int) -> list[float]:
    rng = random.Random(seed)
    out, t = [], 0.0
    while len(out) < n:
        if bursty:  # bursts of 8 programs, bursts Poisson with 8x the mean gap
            t += rng.expovariate(1 / (8 * mean_gap))
            out.extend(t + rng.uniform(0, 2) for _ in range(8))
        else:
            t += rng.expovariate(1 / mean_gap)
            out.append(t)
    return sorted(out[:n])


def run_load(specs, train, mean_gap, bursty, policies, seed, horizon, kv=None, host_gbps=25.0) -> dict:
    global HOST_GBPS
    arr = arrivals_for(len(specs), mean_gap, bursty, seed)
    out = {}
    HOST_GBPS = host_gbps
    if host_gbps != KvPolicy().host_gbps:
        kv = KvPolicy(**{**(kv or KvPolicy()).__dict__, "host_gbps": host_gbps})
    try:
        for name in policies:
            sim = Sim(specs, arr)
            out[name] = sim.run(make_policy(name, sim, train, kv), horizon)
    finally:
        HOST_GBPS = 25.0
    return out


def argv_only(args) -> bool:
    return bool(getattr(args, "tune_only", None))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer programs and loads (under a minute)")
    ap.add_argument("--traces", type=Path, default=TRACES, help="a trace file in data/agent-traces' format")
    ap.add_argument("--tune", action="store_true", help="choose hold_cost_per_s on the training half only (no result file)")
    ap.add_argument("--tune-only", choices=("agentd", "continuum"), help="with --tune: one policy's grid only")
    args = ap.parse_args(argv)
    runs = load_runs(args.traces)
    train = [r for i, r in enumerate(runs) if i % 2 == 0]
    held = [(i, r) for i, r in enumerate(runs) if i % 2 == 1]
    t0 = time.time()
    if args.tune:
        # Only the training half: its first 40 programs evaluated, the rest as the warm start.
        specs = [program_of(r, 2 * i) for i, r in enumerate(train)][:40]
        names = ("agentd", "continuum") if not argv_only(args) else (args.tune_only,)
        for name in names:
            for cost in (0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 2.0):
                # agentd (host tier, demotion on) is priced by hold_cost_per_s; the GPU-only
                # continuum rule by hold_cost_no_host_per_s
                kv = KvPolicy(hold_cost_per_s=cost) if name == "agentd" else KvPolicy(hold_cost_no_host_per_s=cost)
                row = []
                for gap in (8.0, 4.0):
                    res = run_load(specs, train[40:], gap, False, (name,), 7, 40000, kv)[name]
                    row.append(f"gap {gap:g} s: avg JCT {res['avg_jct_s']:.1f} s, p95 {res['p95_jct_s']:.1f} s")
                key = "hold_cost_per_s" if name == "agentd" else "hold_cost_no_host_per_s"
                print(f"{name} {key}={cost:.3f}: " + "; ".join(row), flush=True)
        return 0
    if args.quick:
        specs = [program_of(r, i) for i, r in held][:24]
        loads = [(8.0, False, 25.0), (4.0, False, 25.0)]
    else:
        specs = [program_of(r, i) for i, r in held]
        loads = [(60.0, False, 25.0), (30.0, False, 25.0), (15.0, False, 25.0), (30.0, True, 25.0), (30.0, False, 5.0)]
    names = POLICIES + (("nopin_offload",) if args.quick else EXTRA)
    results = {}
    for gap, bursty, gbps in loads:
        label = f"{'bursty' if bursty else 'poisson'}_gap{gap:g}s" + ("" if gbps == 25.0 else f"_host{gbps:g}GBps")
        results[label] = run_load(specs, train, gap, bursty, names, 11, 40000, host_gbps=gbps)
    # headline metrics: the middle Poisson load (the second), plus every load under its label
    head = results[list(results)[1]]
    metrics = {}
    for name in names:
        r = head[name]
        metrics[f"avg_jct_s_{name}"] = round(r["avg_jct_s"], 2)
        metrics[f"p95_jct_s_{name}"] = round(r["p95_jct_s"], 2)
        metrics[f"reprefill_tokens_{name}"] = r["reprefill_tokens"]
        metrics[f"pinned_gb_s_{name}"] = round(r["pinned_gb_s"], 1)
        metrics[f"hit_rate_{name}"] = round(r["hit_rate"], 4)
    for label, res in results.items():
        best_other = min(res[n]["avg_jct_s"] for n in POLICIES if n != "agentd")
        metrics[f"agentd_speedup_vs_nopin_{label}"] = round(res["nopin"]["avg_jct_s"] / res["agentd"]["avg_jct_s"], 3)
        metrics[f"agentd_vs_best_other_{label}"] = round(best_other / res["agentd"]["avg_jct_s"], 3)
        metrics[f"agentd_vs_nopin_offload_{label}"] = round(res["nopin_offload"]["avg_jct_s"] / res["agentd"]["avg_jct_s"], 3)
        if "agentd_nodemote" in res:
            metrics[f"agentd_nodemote_vs_continuum_{label}"] = round(
                res["continuum"]["avg_jct_s"] / res["agentd_nodemote"]["avg_jct_s"], 3)
        metrics[f"continuum_speedup_vs_nopin_{label}"] = round(res["nopin"]["avg_jct_s"] / res["continuum"]["avg_jct_s"], 3)
    params = {"quick": args.quick, "traces": str(args.traces.relative_to(REPO) if args.traces.is_relative_to(REPO) else args.traces),
              "programs": len(specs), "evaluated_runs": "odd indices of the trace file",
              "training_runs": "even indices (duration models' warm start, learned_window's fit, --tune)",
              "headline_load": list(results)[1], "loads": list(results),
              "engine": {"model": "Llama-3.1-70B TP=4 H100-80GB (derived, not measured)", "bytes_per_token": BYTES_PER_TOKEN,
                         "capacity_tokens": CAPACITY_TOKENS, "prefill_tps": PREFILL_TPS, "t_base_s": T_BASE,
                         "t_seq_s": T_SEQ, "host_gbps": HOST_GBPS, "host_tokens": HOST_TOKENS, "dt_s": DT},
              "context": {"prompt_tokens": PROMPT_TOKENS, "out_median": OUT_MEDIAN, "result_tokens": RESULT_TOKENS},
              "kv_policy": KvPolicy().__dict__, "wall_s": round(time.time() - t0, 1)}
    raw = {label: {n: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for n, r in res.items()}
           for label, res in results.items()}
    write_result("kvttl", metrics, params, loads=raw)
    for label, res in results.items():
        print(f"\n{label} ({len(specs)} programs)")
        print(f"{'policy':<16}{'avg JCT s':>10}{'p95 JCT s':>10}{'re-prefill tok':>16}{'pinned GB·s':>13}{'hit %':>7}{'GPU hit %':>10}{'unfinished':>11}")
        for n, r in res.items():
            print(f"{n:<16}{r['avg_jct_s']:>10.1f}{r['p95_jct_s']:>10.1f}{r['reprefill_tokens']:>16,}{r['pinned_gb_s']:>13.0f}"
                  f"{100 * r['hit_rate']:>7.1f}{100 * r['gpu_hit_rate']:>10.1f}{r['unfinished']:>11}")
    print(f"\nwrote benchmarks/results/kvttl.json in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
