"""Estimators against real peaks: the shipped CPU-measured grid, and fresh measurements now.

The truth is the CPU allocator's own count of live tensor bytes during real training steps
and prefills of small transformers (scripts/gpu_measure.py). torch (CPU build) is part of the
test venv: these tests import it unconditionally, so a venv without it fails here rather
than skipping the only checks against reality.
"""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest
import torch

from agentd.gpu import analytical
from agentd.gpu.learned import DATA, load_rows
from agentd.gpu.spec import ModelSpec, WorkloadSpec, model_spec_from_dict, workload_spec_from_dict
from agentd.paths import SCRIPTS_DIR


def _measure_module():
    spec = importlib.util.spec_from_file_location("agentd_gpu_measure", SCRIPTS_DIR / "gpu_measure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_analytical_error_on_the_shipped_grid_is_under_target():
    rows = load_rows()
    assert len(rows) >= 200
    errs, inside = [], 0
    for r in rows:
        est = analytical.estimate(model_spec_from_dict(r["model"]), workload_spec_from_dict(r["workload"]))
        truth = r["measured"]["peak_bytes"]
        errs.append(abs(est.total_bytes - truth) / truth)
        inside += est.low_bytes <= truth <= est.high_bytes
    # the target is 15 % mean error; the derivation does far better on the grid it describes
    assert statistics.fmean(errs) < 0.03
    assert max(errs) < 0.20
    # honest ranges: the stated band holds the measured peak
    assert inside / len(rows) >= 0.95


SMALL = ModelSpec(num_layers=2, hidden_size=128, num_heads=4, num_kv_heads=2, vocab_size=2048,
                  intermediate_size=344, gated_mlp=True, norm="rmsnorm", dtype="fp32")
GPT = ModelSpec(num_layers=3, hidden_size=96, num_heads=2, vocab_size=1024, intermediate_size=384,
                gated_mlp=False, norm="layernorm", bias=True, learned_positions=512, tie_word_embeddings=True,
                dtype="fp32")
FRESH = [
    (SMALL, WorkloadSpec(mode="train", batch=4, seq=64, optimizer="adam", optimizer_impl="foreach",
                         attention="eager", device="cpu", grad_buffers="freed")),
    (GPT, WorkloadSpec(mode="train", batch=2, seq=128, optimizer="sgd_momentum", optimizer_impl="single",
                       attention="eager", dropout=0.1, recompute="full", device="cpu", grad_buffers="freed")),
    (SMALL, WorkloadSpec(mode="infer", batch=4, seq=256, dtype="fp32", attention="flash", device="cpu")),
    (SMALL, WorkloadSpec(mode="train", batch=2, seq=128, optimizer="adamw", optimizer_impl="single",
                         attention="flash", device="cpu", grad_buffers="persistent")),
    (ModelSpec(num_layers=2, hidden_size=64, num_heads=2, vocab_size=512, intermediate_size=128, num_experts=4,
               experts_per_token=2, dtype="fp32"),
     WorkloadSpec(mode="train", batch=4, seq=64, optimizer="adam", attention="eager", device="cpu",
                  grad_buffers="freed")),
]


@pytest.fixture(scope="module")
def fresh():
    m = _measure_module()
    torch.set_num_threads(2)
    return [(spec, wl, m.measure(spec, wl)) for spec, wl in FRESH]


def test_analytical_parts_match_fresh_measurements(fresh):
    for spec, wl, meas in fresh:
        est = analytical.estimate(spec, wl)
        assert est.full_parts["weights"] == meas["weights_bytes"]
        # Adam keeps two fp32 moments per parameter (plus a 4-byte step counter per tensor)
        assert est.full_parts["optimizer_states"] == pytest.approx(meas["optimizer_state_bytes"], rel=2e-3)
        assert est.parts["kv_cache"] == meas["kv_bytes"]
        assert est.total_bytes == pytest.approx(meas["peak_bytes"], rel=0.10), (wl, est.phase)


def test_cpu_side_traces_the_same_peak_as_reality(fresh):
    from agentd.gpu import cpu_side

    for spec, wl, meas in fresh:
        if spec.num_experts:  # routing by value: fake tensors cannot know the shapes
            with pytest.raises(ValueError, match="data-dependent"):
                cpu_side.estimate(spec, wl)
            continue
        est = cpu_side.estimate(spec, wl)
        assert est.total_bytes == pytest.approx(meas["peak_bytes"], rel=0.03), wl
        assert est.method == "cpu_side"


def test_cpu_side_on_any_module_matches_the_allocator():
    """The generic entry point, on a module agentd knows nothing about."""
    from torch.profiler import ProfilerActivity, profile

    from agentd.gpu.cpu_side import trace_peak

    def build():
        return torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 10))

    def batch():
        return torch.randn(512, 256), torch.randint(0, 10, (512,))

    def loss(out, tgt):
        return torch.nn.functional.cross_entropy(out, tgt)

    est = trace_peak(build, batch, "train", lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
                     loss_fn=loss)
    mod = _measure_module()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model = build()
        x, y = batch()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            loss(model(x), y).backward()
            opt.step()
        del model, x, y, opt
    import json
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.load(open(f.name))
    _, mem = mod._windows(trace)
    real_peak = max(tot for _, tot in mem)
    assert est["peak_bytes"] == pytest.approx(real_peak, rel=0.05)
