"""Regenerate data/gpu/cpu_peaks.jsonl: real peak tensor bytes of small transformers on the CPU.

    .venv/bin/python data/gpu/measure.py            # the full grid (a few minutes on 2 cores)
    .venv/bin/python data/gpu/measure.py --limit 10 # a quick look

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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from agentd.gpu.spec import ModelSpec, WorkloadSpec  # noqa: E402
from agentd.gpu.torch_models import TinyDecoder, make_optimizer, prefill, train_step  # noqa: E402

OUT = HERE / "cpu_peaks.jsonl"
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


def measure(spec: ModelSpec, wl: WorkloadSpec) -> dict:
    wl = wl.resolved(spec)
    torch.manual_seed(0)
    dt = TORCH_DTYPES[wl.dtype]
    gc.collect()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function("agentd:setup"):
            model = TinyDecoder(spec, dropout=wl.dropout, attention=wl.attention,
                                recompute=wl.recompute).to(dt)
            ids = torch.randint(0, spec.vocab_size, (wl.batch, wl.seq))
            targets = torch.randint(0, spec.vocab_size, (wl.batch, wl.seq))
        if wl.mode == "train":
            model.train()
            opt = make_optimizer(model, wl.optimizer, wl.optimizer_impl)
            keep = wl.grad_buffers == "persistent"
            with record_function("agentd:step1"):
                train_step(model, opt, ids, targets, set_to_none=not keep)
            with record_function("agentd:step2"):
                train_step(model, opt, ids, targets, set_to_none=not keep)
            states = [t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]
            extra = {"optimizer_state_bytes": sum(t.nbytes for t in states), "kv_bytes": 0}
            del opt
        else:
            model.eval()
            with record_function("agentd:step2"):
                _, cache = prefill(model, ids)
            extra = {"optimizer_state_bytes": 0, "kv_bytes": sum(k.nbytes + v.nbytes for k, v in cache)}
            del cache
        weights = sum(p.nbytes for p in model.parameters())
        del model, ids, targets
    seconds = time.perf_counter() - t0
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.load(open(f.name))
    wins, mem = _windows(trace)
    lo, hi = wins["step2"]
    before = [tot for ts, tot in mem if ts < lo]
    during = [tot for ts, tot in mem if lo <= ts <= hi]
    peak = max(during + before[-1:])
    return {"peak_bytes": peak, "weights_bytes": weights,
            "grad_bytes": weights if wl.mode == "train" else 0,
            "live_before_step_bytes": before[-1] if before else 0, "seconds": round(seconds, 3), **extra}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=240, help="configurations in the grid")
    ap.add_argument("--outside", type=int, default=8, help="larger configurations beyond the grid (split 'outside')")
    ap.add_argument("--keep-grid", action="store_true",
                    help="reuse the grid rows already in --out and measure only the outside rows")
    ap.add_argument("--limit", type=int, default=0, help="measure only the first N (a quick look)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--heldout", type=float, default=0.25, help="fraction held out of the learned estimator's training")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    kept = []
    if args.keep_grid:
        kept = [r for r in (json.loads(x) for x in open(args.out)) if "_meta" not in r and r["split"] != "outside"]
        configs = []
    else:
        configs = [(s, w, None) for s, w in grid(args.n)]
    configs += [(s, w, "outside") for s, w in outside_grid(args.outside)]
    if args.limit:
        configs = configs[: args.limit]
    rows = list(kept)
    for i, (spec, wl, forced) in enumerate(configs):
        cid = config_id(spec, wl)
        m = measure(spec, wl)
        split = forced or ("heldout" if int(cid, 16) % 1000 < args.heldout * 1000 else "train")
        rows.append({"id": cid, "split": split, "model": asdict(spec), "workload": asdict(wl), "measured": m,
                     "parameters": spec.parameter_count()})
        print(f"{i + 1:4d}/{len(configs)} {cid} {wl.mode:5s} L{spec.num_layers} h{spec.hidden_size} "
              f"b{wl.batch} s{wl.seq} {wl.dtype} peak={m['peak_bytes'] / 2**20:8.2f} MiB ({m['seconds']:.2f}s)",
              flush=True)
    meta = {"_meta": {"made_by": "data/gpu/measure.py", "torch": torch.__version__, "device": "cpu",
                      "ground_truth": "cpu: torch.profiler allocator Total Allocated (live tensor bytes)",
                      "date": time.strftime("%Y-%m-%d", time.gmtime()), "configs": len(rows)}}
    with open(args.out, "w") as f:
        f.write(json.dumps(meta) + "\n")
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
