"""What the estimators are asked about: a model description and a workload.

`ModelSpec` describes a decoder-only transformer the way a Hugging Face config.json does
(layers, hidden size, heads, KV heads, vocabulary, intermediate size), or only by its
parameter count when nothing else is known. `WorkloadSpec` says how it runs: train or
infer, dtype, optimizer, mixed precision, ZeRO stage, data/tensor parallel degree, batch,
sequence length, activation recomputation, and the implementation details that change
which tensors are kept (attention kernel, dropout, whether gradient buffers persist).

Pure Python, no torch: the CLI and the co-location policy import it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

DTYPE_BYTES = {"fp32": 4, "float32": 4, "tf32": 4, "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2,
               "fp8": 1, "int8": 1}
_DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "half": "fp16",
                  "float": "fp32", "torch.float32": "fp32", "torch.float16": "fp16",
                  "torch.bfloat16": "bf16"}
_GATED_ACTS = {"silu", "swiglu", "swish", "geglu", "gelu_gated"}
_UNGATED_TYPES = {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "gpt_bigcode", "phi", "starcoder2"}
# model_types whose modelling code uses nn.LayerNorm (weight and bias) rather than RMSNorm
_LAYERNORM_TYPES = {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "gpt_bigcode", "phi", "starcoder2",
                    "stablelm", "codegen"}
# model_types whose config class defaults tie_word_embeddings to True (when config.json omits it)
_TIED_BY_DEFAULT = {"gpt2", "opt", "gemma", "gemma2", "starcoder2"}
# Which projections carry biases, per modelling code, and the config key that switches them:
# (model_type -> (scope, key, default)); scope "all" = q/k/v/o and the MLP.
_BIAS_BY_TYPE = {
    "gpt2": ("all", None, True),  # Conv1D c_attn/c_proj/c_fc always have biases
    "phi": ("all", None, True),  # PhiAttention q/k/v/dense and PhiMLP fc1/fc2 use bias=True
    "opt": ("all", "enable_bias", True),  # OPTAttention/OPTDecoderLayer bias=config.enable_bias
    "gpt_neox": ("all", "attention_bias", True),  # query_key_value/dense bias=attention_bias; MLP always
    "starcoder2": ("all", "use_bias", True),  # Starcoder2Attention/MLP bias=config.use_bias
    "qwen2": ("qkv", None, True),  # Qwen2Attention: q/k/v bias=True, o_proj bias=False
    "stablelm": ("qkv", "use_qkv_bias", False),  # StableLmAttention: q/k/v bias=use_qkv_bias
}
# Activations ACT2FN maps to something other than one fused kernel (transformers/activations.py)
_DECOMPOSED_ACTS = {"gelu_new": "gelu_new", "relu": "relu"}


def _hf_biases(cfg: dict, model_type: str) -> tuple[bool, str]:
    """(bias on every projection, bias_scope) as the model_type's modelling code builds them."""
    if model_type in _BIAS_BY_TYPE:
        scope, key, default = _BIAS_BY_TYPE[model_type]
        on = bool(cfg.get(key, default)) if key else default
        if not on:
            return False, ""
        return (True, "") if scope == "all" else (False, scope)
    if cfg.get("bias"):  # a generic config saying so
        return True, ""
    if cfg.get("attention_bias"):  # Llama/Mistral/Qwen3: q/k/v/o bias=attention_bias, MLP bias=mlp_bias
        return (True, "") if cfg.get("mlp_bias") else (False, "attention")
    return False, ""


