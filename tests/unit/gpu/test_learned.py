"""The learned estimator: judged on held-out measured configurations, honest about its range."""

from __future__ import annotations

import math
import statistics

import pytest

from agentd.gpu import analytical
from agentd.gpu.estimate import estimate
from agentd.gpu.learned import FEATURES, LearnedModel, load_rows
from agentd.gpu.spec import ModelSpec, WorkloadSpec, model_spec_from_dict, workload_spec_from_dict


@pytest.fixture(scope="module")
def rows():
    return load_rows()


@pytest.fixture(scope="module")
def fitted(rows):
    return LearnedModel.fit([r for r in rows if r["split"] == "train"])


def test_held_out_error_is_under_target(rows, fitted):
    held = [r for r in rows if r["split"] == "heldout"]
    assert len(held) >= 40
    train_ids = {r["id"] for r in rows if r["split"] == "train"}
    assert not train_ids & {r["id"] for r in held}
    errs = []
    for r in held:
        est = fitted.estimate(model_spec_from_dict(r["model"]), workload_spec_from_dict(r["workload"]))
        assert not est.fell_back  # held-out rows come from the same grid: inside the range
        errs.append(abs(est.total_bytes - r["measured"]["peak_bytes"]) / r["measured"]["peak_bytes"])
    assert statistics.fmean(errs) < 0.05
    assert max(errs) < 0.20


def test_it_learns_what_the_measurements_say(rows):
    """Fed peaks in which activations weigh 1.5x the derivation, it learns 1.5 for them."""
    train = [r for r in rows if r["split"] == "train"][:120]
    skewed = []
    for r in train:
        est = analytical.estimate(model_spec_from_dict(r["model"]), workload_spec_from_dict(r["workload"]))
        peak = sum(est.parts[k] for k in FEATURES) + 0.5 * est.parts["activations"]
        skewed.append({**r, "measured": {**r["measured"], "peak_bytes": int(peak)}})
    lm = LearnedModel.fit(skewed, ridge=1e-4)
    assert lm.weights["activations"] == pytest.approx(1.5, abs=0.05)
    assert lm.weights["weights"] == pytest.approx(1.0, abs=0.05)


def test_a_query_far_outside_the_training_range_falls_back_to_analytical(fitted):
    llama = ModelSpec(num_layers=32, hidden_size=4096, num_heads=32, vocab_size=32000, intermediate_size=11008)
    wl = WorkloadSpec(mode="train", batch=1, seq=4096, device="cpu")
    d, why = fitted.distance(llama, wl)
    assert d > 3  # hidden 4096 vs at most 256 trained: 4 octaves
    assert any(w.startswith("hidden=4096") for w in why)
    est = fitted.estimate(llama, wl)
    assert est.fell_back and est.method == "learned"
    assert est.total_bytes == analytical.estimate(llama, wl).total_bytes
    assert any("outside the learned model's training range" in n for n in est.notes)


def test_unseen_categories_and_parallelism_are_outside_the_range(fitted, rows):
    r = next(r for r in rows if r["split"] == "heldout" and r["workload"]["mode"] == "train")
    m, w = model_spec_from_dict(r["model"]), workload_spec_from_dict(r["workload"])
    assert fitted.distance(m, w)[0] == 0
    from dataclasses import replace
    assert math.isinf(fitted.distance(m, replace(w, tp=2))[0])
    assert math.isinf(fitted.distance(m, replace(w, device="cuda"))[0])  # trained on CPU peaks only
    assert fitted.estimate(m, replace(w, device="cuda")).fell_back


def test_auto_uses_learned_inside_and_analytical_outside(rows):
    r = next(r for r in rows if r["split"] == "heldout")
    m, w = model_spec_from_dict(r["model"]), workload_spec_from_dict(r["workload"])
    inside = estimate(m, w, method="auto")
    assert inside.method == "learned" and not inside.fell_back
    outside = estimate(ModelSpec.from_params(7e9), WorkloadSpec(mode="train"), method="auto")
    assert outside.fell_back


def test_fit_needs_rows():
    with pytest.raises(ValueError):
        LearnedModel.fit([])


def test_measured_larger_models_fall_back_and_analytical_still_holds(rows, fitted):
    """Rows measured on models 1.5-8x larger than anything trained (split 'outside')."""
    outside = [r for r in rows if r["split"] == "outside"]
    assert len(outside) >= 4
    for r in outside:
        m, w = model_spec_from_dict(r["model"]), workload_spec_from_dict(r["workload"])
        est = fitted.estimate(m, w)
        assert est.fell_back
        assert est.total_bytes == pytest.approx(r["measured"]["peak_bytes"], rel=0.10)
