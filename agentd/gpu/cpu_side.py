"""CPU-side estimator (the "PyTorch FakeTensor" family): run the real code on fake tensors.

For a PyTorch module and an example batch, one training step (zero_grad, forward, loss,
backward, optimizer step) or one forward (inference) runs under FakeTensorMode: every op
computes shapes and dtypes but allocates nothing, and torch's MemTracker follows each
tensor's storage from creation to release. The answer is the peak of live tensor bytes,
split into parameters, gradients, optimizer states, activations and temporaries. Nothing
needs a GPU; it needs torch (optional dependency: `pip install torch`).

Two ways in:
- `trace_peak(build_model, make_batch, mode=..., optimizer=...)` for any module;
- `estimate(model_spec, workload)` traces agentd's reference decoder
  (agentd/gpu/torch_models.py) built from the spec, so it is comparable with the other
  estimators through agentd.gpu.estimate.

Limits: data-dependent shapes (mixture-of-experts routing) cannot be traced; it sees the
CPU kernels' choices (which tensors a CPU kernel keeps), not CUDA's
(fused dropout keeps a 1-byte mask, fused RMSNorm keeps less); it does not see the CUDA
context, allocator rounding or workspaces, which are added from the analytical model's
overhead when the target is CUDA. Its cost grows with the number of ops, not tensor sizes.
"""

from __future__ import annotations

import time
from typing import Callable

from agentd.gpu.spec import DTYPE_BYTES, Estimate, ModelSpec, WorkloadSpec


class TorchUnavailable(RuntimeError):
    """torch is not installed; str(exc) says how to get it."""


def _torch():
    try:
        import torch  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only where torch is absent
        raise TorchUnavailable("the cpu_side estimator needs torch (pip install torch)") from exc
    return torch


def _peak_by_kind(snap: dict) -> tuple[int, dict[str, int]]:
    """MemTracker's peak snapshot ({device: {kind: bytes, "Total": bytes}}) summed over devices."""
    by_kind: dict[str, int] = {}
    peak = 0
    for _dev, kinds in snap.items():
        for k, v in kinds.items():
            if k == "Total":
                peak += int(v)
            else:
                name = getattr(k, "value", str(k))
                by_kind[name] = by_kind.get(name, 0) + int(v)
    return peak, by_kind


def trace_peak(build_model: Callable, make_batch: Callable, mode: str = "train",
               optimizer: Callable | None = None, loss_fn: Callable | None = None,
               steps: int = 2, set_to_none: bool = True) -> dict:
    """Trace `steps` training steps (or one forward) under FakeTensorMode.

    build_model() -> nn.Module and make_batch() -> (inputs, targets) are called inside fake
    mode, so they must create their tensors there (no real data needed). optimizer(module)
    -> torch.optim.Optimizer; set_to_none=False keeps gradient buffers (DDP-like). Returns {"peak_bytes", "by_kind": {...}, "seconds"}; the peak
    is taken over the last step (optimizer states exist by then, as in steady state).
    """
    torch = _torch()
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    t0 = time.perf_counter()
    with FakeTensorMode(allow_non_fake_inputs=False):
        model = build_model()
        inputs, targets = make_batch()
        # the batch exists before the tracker starts, so it is added by hand
        input_bytes = sum(t.untyped_storage().nbytes() for t in (inputs, targets) if torch.is_tensor(t))
        tracker = MemTracker()
        if mode == "train":
            model.train()
            opt = optimizer(model) if optimizer else torch.optim.Adam(model.parameters())
            tracker.track_external(model, opt)
            loss_fn = loss_fn or (lambda out, tgt: torch.nn.functional.cross_entropy(
                out.reshape(-1, out.shape[-1]), tgt.reshape(-1)))
            with tracker:
                for i in range(steps):
                    if i == steps - 1:
                        tracker.reset_mod_stats()
                    opt.zero_grad(set_to_none=set_to_none)
                    out = model(inputs)
                    loss = loss_fn(out, targets)
                    del out
                    loss.backward()
                    opt.step()
                    del loss
        else:
            model.eval()
            tracker.track_external(model)
            with tracker, torch.no_grad():
                out = model(inputs)
                del out
        snap = tracker.get_tracker_snapshot("peak")
    peak, by_kind = _peak_by_kind(snap)
    by_kind["Inputs"] = input_bytes
    return {"peak_bytes": peak + input_bytes, "by_kind": by_kind, "seconds": time.perf_counter() - t0}


