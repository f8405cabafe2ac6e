"""agentd's vLLM adapter against vLLM's real classes (vllm 0.33.0), with the real daemon.

Needs the separate venv of scripts/vllm-venv.sh (vLLM pins torch 2.14, the project has 2.13):
    scripts/vllm-venv.sh && PYTHONPATH=$PWD .venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests/vllm
In the project's venv the module is skipped (vLLM is not importable there).

What runs for real: vLLM's VllmConfig (a local Llama config.json, no weights, CPU platform),
KVConnectorFactory building agentd's connector for both roles as vLLM's engine does, vLLM's V1
Scheduler (agentd's subclass, loaded through SchedulerConfig.scheduler_cls) with its real KV
cache manager, prefix cache and Request objects, and agentd's daemon in-process (kv kind, real
socket). What is stood in for: the model runner. Its output (one sampled token per request,
and the worker connector's finished_sending) is built by the test, as vLLM's own scheduler
tests do, since no model runs on this host.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import subprocess
import sys
from collections import deque
import time
from pathlib import Path

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not importable: run in the venv of scripts/vllm-venv.sh")

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # no GPU: vLLM's CPU platform
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from vllm.config import CacheConfig, KVTransferConfig, ModelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1, KVConnectorRole,  # noqa: E402
                                                               SupportsHMA)
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.core.sched.interface import SchedulerInterface  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request, RequestStatus  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

import agentd.kv.vllm_adapter as adapter  # noqa: E402
from agentd.kinds.registry import KindEntry  # noqa: E402
from agentd.kv.client import KvClient  # noqa: E402
from tests.daemon_thread import DaemonThread, test_config, tmp  # noqa: E402,F401 - tmp is a fixture

BLOCK = 16
NUM_BLOCKS = 64
KV = KindEntry("kv", "agentd.kv", "cli.kv_commands")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root (cgroups)")


def vllm_config(tmpdir: Path, socket: str | None, scheduler_cls=None, **extra_config) -> VllmConfig:
    """A real VllmConfig: a tiny Llama's config.json (no weights; vLLM only reads the config here)."""
    model = tmpdir / "tiny-llama"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 1000,
        "max_position_embeddings": 2048, "torch_dtype": "float32"}))
    extra = {"engine": "vllm-test", **extra_config}
    if socket:
        extra["socket"] = socket
    sched = {"scheduler_cls": scheduler_cls} if scheduler_cls else {}
    return VllmConfig(
        model_config=ModelConfig(model=str(model), skip_tokenizer_init=True, dtype="float32", seed=0),
        cache_config=CacheConfig(block_size=BLOCK, enable_prefix_caching=True),
        scheduler_config=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=2048, max_model_len=2048,
                                         is_encoder_decoder=False, **sched),
        kv_transfer_config=KVTransferConfig(kv_connector="AgentdKVConnector",
                                            kv_connector_module_path="agentd.kv.vllm_adapter", kv_role="kv_both",
                                            kv_connector_extra_config=extra))


def kv_cache_config(num_blocks: int = NUM_BLOCKS) -> KVCacheConfig:
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=2, head_size=16, dtype=torch.float32)
    return KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                         kv_cache_groups=[KVCacheGroupSpec(["model.layers.0.self_attn.attn"], spec)])


def make_scheduler(config: VllmConfig, num_blocks: int = NUM_BLOCKS) -> Scheduler:
    """As vLLM's EngineCore does: the class SchedulerConfig names, with the engine's arguments."""
    config.cache_config.num_gpu_blocks = num_blocks
    cls = config.scheduler_config.get_scheduler_cls()
    return cls(vllm_config=config, kv_cache_config=kv_cache_config(num_blocks),
               structured_output_manager=StructuredOutputManager(config), block_size=BLOCK, log_stats=True)


init_none_hash(sha256)
HASHER = get_request_block_hasher(BLOCK, sha256)


def request(rid: str, prompt: list[int], program: str | None, arrival: float | None = None,
            max_tokens: int = 1) -> Request:
    """vLLM's Request with its real constructor; the program rides in kv_transfer_params, as
    vLLM's OpenAI server puts a body's kv_transfer_params into sampling extra_args."""
    extra = {"kv_transfer_params": {"agentd": {"program": program}}} if program else None
    return Request(request_id=rid, prompt_token_ids=prompt, sampling_params=SamplingParams(max_tokens=max_tokens, extra_args=extra),
                   pooling_params=None, arrival_time=arrival, block_hasher=HASHER)


