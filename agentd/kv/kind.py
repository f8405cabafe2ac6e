"""The kv kind: learns tool-call durations from the tracker's journal records, and serves
inference engines' pin questions under /v1/kv/ (see docs/kv.md for the protocol).

An engine registers (bytes per token, prefill rate, KV capacity, host tier); when a turn of
program P ends in a tool call it reports `turn_ended` (tokens, and the tool call: agentd's
id, a pid in the agent, or just the agent whose next tool call it is) and gets keep / demote
/ free with a TTL and hints; the kind re-decides while the tool runs, tells the engine
(`watch`) when to prefetch a demoted cache because the tool ended, and releases the pin on
`next_turn`, expiry, the tool call being killed, or the engine going away.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from agentd.api.validation import Field, check_name, check_toolcall_id
from agentd.kinds.contract import Access, Command, Kind
from agentd.kv import hints as hint_forms
from agentd.kv.durations import DurationModel, keys_for
from agentd.kv.engines import (MAX_BYTES_PER_TOKEN, MAX_CAPACITY_BYTES, MAX_ENGINES_PER_UID, MAX_PREFILL_TPS,
                               MAX_PROGRAMS_PER_ENGINE, MAX_TOKENS, Engine, Program, bad, check_int, check_num,
                               process_alive, process_start)
from agentd.kv.ledger import Ledger, Pin
from agentd.kv.model import KvPolicy, PinInput, decide, prefetch_now

FAMILY = "exec"  # the kernel sees execs; traces' tool names are other families
PERSIST_EVERY_S = 10.0
MAX_NOTICES = 256
MAX_WATCH_S = 30.0
ENDED_KEEP = 4096  # recently ended tool calls remembered (a turn_ended may come after the end)
MAX_RUNNING = 65536


class KvKind(Kind):
    name = "kv"
    journal_prefix = "kv"

    def __init__(self):
        self.policy = KvPolicy()
        self.durations = self._new_model(self.policy)
        self.ledger = Ledger()
        self.engines: dict[str, Engine] = {}
        self.programs: dict[tuple[str, str], Program] = {}
        self.running: dict[str, tuple[float, list[str], str]] = {}  # tool call -> (start ts, keys, agent)
        self.ended: dict[str, tuple[float, str]] = {}  # tool call -> (end ts, outcome)
        self.notices: dict[str, deque] = {}  # engine -> what to tell it (prefetch, evicted, expired)
        self.wakeups: dict[str, asyncio.Event] = {}
        self.learned = 0
        self.rejected = 0
        self._dirty = False
        self._persisted_at = 0.0
        self._rechecked_at = 0.0
        self.policy_source = "defaults"

    @staticmethod
    def _new_model(p: KvPolicy) -> DurationModel:
        return DurationModel(max_keys=p.max_keys, max_weight=p.max_weight, backoff_weight=p.backoff_weight,
                             prior_median_s=p.prior_median_s, prior_sigma=p.prior_sigma)

    # ------------------------------------------------------------------ lifecycle
    def on_policy(self, sections: dict) -> None:
        """One kv section wins: the policy named `default` if it has one, else the first by name."""
        if not sections:
            chosen, source = KvPolicy(), "defaults"
        else:
            source = "default" if "default" in sections else sorted(sections)[0]
            chosen = sections[source]
            if len(sections) > 1:
                self.ctx.degrade(f"{len(sections)} policies have a kv section; using {source}'s")
        if chosen != self.policy:
            hists, obs = self.durations.hists, self.durations.observations
            self.policy = chosen
            self.durations = self._new_model(chosen)
            self.durations.hists, self.durations.observations = hists, obs
        self.policy_source = source

    def readopt(self) -> dict[str, int]:
        keys = self.durations.load_json(self.ctx.state.get("durations") or {})
        counters = self.ctx.state.get("counters") or {}
        for k, v in counters.items():
            if hasattr(self.ledger.counters, k) and isinstance(v, (int, float)):
                setattr(self.ledger.counters, k, v)
        # Engines reconnect and register again; pins of the previous daemon are not re-adopted
        # (their engine learns with its next request that the program is unknown and re-prefills).
        return {"duration_keys": keys, "observations": self.durations.observations}

    def stop(self, revert: bool) -> None:
        self._persist(force=True)

    def _persist(self, force: bool = False) -> None:
        now = self.ctx.clock()
        if not (force or (self._dirty and now - self._persisted_at >= PERSIST_EVERY_S)):
            return
        self._persisted_at = now
        self._dirty = False
        self.ctx.state.put("durations", self.durations.to_json())
        c = self.ledger.counters
        self.ctx.state.put("counters", {k: getattr(c, k) for k in ("hits", "host_hits", "misses", "pins", "demotions",
                                                                   "evictions", "expiries", "releases", "refused")})

    # ------------------------------------------------------------------ kernel side
    def on_event(self, event) -> None:
        if not isinstance(event, dict):
            return
        kind = event.get("kind")
        if kind == "toolcall.start":
            self._tool_started(event)
        elif kind == "toolcall.end":
            self._tool_ended(event)

    def _tool_started(self, ev: dict) -> None:
        tc, agent, data = ev.get("tool_call"), ev.get("agent"), ev.get("data") or {}
        if not tc or not agent:
            return
        base = keys_for(agent, FAMILY, data.get("argv") or [])
        keys = base[:-2] + [f"{agent}|*"] + base[-2:]  # the agent's every tool, between program and family
        self.running[tc] = (float(ev.get("ts") or self.ctx.clock()), keys, agent)
        while len(self.running) > MAX_RUNNING:  # an end we never saw (a restart): forget the oldest
            self.running.pop(next(iter(self.running)))
        declared = self._declared_duration(tc)
        if declared is not None:
            self.durations.observe(keys[:1], declared, weight=0.25)  # an intent is a hint, not a measurement
        now = self.ctx.clock()
        for prog in self.programs.values():
            if prog.waiting_for_tool and prog.agent == agent and prog.tool_call is None:
                prog.tool_call, prog.waiting_for_tool = tc, False
                self._decide_and_apply(prog, now, why="tool call started")

    def _declared_duration(self, tc: str) -> float | None:
        rec = self.ctx.model.toolcalls().get(tc)
        intent = getattr(rec, "intent", None)
        d = getattr(intent, "duration_s", None)
        return float(d) if isinstance(d, (int, float)) and d > 0 else None

    def _tool_ended(self, ev: dict) -> None:
        tc, data = ev.get("tool_call"), ev.get("data") or {}
        now = self.ctx.clock()
        started = self.running.pop(tc, None)
        outcome = data.get("outcome") or "exited"
        self.ended[tc] = (now, outcome)
        while len(self.ended) > ENDED_KEEP:
            self.ended.pop(next(iter(self.ended)))
        wall = data.get("wall_s")
        if started is not None and isinstance(wall, (int, float)) and outcome not in ("killed", "frozen", "unknown"):
            self.durations.observe(started[1], float(wall))  # killed ones are censored, not durations
            self.learned += 1
            self._dirty = True
        if outcome in ("killed", "frozen"):
            for pin in self.ledger.drop_where(now, lambda p: p.tool_call == tc):
                self._released(pin, f"tool call {tc} was {outcome}", "release", now)
            return
        for pin in self.ledger.tool_ended(tc, now, self.policy.resume_grace_s):
            if pin.tier == "host" and not pin.prefetched:
                self._notify(pin.engine, {"event": "prefetch", "program": pin.program, "tool_call": tc})
                self.ctx.emit("prefetch", f"tool call {tc} ended: prefetch {pin.program}'s KV cache back to the GPU",
                              agent=pin.agent, tool_call=tc, engine=pin.engine, program=pin.program, bytes=pin.bytes)
                pin.prefetched = True
            else:
                self._notify(pin.engine, {"event": "tool_ended", "program": pin.program, "tool_call": tc,
                                          "ttl_s": self.policy.resume_grace_s})

    def on_tick(self, now: float) -> None:
        recheck = now - self._rechecked_at >= self.policy.recheck_s
        if recheck:
            self._rechecked_at = now
            for name, eng in list(self.engines.items()):
                if not process_alive(eng.pid, eng.pid_start):
                    self._engine_gone(name, f"engine process {eng.pid} exited", now)
        if self.policy.rule == "agentd":
            # agentd sees the tool still running: a pin at its TTL, or due for a look, is decided
            # again on the remaining time rather than dropped.
            for prog in list(self.programs.values()):
                pin = self.ledger.get(prog.engine, prog.program)
                if pin is not None and pin.state == "tool_running" and (recheck or pin.expires <= now) \
                        and prog.tool_call in self.running:
                    self._decide_and_apply(prog, now, why="re-decided while the tool runs")
                    pin = self.ledger.get(prog.engine, prog.program)
                if pin is not None and pin.tier == "host" and not pin.prefetched and prog.tool_call in self.running:
                    start, keys, _ = self.running[prog.tool_call]
                    if prefetch_now(self.durations.dist(keys), now - start, pin.bytes, self.policy):
                        pin.prefetched = True
                        self._notify(pin.engine, {"event": "prefetch", "program": pin.program, "tool_call": pin.tool_call,
                                                  "early": True})
                        self.ctx.emit("prefetch", f"tool call {pin.tool_call} is likely to end within the copy time: "
                                      f"prefetch {pin.program}'s KV cache back to the GPU now", agent=pin.agent,
                                      tool_call=pin.tool_call, engine=pin.engine, program=pin.program, bytes=pin.bytes,
                                      early=True)
        for pin in self.ledger.expire(now):
            self._released(pin, "its TTL expired", "expire", now)
        self._persist()

    # ------------------------------------------------------------------ decisions
    def _dist_and_elapsed(self, prog: Program, now: float):
        if prog.tool_call and prog.tool_call in self.running:
            start, keys, _ = self.running[prog.tool_call]
            return self.durations.dist(keys), max(0.0, now - start), False
        if prog.tool_call and prog.tool_call in self.ended:
            return self.durations.dist(["*"]), 0.0, True
        keys = [f"{prog.agent}|*", FAMILY, "*"] if prog.agent else [FAMILY, "*"]
        since = now - prog.turn_ended_at if prog.turn_ended_at is not None else 0.0
        return self.durations.dist(keys), max(0.0, since), False

    def _decide_and_apply(self, prog: Program, now: float, why: str, engine_asked: bool = False) -> dict:
        """Decide and apply; engine_asked: the engine reads the action in the answer, else
        (a re-decision on agentd's own clock) a pin freed here is told to it as a notice."""
        eng = self.engines[prog.engine]
        dist, elapsed, ended = self._dist_and_elapsed(prog, now)
        inp = PinInput(tokens=prog.tokens, bytes_per_token=eng.bytes_per_token, prefill_tps=eng.prefill_tps,
                       dist=dist, elapsed_s=elapsed, tool_ended=ended, queue_s=eng.queue_s,
                       remaining_turns=prog.remaining_turns, pressure=eng.pressure,
                       host_available=eng.host_bytes > 0)
        d = decide(inp, self.policy)
        action, tier = d.action, {"keep": "gpu", "demote": "host"}.get(d.action)
        evicted: list[Pin] = []
        if tier is not None:
            pin = Pin(prog.engine, prog.program, prog.tokens, inp.bytes, tier, d.benefit_s, d.reason, now,
                      now + d.ttl_s, agent=prog.agent, tool_call=prog.tool_call,
                      state="awaiting_turn" if ended else "tool_running")
            old = self.ledger.get(prog.engine, prog.program)
            if old is not None:
                pin.since = old.since
            budget = int(self.policy.budget_fraction * eng.capacity_bytes) if tier == "gpu" \
                else int(self.policy.host_budget_fraction * eng.host_bytes)
            placed, evicted = self.ledger.place(pin, budget, now)
            if not placed and tier == "gpu" and eng.host_bytes > 0 and self.policy.demote and self.policy.rule == "agentd":
                pin.tier, tier, action = "host", "host", "demote"
                placed, evicted = self.ledger.place(pin, int(self.policy.host_budget_fraction * eng.host_bytes), now)
            if not placed:
                action, tier = "free", None
                d_reason = f"{d.reason}; over the {('GPU' if d.action == 'keep' else 'host')} pin budget"
            else:
                d_reason = d.reason
        else:
            d_reason = d.reason
        if tier is None:
            old = self.ledger.release(prog.engine, prog.program, now)
            if old is not None:
                self._released(old, d_reason, "release", now, notify=not engine_asked)
        for victim in evicted:
            self._released(victim, f"evicted for {prog.program}, worth more per byte", "evict", now, notify=True)
        out = {**d.to_json(), "action": action, "reason": d_reason,
               "ttl_s": round(d.ttl_s, 3) if tier else 0.0, "tier": tier, "tool_call": prog.tool_call,
               "elapsed_s": round(elapsed, 3), "evicted": [v.program for v in evicted]}
        out["hints"] = hint_forms.hints(out, prog.program, tool_running=not ended and prog.tool_call is not None)
        if action != prog.last_action:
            level = "info"
            self.ctx.emit({"keep": "pin", "demote": "demote", "free": "free"}[action],
                          f"{prog.engine}/{prog.program}: {action} {inp.bytes} bytes ({prog.tokens} tokens) "
                          f"for {out['ttl_s']:g} s: {d_reason} ({why})", level=level, agent=prog.agent,
                          tool_call=prog.tool_call, engine=prog.engine, program=prog.program, action=action,
                          bytes=inp.bytes, ttl_s=out["ttl_s"], benefit_s=out["benefit_s"], p_resume=out["p_resume"])
        prog.last_action, prog.decided_at, prog.last = action, now, out
        return out

    def _journal_release(self, pin: Pin, reason: str, what: str) -> None:
        self.ctx.emit(what, f"{pin.engine}/{pin.program}: released {pin.bytes} bytes ({pin.tier}): {reason}",
                      agent=pin.agent, tool_call=pin.tool_call, engine=pin.engine, program=pin.program,
                      bytes=pin.bytes, tier=pin.tier, reason=reason)

    def _released(self, pin: Pin, reason: str, what: str, now: float, notify: bool = True) -> None:
        self._journal_release(pin, reason, what)
        prog = self.programs.get(pin.key)
        if prog is not None:
            prog.last_action = "free"
        if notify:
            self._notify(pin.engine, {"event": what, "program": pin.program, "reason": reason})

    def _notify(self, engine: str, notice: dict) -> None:
        q = self.notices.setdefault(engine, deque(maxlen=MAX_NOTICES))
        q.append(notice)
        ev = self.wakeups.get(engine)
        if ev is not None:
            ev.set()

    def _engine_gone(self, name: str, reason: str, now: float) -> None:
        pins = self.ledger.drop_where(now, lambda p: p.engine == name)
        self.engines.pop(name, None)
        for key in [k for k in self.programs if k[0] == name]:
            del self.programs[key]
        self.notices.pop(name, None)
        ev = self.wakeups.pop(name, None)
        if ev is not None:
            ev.set()
        self.ctx.emit("engine_gone", f"engine {name}: {reason}; released its {len(pins)} pins "
                      f"({sum(p.bytes for p in pins)} bytes)", engine=name, pins=len(pins),
                      bytes=sum(p.bytes for p in pins), programs=[p.program for p in pins][:64])

    # ------------------------------------------------------------------ API
    def commands(self) -> list[Command]:
        s, i, n, b = (str,), (int,), (float,), (bool,)
        return [
            Command("register", "POST", Access.USER, self.api_register,
                    {"engine": Field(s, True, name=True), "model": Field(s), "bytes_per_token": Field(i, True),
                     "prefill_tps": Field(n, True), "capacity_bytes": Field(i, True), "host_bytes": Field(i),
                     "pressure": Field(n), "queue_s": Field(n)},
                    "register an engine (its KV layout and measured prefill rate)"),
            Command("unregister", "POST", Access.USER, self.api_unregister, {"engine": Field(s, True, name=True)},
                    "an engine leaves: its pins are released"),
            Command("turn_ended", "POST", Access.USER, self.api_turn_ended,
                    {"engine": Field(s, True, name=True), "program": Field(s, True, name=True), "tokens": Field(i, True),
                     "tool_call": Field(s), "pid": Field(i), "agent": Field(s, name=True),
                     "remaining_turns": Field(n), "pressure": Field(n), "queue_s": Field(n)},
                    "program's turn ended in a tool call: keep, demote or free its KV cache"),
            Command("decide", "POST", Access.USER, self.api_decide,
                    {"engine": Field(s, True, name=True), "program": Field(s, True, name=True), "pressure": Field(n)},
                    "ask again now (the tool call may have run longer, or ended)"),
            Command("next_turn", "POST", Access.USER, self.api_next_turn,
                    {"engine": Field(s, True, name=True), "program": Field(s, True, name=True), "done": Field(b)},
                    "the program's next turn arrived (or it finished): hit or miss, the pin ends"),
            Command("evicted", "POST", Access.USER, self.api_evicted,
                    {"engine": Field(s, True, name=True), "program": Field(s, True, name=True)},
                    "the engine dropped the program's KV cache anyway"),
            Command("watch", "POST", Access.USER, self.api_watch,
                    {"engine": Field(s, True, name=True), "timeout_s": Field(n)},
                    "wait for notices (prefetch on tool end, evictions, expiries)"),
            Command("schedule", "POST", Access.USER, self.api_schedule,
                    {"engine": Field(s, True, name=True), "waiting": Field((list,), True)},
                    "program-level FCFS: the order to admit waiting requests' programs in, and which are pinned"),
            Command("pins", "GET", Access.USER, self.api_pins, {"engine": Field(s)},
                    "live pins, bytes, expected benefit, hit/miss counts"),
            Command("durations", "GET", Access.ADMIN, self.api_durations, {"limit": Field(s)},
                    "the learned tool-call durations"),
        ]

    def _engine_of(self, caller, name: str) -> Engine:
        eng = self.engines.get(name)
        if eng is None:
            raise bad("unknown_engine", f"engine {name!r} is not registered; POST /v1/kv/register first", "engine", 404)
        if eng.uid != caller.peer.uid:
            raise bad("not_your_engine", f"engine {name!r} belongs to uid {eng.uid}; uid {caller.peer.uid} may act "
                      "only on its own engines", "engine", 403)
        return eng

    def _program_of(self, caller, body: dict) -> tuple[Engine, Program]:
        eng = self._engine_of(caller, body["engine"])
        prog = self.programs.get((eng.name, body["program"]))
        if prog is None:
            raise bad("unknown_program", f"engine {eng.name} has no program {body['program']!r}; report turn_ended first",
                      "program", 404)
        return eng, prog

    def _rate(self, eng: Engine) -> None:
        if not eng.take(time.monotonic()):
            self.rejected += 1
            raise bad("rate_limited", f"engine {eng.name} sends more than the allowed turn events per second", None, 429)

    def _engine_reports(self, eng: Engine, body: dict) -> None:
        eng.pressure = check_num(body, "pressure", 0.0, 1.0, eng.pressure)
        eng.queue_s = check_num(body, "queue_s", 0.0, 3600.0, eng.queue_s)

    def api_register(self, caller, body: dict) -> dict:
        name = body["engine"]
        bpt = check_int(body, "bytes_per_token", 1, MAX_BYTES_PER_TOKEN)
        tps = check_num(body, "prefill_tps", 1.0, MAX_PREFILL_TPS)
        cap = check_int(body, "capacity_bytes", 1 << 20, MAX_CAPACITY_BYTES)
        host = check_int(body, "host_bytes", 0, MAX_CAPACITY_BYTES, required=False) or 0
        model = body.get("model") or ""
        if len(model) > 200:
            raise bad("out_of_range", "model must be at most 200 characters", "model")
        old = self.engines.get(name)
        if old is not None and old.uid != caller.peer.uid:
            raise bad("engine_taken", f"engine {name!r} is registered by uid {old.uid}", "engine", 409)
        if old is None and sum(1 for e in self.engines.values() if e.uid == caller.peer.uid) >= MAX_ENGINES_PER_UID:
            raise bad("too_many_engines", f"uid {caller.peer.uid} has {MAX_ENGINES_PER_UID} engines registered", None, 429)
        eng = Engine(name, caller.peer.uid, caller.peer.pid, process_start(caller.peer.pid), model, bpt, tps, cap, host,
                     registered=self.ctx.clock())
        self._engine_reports(eng, body)
        self.engines[name] = eng
        self.ctx.emit("engine", f"engine {name} ({model or 'model not named'}) registered by pid {caller.peer.pid} "
                      f"(uid {caller.peer.uid}): {bpt} bytes/token, {tps:g} tokens/s prefill, {cap} bytes KV, {host} bytes host",
                      engine=name, uid=caller.peer.uid, pid=caller.peer.pid, bytes_per_token=bpt, prefill_tps=tps,
                      capacity_bytes=cap, host_bytes=host)
        return {"engine": name, "policy": self.policy_source, "rule": self.policy.rule,
                "budget_bytes": int(self.policy.budget_fraction * cap)}

    def api_unregister(self, caller, body: dict) -> dict:
        eng = self._engine_of(caller, body["engine"])
        pins = len(self.ledger.of_engine(eng.name))
        self._engine_gone(eng.name, "unregistered", self.ctx.clock())
        return {"engine": eng.name, "released": pins}

    def _bind_tool(self, caller, prog: Program, body: dict) -> None:
        """Which tool call the turn waits on: agentd's id, a pid in the agent, or the agent's next one."""
        tc_id, pid, agent = body.get("tool_call"), body.get("pid"), body.get("agent")
        toolcalls, agents = self.ctx.model.toolcalls(), self.ctx.model.agents()
        tool_call = None
        if tc_id is not None:
            check_toolcall_id(tc_id, "tool_call")
            rec = toolcalls.get(tc_id)
            if rec is None and tc_id not in self.ended:
                raise bad("unknown_tool_call", f"no tool call {tc_id!r} is running or recently ended", "tool_call", 404)
            tc_agent = rec.agent if rec is not None else tc_id.split("/", 1)[0]
            if agent is not None and agent != tc_agent:
                raise bad("wrong_agent", f"tool call {tc_id} belongs to agent {tc_agent}, not {agent}", "tool_call", 403)
            agent, tool_call = tc_agent, tc_id
        elif pid is not None:
            check_int(body, "pid", 1, 1 << 22)
            agent_of = self.ctx.model.agent_of_pid(pid)
            if agent_of is None:
                raise bad("unknown_pid", f"pid {pid} is in no managed agent", "pid", 404)
            if agent is not None and agent != agent_of:
                raise bad("wrong_agent", f"pid {pid} is in agent {agent_of}, not {agent}", "pid", 403)
            agent = agent_of
            tool_call = next((t.id for t in toolcalls.values() if t.agent == agent and t.pid == pid), None)
        if agent is not None:
            rec = agents.get(agent)
            if rec is None:
                raise bad("unknown_agent", f"agent {agent!r} is not managed", "agent", 404)
            if getattr(rec, "uid", None) != caller.peer.uid and caller.peer.uid != 0:
                raise bad("not_your_agent", f"agent {agent} is owned by uid {rec.uid}; uid {caller.peer.uid} may not "
                          "pin for it", "agent", 403)
            if prog.agent is not None and prog.agent != agent:
                raise bad("wrong_agent", f"program {prog.program} is agent {prog.agent}'s; this tool call is agent {agent}'s",
                          "agent", 403)
        prog.agent = agent if agent is not None else prog.agent
        prog.tool_call = tool_call
        prog.waiting_for_tool = tool_call is None and prog.agent is not None

    def api_turn_ended(self, caller, body: dict) -> dict:
        eng = self._engine_of(caller, body["engine"])
        self._rate(eng)
        tokens = check_int(body, "tokens", 1, MAX_TOKENS)
        if tokens * eng.bytes_per_token > eng.capacity_bytes:
            raise bad("out_of_range", f"{tokens} tokens x {eng.bytes_per_token} bytes is more KV than engine "
                      f"{eng.name}'s capacity {eng.capacity_bytes}", "tokens")
        remaining = check_num(body, "remaining_turns", 0.0, 1e6, 1.0)
        key = (eng.name, body["program"])
        prog = self.programs.get(key)
        if prog is None:
            if sum(1 for k in self.programs if k[0] == eng.name) >= MAX_PROGRAMS_PER_ENGINE:
                raise bad("too_many_programs", f"engine {eng.name} has {MAX_PROGRAMS_PER_ENGINE} programs", None, 429)
            prog = Program(eng.name, body["program"], first_seen=self.ctx.clock())
        staged = Program(**{**prog.to_json()})
        self._bind_tool(caller, staged, body)  # raises before anything changes
        self._engine_reports(eng, body)
        staged.tokens, staged.turns, staged.remaining_turns = tokens, prog.turns + 1, remaining
        staged.turn_ended_at = self.ctx.clock()
        self.programs[key] = staged
        return {"program": staged.program, "agent": staged.agent,
                **self._decide_and_apply(staged, self.ctx.clock(), why="turn ended", engine_asked=True)}

    def api_decide(self, caller, body: dict) -> dict:
        eng, prog = self._program_of(caller, body)
        self._rate(eng)
        self._engine_reports(eng, body)
        if prog.turn_ended_at is None:
            raise bad("turn_running", f"program {prog.program}'s turn is running; report turn_ended first", "program", 409)
        return {"program": prog.program, "agent": prog.agent, **self._decide_and_apply(prog, self.ctx.clock(), why="asked", engine_asked=True)}

    def api_next_turn(self, caller, body: dict) -> dict:
        eng, prog = self._program_of(caller, body)
        self._rate(eng)
        now = self.ctx.clock()
        outcome, pin = self.ledger.next_turn(eng.name, prog.program, now)
        waited = now - prog.turn_ended_at if prog.turn_ended_at is not None else 0.0
        self.ctx.emit("turn", f"{eng.name}/{prog.program}: next turn after {waited:.2f} s: {outcome}",
                      agent=prog.agent, tool_call=prog.tool_call, engine=eng.name, program=prog.program,
                      outcome=outcome, waited_s=round(waited, 3), bytes=pin.bytes if pin else 0)
        prog.turn_ended_at, prog.tool_call, prog.waiting_for_tool, prog.last_action = None, None, False, "free"
        if body.get("done"):
            self.programs.pop((eng.name, prog.program), None)
        self._dirty = True
        return {"program": prog.program, "outcome": outcome, "waited_s": round(waited, 3),
                "tier": pin.tier if pin else None}

    def api_evicted(self, caller, body: dict) -> dict:
        eng, prog = self._program_of(caller, body)
        self._rate(eng)
        pin = self.ledger.release(eng.name, prog.program, self.ctx.clock())
        if pin is not None:
            self._journal_release(pin, "the engine evicted it", "release")
        prog.last_action = "free"
        return {"program": prog.program, "released": pin is not None}

    async def api_watch(self, caller, body: dict) -> dict:
        eng = self._engine_of(caller, body["engine"])
        timeout = check_num(body, "timeout_s", 0.0, MAX_WATCH_S, 10.0)
        q = self.notices.setdefault(eng.name, deque(maxlen=MAX_NOTICES))
        if not q and timeout > 0:
            ev = self.wakeups.setdefault(eng.name, asyncio.Event())
            ev.clear()
            try:
                await asyncio.wait_for(ev.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        out = list(q)
        q.clear()
        return {"engine": eng.name, "notices": out}

    def api_schedule(self, caller, body: dict) -> dict:
        """Continuum's program-level FCFS as a hint: a returning turn goes before newcomers, in
        the order its program first arrived; pinned (or demoted) programs are named."""
        eng = self._engine_of(caller, body["engine"])
        waiting = body["waiting"]
        if len(waiting) > MAX_PROGRAMS_PER_ENGINE:
            raise bad("out_of_range", f"at most {MAX_PROGRAMS_PER_ENGINE} waiting programs", "waiting")
        for i, name in enumerate(waiting):
            if not isinstance(name, str):
                raise bad("invalid_type", f"waiting[{i}] must be a program name", "waiting")
            check_name(name, f"waiting[{i}]")
        known = {n: self.programs[(eng.name, n)].first_seen for n in waiting if (eng.name, n) in self.programs}
        order = sorted(dict.fromkeys(waiting), key=lambda n: (n not in known, known.get(n, 0.0)))
        pinned = [n for n in order if self.ledger.get(eng.name, n) is not None]
        return {"engine": eng.name, "order": order, "pinned": pinned}

    def api_pins(self, caller, query: dict) -> dict:
        now = self.ctx.clock()
        self.ledger.account(now)
        mine = caller.role == "admin"
        engines = [e for e in self.engines.values() if mine or e.uid == caller.peer.uid]
        if query.get("engine"):
            engines = [e for e in engines if e.name == query["engine"]]
        names = {e.name for e in engines}
        pins = [{**p.to_json(), "age_s": round(now - p.since, 3), "ttl_left_s": round(max(0.0, p.expires - now), 3)}
                for p in self.ledger.pins.values() if p.engine in names]
        return {"rule": self.policy.rule, "policy": self.policy_source, "pins": pins,
                "engines": [{**e.to_json(), "pinned_bytes": self.ledger.held(e.name, "gpu"),
                             "host_bytes_held": self.ledger.held(e.name, "host"),
                             "budget_bytes": int(self.policy.budget_fraction * e.capacity_bytes),
                             "programs": sum(1 for k in self.programs if k[0] == e.name)} for e in engines],
                "counters": self.ledger.counters.to_json()}

    def api_durations(self, caller, query: dict) -> dict:
        try:
            limit = int(query.get("limit") or 50)
        except ValueError:
            raise bad("invalid_type", "limit must be an integer", "limit") from None
        if not 1 <= limit <= 1000:
            raise bad("out_of_range", "limit must be in 1..1000", "limit")
        return {"observations": self.durations.observations, "learned_from_tracker": self.learned,
                "keys": len(self.durations.hists), "running": len(self.running),
                "durations": self.durations.summary(limit)}

    # ------------------------------------------------------------------ reads
    def status(self) -> dict:
        c = self.ledger.counters.to_json()
        return {"rule": self.policy.rule, "policy": self.policy_source, "engines": len(self.engines),
                "programs": len(self.programs), "pins": len(self.ledger.pins),
                "pinned_bytes": sum(p.bytes for p in self.ledger.pins.values() if p.tier == "gpu"),
                "host_bytes": sum(p.bytes for p in self.ledger.pins.values() if p.tier == "host"),
                "duration_keys": len(self.durations.hists), "learned": self.learned,
                "hits": c["hits"], "host_hits": c["host_hits"], "misses": c["misses"], "hit_rate": c["hit_rate"]}

    def metrics(self) -> dict[str, float]:
        c = self.ledger.counters
        return {"engines": len(self.engines), "pins": len(self.ledger.pins),
                "pinned_bytes": sum(p.bytes for p in self.ledger.pins.values() if p.tier == "gpu"),
                "hits_total": c.hits, "host_hits_total": c.host_hits, "misses_total": c.misses,
                "evictions_total": c.evictions, "expiries_total": c.expiries, "pinned_gb_seconds_total": c.gpu_byte_s / 1e9,
                "durations_learned_total": self.learned, "rejected_total": self.rejected}


KIND = KvKind
