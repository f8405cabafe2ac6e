"""Regenerate data/gpu/hf_peaks.jsonl: peak tensor bytes of real Hugging Face model code on the CPU.

    .venv/bin/python scripts/gpu_measure_hf.py            # the whole grid (a few minutes on 2 cores)
    .venv/bin/python scripts/gpu_measure_hf.py --limit 4  # a quick look

Each family's model class from `transformers` is built from a small config object with
random weights (never from_pretrained: no network, no downloads), in fp32 or bf16, with each
attention implementation transformers offers on the CPU (eager, sdpa). Train: two AdamW steps
(zero_grad(set_to_none) -> forward with labels, the model's own loss -> backward -> step);
infer: one no_grad prefill with use_cache=True and logits of the last position only, as
generate() does. The peak is measured by scripts/gpu_measure.py's profiled_peak (the CPU
allocator's live tensor bytes over step 2), the same method as cpu_peaks.jsonl.

The estimator's input is what a user would give agentd: ModelSpec.from_hf_config on the
config's dict. Where the estimator refuses an architecture the row says `refused` with the
reason. Families in HELDOUT_FAMILIES are split "heldout": nothing may fit on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository root
sys.path.insert(0, str(HERE))  # gpu_measure beside it

import torch  # noqa: E402

from agentd.gpu.spec import ModelSpec, WorkloadSpec  # noqa: E402
from agentd.gpu.torch_models import make_optimizer  # noqa: E402
from agentd.paths import DATA_DIR  # noqa: E402
from gpu_measure import TORCH_DTYPES, profiled_peak, write_rows  # noqa: E402

OUT = DATA_DIR / "gpu" / "hf_peaks.jsonl"
HELDOUT_FAMILIES = ("gemma", "opt")
# Families first measured after the estimator's fixes for transformers' code were committed
# (hfrange branch): split "new", never looked at before they were scored.
NEW_FAMILIES = ("gpt_neox", "qwen3", "stablelm", "starcoder2")
BATCH, VOCAB = 2, 2048
SIZES = {"s": 128, "m": 256}  # size -> sequence length; "m" doubles widths and layers of the configs below
_SCALED = ("hidden_size", "n_embd", "intermediate_size", "ffn_dim", "moe_intermediate_size", "head_dim",
           "shared_expert_intermediate_size", "word_embed_proj_dim", "num_hidden_layers", "n_layer")
_GQA = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512)
# Small configs; dropout off everywhere (the estimator is asked with dropout=0).
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(_GQA)),
    "qwen2": ("Qwen2Config", dict(_GQA)),
    "mistral": ("MistralConfig", dict(_GQA, sliding_window=None)),
    "mixtral": ("MixtralConfig", dict(_GQA, intermediate_size=128, num_local_experts=4, num_experts_per_tok=2,
                                      sliding_window=None)),
    "gpt2": ("GPT2Config", dict(n_embd=128, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=512,
                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "phi": ("PhiConfig", dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                              vocab_size=VOCAB, max_position_embeddings=512, resid_pdrop=0.0, embd_pdrop=0.0,
                              attention_dropout=0.0)),
    "gemma": ("GemmaConfig", dict(_GQA, head_dim=32)),
    "opt": ("OPTConfig", dict(hidden_size=128, ffn_dim=512, num_hidden_layers=2, num_attention_heads=4,
                              vocab_size=VOCAB, max_position_embeddings=512, word_embed_proj_dim=128,
                              dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                                       num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=512,
                                       attention_dropout=0.0, hidden_dropout=0.0)),
    "qwen3": ("Qwen3Config", dict(_GQA, head_dim=32)),
    "stablelm": ("StableLmConfig", dict(_GQA, hidden_dropout=0.0, attention_dropout=0.0)),
    "starcoder2": ("Starcoder2Config", dict(_GQA, intermediate_size=512, residual_dropout=0.0,
                                            embedding_dropout=0.0, attention_dropout=0.0)),
    # refused by the estimator (shared experts): measured anyway, recorded as refused
    "qwen2_moe": ("Qwen2MoeConfig", dict(_GQA, moe_intermediate_size=128, shared_expert_intermediate_size=256,
                                         num_experts=4, num_experts_per_tok=2)),
}


def build_config(family: str, size: str, attn: str):
    import transformers

    cls_name, kw = FAMILIES[family]
    if size == "m":
        kw = {k: v * 2 if k in _SCALED else v for k, v in kw.items()}
    cfg = getattr(transformers, cls_name)(**kw)
    cfg._attn_implementation = attn
    return cfg


def hf_config_dict(cfg, dtype: str) -> dict:
    """The config.json a user would hand agentd (--model-config), in the row's dtype."""
    d = cfg.to_dict()
    d["torch_dtype"] = dtype
    return d