def model_output(sched_out, finished_sending=None) -> ModelRunnerOutput:
    """What the model runner would return: one token per scheduled request, and the worker
    connector's finished_sending (from its real get_finished)."""
    ids = list(sched_out.num_scheduled_tokens)
    kvo = KVConnectorOutput(finished_sending=finished_sending) if finished_sending else None
    return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                             sampled_token_ids=[[7] for _ in ids], kv_connector_output=kvo)


def free_blocks(s: Scheduler) -> int:
    return s.kv_cache_manager.block_pool.get_num_free_blocks()


def stepper(s: Scheduler, worker, overlapped: bool = False):
    """One engine step: the scheduler's output, the worker connector bound to its metadata
    (pickled, as it crosses to the worker processes) and asked get_finished as the model runner
    does, the result back to the scheduler. overlapped: as vLLM's engine core runs async
    scheduling (step_with_batch_queue), step N+1 is scheduled and reaches the worker before
    step N's output comes back."""
    in_flight: deque = deque()

    def step():
        out = s.schedule()
        worker.bind_connector_metadata(pickle.loads(pickle.dumps(out.kv_connector_metadata)))
        done, _ = worker.get_finished(set(out.finished_req_ids))
        worker.clear_connector_metadata()
        in_flight.append((out, done))
        if len(in_flight) == (2 if overlapped else 1):
            o, d = in_flight.popleft()
            s.update_from_output(o, model_output(o, d))
        return out, done
    return step


# ---------------------------------------------------------------------------------------------

def test_factory_builds_agentd_connector_for_both_roles(tmp_path):
    """vLLM's factory takes the class by name from the module path (no setup call first), accepts
    its constructor (vLLM 0.33 refuses one without kv_cache_config) and keeps the hybrid KV cache
    manager on (SupportsHMA)."""
    config = vllm_config(tmp_path, socket=None)
    assert config.scheduler_config.disable_hybrid_kv_cache_manager is False  # HMA not turned off for agentd
    cls = KVConnectorFactory.get_connector_class(config.kv_transfer_config)
    assert cls is adapter.AgentdKVConnector and issubclass(cls, KVConnectorBase_V1) and issubclass(cls, SupportsHMA)
    assert not getattr(cls, "__abstractmethods__", None)
    sched = KVConnectorFactory.create_connector(config, KVConnectorRole.SCHEDULER, kv_cache_config())
    worker = KVConnectorFactory.create_connector(config, KVConnectorRole.WORKER, kv_cache_config())
    assert sched.role == KVConnectorRole.SCHEDULER and sched.translator is not None
    assert worker.role == KVConnectorRole.WORKER and worker.translator is None
    # The step metadata unpickles in a fresh process (as in a vLLM worker), where the module's
    # classes do not exist until pickle asks for them by name.
    sched.translator.releasing.add("r-1")
    meta = sched.build_connector_meta(None)
    blob = pickle.dumps(meta)
    code = "import pickle, sys; m = pickle.loads(sys.stdin.buffer.read()); print(type(m).__name__, sorted(m.released))"
    got = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert got.stdout.decode().split() == ["AgentdMeta", "['r-1']"], got.stderr.decode()[-2000:]
    # Every hook vLLM calls is the base class's signature (names and parameters).
    for name in ("request_finished", "request_finished_all_groups", "on_new_request", "get_num_new_matched_tokens",
                 "update_state_after_alloc", "build_connector_meta", "bind_connector_metadata", "get_finished",
                 "start_load_kv", "wait_for_layer_load", "save_kv_layer", "wait_for_save"):
        base = getattr(SupportsHMA if name == "request_finished_all_groups" else KVConnectorBase_V1, name)
        assert list(inspect.signature(getattr(cls, name)).parameters) == list(inspect.signature(base).parameters), name


