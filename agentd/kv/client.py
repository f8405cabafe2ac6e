"""A small client for inference engines: the /v1/kv/ protocol over agentd's socket.

    kv = KvClient("vllm-0", socket="/run/agentd/agentd.sock")
    kv.register(bytes_per_token=163840, prefill_tps=12000, capacity_bytes=60 << 30, host_bytes=200 << 30)
    d = kv.turn_ended("req-17", tokens=18000, pid=tool_pid)   # or tool_call="agent/3-pytest", or agent="swe-1"
    if d["action"] == "keep": ...hold the blocks for d["ttl_s"]...
    for n in kv.watch(timeout_s=5): ...n["event"] in prefetch, tool_ended, evict, expire, release...
    kv.next_turn("req-17")  # -> {"outcome": "hit" | "host_hit" | "miss"}

Only the standard library and agentd.api.client; an engine imports this and nothing of the daemon.
"""

from __future__ import annotations

from typing import Any

from agentd.api.client import ApiClient

KIND = "kv"


class KvClient:
    def __init__(self, engine: str, socket: str | None = None, client: ApiClient | None = None, timeout: float = 5.0):
        self.engine = engine
        self.api = client or (ApiClient(socket, timeout=timeout) if socket else ApiClient(timeout=timeout))

    def _post(self, cmd: str, **body: Any) -> dict:
        return self.api.kind_post(KIND, cmd, {"engine": self.engine, **{k: v for k, v in body.items() if v is not None}})

    def register(self, *, bytes_per_token: int, prefill_tps: float, capacity_bytes: int, host_bytes: int = 0,
                 model: str | None = None, pressure: float | None = None, queue_s: float | None = None) -> dict:
        return self._post("register", bytes_per_token=bytes_per_token, prefill_tps=float(prefill_tps),
                          capacity_bytes=capacity_bytes, host_bytes=host_bytes, model=model, pressure=pressure,
                          queue_s=queue_s)

    def unregister(self) -> dict:
        return self._post("unregister")

    def turn_ended(self, program: str, *, tokens: int, tool_call: str | None = None, pid: int | None = None,
                   agent: str | None = None, remaining_turns: float | None = None, pressure: float | None = None,
                   queue_s: float | None = None) -> dict:
        return self._post("turn_ended", program=program, tokens=tokens, tool_call=tool_call, pid=pid, agent=agent,
                          remaining_turns=remaining_turns, pressure=pressure, queue_s=queue_s)

    def decide(self, program: str, pressure: float | None = None) -> dict:
        return self._post("decide", program=program, pressure=pressure)

    def next_turn(self, program: str, done: bool = False) -> dict:
        return self._post("next_turn", program=program, done=done or None)

    def evicted(self, program: str) -> dict:
        return self._post("evicted", program=program)

    def watch(self, timeout_s: float = 2.0) -> list[dict]:
        return self._post("watch", timeout_s=float(timeout_s))["notices"]

    def schedule(self, waiting: list[str]) -> dict:
        """Program-level FCFS: {"order": [...], "pinned": [...]} for the programs waiting."""
        return self._post("schedule", waiting=list(waiting))

    def pins(self) -> dict:
        return self.api.kind_get(KIND, "pins", engine=self.engine)
