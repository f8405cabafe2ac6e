"""Small reference transformers built from a ModelSpec, written the way Hugging Face's
eager Llama/GPT-2 code is (LayerNorm or RMSNorm, grouped-query attention with repeated
K/V heads, gated or plain MLP, tied or separate LM head).

They exist so that estimates can be checked against reality: scripts/gpu_measure.py trains
and runs them on the CPU and records the real peak of live tensor bytes, and the CPU-side
estimator traces them with fake tensors. Needs torch; nothing in the daemon imports this.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from agentd.gpu.spec import ModelSpec


class RMSNorm(nn.Module):
    def __init__(self, h: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(h))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def _norm(spec: ModelSpec) -> nn.Module:
    return nn.LayerNorm(spec.hidden_size) if spec.norm == "layernorm" else RMSNorm(spec.hidden_size)


class Expert(nn.Module):
    def __init__(self, h: int, f: int, bias: bool):
        super().__init__()
        self.gate = nn.Linear(h, f, bias=bias)
        self.up = nn.Linear(h, f, bias=bias)
        self.down = nn.Linear(f, h, bias=bias)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    """Mixtral's sparse MLP as Hugging Face's eager code runs it: softmax router, top-k,
    then a loop over experts, each on the tokens routed to it, summed back with index_add."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.k = spec.experts_per_token or 2
        self.router = nn.Linear(spec.hidden_size, spec.num_experts, bias=False)
        self.experts = nn.ModuleList(Expert(spec.hidden_size, spec.ffn, spec.bias) for _ in range(spec.num_experts))

    def forward(self, y):
        b, s, h = y.shape
        flat = y.reshape(-1, h)
        weights = torch.softmax(self.router(flat), dim=-1, dtype=torch.float)
        weights, chosen = torch.topk(weights, self.k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(flat.dtype)
        out = torch.zeros_like(flat)
        mask = F.one_hot(chosen, num_classes=len(self.experts)).permute(2, 1, 0)
        for i, expert in enumerate(self.experts):
            idx, tok = torch.where(mask[i])
            if tok.numel() == 0:
                continue
            out.index_add_(0, tok, expert(flat[tok]) * weights[tok, idx, None])
        return out.reshape(b, s, h)


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, dropout: float, attention: str):
        super().__init__()
        h, a, kv, hd, f = spec.hidden_size, spec.num_heads, spec.kv_heads, spec.hd, spec.ffn
        self.a, self.kv, self.hd, self.attention = a, kv, hd, attention
        self.norm1, self.norm2 = _norm(spec), _norm(spec)
        self.q = nn.Linear(h, a * hd, bias=spec.bias)
        self.k = nn.Linear(h, kv * hd, bias=spec.bias)
        self.v = nn.Linear(h, kv * hd, bias=spec.bias)
        self.o = nn.Linear(a * hd, h, bias=spec.bias)
        self.gated = spec.gated_mlp
        self.moe = None
        if spec.num_experts:
            self.moe = MoE(spec)
        elif self.gated:
            self.gate = nn.Linear(h, f, bias=spec.bias)
            self.up = nn.Linear(h, f, bias=spec.bias)
            self.down = nn.Linear(f, h, bias=spec.bias)
        else:
            self.fc1 = nn.Linear(h, f, bias=spec.bias)
            self.fc2 = nn.Linear(f, h, bias=spec.bias)
        self.p = dropout

    def _drop(self, x):
        return F.dropout(x, self.p, self.training) if self.p > 0 else x

    def attend(self, x, cache):
        b, s, _ = x.shape
        y = self.norm1(x)
        q = self.q(y).view(b, s, self.a, self.hd).transpose(1, 2)
        k = self.k(y).view(b, s, self.kv, self.hd).transpose(1, 2)
        v = self.v(y).view(b, s, self.kv, self.hd).transpose(1, 2)
        if cache is not None:
            cache.append((k, v))
        if self.attention == "flash":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv != self.a,
                                                 dropout_p=self.p if self.training else 0.0)
        else:
            if self.kv != self.a:  # HF repeat_kv: expand then reshape, a real copy
                rep = self.a // self.kv
                k = k[:, :, None].expand(b, self.kv, rep, s, self.hd).reshape(b, self.a, s, self.hd)
                v = v[:, :, None].expand(b, self.kv, rep, s, self.hd).reshape(b, self.a, s, self.hd)
            scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.hd))
            mask = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
            probs = self._drop(torch.softmax(scores, dim=-1))
            out = torch.matmul(probs, v)
        out = out.transpose(1, 2).reshape(b, s, self.a * self.hd)
        return self._drop(self.o(out))

    def mlp(self, x):
        y = self.norm2(x)
        if self.moe is not None:
            return self._drop(self.moe(y))
        if self.gated:
            return self._drop(self.down(F.silu(self.gate(y)) * self.up(y)))
        return self._drop(self.fc2(F.gelu(self.fc1(y))))

    def forward(self, x, cache=None):
        x = x + self.attend(x, cache)
        return x + self.mlp(x)


class TinyDecoder(nn.Module):
    def __init__(self, spec: ModelSpec, dropout: float = 0.0, attention: str = "eager",
                 recompute: str = "none"):
        super().__init__()
        if recompute not in ("none", "full"):
            raise ValueError("the reference model supports recompute none or full")
        self.spec, self.recompute = spec, recompute
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.pos = nn.Embedding(spec.learned_positions, spec.hidden_size) if spec.learned_positions else None
        self.blocks = nn.ModuleList(Block(spec, dropout, attention) for _ in range(spec.num_layers))
        self.norm = _norm(spec)
        self.head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.head.weight = self.embed.weight
        self.p = dropout

    def forward(self, ids, cache=None, last_only: bool = False):
        x = self.embed(ids)
        if self.pos is not None:
            x = x + self.pos(torch.arange(ids.shape[1], device=ids.device))
        if self.p > 0:
            x = F.dropout(x, self.p, self.training)
        for blk in self.blocks:
            if self.recompute == "full" and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x, cache)
        if last_only:
            x = x[:, -1:, :]
        return self.head(self.norm(x))


def make_optimizer(model: nn.Module, name: str, impl: str = "foreach"):
    params = list(model.parameters())
    kw = {"foreach": impl == "foreach"} if impl in ("foreach", "single") else {}
    if name in ("adam", "adamw"):
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return cls(params, lr=1e-4, **kw)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, **kw)
    if name == "sgd_momentum":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, **kw)
    raise ValueError(f"unknown optimizer {name!r}")


def train_step(model, opt, ids, targets, set_to_none: bool = True):
    """One step; set_to_none=False keeps gradient buffers alive (as DDP and ZeRO do)."""
    opt.zero_grad(set_to_none=set_to_none)
    logits = model(ids)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
    del logits
    loss.backward()
    opt.step()
    return loss.detach()


@torch.no_grad()
def prefill(model, ids):
    cache: list = []
    logits = model(ids, cache=cache, last_only=True)
    return logits, cache