def canonical_dtype(name: str) -> str:
    key = str(name).strip().lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {name!r}; expected one of fp32, bf16, fp16, fp8")
    return key


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer. With only `parameters` set, the architecture is unknown:
    model states are exact but activations cannot be derived (the estimate says so)."""

    num_layers: int = 0
    hidden_size: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0  # 0: same as num_heads (no grouped-query attention)
    vocab_size: int = 0
    intermediate_size: int = 0  # 0: 4 * hidden_size
    head_dim: int = 0  # 0: hidden_size // num_heads
    tie_word_embeddings: bool = False
    gated_mlp: bool = True  # SwiGLU-style gate/up/down (Llama) versus fc1/act/fc2 (GPT-2)
    norm: str = "rmsnorm"  # "rmsnorm" (weight only) or "layernorm" (weight and bias)
    bias: bool = False  # biases on the attention and MLP projections
    learned_positions: int = 0  # rows of a learned position embedding (GPT-2); 0 for RoPE
    parameters: int = 0  # override / only known figure; 0: derived from the architecture
    num_experts: int = 0  # mixture of experts (Mixtral-style): experts per layer; 0 for a dense MLP
    experts_per_token: int = 0  # experts each token is routed to (top-k)
    dtype: str = "fp16"  # the dtype the checkpoint is stored in (torch_dtype)
    name: str = ""
    # What the modelling code does beyond the config's sizes. The defaults describe agentd's
    # reference decoder (agentd/gpu/torch_models.py); from_hf_config sets them from the
    # transformers modelling code of the config's model_type.
    code: str = ""  # "": the reference decoder; "hf": transformers' modelling code (upcasts, kept tensors)
    activation: str = ""  # "": a fused GELU/SiLU kernel; "gelu_new": GPT-2's decomposed tanh GELU; "relu"
    bias_scope: str = ""  # with bias=False: "qkv" (Qwen2: q/k/v only) or "attention" (q/k/v/o: attention_bias)
    lm_head_bias: bool = False  # Phi's lm_head has a bias
    norms_per_layer: int = 2  # 1 where attention and MLP read one norm's output in parallel (Phi)
    qk_norm: bool = False  # RMSNorm over head_dim on queries and keys (Qwen3)
    softmax_fp32: bool = False  # eager attention takes softmax in fp32 and casts back (Llama's eager_attention_forward)

    @property
    def has_architecture(self) -> bool:
        return self.num_layers > 0 and self.hidden_size > 0 and self.num_heads > 0

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def hd(self) -> int:
        return self.head_dim or (self.hidden_size // self.num_heads if self.num_heads else 0)

    @property
    def ffn(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def experts(self) -> int:
        """MLPs held per layer (1 for a dense model)."""
        return max(1, self.num_experts)

    @property
    def routed(self) -> int:
        """MLPs each token passes through: top-k for a mixture of experts, else 1."""
        return (self.experts_per_token or 1) if self.num_experts else 1

    # Parameter counts, split the way the estimators need them.
    def layer_parameters(self, active: bool = False) -> int:
        """Parameters of one layer; active=True counts only the experts a token uses (FLOPs)."""
        h, hq, hkv, f = self.hidden_size, self.num_heads * self.hd, self.kv_heads * self.hd, self.ffn
        n = h * hq + 2 * h * hkv + hq * h
        mlps = self.routed if active else self.experts
        n += mlps * (3 if self.gated_mlp else 2) * h * f
        if self.num_experts:
            n += h * self.num_experts  # router
        n += (2 if self.norm == "layernorm" else 1) * self.norms_per_layer * h
        if self.qk_norm:
            n += 2 * self.hd  # q_norm and k_norm weights (Qwen3RMSNorm(head_dim))
        if self.bias:
            n += hq + 2 * hkv + h + mlps * (((2 * f) if self.gated_mlp else f) + h)
        elif self.bias_scope == "qkv":
            n += hq + 2 * hkv
        elif self.bias_scope == "attention":
            n += hq + 2 * hkv + h
        return n

    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size + self.learned_positions * self.hidden_size

    def head_parameters(self) -> int:
        """Final norm plus the LM head when it is not tied to the embedding."""
        n = (2 if self.norm == "layernorm" else 1) * self.hidden_size
        if not self.tie_word_embeddings:
            n += self.vocab_size * self.hidden_size
        if self.lm_head_bias:
            n += self.vocab_size
        return n

    def parameter_count(self) -> int:
        if self.parameters:
            return int(self.parameters)
        if not self.has_architecture:
            return 0
        return self.num_layers * self.layer_parameters() + self.embedding_parameters() + self.head_parameters()

    def largest_tensor_parameters(self) -> int:
        if not self.has_architecture:
            return 0
        h, f = self.hidden_size, self.ffn
        return max(self.vocab_size * h, h * f, self.num_heads * self.hd * h)

    def to_json(self) -> dict:
        d = asdict(self)
        d["parameter_count"] = self.parameter_count()
        return d

    @classmethod
    def from_params(cls, n: float, dtype: str = "fp16", name: str = "") -> "ModelSpec":
        if n <= 0:
            raise ValueError(f"--params must be positive, got {n}")
        return cls(parameters=int(n), dtype=canonical_dtype(dtype), name=name)

    @classmethod
    def from_hf_config(cls, cfg: dict, name: str = "") -> "ModelSpec":
        """Read a Hugging Face config.json dict (Llama, Mistral, Mixtral, Qwen, GPT-2 key names;
        a multimodal config's text_config). Mixture-of-experts layers are read as routed
        experts only: shared experts and DeepSeek's dense first layers are not modelled.
        With a model_type, the layout (biases, norms, gating, tying, positions) is read as that
        type's transformers modelling class builds it, and code="hf" selects the estimator's
        terms for transformers' code; parameter counts are checked exactly against the real
        modules for 12 families (tests/unit/gpu/test_hf_terms.py)."""
        if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
            cfg = {**cfg["text_config"], **{k: v for k, v in cfg.items() if k in ("torch_dtype",)}}
        def get(*keys, default=None):
            for k in keys:
                if k in cfg and cfg[k] is not None:
                    return cfg[k]
            return default

        h = get("hidden_size", "n_embd", "d_model")
        layers = get("num_hidden_layers", "n_layer", "num_layers")
        heads = get("num_attention_heads", "n_head")
        vocab = get("vocab_size")
        missing = [k for k, v in (("hidden_size", h), ("num_hidden_layers", layers),
                                  ("num_attention_heads", heads), ("vocab_size", vocab)) if not v]
        if missing:
            raise ValueError(f"config lacks {', '.join(missing)}")
        model_type = str(get("model_type", default="")).lower()
        act = str(get("hidden_act", "activation_function", "hidden_activation", default="silu")).lower()
        if model_type:  # the modelling class decides gate/up/down versus fc1/fc2, whatever the activation
            gated = model_type not in _UNGATED_TYPES
        else:
            gated = act in _GATED_ACTS | {"silu"}
        is_gpt2 = model_type == "gpt2"
        tie = get("tie_word_embeddings", default=model_type in _TIED_BY_DEFAULT)
        unsupported = [why for key, why in (
            ("kv_lora_rank", "multi-head latent attention (DeepSeek-V2/V3 compress the KV cache)"),
            ("n_shared_experts", "shared experts"), ("shared_expert_intermediate_size", "shared experts"),
            ("first_k_dense_replace", "dense layers before the expert layers"),
            ("qk_layernorm", "per-head LayerNorm on queries and keys (StableLM qk_layernorm)"))
            if cfg.get(key)]
        if model_type == "opt" and get("word_embed_proj_dim", default=h) != h:
            unsupported.append("OPT's project_in/project_out (word_embed_proj_dim differs from hidden_size)")
        if unsupported:
            raise ValueError(f"this architecture is not modelled: {'; '.join(dict.fromkeys(unsupported))}; "
                             "give --params for its model states")
        experts = int(get("num_local_experts", "num_experts", "n_routed_experts", default=0) or 0)
        ffn = get("moe_intermediate_size", default=None) if experts else None
        dtype = get("torch_dtype", "dtype", default="fp16")
        try:
            dtype = canonical_dtype(dtype)
        except ValueError:
            dtype = "fp16"
        bias, bias_scope = _hf_biases(cfg, model_type)
        if model_type == "opt":  # OPTLearnedPositionalEmbedding keeps 2 rows more than positions (offset 2)
            positions = int(get("max_position_embeddings", default=2048)) + 2
        elif is_gpt2:
            positions = int(get("n_positions", default=1024))
        else:
            positions = int(cfg.get("learned_positions", 0))
        layernorm = (model_type in _LAYERNORM_TYPES or "layer_norm_epsilon" in cfg or cfg.get("norm") == "layernorm")
        return cls(
            num_layers=int(layers), hidden_size=int(h), num_heads=int(heads),
            num_kv_heads=int(get("num_key_value_heads", default=heads)),
            vocab_size=int(vocab),
            intermediate_size=int(ffn or get("intermediate_size", "n_inner", "ffn_dim", default=0) or 4 * int(h)),
            num_experts=experts, experts_per_token=int(get("num_experts_per_tok", default=2 if experts else 0) or 0),
            head_dim=int(get("head_dim", default=0) or 0),
            tie_word_embeddings=bool(tie), gated_mlp=gated,
            norm="layernorm" if layernorm else "rmsnorm",
            bias=bias, bias_scope=bias_scope, learned_positions=positions,
            dtype=dtype, name=name or str(get("_name_or_path", "name", default=model_type)),
            code="hf" if model_type else "",
            activation=_DECOMPOSED_ACTS.get(act, ""),
            lm_head_bias=model_type == "phi",  # PhiForCausalLM: lm_head = nn.Linear(..., bias=True)
            norms_per_layer=1 if model_type == "phi" else 2,  # PhiDecoderLayer: one input_layernorm
            qk_norm=model_type == "qwen3",  # Qwen3Attention: q_norm/k_norm = Qwen3RMSNorm(head_dim)
            # every eager_attention_forward but GPT-2's takes softmax(dtype=torch.float32).to(query.dtype)
            softmax_fp32=bool(model_type) and not is_gpt2,
        )

    @classmethod
    def from_hf_file(cls, path: str | Path) -> "ModelSpec":
        p = Path(path)
        return cls.from_hf_config(json.loads(p.read_text()), name=p.stem if p.name != "config.json" else p.parent.name)


@dataclass(frozen=True)
class WorkloadSpec:
    mode: str = "train"  # "train" or "infer"
    batch: int = 1
    seq: int = 2048
    dtype: str = ""  # compute/param dtype; "": the model's dtype for infer, fp32 for train
    mixed_precision: bool = False  # half-precision weights/activations + fp32 master (ZeRO paper layout)
    optimizer: str = "adam"  # "adam", "adamw", "sgd", "sgd_momentum"
    optimizer_impl: str = "foreach"  # "foreach" (PyTorch's default on CUDA), "single", "fused"
    zero_stage: int = 0
    dp: int = 1
    tp: int = 1
    sequence_parallel: bool = False
    recompute: str = "none"  # "none", "selective", "full"
    attention: str = "flash"  # "flash" (no s^2 tensor kept; SDPA/FlashAttention) or "eager"
    dropout: float = 0.0
    grad_buffers: str = "auto"  # "freed" (zero_grad(set_to_none)), "persistent" (DDP/ZeRO), "auto"
    logits: str = ""  # "all" positions (train default) or "last" (infer default)
    device: str = "cuda"  # "cuda" adds the CUDA context and allocator margin; "cpu" does not
    cuda_context_bytes: int = 500 * 2**20

    def resolved(self, model: ModelSpec) -> "WorkloadSpec":
        mode = self.mode.lower()
        if mode not in ("train", "infer"):
            raise ValueError(f"mode must be train or infer, got {self.mode!r}")
        dtype = canonical_dtype(self.dtype) if self.dtype else ("fp32" if mode == "train" else canonical_dtype(model.dtype))
        if self.mixed_precision and DTYPE_BYTES[dtype] == 4:
            dtype = "bf16" if model.dtype == "bf16" else "fp16"
        for name, value, allowed in (("optimizer", self.optimizer, ("adam", "adamw", "sgd", "sgd_momentum")),
                                     ("optimizer_impl", self.optimizer_impl, ("foreach", "single", "fused")),
                                     ("recompute", self.recompute, ("none", "selective", "full")),
                                     ("attention", self.attention, ("flash", "eager")),
                                     ("grad_buffers", self.grad_buffers, ("auto", "freed", "persistent")),
                                     ("device", self.device, ("cuda", "cpu"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not 0 <= self.zero_stage <= 3:
            raise ValueError(f"zero stage must be 0-3, got {self.zero_stage}")
        if self.dp < 1 or self.tp < 1 or self.batch < 1 or self.seq < 1:
            raise ValueError("dp, tp, batch and seq must be >= 1")
        grads = self.grad_buffers
        if grads == "auto":
            grads = "persistent" if (self.dp > 1 or self.zero_stage > 0 or self.tp > 1) else "freed"
        logits = self.logits or ("all" if mode == "train" else "last")
        return replace(self, mode=mode, dtype=dtype, grad_buffers=grads, logits=logits)

    def to_json(self) -> dict:
        return asdict(self)


def model_spec_from_dict(d: dict) -> ModelSpec:
    known = {f for f in ModelSpec.__dataclass_fields__}
    return ModelSpec(**{k: v for k, v in d.items() if k in known})


def workload_spec_from_dict(d: dict) -> WorkloadSpec:
    known = {f for f in WorkloadSpec.__dataclass_fields__}
    return WorkloadSpec(**{k: v for k, v in d.items() if k in known})


PART_NAMES = ("weights", "gradients", "optimizer_states", "activations", "kv_cache", "temporaries", "overhead")


@dataclass
class Estimate:
    """A peak-memory estimate for one device.

    `parts` are the bytes of each part live at the peak moment (`phase`); they sum to
    `total_bytes`. `full_parts` are the sizes of the persistent parts whether or not they
    are live at the peak (gradients freed by zero_grad are 0 in `parts` during the forward,
    full in `full_parts`). `low_bytes`/`high_bytes` is the range the method stands behind.
    """

    method: str
    total_bytes: int
    parts: dict
    low_bytes: int
    high_bytes: int
    parameters: int
    model_states_bytes: int
    kv_bytes_per_token: int = 0
    phase: str = ""
    full_parts: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    fell_back: bool = False  # the learned method answered with the analytical model

    def to_json(self) -> dict:
        return {"method": self.method, "parameters": self.parameters, "total_bytes": self.total_bytes,
                "model_states_bytes": self.model_states_bytes, "kv_bytes_per_token": self.kv_bytes_per_token,
                "parts": dict(self.parts), "range": {"low_bytes": self.low_bytes, "high_bytes": self.high_bytes},
                "phase": self.phase, "full_parts": dict(self.full_parts), "notes": list(self.notes),
                "fell_back": self.fell_back, "details": dict(self.details)}


__all__ = ["DTYPE_BYTES", "PART_NAMES", "Estimate", "ModelSpec", "WorkloadSpec", "canonical_dtype",
           "model_spec_from_dict", "workload_spec_from_dict"]