def estimate(model: ModelSpec, workload: WorkloadSpec) -> Estimate:
    """Trace agentd's reference decoder built from `model` for `workload` (single device)."""
    wl = workload.resolved(model)
    if not model.has_architecture:
        raise ValueError("the cpu_side estimator needs an architecture (give a config, not only --params)")
    if wl.tp > 1 or wl.dp > 1 or wl.zero_stage:
        raise ValueError("the cpu_side estimator traces one device without parallelism (tp=dp=1, no ZeRO)")
    if wl.recompute == "selective":
        raise ValueError("the reference decoder implements recompute none or full, not selective")
    if model.num_experts:
        # expert routing picks tokens by value (nonzero), which fake tensors cannot know
        raise ValueError("a mixture of experts has data-dependent shapes that fake tensors cannot trace; "
                         "use the analytical method")
    if wl.mixed_precision:
        raise ValueError("the cpu_side estimator traces one dtype; mixed precision is not supported")
    torch = _torch()
    from agentd.gpu import analytical
    from agentd.gpu.torch_models import TinyDecoder, make_optimizer

    dt = {4: torch.float32, 2: torch.bfloat16}[DTYPE_BYTES[wl.dtype]]

    def build():  # made in the target dtype: Module.to() cannot swap fake parameters
        old = torch.get_default_dtype()
        torch.set_default_dtype(dt)
        try:
            return TinyDecoder(model, dropout=wl.dropout, attention=wl.attention, recompute=wl.recompute)
        finally:
            torch.set_default_dtype(old)

    def batch():
        ids = torch.randint(0, model.vocab_size, (wl.batch, wl.seq))
        return ids, torch.randint(0, model.vocab_size, (wl.batch, wl.seq))

    if wl.mode == "train":
        res = trace_peak(build, batch, "train", lambda m: make_optimizer(m, wl.optimizer, wl.optimizer_impl),
                         set_to_none=wl.grad_buffers != "persistent")
    else:
        res = _trace_prefill(build, batch)
    kinds = res["by_kind"]
    parts = dict.fromkeys(("weights", "gradients", "optimizer_states", "activations", "kv_cache",
                           "temporaries", "overhead"), 0)
    parts["weights"] = kinds.get("Parameter", 0) + kinds.get("Buffer", 0)
    parts["gradients"] = kinds.get("Gradient", 0)
    parts["optimizer_states"] = kinds.get("Optstate", 0)
    parts["activations"] = kinds.get("Activation", 0) + kinds.get("Inputs", 0)
    parts["kv_cache"] = kinds.get("kv_cache", 0)
    parts["temporaries"] = kinds.get("Temp", 0) + kinds.get("Other", 0)
    ref = analytical.estimate(model, wl)
    parts["overhead"] = ref.parts["overhead"]
    total = int(sum(parts.values()))
    dynamic = total - parts["weights"] - parts["overhead"]
    notes = [f"traced with FakeTensorMode in {res['seconds'] * 1000:.0f} ms (CPU kernels' choices)"]
    if wl.device == "cuda":
        notes.append("overhead (CUDA context, workspace) taken from the analytical model")
    return Estimate(method="cpu_side", total_bytes=total, parts=parts,
                    low_bytes=int(total - 0.05 * dynamic), high_bytes=int(total + 0.15 * dynamic),
                    parameters=model.parameter_count(), model_states_bytes=ref.model_states_bytes,
                    kv_bytes_per_token=ref.kv_bytes_per_token, phase="traced peak",
                    full_parts=ref.full_parts, notes=notes, details={"trace_seconds": res["seconds"],
                                                                     "by_kind": kinds})


def _trace_prefill(build, batch) -> dict:
    """One no_grad forward that keeps its KV cache; peak of live bytes by a dispatch-level count."""
    torch = _torch()
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    t0 = time.perf_counter()
    with FakeTensorMode():
        model = build().eval()
        ids, _ = batch()
        input_bytes = ids.untyped_storage().nbytes()
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker, torch.no_grad():
            cache: list = []
            out = model(ids, cache=cache, last_only=True)
            kv = sum(k.untyped_storage().nbytes() + v.untyped_storage().nbytes() for k, v in cache)
            del out
        snap = tracker.get_tracker_snapshot("peak")
    peak, by_kind = _peak_by_kind(snap)
    # the KV cache is counted among activations/temporaries by the tracker; show it apart
    act = by_kind.get("Activation", 0)
    take = min(kv, act)
    by_kind["Activation"] = act - take
    by_kind["kv_cache"] = take
    if take < kv:
        by_kind["Temp"] = max(by_kind.get("Temp", 0) - (kv - take), 0)
        by_kind["kv_cache"] = kv
    by_kind["Inputs"] = input_bytes
    return {"peak_bytes": peak + input_bytes, "by_kind": by_kind, "seconds": time.perf_counter() - t0}
