"""Utilization estimates: one job alone, and two jobs sharing a GPU.

Solo (`solo_utilization`): a roofline of one step. Work is FLOPs (6 x parameters x tokens
for training plus attention, 2 x ... for a prefill, Korthikanti et al.'s counts) and bytes
moved (weights, gradients and optimizer states read and written, activations written and
read back, the KV cache). Kernel time is the larger of FLOPs / (peak x efficiency) and
bytes / bandwidth, plus a minimum duration per kernel; host time is one launch overhead
per kernel (eager PyTorch). NVML's "GPU utilization" is the fraction of time some kernel
runs, so it is kernel time / max(kernel time, host time) — small models are launch-bound
and show low utilization however fast the GPU is. `sm_activity` (DCGM's SM_ACTIVE-like
view) and `bandwidth_pressure` are the fractions of peak compute and bandwidth in use.

Pair (`colocation_slowdown`): utilization is not additive. Without MPS, contexts are
time-sliced: a job's kernel time stretches by the share of time the other job has kernels
pending (processor sharing, solved as a fixed point), which gives 1 + u_a*u_b for light
jobs and 2 for two saturating ones. With MPS, kernels overlap and only the excess of
combined SM activity or memory bandwidth over 1 costs time. The time-sliced answer is the
upper bound the co-location policy uses; the MPS answer is a lower bound.

Where it is weak (said plainly): no part of this is measured here (no GPU on this host);
the efficiency, launch overhead and kernel counts are typical values, not fitted; it
ignores L2 and memory-controller interference below saturation (the seed paper and
CloudFormer/Nexus measure real slowdowns there), the time-slice length and
context-switch cost, data loading, communication (TP/DP collectives), and it knows GPUs
only by the table below. Use it as a bound, and prefer live NVML samples of the running
jobs (agentd.gpu.sampler) over the solo prediction when they exist.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from agentd.gpu.spec import DTYPE_BYTES, ModelSpec, WorkloadSpec


@dataclass(frozen=True)
class GpuModel:
    name: str
    tflops_half: float  # dense tensor-core bf16/fp16
    tflops_fp32: float  # fp32 without tensor cores (tf32 is counted as half for matmuls)
    bandwidth_gbs: float
    memory_gib: float
    sms: int


GPUS = {
    "h100": GpuModel("NVIDIA H100 SXM", 989.0, 67.0, 3350.0, 80.0, 132),
    "h200": GpuModel("NVIDIA H200", 989.0, 67.0, 4800.0, 141.0, 132),
    "a100": GpuModel("NVIDIA A100 SXM", 312.0, 19.5, 2039.0, 80.0, 108),
    "l40s": GpuModel("NVIDIA L40S", 362.0, 91.6, 864.0, 48.0, 142),
    "l4": GpuModel("NVIDIA L4", 121.0, 30.3, 300.0, 24.0, 58),
}

MATMUL_EFFICIENCY = 0.45  # achieved fraction of peak on large GEMMs in training (MFU-like)
BANDWIDTH_EFFICIENCY = 0.8
LAUNCH_OVERHEAD_S = 8e-6  # host time per kernel launch in eager PyTorch
MIN_KERNEL_S = 3e-6
KERNELS_PER_LAYER = {"train": 60, "infer": 20}


def gpu_model(name: str) -> GpuModel:
    key = name.lower().replace("nvidia", "").replace(" ", "").replace("-", "")
    for k, g in GPUS.items():
        if key.startswith(k):
            return g
    raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")


@dataclass(frozen=True)
class UtilEstimate:
    gpu_util: float  # NVML utilization.gpu: fraction of time a kernel runs
    sm_activity: float  # fraction of peak compute in use
    bandwidth_pressure: float  # fraction of peak memory bandwidth in use
    step_seconds: float
    kernel_seconds: float
    host_seconds: float
    flops: float
    bytes_moved: float
    bound: str  # "compute", "memory" or "launch"
    gpu: str

    def to_json(self) -> dict:
        return asdict(self)


def step_flops(model: ModelSpec, wl: WorkloadSpec) -> float:
    """Matmul FLOPs of one step: 2 per multiply-add in the forward, twice that in the
    backward; full recomputation repeats the layers' forward (not the LM head's).
    Matches Narayanan et al. (SC'21) 96·B·s·l·h²·(1 + s/6h + V/16lh) under recomputation."""
    wl = wl.resolved(model)
    tokens = wl.batch * wl.seq
    if model.has_architecture:
        head = model.vocab_size * model.hidden_size
        layers = model.num_layers * model.layer_parameters(active=True)  # routed experts only
        attn = 4.0 * model.num_layers * wl.batch * wl.seq * wl.seq * model.num_heads * model.hd  # QK^T and PV
    else:
        head, layers, attn = 0, model.parameter_count(), 0.0
    fwd_layers = 2.0 * layers * tokens + attn
    fwd_head = 2.0 * head * tokens
    if wl.mode == "infer":
        return (fwd_layers + fwd_head) / wl.tp
    return ((4.0 if wl.recompute == "full" else 3.0) * fwd_layers + 3.0 * fwd_head) / wl.tp


def step_bytes(model: ModelSpec, wl: WorkloadSpec) -> float:
    from agentd.gpu import analytical

    wl = wl.resolved(model)
    est = analytical.estimate(model, wl)
    full = est.full_parts
    if wl.mode == "infer":
        return full["weights"] + 2.0 * est.parts["kv_cache"] + 2.0 * est.parts["temporaries"]
    acts = est.details.get("activation_bytes_per_layer", 0) * model.num_layers
    return 3.0 * full["weights"] + 2.0 * full["gradients"] + 2.0 * full["optimizer_states"] + 3.0 * acts


def solo_utilization(model: ModelSpec, workload: WorkloadSpec, gpu: str = "h100",
                     host_seconds_per_step: float = 0.0) -> UtilEstimate:
    g = gpu_model(gpu)
    wl = workload.resolved(model)
    flops, nbytes = step_flops(model, wl), step_bytes(model, wl)
    half = DTYPE_BYTES[wl.dtype] <= 2 or wl.mixed_precision
    peak = (g.tflops_half if half else g.tflops_fp32) * 1e12
    t_compute = flops / (peak * MATMUL_EFFICIENCY)
    t_memory = nbytes / (g.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY)
    layers = model.num_layers or max(1, int((model.parameter_count() / 12) ** (1 / 3) / 40))
    kernels = layers * KERNELS_PER_LAYER[wl.mode] + (30 if wl.mode == "train" else 5)
    t_kernels = max(t_compute, t_memory) + kernels * MIN_KERNEL_S
    t_host = kernels * LAUNCH_OVERHEAD_S + host_seconds_per_step
    step = max(t_kernels, t_host)
    bound = "launch" if t_host > t_kernels else ("compute" if t_compute >= t_memory else "memory")
    return UtilEstimate(gpu_util=min(1.0, t_kernels / step), sm_activity=min(1.0, flops / peak / step),
                        bandwidth_pressure=min(1.0, nbytes / (g.bandwidth_gbs * 1e9) / step),
                        step_seconds=step, kernel_seconds=t_kernels, host_seconds=t_host, flops=flops,
                        bytes_moved=nbytes, bound=bound, gpu=g.name)


@dataclass(frozen=True)
class Slowdown:
    a: float  # step time of job a shared / alone (>= 1)
    b: float
    a_high: float  # time-sliced (upper bound)
    b_high: float
    a_low: float  # MPS overlap (lower bound)
    b_low: float
    sharing: str

    def to_json(self) -> dict:
        return asdict(self)


def _processor_sharing(u_a: float, u_b: float, c_a: float = 1.0, c_b: float = 1.0) -> tuple[float, float]:
    """Fixed point of: a job's kernel phase stretches by 1 + c * (the other's pending share)."""
    k_a = k_b = 1.0
    for _ in range(200):
        s_a, s_b = (1 - u_a) + u_a * k_a, (1 - u_b) + u_b * k_b
        p_a, p_b = u_a * k_a / s_a, u_b * k_b / s_b
        n_a, n_b = 1 + c_a * p_b, 1 + c_b * p_a
        if abs(n_a - k_a) < 1e-9 and abs(n_b - k_b) < 1e-9:
            break
        k_a, k_b = n_a, n_b
    return (1 - u_a) + u_a * k_a, (1 - u_b) + u_b * k_b


def colocation_slowdown(a: UtilEstimate | float, b: UtilEstimate | float, sharing: str = "timeslice",
                        bw_a: float | None = None, bw_b: float | None = None,
                        sm_a: float | None = None, sm_b: float | None = None) -> Slowdown:
    """Slowdown of two jobs sharing one GPU from their solo utilizations (0..1).

    `a`/`b` are UtilEstimates or NVML utilization fractions (live samples are better than
    predictions); bw_*/sm_* override bandwidth pressure and SM activity (default: the
    utilization itself, i.e. assume a busy kernel uses the whole GPU)."""
    def unpack(x, bw, sm):
        if isinstance(x, UtilEstimate):
            return x.gpu_util, (x.bandwidth_pressure if bw is None else bw), (x.sm_activity if sm is None else sm)
        u = float(x)
        return u, (u if bw is None else bw), (u if sm is None else sm)

    u_a, bwa, sma = unpack(a, bw_a, sm_a)
    u_b, bwb, smb = unpack(b, bw_b, sm_b)
    for name, v in (("a", u_a), ("b", u_b)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"utilization of {name} must be within 0..1, got {v}")
    hi_a, hi_b = _processor_sharing(u_a, u_b)
    # MPS: overlapping kernels only cost the part of combined demand above the GPU's capacity,
    # as a share of the job's own demand on the contended resource
    def contention(own_sm, other_sm, own_bw, other_bw):
        over = []
        if own_sm > 0:
            over.append(max(0.0, own_sm + other_sm - 1.0) / own_sm)
        if own_bw > 0:
            over.append(max(0.0, own_bw + other_bw - 1.0) / own_bw)
        return min(1.0, max(over, default=0.0))
    lo_a, lo_b = _processor_sharing(u_a, u_b, contention(sma, smb, bwa, bwb), contention(smb, sma, bwb, bwa))
    if sharing == "mps":
        pa, pb = lo_a, lo_b
    elif sharing == "timeslice":
        pa, pb = hi_a, hi_b
    else:
        raise ValueError("sharing must be timeslice or mps")
    return Slowdown(a=pa, b=pb, a_high=hi_a, b_high=hi_b, a_low=lo_a, b_low=lo_b, sharing=sharing)
