"""Utilization: the pair model's limits, and the solo roofline's regimes."""

from __future__ import annotations

import pytest

from agentd.gpu.spec import ModelSpec, WorkloadSpec
from agentd.gpu.utilization import colocation_slowdown, gpu_model, solo_utilization


def test_two_saturating_jobs_each_run_at_half_speed_when_time_sliced():
    s = colocation_slowdown(1.0, 1.0)
    assert s.a == pytest.approx(2.0, rel=1e-6) and s.b == pytest.approx(2.0, rel=1e-6)


def test_light_jobs_barely_interfere_and_utilization_is_not_additive():
    s = colocation_slowdown(0.1, 0.2)
    assert s.a == pytest.approx(1 + 0.1 * 0.2, abs=0.01)
    # 0.6 + 0.6 > 1, yet neither job slows by the naive 1.2x sum
    s = colocation_slowdown(0.6, 0.6)
    assert 1.2 < s.a < 2.0


def test_slowdown_grows_with_the_neighbour():
    prev = 1.0
    for u in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        cur = colocation_slowdown(0.5, u).a
        assert cur >= prev
        prev = cur
    assert colocation_slowdown(0.5, 0.0).a == 1.0


def test_mps_is_the_lower_bound_and_bandwidth_pressure_costs():
    s = colocation_slowdown(0.8, 0.8, sharing="mps", sm_a=0.3, sm_b=0.3, bw_a=0.3, bw_b=0.3)
    assert s.a == pytest.approx(1.0) and s.a_high > 1.5  # overlap fits; time-slicing would not
    bw = colocation_slowdown(0.8, 0.8, sharing="mps", sm_a=0.3, sm_b=0.3, bw_a=0.9, bw_b=0.9)
    assert bw.a > 1.2 and bw.a <= bw.a_high
    with pytest.raises(ValueError):
        colocation_slowdown(1.5, 0.1)


def test_tiny_models_are_launch_bound_and_large_ones_compute_bound():
    tiny = solo_utilization(ModelSpec(num_layers=2, hidden_size=128, num_heads=4, vocab_size=1000),
                            WorkloadSpec(mode="train", batch=4, seq=128))
    big = solo_utilization(ModelSpec(num_layers=32, hidden_size=4096, num_heads=32, vocab_size=32000,
                                     intermediate_size=11008),
                           WorkloadSpec(mode="train", batch=4, seq=4096, mixed_precision=True))
    assert tiny.bound == "launch" and tiny.gpu_util < 0.6
    assert big.bound == "compute" and big.gpu_util == 1.0
    # a faster GPU leaves the tiny job even less busy (hardware sensitivity)
    slow = solo_utilization(ModelSpec(num_layers=2, hidden_size=128, num_heads=4, vocab_size=1000),
                            WorkloadSpec(mode="train", batch=16, seq=256), gpu="l4")
    fast = solo_utilization(ModelSpec(num_layers=2, hidden_size=128, num_heads=4, vocab_size=1000),
                            WorkloadSpec(mode="train", batch=16, seq=256), gpu="h100")
    assert fast.gpu_util < slow.gpu_util


def test_gpu_names():
    assert gpu_model("NVIDIA H100 80GB HBM3").name.startswith("NVIDIA H100")
    with pytest.raises(ValueError):
        gpu_model("voodoo")
