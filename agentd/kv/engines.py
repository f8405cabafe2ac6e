"""Engines and their programs as the kind keeps them, with the checks on what an engine sends
(ranges, ownership, rate). Pure except `process_alive`, the one read of /proc (an engine that
exits, or crashes, releases its pins)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from agentd.api.contract import ApiError

MAX_TOKENS = 10_000_000  # no model's context is longer; more is a bug or an attack
MAX_BYTES_PER_TOKEN = 64 << 20
MAX_CAPACITY_BYTES = 1 << 44  # 16 TiB of KV per engine
MAX_PREFILL_TPS = 1e8
MAX_ENGINES_PER_UID = 64
MAX_PROGRAMS_PER_ENGINE = 10_000
RATE_PER_S = 500.0  # turn events per engine and second: a busy engine does tens
RATE_BURST = 1000.0


@dataclass
class Engine:
    name: str
    uid: int
    pid: int
    pid_start: int | None  # /proc/<pid>/stat start time: a reused pid is not the engine
    model: str
    bytes_per_token: int
    prefill_tps: float
    capacity_bytes: int
    host_bytes: int = 0
    pressure: float = 1.0  # the engine's last report of its KV use, 0..1
    queue_s: float = 0.0  # the engine's last report of a re-admitted request's queueing
    registered: float = 0.0
    tokens: float = RATE_BURST  # the rate bucket
    bucket_at: float = 0.0

    def to_json(self) -> dict:
        out = asdict(self)
        del out["tokens"], out["bucket_at"]
        return out

    def take(self, now: float) -> bool:
        """One turn event from this engine's rate bucket; False when it floods."""
        self.tokens = min(RATE_BURST, self.tokens + max(0.0, now - self.bucket_at) * RATE_PER_S)
        self.bucket_at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class Program:
    engine: str
    program: str
    agent: str | None = None
    tool_call: str | None = None  # agentd's tool-call id, once bound
    tokens: int = 0
    turns: int = 0
    turn_ended_at: float | None = None  # None while a turn runs on the engine
    remaining_turns: float = 1.0
    waiting_for_tool: bool = False  # the turn ended; its tool call has not started yet
    first_seen: float = 0.0  # the program's first turn end: its place in program-level FCFS
    last_action: str = "free"
    decided_at: float = 0.0
    last: dict = field(default_factory=dict)  # the last decision's JSON

    def to_json(self) -> dict:
        return asdict(self)


def bad(code: str, message: str, field_name: str | None = None, status: int = 400) -> ApiError:
    return ApiError(status, code, message, field_name)


def check_int(body: dict, key: str, lo: int, hi: int, *, required: bool = True) -> int | None:
    value = body.get(key)
    if value is None:
        if required:
            raise bad("missing_field", f"field {key!r} is required", key)
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad("invalid_type", f"field {key!r} must be an integer", key)
    if not lo <= value <= hi:
        raise bad("out_of_range", f"field {key!r} must be in {lo}..{hi}, got {value}", key)
    return value


def check_num(body: dict, key: str, lo: float, hi: float, default: float | None = None) -> float | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise bad("invalid_type", f"field {key!r} must be a number", key)
    if not lo <= value <= hi:
        raise bad("out_of_range", f"field {key!r} must be in {lo:g}..{hi:g}, got {value:g}", key)
    return float(value)


def process_alive(pid: int, start: int | None, root: str = "/proc") -> bool:
    from agentd.procfs import read_stat

    st = read_stat(pid, root)
    if st is None or st.state in ("Z", "X"):
        return False
    return start is None or st.start_ticks == start


def process_start(pid: int, root: str = "/proc") -> int | None:
    from agentd.procfs import read_stat

    st = read_stat(pid, root)
    return st.start_ticks if st else None
