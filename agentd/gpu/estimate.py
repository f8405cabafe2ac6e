"""One entry point for GPU memory estimates, used by `agentctl estimate` and the co-location policy.

    from agentd.gpu.estimate import estimate, fit_check
    from agentd.gpu.spec import ModelSpec, WorkloadSpec

    est = estimate(ModelSpec.from_hf_file("config.json"), WorkloadSpec(mode="infer", batch=8, seq=4096),
                   method="auto")
    est.total_bytes, est.low_bytes, est.high_bytes, est.parts, est.method, est.fell_back

Methods (the seed paper's three families):
- "analytical": derived from the architecture (agentd/gpu/analytical.py); microseconds;
  handles TP, ZeRO, recomputation and the KV cache. The default.
- "cpu_side": traces agentd's reference decoder with fake tensors (agentd/gpu/cpu_side.py);
  needs torch, takes 0.1-4 s, single device only.
- "learned": analytical parts re-weighted from measurements (agentd/gpu/learned.py); falls
  back to "analytical" outside its training range and says so (`fell_back`, `notes`).
- "auto": "learned" where it is inside its training range, else "analytical".

Every Estimate has `parts` (bytes live at the peak, summing to `total_bytes`), a range
(`low_bytes`..`high_bytes`) and `method` (the one that answered). Utilization estimates are
in agentd/gpu/utilization.py. The policy should compare `high_bytes` with free memory
(`fit_check`): ranges, not single numbers, are what the estimators can stand behind.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentd.gpu.spec import Estimate, ModelSpec, WorkloadSpec

METHODS = ("analytical", "cpu_side", "learned", "auto")


def estimate(model: ModelSpec, workload: WorkloadSpec, method: str = "analytical") -> Estimate:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "analytical":
        from agentd.gpu import analytical
        return analytical.estimate(model, workload)
    if method == "cpu_side":
        from agentd.gpu import cpu_side
        return cpu_side.estimate(model, workload)
    from agentd.gpu import learned
    try:
        return learned.estimate(model, workload)
    except FileNotFoundError:
        from agentd.gpu import analytical
        est = analytical.estimate(model, workload)
        est.notes.append("learned model data missing (data/gpu/cpu_peaks.jsonl); answered analytically")
        est.fell_back = True
        return est


@dataclass(frozen=True)
class FitVerdict:
    gpu: int
    name: str
    free_bytes: int
    verdict: str  # "fits", "tight" (fits the point estimate, not the high end), "does not fit"
    headroom_bytes: int  # free minus the high end of the range
    neighbour_util: float | None = None  # the GPU's live utilization (0..1) when known
    slowdown_low: float | None = None  # the job's step time next to that load / alone: MPS bound
    slowdown_high: float | None = None  # time-sliced bound
    neighbour_slowdown_high: float | None = None  # what the job costs what already runs there

    def to_json(self) -> dict:
        return {"gpu": self.gpu, "name": self.name, "free_bytes": self.free_bytes, "verdict": self.verdict,
                "headroom_bytes": self.headroom_bytes, "neighbour_util": self.neighbour_util,
                "slowdown_low": self.slowdown_low, "slowdown_high": self.slowdown_high,
                "neighbour_slowdown_high": self.neighbour_slowdown_high}


def fit_verdict(est: Estimate, free_bytes: int, gpu: int = 0, name: str = "", util=None,
                neighbour_util: float | None = None) -> FitVerdict:
    """Memory verdict from the estimate's range; with the job's UtilEstimate and the GPU's
    live utilization, also the slowdown bounds of sharing (agentd.gpu.utilization)."""
    if est.high_bytes <= free_bytes:
        v = "fits"
    elif est.total_bytes <= free_bytes:
        v = "tight"
    else:
        v = "does not fit"
    lo = hi = nb = None
    if util is not None and neighbour_util is not None:
        from agentd.gpu.utilization import colocation_slowdown

        s = colocation_slowdown(util, min(max(neighbour_util, 0.0), 1.0))
        lo, hi, nb = s.a_low, s.a_high, s.b_high
    return FitVerdict(gpu=gpu, name=name, free_bytes=free_bytes, verdict=v, headroom_bytes=free_bytes - est.high_bytes,
                      neighbour_util=neighbour_util, slowdown_low=lo, slowdown_high=hi, neighbour_slowdown_high=nb)


def fit_check(est: Estimate, snapshot, util=None) -> list[FitVerdict]:
    """Will the job fit on each GPU of a live snapshot (agentd.gpu.sampler.GpuSnapshot),
    next to what already runs there? Free memory is what NVML reports free (GPUs whose
    memory NVML could not read are left out); given the job's UtilEstimate, each verdict
    also carries the slowdown bounds against the GPU's live utilization."""
    out = []
    for g in snapshot.gpus:
        free = g.memory_free_bytes
        if free is None and g.memory_total_bytes is not None and g.memory_used_bytes is not None:
            free = g.memory_total_bytes - g.memory_used_bytes
        if free is not None:
            busy = g.util_gpu / 100.0 if g.util_gpu is not None else None
            out.append(fit_verdict(est, free, g.index, g.name, util=util, neighbour_util=busy))
    return out
