"""The pin ledger: which programs' KV caches are held, where (GPU or host), why, until when,
and what each is expected to save. Budget enforcement evicts the pin with the lowest
expected benefit per byte (never simply the oldest); pins end on the next turn, on expiry,
when their tool call is killed, or when their engine goes away. Pure bookkeeping: the kind
turns what these methods return into journal events and engine hints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

TIERS = ("gpu", "host")


@dataclass
class Pin:
    engine: str
    program: str
    tokens: int
    bytes: int
    tier: str  # gpu | host
    benefit_s: float  # expected completion-time saving, net of the memory's price
    reason: str
    since: float
    expires: float
    agent: str | None = None
    tool_call: str | None = None
    state: str = "tool_running"  # tool_running | awaiting_turn (the tool ended; the next turn is due)
    prefetched: bool = False  # a host-tier copy is on its way back to the GPU

    @property
    def key(self) -> tuple[str, str]:
        return (self.engine, self.program)

    @property
    def benefit_per_byte(self) -> float:
        return self.benefit_s / max(1, self.bytes)

    def to_json(self) -> dict:
        out = asdict(self)
        out["benefit_s"] = round(self.benefit_s, 4)
        return out


@dataclass
class Counters:
    pins: int = 0
    demotions: int = 0
    releases: int = 0
    evictions: int = 0
    expiries: int = 0
    refused: int = 0  # a pin that would not fit the budget and was worth less than every held one
    hits: int = 0  # next turn found its cache on the GPU
    host_hits: int = 0  # ... on the host tier (prefetched)
    misses: int = 0  # ... gone: the engine re-prefills
    gpu_byte_s: float = 0.0
    host_byte_s: float = 0.0
    saved_s: float = 0.0  # expected seconds saved by hits (sum of the pins' benefit at their hit)

    def to_json(self) -> dict:
        out = asdict(self)
        out["gpu_gb_s"] = round(self.gpu_byte_s / 1e9, 3)
        out["host_gb_s"] = round(self.host_byte_s / 1e9, 3)
        del out["gpu_byte_s"], out["host_byte_s"]
        total = self.hits + self.host_hits + self.misses
        out["hit_rate"] = round((self.hits + self.host_hits) / total, 4) if total else None
        out["saved_s"] = round(self.saved_s, 3)
        return out


@dataclass
class Ledger:
    pins: dict[tuple[str, str], Pin] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    _accounted: float | None = None

    # ------------------------------------------------------------------ reads
    def held(self, engine: str, tier: str) -> int:
        return sum(p.bytes for p in self.pins.values() if p.engine == engine and p.tier == tier)

    def of_engine(self, engine: str) -> list[Pin]:
        return [p for p in self.pins.values() if p.engine == engine]

    def get(self, engine: str, program: str) -> Pin | None:
        return self.pins.get((engine, program))

    # ------------------------------------------------------------------ changes
    def account(self, now: float) -> None:
        """Integrate bytes x seconds held up to now (pinned GB·s)."""
        if self._accounted is not None and now > self._accounted:
            dt = now - self._accounted
            for p in self.pins.values():
                if p.tier == "gpu":
                    self.counters.gpu_byte_s += p.bytes * dt
                else:
                    self.counters.host_byte_s += p.bytes * dt
        self._accounted = now if self._accounted is None else max(self._accounted, now)

    def place(self, pin: Pin, budget_bytes: int, now: float) -> tuple[bool, list[Pin]]:
        """Hold `pin` (replacing the program's previous pin) within its tier's budget: evict the
        held pins with the lowest benefit per byte while they are worth less per byte than the
        new one. Returns (placed, evicted). Nothing changes when it is refused."""
        self.account(now)
        old = self.pins.get(pin.key)
        held = self.held(pin.engine, pin.tier) - (old.bytes if old is not None and old.tier == pin.tier else 0)
        if pin.bytes > budget_bytes:
            self.counters.refused += 1
            return False, []
        victims: list[Pin] = []
        if held + pin.bytes > budget_bytes:
            others = sorted((p for p in self.pins.values()
                             if p.engine == pin.engine and p.tier == pin.tier and p.key != pin.key),
                            key=lambda p: p.benefit_per_byte)
            need = held + pin.bytes - budget_bytes
            for p in others:
                if need <= 0:
                    break
                if p.benefit_per_byte >= pin.benefit_per_byte:
                    break
                victims.append(p)
                need -= p.bytes
            if need > 0:
                self.counters.refused += 1
                return False, []
        for p in victims:
            del self.pins[p.key]
            self.counters.evictions += 1
        self.pins[pin.key] = pin
        if old is None or old.tier != pin.tier:
            if pin.tier == "gpu":
                self.counters.pins += 1
            else:
                self.counters.demotions += 1
        return True, victims

    def release(self, engine: str, program: str, now: float) -> Pin | None:
        self.account(now)
        pin = self.pins.pop((engine, program), None)
        if pin is not None:
            self.counters.releases += 1
        return pin

    def next_turn(self, engine: str, program: str, now: float) -> tuple[str, Pin | None]:
        """The program's next turn arrived: 'hit' (GPU), 'host_hit' or 'miss'; the pin is released."""
        pin = self.release(engine, program, now)
        if pin is None:
            self.counters.misses += 1
            return "miss", None
        if pin.tier == "gpu":
            self.counters.hits += 1
        else:
            self.counters.host_hits += 1
        self.counters.saved_s += max(0.0, pin.benefit_s)
        return ("hit" if pin.tier == "gpu" else "host_hit"), pin

    def expire(self, now: float) -> list[Pin]:
        self.account(now)
        gone = [p for p in self.pins.values() if p.expires <= now]
        for p in gone:
            del self.pins[p.key]
            self.counters.expiries += 1
        return gone

    def tool_ended(self, tool_call: str, now: float, grace_s: float) -> list[Pin]:
        """The tool call ended: its pins wait `grace_s` for the next turn. Returns them (the
        host-tier ones are to be prefetched now)."""
        out = []
        for p in self.pins.values():
            if p.tool_call == tool_call and p.state == "tool_running":
                p.state = "awaiting_turn"
                p.expires = now + grace_s
                out.append(p)
        return out

    def drop_where(self, now: float, pred) -> list[Pin]:
        """Release every pin for which pred(pin) holds (a killed tool call, a departed engine)."""
        self.account(now)
        gone = [p for p in self.pins.values() if pred(p)]
        for p in gone:
            del self.pins[p.key]
            self.counters.releases += 1
        return gone
