"""vLLM adapter: hold a finished turn's KV blocks while its tool call runs, as agentd decides.

vLLM (V1 engine) frees a request's KV blocks when it finishes, unless its KV connector's
scheduler-side `request_finished(request, block_ids)` returns `(True, params)`; the blocks then
stay allocated (and in the prefix cache) until a worker-side `get_finished(finished_req_ids)`
reports the request id as finished sending. The connector's scheduler side hands the workers
what to report through the per-step metadata (`build_connector_meta` ->
`bind_connector_metadata`). That is where a program's blocks can wait for its next turn:

  request_finished   -> agentd turn_ended(program, tokens, tool call, KV cache usage)
  (_all_groups)         keep: (True, params)
  on_new_request     -> the program's next turn arrived: agentd next_turn(program)
  update_state_after_alloc
                     -> the new request holds its blocks (its prefix-cache lookup matched the
                        held ones): the old request id is released
  each step          -> agentd's notices (evict / expire / release), holds at their TTL that
                        agentd (asked: decide) no longer keeps -> released ids in the metadata
  get_finished       -> the worker reports the released ids (only ids vLLM has passed to it
                        as finished, as the base class requires): vLLM frees the blocks
  scheduler hint     -> AgentdScheduler: vLLM's scheduler with its FCFS waiting queue sorted
                        by program_order (program-level FCFS)

A request names its program in `kv_transfer_params["agentd"]` or `sampling_params.extra_args
["agentd"]`: {"program": "...", "tool_call": "agent/3-pytest" | "pid": 1234 | "agent": "name",
"remaining_turns": n}. Requests without it are left to vLLM.

`VllmKvTranslator` is the translation logic, pure apart from the client it is given and the
clock (tests/unit/kv/test_kv_vllm_adapter.py). `AgentdKVConnector`, `AgentdScheduler` and
`AgentdSyncScheduler` are built from vLLM's classes on first access (module __getattr__), so
this module imports without vLLM. Tested against vllm 0.33.0's real connector factory,
scheduler, KV cache manager and Request with the real daemon (tests/vllm, in the venv of
scripts/vllm-venv.sh); how far, in docs/kv.md, "vLLM".
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

META_KEY = "agentd"
SENT_STEPS = 8  # steps a released request may take to come back freed before reclaim stops waiting on it


def program_meta(request: Any) -> dict | None:
    """The agentd block a request carries (kv_transfer_params first, then sampling extra_args)."""
    for holder in (getattr(request, "kv_transfer_params", None),
                   getattr(getattr(request, "sampling_params", None), "extra_args", None)):
        if isinstance(holder, dict) and isinstance(holder.get(META_KEY), dict):
            meta = holder[META_KEY]
            if isinstance(meta.get("program"), str):
                return meta
    return None


@dataclass
class Hold:
    request_id: str
    program: str
    deadline: float
    action: str
    num_blocks: int


@dataclass
class VllmKvTranslator:
    client: Any  # agentd.kv.client.KvClient (or anything with its methods)
    clock: Callable[[], float] = time.monotonic
    holds: dict[str, Hold] = field(default_factory=dict)  # program -> the finished request holding blocks
    returning: dict[str, Hold] = field(default_factory=dict)  # new request id -> the hold it takes over
    releasing: set[str] = field(default_factory=set)  # request ids the workers are to report next step
    first_seen: dict[str, float] = field(default_factory=dict)  # program -> first arrival (program FCFS)
    sent: dict[str, int] = field(default_factory=dict)  # released ids vLLM has not freed yet -> step sent
    steps: int = 0
    errors: int = 0

    # ------------------------------------------------------------------ scheduler side
    def request_finished(self, request: Any, block_ids: Iterable[int],
                         pressure: float | None = None) -> tuple[bool, dict | None]:
        """pressure: the engine's KV cache usage (0..1), which agentd weighs a keep against."""
        meta = program_meta(request)
        if meta is None:
            return False, None
        program = meta["program"]
        tokens = int(getattr(request, "num_tokens", 0) or len(getattr(request, "prompt_token_ids", []) or []))
        try:
            d = self.client.turn_ended(program, tokens=max(1, tokens), tool_call=meta.get("tool_call"),
                                       pid=meta.get("pid"), agent=meta.get("agent"),
                                       remaining_turns=meta.get("remaining_turns"),
                                       **({"pressure": min(1.0, max(0.0, float(pressure)))} if pressure is not None else {}))
        except Exception:  # agentd unreachable or refusing: vLLM's own behaviour (free now)
            self.errors += 1
            return False, None
        old = self.holds.pop(program, None)
        if old is not None:
            self.releasing.add(old.request_id)
        params = {META_KEY: {"action": d["action"], "ttl_s": d.get("ttl_s", 0.0), "hints": d.get("hints")}}
        if d["action"] != "keep":
            # demote: vLLM's offloading connector (or LMCache) keeps the host copy; agentd's
            # prefetch notice tells the engine when to load it back. free: vLLM's LRU as usual.
            return False, params
        self.holds[program] = Hold(request.request_id, program, self.clock() + float(d.get("ttl_s", 0.0)), "keep",
                                   len(list(block_ids)))
        return True, params

    def new_request(self, request: Any) -> str | None:
        """A request arrives (on_new_request): if its program holds blocks, this is the next turn.
        Returns the outcome agentd recorded (hit / host_hit / miss), None without a program."""
        meta = program_meta(request)
        if meta is None:
            return None
        program = meta["program"]
        self.first_seen.setdefault(program, getattr(request, "arrival_time", None) or time.time())
        hold = self.holds.pop(program, None)
        if hold is not None:
            self.returning[request.request_id] = hold  # released once the new request has its blocks
        try:
            return self.client.next_turn(program)["outcome"]
        except Exception:
            self.errors += 1  # a first turn (404 unknown program) or agentd away
            return None

    def allocated(self, request: Any) -> None:
        """The new request has its blocks (update_state_after_alloc): its prefix-cache hit now
        references the held blocks, so the finished request's hold can go."""
        hold = self.returning.pop(getattr(request, "request_id", None), None)
        if hold is not None:
            self.releasing.add(hold.request_id)

    def step(self) -> set[str]:
        """Once per scheduler step: the request ids whose blocks are to be freed now."""
        now = self.clock()
        for program, hold in list(self.holds.items()):
            if hold.deadline <= now:
                # agentd re-decides a pin at its TTL while the tool runs (and may extend it): ask
                # before dropping blocks agentd still counts as pinned.
                try:
                    d = self.client.decide(program)
                except Exception:
                    self.errors += 1
                    d = {"action": "free"}
                if d.get("action") == "keep" and float(d.get("ttl_s", 0.0)) > 0:
                    hold.deadline = now + float(d["ttl_s"])
                    continue
                del self.holds[program]
                self.releasing.add(hold.request_id)
        try:
            notices = self.client.watch(timeout_s=0.0)
        except Exception:
            self.errors += 1
            notices = []
        for n in notices:
            if n.get("event") in ("evict", "expire", "release"):
                hold = self.holds.pop(n.get("program"), None)
                if hold is not None:
                    self.releasing.add(hold.request_id)
            elif n.get("event") == "tool_ended":
                hold = self.holds.get(n.get("program"))
                if hold is not None:
                    hold.deadline = max(hold.deadline, now + float(n.get("ttl_s", 5.0)))
        self.steps += 1
        self.sent.update({rid: self.steps for rid in self.releasing})
        for rid, at in list(self.sent.items()):
            if self.steps - at > SENT_STEPS:
                del self.sent[rid]  # never reported freed: stop counting on it (reclaim)
        out, self.releasing = self.releasing, set()
        return out

    def freed(self, request_ids: Iterable[str] | None) -> None:
        """vLLM freed these (the workers' finished_sending, update_connector_output)."""
        for rid in request_ids or ():
            self.sent.pop(rid, None)

    def reclaim(self) -> bool:
        """vLLM cannot fit a running request's next blocks and would preempt one: give up the
        largest hold instead (agentd is told the engine evicted it). True while a release is on
        its way (with async scheduling it takes two steps to come back freed), so vLLM waits for
        it rather than preempting."""
        if not self.releasing and not self.sent and self.holds:
            program, hold = max(self.holds.items(), key=lambda kv: kv[1].num_blocks)
            del self.holds[program]
            self.releasing.add(hold.request_id)
            try:
                self.client.evicted(program)
            except Exception:
                self.errors += 1
        return bool(self.releasing or self.sent)

    def program_order(self, request: Any, arrival: float) -> tuple[float, float]:
        """Program-level FCFS (Continuum): a returning turn sorts by its program's first arrival."""
        meta = program_meta(request)
        first = self.first_seen.setdefault(meta["program"], arrival) if meta else arrival
        return (first, arrival)