def estimator_input(cfg, dtype: str, mode: str, attn: str, seq: int) -> tuple[dict | None, dict, str]:
    """(ModelSpec dict or None, WorkloadSpec dict, refusal reason) as agentd would read them."""
    d = hf_config_dict(cfg, dtype)
    wl = WorkloadSpec(mode=mode, batch=BATCH, seq=seq, dtype=dtype, optimizer="adamw", optimizer_impl="single",
                      attention="eager" if attn == "eager" else "flash", dropout=0.0, grad_buffers="freed",
                      device="cpu")
    try:
        spec = ModelSpec.from_hf_config(d, name=cfg.model_type)
    except ValueError as exc:
        return None, asdict(wl), str(exc)
    return asdict(spec), asdict(wl), ""


def _kv_bytes(cache) -> int:
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return sum(t.nbytes for lay in layers for t in (getattr(lay, "keys", None), getattr(lay, "values", None))
                   if torch.is_tensor(t))
    return sum(k.nbytes + v.nbytes for k, v in cache)


def measure_hf(cfg, dtype: str, mode: str, seq: int) -> dict:
    import transformers

    torch.manual_seed(0)

    def body(mark) -> dict:
        with mark("setup"):
            model = transformers.AutoModelForCausalLM.from_config(cfg).to(TORCH_DTYPES[dtype])
            ids = torch.randint(0, VOCAB, (BATCH, seq))
        extra = {"optimizer_state_bytes": 0, "kv_bytes": 0}
        if mode == "train":
            model.train()
            opt = make_optimizer(model, "adamw", "single")
            for step in ("step1", "step2"):
                with mark(step):
                    opt.zero_grad(set_to_none=True)
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                    loss.backward()
                    opt.step()
                    del loss
            extra["optimizer_state_bytes"] = sum(t.nbytes for st in opt.state.values() for t in st.values()
                                                 if torch.is_tensor(t))
            del opt
        else:
            model.eval()
            with mark("step2"), torch.no_grad():
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache = getattr(out, "cache", None)
            extra["kv_bytes"] = _kv_bytes(cache if cache is not None else out.past_key_values)
            del cache
            del out
        weights = sum(p.nbytes for p in model.parameters())
        params = sum(p.numel() for p in model.parameters())
        del model, ids
        return {"weights_bytes": weights, "parameters_real": params, **extra}

    return profiled_peak(body)


def grid() -> list[tuple[str, str, str, str, str]]:
    return [(fam, size, dt, mode, attn) for size in SIZES for fam in FAMILIES for dt in ("fp32", "bf16")
            for mode in ("train", "infer") for attn in ("eager", "sdpa")]


def main(argv=None) -> int:
    import transformers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="measure only the first N (a quick look)")
    ap.add_argument("--families", default="",
                    help="comma list of families (default: all); other families' rows in --out are kept")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    configs = [c for c in grid() if not args.families or c[0] in args.families.split(",")]
    if args.limit:
        configs = configs[: args.limit]
    measured = {c[0] for c in configs}
    rows = []
    if args.families and args.out.exists():  # re-measure some families, keep the others' rows
        rows = [r for r in (json.loads(x) for x in args.out.read_text().splitlines() if x.strip())
                if "_meta" not in r and r["family"] not in measured]
    for i, (fam, size, dt, mode, attn) in enumerate(configs):
        cfg = build_config(fam, size, attn)
        spec, wl, refused = estimator_input(cfg, dt, mode, attn, SIZES[size])
        m = measure_hf(cfg, dt, mode, SIZES[size])
        split = "heldout" if fam in HELDOUT_FAMILIES else "new" if fam in NEW_FAMILIES else "hf"
        rows.append({"id": f"{fam}-{size}-{dt}-{mode}-{attn}", "family": fam, "attn_implementation": attn,
                     "split": split, "model": spec, "workload": wl, "refused": refused, "measured": m,
                     "hf_config": hf_config_dict(cfg, dt)})
        print(f"{i + 1:3d}/{len(configs)} {fam:10s} {size} {dt} {mode:5s} {attn:5s} "
              f"peak={m['peak_bytes'] / 2**20:8.2f} MiB ({m['seconds']:.2f}s){' REFUSED' if refused else ''}",
              flush=True)
    meta = {"_meta": {"made_by": "scripts/gpu_measure_hf.py", "torch": torch.__version__,
                      "transformers": transformers.__version__, "device": "cpu",
                      "ground_truth": "cpu: torch.profiler allocator Total Allocated (live tensor bytes), "
                                      "Hugging Face transformers model classes with random weights",
                      "heldout_families": list(HELDOUT_FAMILIES), "new_families": list(NEW_FAMILIES),
                      "batch": BATCH, "seq_by_size": SIZES,
                      "date": time.strftime("%Y-%m-%d", time.gmtime()), "configs": len(rows)}}
    rows.sort(key=lambda r: grid().index(tuple(r["id"].split("-"))) if tuple(r["id"].split("-")) in grid() else 0)
    write_rows(args.out, meta, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
