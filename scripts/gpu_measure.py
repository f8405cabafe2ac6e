"""Regenerate data/gpu/cpu_peaks.jsonl: real peak tensor bytes of small transformers on the CPU.

    .venv/bin/python scripts/gpu_measure.py            # the full grid (a few minutes on 2 cores)
    .venv/bin/python scripts/gpu_measure.py --limit 10 # a quick look

For each configuration of a seeded grid, a reference decoder (agentd/gpu/torch_models.py)
is built, and either trained for two steps (zero_grad(set_to_none) → forward → cross-entropy
→ backward → optimizer step) or run through one prefill forward that keeps its KV cache
(no_grad, logits of the last position). Everything runs under torch.profiler with
profile_memory=True, started before the model is built: each "[memory]" event carries the
CPU allocator's running "Total Allocated", so the truth is the allocator's own count of live
tensor bytes, not an estimate. The recorded peak is the maximum over step 2 (steady state:
optimizer states exist, gradients were freed by zero_grad), or over the prefill.

What this cannot see (no GPU here): the CUDA context, the caching allocator's rounding and
fragmentation (reserved versus allocated), cuBLAS/cuDNN workspaces, and kernels that exist
only on CUDA. Those stay in the estimators' "overhead" part and are unverified.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from agentd.gpu.spec import ModelSpec, WorkloadSpec  # noqa: E402
from agentd.gpu.torch_models import TinyDecoder, make_optimizer, prefill, train_step  # noqa: E402
from agentd.paths import DATA_DIR  # noqa: E402

OUT = DATA_DIR / "gpu" / "cpu_peaks.jsonl"
OUT_CUDA = DATA_DIR / "gpu" / "cuda_peaks.jsonl"
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def grid(n: int, seed: int = 5) -> list[tuple[ModelSpec, WorkloadSpec]]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        h = rng.choice([64, 96, 128, 192, 256])
        heads = rng.choice([d for d in (2, 4, 8) if h % d == 0 and h // d >= 16])
        kv = rng.choice([k for k in (heads, heads // 2, 1) if k >= 1 and heads % k == 0])
        gated = rng.random() < 0.5
        ffn = rng.choice([2 * h, 4 * h, (8 * h // 3 + 7) // 8 * 8])
        spec = ModelSpec(
            num_layers=rng.choice([1, 2, 3, 4, 6]), hidden_size=h, num_heads=heads, num_kv_heads=kv,
            vocab_size=rng.choice([256, 1024, 4096, 8192]), intermediate_size=ffn,
            tie_word_embeddings=rng.random() < 0.4, gated_mlp=gated,
            norm="rmsnorm" if gated else "layernorm", bias=not gated,
            learned_positions=0 if gated else 512, dtype="fp32")
        mode = "train" if rng.random() < 0.7 else "infer"
        attention = rng.choice(["eager", "eager", "flash"])
        if mode == "train":
            dropout = rng.choice([0.0, 0.1]) if attention == "eager" else 0.0
            wl = WorkloadSpec(mode="train", batch=rng.choice([1, 2, 4, 8]), seq=rng.choice([32, 64, 128, 256]),
                              dtype=rng.choice(["fp32", "fp32", "fp32", "bf16"]),
                              optimizer=rng.choice(["adam", "adamw", "sgd", "sgd_momentum"]),
                              optimizer_impl=rng.choice(["foreach", "single"]),
                              recompute=rng.choice(["none", "none", "none", "full"]),
                              attention=attention, dropout=dropout,
                              grad_buffers=rng.choice(["freed", "freed", "freed", "persistent"]), device="cpu")
        else:
            wl = WorkloadSpec(mode="infer", batch=rng.choice([1, 2, 4, 8, 16]), seq=rng.choice([32, 64, 128, 256, 512]),
                              dtype=rng.choice(["fp32", "bf16"]), attention=attention, device="cpu")
        key = json.dumps([asdict(spec), asdict(wl)], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        out.append((spec, wl))
    return out


def outside_grid(n: int, seed: int = 7) -> list[tuple[ModelSpec, WorkloadSpec]]:
    """Larger models than the grid (hidden 384-512, vocabularies up to Llama's 32000,
    sequences to 1024): the learned estimator must say these are outside its range, and
    they show whether the analytical model holds beyond the sizes it was checked on."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        h = rng.choice([384, 512])
        heads = rng.choice([4, 8])
        gated = i % 2 == 0
        spec = ModelSpec(num_layers=rng.choice([4, 8]), hidden_size=h, num_heads=heads,
                         num_kv_heads=rng.choice([heads, heads // 4]), vocab_size=rng.choice([16384, 32000]),
                         intermediate_size=(8 * h // 3 + 7) // 8 * 8 if gated else 4 * h,
                         tie_word_embeddings=not gated, gated_mlp=gated, norm="rmsnorm" if gated else "layernorm",
                         bias=not gated, learned_positions=0 if gated else 1024, dtype="fp32")
        if i % 4 == 3:
            wl = WorkloadSpec(mode="infer", batch=rng.choice([4, 8]), seq=1024, dtype="fp32",
                              attention=rng.choice(["eager", "flash"]), device="cpu")
        else:
            wl = WorkloadSpec(mode="train", batch=rng.choice([1, 2]), seq=rng.choice([512, 1024]), dtype="fp32",
                              optimizer=rng.choice(["adam", "adamw"]), optimizer_impl="foreach",
                              recompute=rng.choice(["none", "full"]), attention=rng.choice(["eager", "flash"]),
                              grad_buffers="freed", device="cpu")
        out.append((spec, wl))
    return out


def moe_grid(n: int, seed: int = 11) -> list[tuple[ModelSpec, WorkloadSpec]]:
    """Mixture-of-experts decoders (Mixtral-style, 4-8 experts, top-1 or top-2) within the
    grid's sizes; split into train/held-out like the grid."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        h = rng.choice([64, 128, 192])
        heads = rng.choice([2, 4])
        spec = ModelSpec(num_layers=rng.choice([1, 2, 4]), hidden_size=h, num_heads=heads,
                         num_kv_heads=rng.choice([heads, 1]), vocab_size=rng.choice([256, 1024, 4096]),
                         intermediate_size=rng.choice([h, 2 * h]), num_experts=rng.choice([4, 8]),
                         experts_per_token=rng.choice([1, 2]), tie_word_embeddings=rng.random() < 0.3,
                         gated_mlp=True, norm="rmsnorm", dtype="fp32")
        if i % 3 == 2:
            wl = WorkloadSpec(mode="infer", batch=rng.choice([2, 4, 8]), seq=rng.choice([64, 128, 256]),
                              dtype="fp32", attention=rng.choice(["eager", "flash"]), device="cpu")
        else:
            wl = WorkloadSpec(mode="train", batch=rng.choice([2, 4, 8]), seq=rng.choice([64, 128, 256]), dtype="fp32",
                              optimizer=rng.choice(["adam", "sgd"]), optimizer_impl=rng.choice(["foreach", "single"]),
                              attention=rng.choice(["eager", "flash"]), grad_buffers="freed", device="cpu")
        out.append((spec, wl))
    return out


def group_of(row: dict) -> str:
    if row["split"] == "outside":
        return "outside"
    return "moe" if row["model"].get("num_experts") else "grid"


def config_id(spec: ModelSpec, wl: WorkloadSpec) -> str:
    return hashlib.sha1(json.dumps([asdict(spec), asdict(wl)], sort_keys=True).encode()).hexdigest()[:10]


def _windows(trace: dict) -> tuple[dict[str, tuple[float, float]], list[tuple[float, int]]]:
    """Windows of the agentd: record_function ranges, and (ts, live bytes) memory events.

    The allocator's counter is process-wide and forgets frees that happen while no profiler
    runs, so live bytes are counted from the counter's value when this session began."""
    wins, mem = {}, []
    for ev in trace["traceEvents"]:
        name = ev.get("name", "")
        if name == "[memory]" and ev.get("args", {}).get("Device Type", 0) == 0:
            mem.append((ev["ts"], int(ev["args"]["Total Allocated"]), int(ev["args"]["Bytes"])))
        elif name.startswith("agentd:") and "dur" in ev:
            wins[name[7:]] = (ev["ts"], ev["ts"] + ev["dur"])
    mem.sort(key=lambda m: m[0])
    base = mem[0][1] - mem[0][2] if mem else 0
    return wins, [(ts, tot - base) for ts, tot, _ in mem]


def profiled_peak(body) -> dict:
    """Run body(mark) under the profiler and return the peak live tensor bytes over the
    window marked "step2" (or the last value before it). body builds everything it needs
    inside `with mark("setup")`, runs `with mark("step1")` / `with mark("step2")`, deletes
    what it built, and returns a dict of extra fields for the row. Shared with measure_hf.py."""
    gc.collect()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        extra = body(lambda name: record_function("agentd:" + name))
    seconds = time.perf_counter() - t0
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.load(open(f.name))
    wins, mem = _windows(trace)
    lo, hi = wins["step2"]
    before = [tot for ts, tot in mem if ts < lo]
    during = [tot for ts, tot in mem if lo <= ts <= hi]
    peak = max(during + before[-1:])
    return {"peak_bytes": peak, **extra, "live_before_step_bytes": before[-1] if before else 0,
            "seconds": round(seconds, 3)}


def measure(spec: ModelSpec, wl: WorkloadSpec) -> dict:
    wl = wl.resolved(spec)
    torch.manual_seed(0)
    dt = TORCH_DTYPES[wl.dtype]

    def body(mark) -> dict:
        with mark("setup"):
            model = TinyDecoder(spec, dropout=wl.dropout, attention=wl.attention,
                                recompute=wl.recompute).to(dt)
            ids = torch.randint(0, spec.vocab_size, (wl.batch, wl.seq))
            targets = torch.randint(0, spec.vocab_size, (wl.batch, wl.seq))
        if wl.mode == "train":
            model.train()
            opt = make_optimizer(model, wl.optimizer, wl.optimizer_impl)
            keep = wl.grad_buffers == "persistent"
            with mark("step1"):
                train_step(model, opt, ids, targets, set_to_none=not keep)
            with mark("step2"):
                train_step(model, opt, ids, targets, set_to_none=not keep)
            states = [t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]
            extra = {"optimizer_state_bytes": sum(t.nbytes for t in states), "kv_bytes": 0}
            del opt, states
        else:
            model.eval()
            with mark("step2"):
                _, cache = prefill(model, ids)
            extra = {"optimizer_state_bytes": 0, "kv_bytes": sum(k.nbytes + v.nbytes for k, v in cache)}
            del cache
        weights = sum(p.nbytes for p in model.parameters())
        del model, ids, targets
        return {"weights_bytes": weights, "grad_bytes": weights if wl.mode == "train" else 0, **extra}

    return profiled_peak(body)


def measure_cuda(spec: ModelSpec, wl: WorkloadSpec) -> dict:
    """The same step on a GPU (written for a GPU host; not run on the CPU-only host that made
    cpu_peaks.jsonl). Truth: torch.cuda.max_memory_allocated/reserved over step 2, and the
    process's device memory as NVML reports it; the CUDA context is NVML's figure minus what
    the caching allocator holds. `peak_bytes` is the process's peak device footprint:
    peak reserved plus context."""
    from dataclasses import replace

    from agentd.gpu.sampler import NvmlSampler

    wl = replace(wl.resolved(spec), device="cuda")
    dev = torch.device("cuda")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    model = TinyDecoder(spec, dropout=wl.dropout, attention=wl.attention, recompute=wl.recompute).to(
        dev, TORCH_DTYPES[wl.dtype])
    ids = torch.randint(0, spec.vocab_size, (wl.batch, wl.seq), device=dev)
    targets = torch.randint(0, spec.vocab_size, (wl.batch, wl.seq), device=dev)
    extra = {"optimizer_state_bytes": 0, "kv_bytes": 0}
    if wl.mode == "train":
        opt = make_optimizer(model.train(), wl.optimizer, wl.optimizer_impl)
        keep = wl.grad_buffers == "persistent"
        train_step(model, opt, ids, targets, set_to_none=not keep)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        train_step(model, opt, ids, targets, set_to_none=not keep)
        extra["optimizer_state_bytes"] = sum(t.nbytes for st in opt.state.values() for t in st.values()
                                             if torch.is_tensor(t) and t.is_cuda)
    else:
        torch.cuda.reset_peak_memory_stats(dev)
        _, cache = prefill(model.eval(), ids)
        extra["kv_bytes"] = sum(k.nbytes + v.nbytes for k, v in cache)
        del cache
    torch.cuda.synchronize(dev)
    allocated = torch.cuda.max_memory_allocated(dev) - base
    reserved_peak = torch.cuda.max_memory_reserved(dev)
    reserved_now = torch.cuda.memory_reserved(dev)
    snap = NvmlSampler(process_utilization=False, health=False).sample()
    mine = [p.used_memory_bytes for p in snap.processes() if p.host_pid == os.getpid() and p.used_memory_bytes]
    nvml_now = mine[0] if mine else None
    context = nvml_now - reserved_now if nvml_now is not None else None
    weights = sum(p.nbytes for p in model.parameters())
    del model, ids, targets
    return {"peak_bytes": reserved_peak + (context or 0), "allocated_peak_bytes": allocated,
            "reserved_peak_bytes": reserved_peak, "nvml_process_bytes": nvml_now, "context_bytes": context,
            "weights_bytes": weights, "grad_bytes": weights if wl.mode == "train" else 0,
            "gpu": snap.gpus[0].name if snap.gpus else "", "seconds": round(time.perf_counter() - t0, 3), **extra}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=240, help="configurations in the grid")
    ap.add_argument("--outside", type=int, default=8, help="larger configurations beyond the grid (split 'outside')")
    ap.add_argument("--moe", type=int, default=18, help="mixture-of-experts configurations (Mixtral-style)")
    ap.add_argument("--only", default="", help="comma list of groups to (re)measure (grid, moe, outside), "
                                               "keeping the other groups' rows already in --out")
    ap.add_argument("--limit", type=int, default=0, help="measure only the first N (a quick look)")
    ap.add_argument("--out", type=Path, default=None, help="default: cpu_peaks.jsonl, or cuda_peaks.jsonl with --device cuda")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: measure on the GPU (torch.cuda peak stats and NVML) instead of the CPU allocator")
    ap.add_argument("--heldout", type=float, default=0.25, help="fraction held out of the learned estimator's training")
    args = ap.parse_args(argv)
    args.out = args.out or (OUT_CUDA if args.device == "cuda" else OUT)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: --device cuda needs a GPU and a CUDA build of torch", file=sys.stderr)
        return 1
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    only = {g for g in args.only.split(",") if g} or {"grid", "moe", "outside"}
    kept = []
    if args.only:
        kept = [r for r in (json.loads(x) for x in open(args.out)) if "_meta" not in r and group_of(r) not in only]
    configs = []
    if "grid" in only:
        configs += [(s, w, None) for s, w in grid(args.n)]
    if "moe" in only:
        configs += [(s, w, None) for s, w in moe_grid(args.moe)]
    if "outside" in only:
        configs += [(s, w, "outside") for s, w in outside_grid(args.outside)]
    if args.limit:
        configs = configs[: args.limit]
    rows = list(kept)
    for i, (spec, wl, forced) in enumerate(configs):
        if args.device == "cuda":
            from dataclasses import replace
            wl = replace(wl, device="cuda")
        cid = config_id(spec, wl)
        m = measure_cuda(spec, wl) if args.device == "cuda" else measure(spec, wl)
        split = forced or ("heldout" if int(cid, 16) % 1000 < args.heldout * 1000 else "train")
        rows.append({"id": cid, "split": split, "model": asdict(spec), "workload": asdict(wl), "measured": m,
                     "parameters": spec.parameter_count()})
        print(f"{i + 1:4d}/{len(configs)} {cid} {wl.mode:5s} L{spec.num_layers} h{spec.hidden_size} "
              f"b{wl.batch} s{wl.seq} {wl.dtype} peak={m['peak_bytes'] / 2**20:8.2f} MiB ({m['seconds']:.2f}s)",
              flush=True)
    truth = ("gpu: torch.cuda max_memory_reserved + CUDA context (NVML process memory minus reserved); "
             "allocated_peak_bytes beside it" if args.device == "cuda"
             else "cpu: torch.profiler allocator Total Allocated (live tensor bytes)")
    meta = {"_meta": {"made_by": "scripts/gpu_measure.py", "torch": torch.__version__, "device": args.device,
                      "ground_truth": truth,
                      "date": time.strftime("%Y-%m-%d", time.gmtime()), "configs": len(rows)}}
    write_rows(args.out, meta, rows)
    return 0


def write_rows(path: Path, meta: dict, rows: list[dict]) -> None:
    """The data file: the _meta line, then one row per line (sorted keys: stable diffs)."""
    with open(path, "w") as f:
        f.write(json.dumps(meta) + "\n")
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    sys.exit(main())