@dataclass
class WorkerReleases:
    """The worker side: report a released request as finished sending, but only once vLLM has
    named it among the finished requests (get_finished's contract)."""

    finished: set[str] = field(default_factory=set)  # finished ids vLLM has passed, still held
    pending: set[str] = field(default_factory=set)  # released by the scheduler, to report

    def bind(self, released: Iterable[str]) -> None:
        self.pending |= set(released)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        self.finished |= set(finished_req_ids)
        out = self.pending & self.finished
        self.pending -= out
        self.finished -= out
        return (out or None, None)


def connector_class():
    """The KVConnectorBase_V1 subclass around VllmKvTranslator (needs vLLM importable).

    Configure with --kv-transfer-config '{"kv_connector": "AgentdKVConnector", "kv_connector_module_path":
    "agentd.kv.vllm_adapter", "kv_role": "kv_both", "kv_connector_extra_config": {"engine": "vllm-0"}}'.
    vLLM's KVConnectorFactory imports the module by path and takes `AgentdKVConnector` from it with
    getattr; the module's __getattr__ builds the class then, so importing this module never needs vLLM.
    Built once; the classes are module attributes under their own names, so pickle finds them
    (the per-step AgentdMeta crosses from the scheduler process to the workers).
    """
    if "AgentdKVConnector" in globals():
        return globals()["AgentdKVConnector"]
    from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1, KVConnectorMetadata,
                                                                   KVConnectorRole, SupportsHMA)

    from agentd.kv.client import KvClient

    @dataclass
    class AgentdMeta(KVConnectorMetadata):
        released: set = field(default_factory=set)

    class AgentdKVConnector(KVConnectorBase_V1, SupportsHMA):
        # vLLM 0.33's factory refuses a connector whose __init__ has no kv_cache_config, and
        # SupportsHMA keeps vLLM from turning the hybrid KV cache manager off for it.
        def __init__(self, vllm_config, role, kv_cache_config=None):
            super().__init__(vllm_config, role, kv_cache_config)
            extra = getattr(vllm_config.kv_transfer_config, "kv_connector_extra_config", None) or {}
            self.translator = None
            if role == KVConnectorRole.SCHEDULER:
                client = KvClient(extra.get("engine", "vllm"), extra.get("socket"))
                self.translator = VllmKvTranslator(client)
                if extra.get("prefill_tps"):
                    self.registered = self._register(client, kv_cache_config, float(extra["prefill_tps"]))
            self.worker = WorkerReleases()

        @staticmethod
        def _register(client, kv_cache_config, prefill_tps):
            """With kv_connector_extra_config.prefill_tps set, the engine registers itself from
            vLLM's own KV cache layout (capacity, bytes per token); agentd is asked, not required."""
            if kv_cache_config is None or not kv_cache_config.kv_cache_groups:
                return None
            per_block = sum(g.kv_cache_spec.page_size_bytes * len(g.layer_names) for g in kv_cache_config.kv_cache_groups)
            block_size = kv_cache_config.kv_cache_groups[0].kv_cache_spec.block_size
            try:
                return client.register(bytes_per_token=max(1, per_block // block_size), prefill_tps=prefill_tps,
                                       capacity_bytes=per_block * kv_cache_config.num_blocks, model="vllm")
            except Exception as e:  # agentd away or refusing: vLLM runs as without agentd
                return {"error": str(e)}

        # scheduler side
        def on_new_request(self, request):
            self.translator.new_request(request)

        def get_num_new_matched_tokens(self, request, num_computed_tokens):
            return 0, False  # side-effect free: the held blocks are matched by vLLM's own prefix cache

        def update_state_after_alloc(self, request, blocks, num_external_tokens):
            self.translator.allocated(request)

        def build_connector_meta(self, scheduler_output):
            return AgentdMeta(released=self.translator.step())

        def _usage(self):
            # the scheduler binds its KV cache manager to the connector (bind_kv_cache_manager)
            manager = getattr(self, "_kv_cache_manager", None)
            return manager.usage if manager is not None else None

        def request_finished(self, request, block_ids):
            return self.translator.request_finished(request, block_ids, self._usage())

        def request_finished_all_groups(self, request, block_ids):
            # one block list per KV cache group (hybrid models); agentd holds them all or none
            return self.translator.request_finished(request, [b for group in block_ids for b in group], self._usage())

        def update_connector_output(self, connector_output):
            if self.translator is not None:
                self.translator.freed(connector_output.finished_sending)

        def has_pending_block_frees(self):
            # asked before vLLM preempts a running request for blocks: held blocks go first
            return self.translator.reclaim() if self.translator is not None else False

        # worker side
        def bind_connector_metadata(self, connector_metadata):
            super().bind_connector_metadata(connector_metadata)
            self.worker.bind(getattr(connector_metadata, "released", ()) or ())

        def get_finished(self, finished_req_ids):
            return self.worker.get_finished(finished_req_ids)

        def start_load_kv(self, forward_context, **kwargs):
            return None

        def wait_for_layer_load(self, layer_name):
            return None

        def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
            return None

        def wait_for_save(self):
            return None

    for cls in (AgentdMeta, AgentdKVConnector):
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls
    return AgentdKVConnector


def scheduler_class(sync: bool = False):
    """vLLM's V1 scheduler with program-level FCFS for its waiting queue (the scheduling hint).

    Configure with --scheduler-cls agentd.kv.vllm_adapter.AgentdScheduler (vLLM's AsyncScheduler
    underneath, vLLM 0.33's default: a subclass of the plain Scheduler turns async scheduling's
    benefit off, as vLLM warns), or agentd.kv.vllm_adapter.AgentdSyncScheduler with
    --no-async-scheduling; both with the default --scheduling-policy fcfs. A new request is
    queued behind every waiting request whose program arrived earlier (program_order), so a
    returning turn of an old program does not wait behind newcomers; preempted requests still go
    to the front, as in vLLM. With the agentd connector the programs' first arrivals are the
    translator's; without it, the scheduler's own.
    """
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.request_queue import FCFSRequestQueue, SchedulingPolicy
    from vllm.v1.core.sched.scheduler import Scheduler

    class ProgramFCFSRequestQueue(FCFSRequestQueue):
        def __init__(self, key):
            super().__init__()
            self.key = key

        def add_request(self, request) -> None:
            k = self.key(request)
            i = len(self)
            while i > 0 and self.key(self[i - 1]) > k:
                i -= 1
            self.insert(i, request)

    base = Scheduler if sync else AsyncScheduler

    class ProgramFCFS(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            translator = getattr(self.connector, "translator", None)
            self.program_translator = translator if translator is not None else VllmKvTranslator(client=None)
            if self.policy == SchedulingPolicy.FCFS:
                self.waiting = ProgramFCFSRequestQueue(self.program_key)

        def program_key(self, request):
            return self.program_translator.program_order(request, request.arrival_time)

    ProgramFCFS.__init__.__signature__ = inspect.signature(Scheduler.__init__)
    ProgramFCFS.__name__ = ProgramFCFS.__qualname__ = "AgentdSyncScheduler" if sync else "AgentdScheduler"
    globals()[ProgramFCFS.__name__] = ProgramFCFS
    return ProgramFCFS


_LAZY = {"AgentdKVConnector": connector_class, "AgentdScheduler": scheduler_class,
         "AgentdSyncScheduler": lambda: scheduler_class(sync=True), "AgentdMeta": connector_class}


def __getattr__(name: str):
    """`AgentdKVConnector`, `AgentdScheduler` and `AgentdSyncScheduler` exist once asked for (vLLM's factory and
    SchedulerConfig.get_scheduler_cls look them up by name), so the module imports without vLLM."""
    if name in _LAZY:
        _LAZY[name]()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