def test_scheduler_hint_class_matches_vllms_scheduler(tmp_path):
    """AgentdScheduler is what SchedulerConfig.scheduler_cls resolves, a SchedulerInterface with
    the engine's constructor signature, and it orders the waiting queue by program (real
    Requests, real queue): a returning turn of an older program goes before newer programs'."""
    path = "agentd.kv.vllm_adapter.AgentdScheduler"
    config = vllm_config(tmp_path, socket="/nonexistent/agentd.sock", scheduler_cls=path)
    cls = config.scheduler_config.get_scheduler_cls()
    assert cls is adapter.AgentdScheduler and issubclass(cls, Scheduler) and issubclass(cls, SchedulerInterface)
    assert inspect.signature(cls.__init__) == inspect.signature(Scheduler.__init__)
    assert issubclass(cls, AsyncScheduler)  # vLLM 0.33's default; a plain Scheduler subclass loses async scheduling
    assert issubclass(adapter.AgentdSyncScheduler, Scheduler) and not issubclass(adapter.AgentdSyncScheduler,
                                                                                 AsyncScheduler)
    for name in ("schedule", "update_from_output", "add_request", "finish_requests", "has_requests",
                 "get_kv_connector"):
        ours, theirs = inspect.signature(getattr(cls, name)), inspect.signature(getattr(SchedulerInterface, name))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
            [(p.name, p.kind, p.default) for p in theirs.parameters.values()], name
    s = make_scheduler(config)  # agentd unreachable: the adapter falls back to vLLM's own behaviour
    a1 = request("a1", list(range(32)), "old", arrival=100.0)
    b1 = request("b1", list(range(100, 132)), "new", arrival=200.0)
    s.add_request(a1)
    s.add_request(b1)
    a2 = request("a2", list(range(32)) + [7, 1, 2], "old", arrival=300.0)  # old's next turn, arriving last
    c1 = request("c1", list(range(200, 232)), None, arrival=250.0)  # no program: plain FCFS
    s.add_request(c1)
    s.add_request(a2)
    assert [r.request_id for r in s.waiting] == ["a1", "a2", "b1", "c1"]
    vanilla = make_scheduler(vllm_config(tmp_path, socket="/nonexistent/agentd.sock"))
    for r in (request("a1", list(range(32)), "old", 100.0), request("b1", list(range(100, 132)), "new", 200.0),
              request("c1", list(range(200, 232)), None, 250.0), request("a2", list(range(35)), "old", 300.0)):
        vanilla.add_request(r)
    assert [r.request_id for r in vanilla.waiting] == ["a1", "b1", "c1", "a2"]  # vLLM's own FCFS


@needs_root
@pytest.mark.parametrize("scheduler", ["AgentdScheduler", "AgentdSyncScheduler"])
def test_real_scheduler_holds_a_finished_turns_blocks_until_agentd_frees_them(tmp, tmp_path, scheduler):
    d, leaf = tmp
    with DaemonThread(test_config(d, leaf, kinds=(KV,))) as dt:
        sock = str(dt.config.socket_path)
        # The engine reports a 70B model's KV size and prefill rate (the toy config only shapes vLLM's
        # block bookkeeping here), an idle GPU and no host tier: a finished turn is worth keeping.
        kv = KvClient("vllm-test", sock)
        kv.register(bytes_per_token=160 * 1024, prefill_tps=5000.0, capacity_bytes=8 << 30,
                    host_bytes=0, pressure=0.0)
        config = vllm_config(tmp_path, socket=sock, scheduler_cls=f"agentd.kv.vllm_adapter.{scheduler}")
        s = make_scheduler(config)
        worker = KVConnectorFactory.create_connector(config, KVConnectorRole.WORKER, kv_cache_config())
        total = free_blocks(s)

        step = stepper(s, worker)
        prompt = list(range(1, 65))  # 64 tokens: 4 full blocks
        t1 = request("t1", prompt, "prog-1")
        s.add_request(t1)
        step()
        # request_finished went to agentd (turn ended, keep): vLLM keeps t1 and its blocks.
        assert t1.status == RequestStatus.FINISHED_LENGTH_CAPPED
        assert "t1" in s.requests and free_blocks(s) < total, "vLLM freed the blocks: the hold did not happen"
        pins = kv.pins()["pins"]
        assert [p["program"] for p in pins] == ["prog-1"]
        # The adapter reported vLLM's KV cache usage with the turn: agentd weighs the keep against it.
        reported = dt.kind("kv").engines["vllm-test"].pressure
        assert reported > 0 and reported == pytest.approx(s.kv_cache_manager.usage, abs=0.05)
        held = free_blocks(s)
        out, done = step()  # an idle step: nothing released, the blocks stay held
        assert not done and "t1" in s.requests and free_blocks(s) == held
        # The next turn: its prefix is t1's prompt; vLLM's prefix cache matches the held blocks.
        t2 = request("t2", prompt + [7, 3, 4, 5], "prog-1")
        s.add_request(t2)
        out, done = step()
        new = {r.req_id: r for r in out.scheduled_new_reqs}
        assert new["t2"].num_computed_tokens == 64 and out.num_scheduled_tokens["t2"] == 4  # the held blocks hit
        assert done == {"t1"}  # the worker reports t1 (vLLM named it as finished earlier): vLLM frees it
        assert "t1" not in s.requests
        # A second program whose TTL agentd expires (agentd's own tick, its real expiry code): the
        # expire notice reaches the adapter at the next step and the blocks are freed.
        u1 = request("u1", list(range(500, 564)), "prog-2")
        s.add_request(u1)
        step()
        assert "u1" in s.requests
        # t2 finished too (one token) and ended prog-1's second turn: agentd holds it as well.
        assert "t2" in s.requests and {p["program"] for p in kv.pins()["pins"]} == {"prog-1", "prog-2"}
        dt.call(dt.kind("kv").on_tick, time.time() + 3600)  # an hour on: past every TTL
        out, done = step()
        assert done == {"t2", "u1"}  # the expire notices reached the adapter; the worker reported both
        assert "u1" not in s.requests and "t2" not in s.requests and free_blocks(s) == total
        assert not kv.pins()["pins"] and not s.connector.translator.holds


