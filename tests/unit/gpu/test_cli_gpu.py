"""`agentctl estimate` (a contract other tools parse) and `agentctl gpu`, through click."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.gpu_commands import estimate, gpu

LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
             "num_hidden_layers": 32, "vocab_size": 32000, "tie_word_embeddings": False, "torch_dtype": "float16",
             "model_type": "llama", "hidden_act": "silu"}
CONTRACT_PARTS = {"weights", "gradients", "optimizer_states", "activations", "kv_cache", "overhead"}


@pytest.fixture
def llama(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(LLAMA2_7B))
    return str(p)


def run(cmd, args):
    return CliRunner().invoke(cmd, args, catch_exceptions=False)


def test_estimate_json_contract_for_the_zero_paper_model():
    r = run(estimate, ["--params", "7.5e9", "--mixed-precision", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert {"parameters", "total_bytes", "model_states_bytes", "kv_bytes_per_token", "parts"} <= set(d)
    assert CONTRACT_PARTS <= set(d["parts"])
    assert d["parameters"] == 7_500_000_000
    assert d["model_states_bytes"] == 120_000_000_000  # ZeRO paper: 16 bytes x 7.5B
    assert sum(d["parts"].values()) == d["total_bytes"]
    assert d["range"]["low_bytes"] <= d["total_bytes"] <= d["range"]["high_bytes"]


def test_estimate_json_for_inference_from_an_hf_config(llama):
    r = run(estimate, ["--hf-config", llama, "--mode", "infer", "--batch", "8", "--seq", "4096", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["kv_bytes_per_token"] == 512 * 1024  # Llama-2-7B fp16
    assert d["parts"]["kv_cache"] == 512 * 1024 * 8 * 4096
    assert d["parameters"] == 6_738_415_616
    assert d["parts"]["gradients"] == 0 and d["parts"]["optimizer_states"] == 0
    assert 0 < d["utilization"]["gpu_util"] <= 1


def test_estimate_zero_stage_and_tp_flags_change_the_answer(llama):
    base = json.loads(run(estimate, ["--hf-config", llama, "--mixed-precision", "--json"]).output)
    z3 = json.loads(run(estimate, ["--hf-config", llama, "--mixed-precision", "--zero-stage", "3", "--dp", "8",
                                   "--json"]).output)
    tp = json.loads(run(estimate, ["--hf-config", llama, "--mixed-precision", "--tp", "4", "--json"]).output)
    assert z3["model_states_bytes"] == pytest.approx(base["model_states_bytes"] / 8, rel=1e-6)
    assert tp["model_states_bytes"] == pytest.approx(base["model_states_bytes"] / 4, rel=1e-6)
    full = json.loads(run(estimate, ["--hf-config", llama, "--mixed-precision", "--recompute", "full", "--batch", "4",
                                     "--json"]).output)
    none = json.loads(run(estimate, ["--hf-config", llama, "--mixed-precision", "--batch", "4", "--json"]).output)
    assert full["total_bytes"] < none["total_bytes"]


def test_estimate_table_shows_every_part_in_human_units(llama):
    r = run(estimate, ["--hf-config", llama, "--mode", "infer", "--batch", "2", "--seq", "2048", "--free", "24GiB"])
    assert r.exit_code == 0, r.output
    for part in CONTRACT_PARTS:
        assert part in r.output
    assert "GiB" in r.output and "512.00 KiB per token" in r.output
    assert "fit on given free memory:" in r.output


def test_estimate_fit_against_simulated_gpus_is_labelled(llama):
    r = run(estimate, ["--hf-config", llama, "--mode", "infer", "--simulate-gpus", "2", "--json"])
    d = json.loads(r.output)
    assert d["fit_backend"] == "simulated" and len(d["fit"]) == 2
    assert d["fit"][0]["verdict"] == "fits"
    big = run(estimate, ["--params", "70e9", "--mixed-precision", "--simulate-gpus", "1"])
    assert "does not fit" in big.output and "(simulated)" in big.output


@pytest.mark.parametrize("args", [[], ["--params", "7e9", "--hf-config", "x"], ["--params", "7e9", "--zero-stage", "4"],
                                  ["--params", "lots"], ["--params", "7e9", "--mode", "serve"]])
def test_estimate_usage_errors_exit_2(args, tmp_path):
    if "--hf-config" in args:
        cfg = tmp_path / "c.json"
        cfg.write_text("{}")
        args = [a if a != "x" else str(cfg) for a in args]
    assert run(estimate, args).exit_code == 2


def test_estimate_cpu_side_method_without_architecture_fails_with_exit_1():
    r = CliRunner().invoke(estimate, ["--params", "7e9", "--method", "cpu_side"])
    assert r.exit_code == 1
    assert "estimate failed (cpu_side)" in r.output




def test_gpu_without_a_driver_says_so_and_exits_1(nvml_works):
    r = CliRunner().invoke(gpu, ["--once"])
    if nvml_works:
        assert r.exit_code == 0 and "NVML" in r.output
    else:
        assert r.exit_code == 1
        assert r.output.strip().startswith("no NVIDIA driver: ")
        assert len(r.output.strip().splitlines()) == 1


def test_gpu_simulated_table_and_json():
    r = run(gpu, ["--once", "--simulate-gpus", "2"])
    assert r.exit_code == 0
    assert r.output.startswith("SIMULATED GPUs")
    assert "Simulated GPU 1" in r.output and "unit" in r.output
    d = json.loads(run(gpu, ["--json", "--simulate-gpus", "2"]).output)
    assert d["backend"] == "simulated" and len(d["gpus"]) == 2
    import os
    assert any(p["host_pid"] == os.getpid() for g in d["gpus"] for p in g["processes"])


def test_gradient_buffers_and_optimizer_implementation_flags(llama):
    def total(batch, *extra):
        return json.loads(run(estimate, ["--hf-config", llama, "--batch", str(batch), "--seq", "2048", "--json",
                                         *extra]).output)
    # activations dominate at batch 8: kept gradients add to the backward's peak
    freed, kept = total(8, "--grad-buffers", "freed"), total(8, "--grad-buffers", "persistent")
    assert kept["phase"].startswith("backward") and freed["phase"].startswith("backward")
    assert kept["total_bytes"] - freed["total_bytes"] == pytest.approx(kept["model_states_bytes"] / 4, rel=0.01)
    # at batch 1 the optimizer step is the peak, where foreach Adam's temporary shows
    fused, foreach = total(1, "--optimizer-impl", "fused"), total(1, "--optimizer-impl", "foreach")
    assert foreach["phase"] == "optimizer step"
    assert foreach["total_bytes"] - fused["total_bytes"] == pytest.approx(4 * 6_738_415_616, rel=0.01)


def test_fit_next_to_live_load_carries_slowdown_bounds(llama):
    from agentd.gpu.estimate import estimate as est_fn, fit_check
    from agentd.gpu.fake_nvml import FakeNvmlBackend
    from agentd.gpu.sampler import NvmlSampler
    from agentd.gpu.spec import ModelSpec, WorkloadSpec
    from agentd.gpu.utilization import colocation_slowdown, solo_utilization

    model = ModelSpec.from_hf_config(LLAMA2_7B)
    wl = WorkloadSpec(mode="infer", batch=1, seq=128)
    util = solo_utilization(model, wl)
    idle, busy = 0, 1
    snap = NvmlSampler(backend=FakeNvmlBackend(gpus=2, processes={busy: [(1, 2**30), (2, 2**30)]})).sample()
    verdicts = fit_check(est_fn(model, wl), snap, util=util)
    assert verdicts[idle].neighbour_util == 0.0 and verdicts[idle].slowdown_high == 1.0
    expected = colocation_slowdown(util, 0.70)  # the fake reports 35 % per process
    assert verdicts[busy].slowdown_high == pytest.approx(expected.a_high)
    assert verdicts[busy].neighbour_slowdown_high == pytest.approx(expected.b_high) and expected.b_high > 1.0
    d = json.loads(run(estimate, ["--hf-config", llama, "--mode", "infer", "--simulate-gpus", "1", "--json"]).output)
    assert d["fit"][0]["slowdown_high"] >= d["fit"][0]["slowdown_low"] >= 1.0
