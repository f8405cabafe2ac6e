"""Learned estimator: the analytical parts, re-weighted by measurements of this hardware.

The seed study found analytical models hardware-dependent and black-box ML estimators poor
at generalizing across architectures. agentd's regressor sits between the two: its
features are the analytical model's parts at the peak (weights, gradients, optimizer
states, activations, KV cache, temporaries, overhead), and it learns one weight per part from
measured peaks, with a ridge prior pulling every weight toward 1 ("trust the derivation
unless the data disagrees"). The fit minimizes relative error, is pure Python, and takes
milliseconds, so it is refitted from the shipped data set at first use:

    data/gpu/cpu_peaks.jsonl   made by scripts/gpu_measure.py (see data/gpu/README.md)
    data/gpu/cuda_peaks.jsonl  made by scripts/gpu_measure.py --device cuda, when a GPU was there

Only rows with "split": "train" are used; "heldout" rows judge it (benchmarks/gpu_estimate.py).

It knows its training range: for each size feature (layers, hidden, vocabulary, batch,
sequence, parameters, tokens) the min and max seen, and the categories seen (mode,
attention, optimizer, dtype, recompute). `distance()` says how many octaves (factors of 2)
a query lies outside that range; beyond `max_octaves` (default 1) or for an unseen
category, `estimate()` answers with the analytical model and says so (`fell_back`).

It predicts memory only: without a GPU there are no utilization measurements to learn from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from agentd.gpu import analytical
from agentd.gpu.spec import Estimate, ModelSpec, WorkloadSpec, model_spec_from_dict, workload_spec_from_dict

DATA = Path(__file__).resolve().parents[2] / "data" / "gpu" / "cpu_peaks.jsonl"
# measured on a GPU by `scripts/gpu_measure.py --device cuda`; joins the training data when present
DATA_CUDA = DATA.with_name("cuda_peaks.jsonl")
# "overhead" (CUDA context and workspace) is 0 in CPU rows, so its weight stays at the prior
# 1 until GPU measurements join the data set; then it learns this hardware's context size.
FEATURES = ("weights", "gradients", "optimizer_states", "activations", "kv_cache", "temporaries", "overhead")
SIZE_KEYS = ("layers", "hidden", "vocab", "batch", "seq", "parameters", "tokens")
CATEGORY_KEYS = ("mode", "attention", "optimizer", "dtype", "recompute", "device", "grad_buffers", "mlp")


def _sizes(model: ModelSpec, wl: WorkloadSpec) -> dict[str, float]:
    return {"layers": model.num_layers, "hidden": model.hidden_size, "vocab": model.vocab_size,
            "batch": wl.batch, "seq": wl.seq, "parameters": model.parameter_count(),
            "tokens": wl.batch * wl.seq}


def _categories(wl: WorkloadSpec, model: ModelSpec) -> dict[str, str]:
    return {"mlp": "moe" if model.num_experts else ("gated" if model.gated_mlp else "plain"),"mode": wl.mode, "attention": wl.attention, "optimizer": wl.optimizer if wl.mode == "train" else "-",
            "dtype": wl.dtype, "recompute": wl.recompute, "device": wl.device,
            "grad_buffers": wl.grad_buffers if wl.mode == "train" else "-"}


def load_rows(path: Path = DATA) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "_meta" not in r:
                rows.append(r)
    return rows


def _solve(a: list[list[float]], y: list[float]) -> list[float]:
    n = len(y)
    m = [row[:] + [y[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        if abs(m[c][c]) < 1e-300:
            continue
        for r in range(n):
            if r != c:
                k = m[r][c] / m[c][c]
                for j in range(c, n + 1):
                    m[r][j] -= k * m[c][j]
    return [m[i][n] / m[i][i] if abs(m[i][i]) > 1e-300 else 1.0 for i in range(n)]


@dataclass
class LearnedModel:
    weights: dict[str, float]
    size_range: dict[str, tuple[float, float]]
    categories: dict[str, set]
    samples: int
    max_octaves: float = 1.0
    notes: list = field(default_factory=list)

    @classmethod
    def fit(cls, rows: list[dict], ridge: float = 0.05) -> "LearnedModel":
        xs, ys = [], []
        size_range: dict[str, list[float]] = {}
        cats: dict[str, set] = {k: set() for k in CATEGORY_KEYS}
        for r in rows:
            m, w = model_spec_from_dict(r["model"]), workload_spec_from_dict(r["workload"])
            wl = w.resolved(m)
            est = analytical.estimate(m, wl)
            y = float(r["measured"]["peak_bytes"])
            xs.append([est.parts[k] / y for k in FEATURES])  # relative-error weighting
            ys.append(1.0)
            for k, v in _sizes(m, wl).items():
                lo, hi = size_range.get(k, [v, v])
                size_range[k] = [min(lo, v), max(hi, v)]
            for k, v in _categories(wl, m).items():
                cats[k].add(v)
        if not xs:
            raise ValueError("no training rows")
        n = len(FEATURES)
        # normal equations of  sum (x.c - 1)^2 + ridge * len * sum (c - 1)^2
        lam = ridge * len(xs)
        ata = [[sum(x[i] * x[j] for x in xs) + (lam if i == j else 0.0) for j in range(n)] for i in range(n)]
        aty = [sum(x[i] * y for x, y in zip(xs, ys)) + lam for i in range(n)]
        coef = [max(c, 0.0) for c in _solve(ata, aty)]
        return cls(weights=dict(zip(FEATURES, coef)), size_range={k: tuple(v) for k, v in size_range.items()},
                   categories=cats, samples=len(xs))

    def distance(self, model: ModelSpec, workload: WorkloadSpec) -> tuple[float, list[str]]:
        """Octaves outside the training range (0 inside), and what is outside."""
        wl = workload.resolved(model)
        worst, why = 0.0, []
        if not model.has_architecture:
            return math.inf, ["no architecture (only a parameter count)"]
        for k, v in _sizes(model, wl).items():
            lo, hi = self.size_range[k]
            d = math.log2(lo / v) if v < lo else (math.log2(v / hi) if v > hi else 0.0)
            if d > 0:
                why.append(f"{k}={v:g} outside the trained {lo:g}..{hi:g} ({d:.1f} octaves)")
            worst = max(worst, d)
        for k, v in _categories(wl, model).items():
            if v not in self.categories[k]:
                why.append(f"{k}={v} never seen in training (seen: {', '.join(sorted(map(str, self.categories[k])))})")
                worst = math.inf
        for flag, name in ((wl.tp > 1, "tensor parallelism"), (wl.dp > 1 or wl.zero_stage > 0, "data parallelism/ZeRO"),
                           (wl.mixed_precision, "mixed precision")):
            if flag:
                why.append(f"{name} never measured")
                worst = math.inf
        return worst, why

    def estimate(self, model: ModelSpec, workload: WorkloadSpec) -> Estimate:
        base = analytical.estimate(model, workload)
        d, why = self.distance(model, workload)
        if d > self.max_octaves:
            return replace(base, method="learned", fell_back=True,
                           notes=base.notes + [f"outside the learned model's training range ({'; '.join(why)}); "
                                               "answered with the analytical model"],
                           details={**base.details, "octaves_outside": d if math.isfinite(d) else None})
        parts = dict(base.parts)
        for k in FEATURES:
            parts[k] = int(parts[k] * self.weights[k])
        total = int(sum(parts.values()))
        notes = list(base.notes)
        if d > 0:
            notes.append(f"slightly outside the training range: {'; '.join(why)}")
        spread = 0.10 + 0.10 * d  # measured held-out error band, widened per octave outside
        return replace(base, method="learned", total_bytes=total, parts=parts,
                       low_bytes=int(total * (1 - spread)), high_bytes=int(total * (1 + spread)), notes=notes,
                       details={**base.details, "octaves_outside": d, "learned_weights": self.weights,
                                "training_samples": self.samples})


_MODEL: LearnedModel | None = None


def default_model() -> LearnedModel:
    global _MODEL
    if _MODEL is None:
        rows = load_rows()
        if DATA_CUDA.exists():
            rows += load_rows(DATA_CUDA)
        _MODEL = LearnedModel.fit([r for r in rows if r.get("split") == "train"])
    return _MODEL


def estimate(model: ModelSpec, workload: WorkloadSpec) -> Estimate:
    return default_model().estimate(model, workload)