def test_hint_envelope_is_vllms_kv_hints_envelope():
    """agentd's vllm_envelope hint converts to vLLM's real KvHintsEnvelope (msgspec, strict) and a
    real Request carries it; the flat `vllm` form alone would not (it is not an envelope)."""
    import msgspec
    from vllm.v1.kv_hints import KvHintsEnvelope

    from agentd.kv.hints import hints

    h = hints({"action": "keep", "ttl_s": 12.5, "expected_resume_s": 3.2}, "prog-1", tool_running=True)
    env = msgspec.convert(h["vllm_envelope"], KvHintsEnvelope)
    (action,) = env.actions
    assert action.action_type == "agentd.kv_retention" and action.payload["tool_waiting"] is True
    assert action.payload["kv_retention"] == "retain" and action.payload["estimated_resume_s"] == 3.2
    r = Request(request_id="h1", prompt_token_ids=[1, 2, 3], sampling_params=SamplingParams(max_tokens=1),
                pooling_params=None, kv_hints=env)
    assert r.kv_hints is env
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(h["vllm"], KvHintsEnvelope)


@needs_root
@pytest.mark.parametrize("overlapped", [False, True], ids=["sync", "overlapped"])
def test_held_blocks_go_before_vllm_preempts_a_running_request(tmp, tmp_path, overlapped):
    """A KV cache of 10 usable blocks: a finished turn holds 4-5 of them, a long request runs.
    When its next block does not fit, vLLM asks has_pending_block_frees before preempting: the
    adapter gives up the hold (agentd is told), and the running request goes on unpreempted."""
    d, leaf = tmp
    with DaemonThread(test_config(d, leaf, kinds=(KV,))) as dt:
        sock = str(dt.config.socket_path)
        kv = KvClient("vllm-test", sock)
        kv.register(bytes_per_token=160 * 1024, prefill_tps=5000.0, capacity_bytes=8 << 30, host_bytes=0, pressure=0.0)
        config = vllm_config(tmp_path, socket=sock, scheduler_cls="agentd.kv.vllm_adapter.AgentdScheduler")
        s = make_scheduler(config, num_blocks=11)
        worker = KVConnectorFactory.create_connector(config, KVConnectorRole.WORKER, kv_cache_config(11))
        step = stepper(s, worker, overlapped)
        s.add_request(request("t1", list(range(1, 65)), "prog-1"))
        for _ in range(3):
            step()
        assert "t1" in s.requests and [p["program"] for p in kv.pins()["pins"]] == ["prog-1"]
        long = request("long", list(range(300, 380)), None, max_tokens=40)  # 80 tokens, grows to 120
        s.add_request(long)
        for _ in range(60):
            step()
            if long.is_finished():
                break
        assert long.is_finished() and long.num_output_tokens == 40
        assert long.num_preemptions == 0, "vLLM preempted the running request while agentd's hold kept blocks"
        assert "t1" not in s.requests and not s.connector.translator.holds
        assert not kv.pins()["pins"]  # agentd was told the engine evicted it


