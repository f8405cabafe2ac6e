"""The analytical estimator's terms for transformers' modelling code, one by one.

Parameter counts are checked exactly against the real module (`sum(p.numel())` of the
transformers class built from a small config, random weights, no download); activation and
temporary terms against the byte counts the modelling code implies (comments name the code);
two rows are measured live against the whole estimate. torch and transformers are in the test
venv, imported unconditionally: a venv without them fails here rather than skipping.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import transformers  # noqa: F401  (the real modelling code the counts are checked against)

from agentd.gpu import analytical
from agentd.gpu.spec import ModelSpec, WorkloadSpec
from agentd.paths import SCRIPTS_DIR


def _script(name: str):
    import sys

    sys.path.insert(0, str(SCRIPTS_DIR))  # gpu_measure_hf imports gpu_measure beside it
    spec = importlib.util.spec_from_file_location(name, SCRIPTS_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def hfm():
    return _script("gpu_measure_hf")


def _spec(hfm, family: str, dtype: str = "fp32", size: str = "s", attn: str = "eager") -> ModelSpec:
    cfg = hfm.build_config(family, size, attn)
    return ModelSpec.from_hf_config(hfm.hf_config_dict(cfg, dtype), name=family)


FAMILIES = ("llama", "qwen2", "mistral", "mixtral", "gpt2", "phi", "gemma", "opt",
            "gpt_neox", "qwen3", "stablelm", "starcoder2")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", ("s", "m"))
def test_parameter_count_is_the_real_modules(hfm, family, size):
    cfg = hfm.build_config(family, size, "eager")
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    real = sum(p.numel() for p in model.parameters())
    assert ModelSpec.from_hf_config(hfm.hf_config_dict(cfg, "fp32")).parameter_count() == real


def test_config_reader_follows_each_modelling_class(hfm):
    q2 = _spec(hfm, "qwen2")
    assert (q2.bias, q2.bias_scope) == (False, "qkv")  # Qwen2Attention: q/k/v biases only
    phi = _spec(hfm, "phi")
    assert phi.bias and phi.lm_head_bias and phi.norms_per_layer == 1 and phi.norm == "layernorm"
    gemma = _spec(hfm, "gemma")
    assert gemma.gated_mlp and gemma.tie_word_embeddings  # gelu_pytorch_tanh, still gate/up/down
    opt = _spec(hfm, "opt")
    assert opt.learned_positions == 512 + 2 and opt.activation == "relu" and opt.bias and not opt.gated_mlp
    assert _spec(hfm, "gpt2").activation == "gelu_new" and not _spec(hfm, "gpt2").softmax_fp32
    assert _spec(hfm, "qwen3").qk_norm and _spec(hfm, "llama").softmax_fp32
    sc2 = _spec(hfm, "starcoder2")
    assert sc2.bias and not sc2.gated_mlp and sc2.norm == "layernorm" and sc2.activation == ""
    assert all(_spec(hfm, f).code == "hf" for f in FAMILIES)
    # Llama's attention_bias puts biases on q/k/v/o only; mlp_bias adds the MLP's
    base = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 100, "intermediate_size": 128}
    assert ModelSpec.from_hf_config({**base, "attention_bias": True}).bias_scope == "attention"
    assert ModelSpec.from_hf_config({**base, "attention_bias": True, "mlp_bias": True}).bias
    # a config without model_type is not tied to any modelling code: the reference decoder's terms
    plain = {k: v for k, v in base.items() if k != "model_type"}
    assert ModelSpec.from_hf_config(plain).code == ""


def test_architectures_the_terms_do_not_describe_are_refused():
    base = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 100}
    with pytest.raises(ValueError, match="per-head LayerNorm"):
        ModelSpec.from_hf_config({**base, "model_type": "stablelm", "qk_layernorm": True})
    with pytest.raises(ValueError, match="project_in"):
        ModelSpec.from_hf_config({**base, "model_type": "opt", "word_embed_proj_dim": 32})


def _wl(**kw) -> WorkloadSpec:
    d = dict(mode="train", batch=2, seq=128, dtype="bf16", optimizer="adamw", optimizer_impl="single",
             attention="eager", grad_buffers="freed", device="cpu")
    d.update(kw)
    return WorkloadSpec(**d).resolved(ModelSpec(num_layers=1, hidden_size=64, num_heads=2, vocab_size=100))


HF = ModelSpec(num_layers=2, hidden_size=128, num_heads=4, num_kv_heads=2, vocab_size=2048, intermediate_size=344,
               code="hf", softmax_fp32=True, dtype="bf16")


def test_rmsnorm_keeps_an_fp32_copy_and_the_cast_back():
    assert analytical.hf_rmsnorm_saved_bytes(_wl(dtype="bf16")) == 4 + 2
    assert analytical.hf_rmsnorm_saved_bytes(_wl(dtype="fp32")) == 8
    # the reference decoder's CPU RMSNorm keeps two fp32 tensors whatever the dtype
    assert analytical.norm_saved_bytes(replace(HF, code=""), _wl(dtype="bf16")) == 8


def test_eager_softmax_in_fp32_keeps_both_copies():
    assert analytical.hf_softmax_bytes(HF, _wl(dtype="bf16")) == 4 + 2
    assert analytical.hf_softmax_bytes(HF, _wl(dtype="fp32")) == 4  # .to(float32) is the same tensor
    assert analytical.hf_softmax_bytes(replace(HF, softmax_fp32=False), _wl(dtype="bf16")) == 2  # GPT-2
    wl = _wl(dtype="bf16")
    a, s, b = HF.num_heads, wl.seq, wl.batch
    per_layer = analytical.layer_activations(HF, wl)["quadratic"]
    assert per_layer == a * s * s * b * 6


def test_loss_upcasts_logits_to_fp32():
    wl = _wl(dtype="bf16")
    est = analytical.estimate(HF, wl)
    ref = analytical.estimate(replace(HF, code=""), wl)
    sbv = wl.seq * wl.batch * HF.vocab_size
    assert est.phase == "backward start (loss gradients)"
    assert est.details["logits_bytes"] == sbv * 4 and ref.details["logits_bytes"] == sbv * 2
    assert est.parts["temporaries"] == 2 * sbv * 4  # nll_loss and log_softmax backward, both fp32


def test_mlp_activation_terms():
    dense = replace(HF, gated_mlp=False, intermediate_size=512)
    assert analytical.mlp_saved_widths(HF) == 4
    assert analytical.mlp_saved_widths(dense) == 2
    assert analytical.mlp_saved_widths(replace(dense, activation="gelu_new")) == 5
    assert analytical.mlp_saved_widths(replace(dense, activation="relu")) == 1
    wl = _wl(dtype="fp32", attention="flash")
    sbf4 = wl.seq * wl.batch * 512 * 4
    gelu_new = analytical.layer_activations(replace(dense, activation="gelu_new"), wl)["parallel"]
    fused = analytical.layer_activations(dense, wl)["parallel"]
    assert gelu_new - fused == 3 * sbf4
    assert analytical.mlp_prefill_widths(replace(dense, activation="gelu_new")) == 4


def test_prefill_terms_of_the_hf_forward():
    wl = _wl(mode="infer", dtype="bf16")
    b, s, h, e = wl.batch, wl.seq, HF.hidden_size, 2
    assert analytical.hf_mask_bytes(HF, wl) == b * s * s * e
    assert analytical.hf_mask_bytes(HF, replace(wl, attention="flash")) == 0
    assert analytical.hf_mask_bytes(replace(HF, code=""), wl) == 0
    # inputs_embeds and RoPE's cos/sin (or learned positions) live through the forward
    assert analytical.hf_forward_kept_bytes(HF, wl) == b * s * h * e + 2 * s * HF.hd * e
    assert analytical.hf_forward_kept_bytes(replace(HF, learned_positions=512), wl) == b * s * h * e + s * h * e
    moe = replace(HF, num_experts=4, experts_per_token=2)
    assert analytical.moe_groups(moe) == 1 and analytical.moe_groups(replace(moe, code="")) == 4


def test_reference_decoder_takes_none_of_the_hf_terms():
    """code="" (every cpu_peaks.jsonl row, every config without model_type) keeps its own terms."""
    ref = replace(HF, code="", softmax_fp32=False)
    for wl in (_wl(), _wl(mode="infer"), _wl(attention="flash", dtype="fp32")):
        assert analytical.hf_forward_kept_bytes(ref, wl) == 0 and analytical.hf_mask_bytes(ref, wl) == 0
        assert analytical.hf_softmax_bytes(ref, wl) == 2 if wl.dtype == "bf16" else 4
        assert analytical.norm_saved_bytes(ref, wl) == 8  # the reference's CPU RMSNorm
    assert analytical.moe_groups(replace(ref, num_experts=4, experts_per_token=2)) == 4


@pytest.mark.parametrize("row", ("llama-s-bf16-train-eager", "llama-s-bf16-infer-eager", "gpt2-s-fp32-infer-sdpa"))
def test_estimate_matches_real_hf_code_measured_now(hfm, row):
    """Measured live with the benchmark's profiler: each row fails without its terms (fp32 loss,
    fp32 eager softmax and kept weights, gelu_new's intermediates)."""
    fam, size, dt, mode, attn = row.split("-")
    cfg = hfm.build_config(fam, size, attn)
    spec, wl, refused = hfm.estimator_input(cfg, dt, mode, attn, hfm.SIZES[size])
    assert not refused
    truth = hfm.measure_hf(cfg, dt, mode, hfm.SIZES[size])["peak_bytes"]
    est = analytical.estimate(ModelSpec.from_hf_config(hfm.hf_config_dict(cfg, dt)), WorkloadSpec(**wl))
    assert abs(est.total_bytes - truth) / truth < 0.03
    assert est.low_bytes <= truth <= est.high_bytes
