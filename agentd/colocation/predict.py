"""A job's predicted peak GPU memory and solo utilization, from what `agentctl run` sends:
a declared size (--estimate-bytes) or a Hugging Face config (--model-config), estimated
analytically (agentd.gpu.estimate). The peak the admission decides on is the estimate's
HIGH end. Pure; ValueError with one line when the config is malformed or refused."""

from __future__ import annotations

from dataclasses import dataclass

from agentd.colocation.policy import JobClass

MAX_ESTIMATE_BYTES = 1 << 44  # 16 TiB per GPU: anything larger is a typo


@dataclass(frozen=True)
class Prediction:
    peak_bytes: int  # high end: what admission reserves
    point_bytes: int
    util: float  # solo GPU utilization 0..1
    source: str


def predict(cls: JobClass, estimate_bytes: int | None = None, model_config: dict | None = None,
            mode: str | None = None, batch: int = 1, seq: int = 2048, gpu_name: str = "") -> Prediction:
    if (estimate_bytes is None) == (model_config is None):
        raise ValueError("give exactly one of estimate_bytes (--estimate-bytes) or model_config (--model-config)")
    if estimate_bytes is not None:
        if not 1 <= estimate_bytes <= MAX_ESTIMATE_BYTES:
            raise ValueError(f"estimate_bytes must be within 1..{MAX_ESTIMATE_BYTES} (16 TiB), got {estimate_bytes}")
        return Prediction(estimate_bytes, estimate_bytes, cls.solo_util,
                          f"declared {estimate_bytes} bytes; utilization {cls.solo_util:.0%} (class default)")
    from agentd.gpu.estimate import estimate
    from agentd.gpu.spec import ModelSpec, WorkloadSpec
    from agentd.gpu.utilization import gpu_model, solo_utilization

    mode = mode or ("infer" if cls.latency_critical else "train")
    if mode not in ("train", "infer"):
        raise ValueError(f"mode must be train or infer, got {mode!r}")
    try:
        model = ModelSpec.from_hf_config(model_config, name=str(model_config.get("model_type", "model"))[:40])
        wl = WorkloadSpec(mode=mode, batch=batch, seq=seq)
        wl.resolved(model)
        est = estimate(model, wl, method="analytical")
    except (ValueError, KeyError, TypeError, ZeroDivisionError, AttributeError) as exc:
        raise ValueError(f"the estimator refuses this model config ({type(exc).__name__}: {exc}); "
                         "give --estimate-bytes SIZE instead") from None
    if not 0 < est.high_bytes <= MAX_ESTIMATE_BYTES:
        raise ValueError(f"the estimate {est.high_bytes} bytes is out of range; give --estimate-bytes SIZE instead")
    try:
        gkey, gpu = gpu_name, gpu_model(gpu_name).name
    except ValueError:
        gkey, gpu = "h100", "an H100 (this GPU type is not in the table)" if gpu_name else "an H100"
    util = solo_utilization(model, wl, gpu=gkey).gpu_util
    return Prediction(int(est.high_bytes), int(est.total_bytes), util,
                      f"{est.method} estimate, {mode} batch {batch} x seq {seq}: {est.total_bytes} bytes "
                      f"(range {est.low_bytes}..{est.high_bytes}); solo utilization {util:.0%} on {gpu}")