def test_openai_body_kv_transfer_params_names_the_program():
    """How an agent framework names its program to vLLM: the OpenAI chat body's
    kv_transfer_params, through vLLM's real ChatCompletionRequest.to_sampling_params and Request
    constructor, to the adapter (program_meta)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                                 kv_transfer_params={"agentd": {"program": "swe-7", "pid": 4242}})
    sp = body.to_sampling_params(max_tokens=1, default_sampling_params={})
    r = Request(request_id="c1", prompt_token_ids=[1, 2, 3], sampling_params=sp, pooling_params=None)
    assert adapter.program_meta(r) == {"program": "swe-7", "pid": 4242}
    plain = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    r = Request(request_id="c2", prompt_token_ids=[1], sampling_params=plain.to_sampling_params(1, {}),
                pooling_params=None)
    assert adapter.program_meta(r) is None  # left to vLLM


@needs_root
def test_async_scheduling_overlapped_steps(tmp, tmp_path):
    """As vLLM's engine core runs AsyncScheduler (step_with_batch_queue): step N+1 is scheduled,
    and its metadata reaches the worker, before step N's output comes back. The hold, the
    prefix hit of the next turn and the release still happen, one step later."""
    d, leaf = tmp
    with DaemonThread(test_config(d, leaf, kinds=(KV,))) as dt:
        sock = str(dt.config.socket_path)
        kv = KvClient("vllm-test", sock)
        kv.register(bytes_per_token=160 * 1024, prefill_tps=5000.0, capacity_bytes=8 << 30, host_bytes=0, pressure=0.0)
        config = vllm_config(tmp_path, socket=sock, scheduler_cls="agentd.kv.vllm_adapter.AgentdScheduler")
        s = make_scheduler(config)
        worker = KVConnectorFactory.create_connector(config, KVConnectorRole.WORKER, kv_cache_config())
        hits: dict[str, int] = {}
        engine_step = stepper(s, worker, overlapped=True)

        def step():
            out, _ = engine_step()
            hits.update({r.req_id: r.num_computed_tokens for r in out.scheduled_new_reqs})

        def run_until(cond, n=12):
            for _ in range(n):
                step()
                if cond():
                    return True
            return False

        prompt = list(range(1, 65))
        t1 = request("t1", prompt, "prog-1")
        s.add_request(t1)
        assert run_until(t1.is_finished)
        for _ in range(3):
            step()
        assert "t1" in s.requests and [p["program"] for p in kv.pins()["pins"]] == ["prog-1"]
        t2 = request("t2", prompt + [7, 3], "prog-1")
        s.add_request(t2)
        assert run_until(lambda: "t1" not in s.requests), "t1 was never released"
        assert hits["t2"] == 64  # the next turn hit the held blocks
        u1 = request("u1", list(range(500, 564)), "prog-2")
        s.add_request(u1)
        assert run_until(u1.is_finished)
        for _ in range(3):
            step()
        assert "u1" in s.requests
        dt.call(dt.kind("kv").on_tick, time.time() + 3600)
        assert run_until(lambda: "u1" not in s.requests and "t2" not in s.requests), "expired holds were not freed"
        assert not kv.pins()["pins"] and not s.connector.translator.holds


@needs_root
def test_connector_registers_the_engine_from_vllms_kv_cache_layout(tmp, tmp_path):
    """With prefill_tps in kv_connector_extra_config, the scheduler-side connector registers the
    engine with agentd from vLLM's KVCacheConfig: capacity = blocks x page bytes x layers."""
    d, leaf = tmp
    with DaemonThread(test_config(d, leaf, kinds=(KV,))) as dt:
        sock = str(dt.config.socket_path)
        config = vllm_config(tmp_path, socket=sock, prefill_tps=8000)
        big = KVCacheConfig(num_blocks=4096, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(
            [f"model.layers.{i}.self_attn.attn" for i in range(32)],
            FullAttentionSpec(block_size=BLOCK, num_kv_heads=8, head_size=128, dtype=torch.float16))])
        conn = KVConnectorFactory.create_connector(config, KVConnectorRole.SCHEDULER, big)
        assert "error" not in conn.registered, conn.registered
        eng = dt.kind("kv").engines["vllm-test"]
        per_token = 2 * 8 * 128 * 2 * 32  # K and V, 8 heads x 128, fp16, 32 layers: Llama-3-8B's 128 KiB
        assert eng.bytes_per_token == per_token and eng.capacity_bytes == per_token * BLOCK * 4096
        assert eng.prefill_tps == 8000
