"""The analytical model against figures other people published or derived."""

from __future__ import annotations

import pytest

from agentd.gpu import analytical
from agentd.gpu.spec import ModelSpec, WorkloadSpec
from agentd.gpu.utilization import step_flops

GB = 1e9

# Llama-2-7B's config.json (meta-llama/Llama-2-7b-hf on the Hugging Face hub).
LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
             "num_hidden_layers": 32, "vocab_size": 32000, "tie_word_embeddings": False, "torch_dtype": "float16",
             "model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-5}
# GPT-2 small's config.json (openai-community/gpt2).
GPT2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257, "n_positions": 1024,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}


def test_parameter_counts_match_the_published_checkpoints():
    # Hugging Face reports 6,738,415,616 parameters for Llama-2-7b-hf and 124,439,808 for gpt2.
    assert ModelSpec.from_hf_config(LLAMA2_7B).parameter_count() == 6_738_415_616
    assert ModelSpec.from_hf_config(GPT2).parameter_count() == 124_439_808


MIXTRAL_8X7B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
                "num_hidden_layers": 32, "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000,
                "tie_word_embeddings": False, "torch_dtype": "bfloat16", "model_type": "mixtral", "hidden_act": "silu"}


def test_mixture_of_experts_total_and_active_parameters():
    # mistralai/Mixtral-8x7B-v0.1: Hugging Face reports 46,702,792,704 parameters; Mistral AI's
    # announcement: "46.7B total parameters but only uses 12.9B parameters per token".
    m = ModelSpec.from_hf_config(MIXTRAL_8X7B)
    assert m.parameter_count() == 46_702_792_704
    active = m.num_layers * m.layer_parameters(active=True) + m.embedding_parameters() + m.head_parameters()
    assert active / 1e9 == pytest.approx(12.9, abs=0.05)
    # its KV cache: 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes = 128 KiB per token
    est = analytical.estimate(m, WorkloadSpec(mode="infer", batch=1, seq=32768))
    assert est.kv_bytes_per_token == 128 * 1024 and est.parts["weights"] == 2 * 46_702_792_704


def test_a_multimodal_config_is_read_through_its_text_config():
    m = ModelSpec.from_hf_config({"model_type": "llava", "torch_dtype": "float16",
                                  "text_config": dict(LLAMA2_7B)})
    assert m.parameter_count() == 6_738_415_616 and m.dtype == "fp16"


def test_zero_paper_baseline_is_16_bytes_per_parameter():
    # Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
    # Models" (SC'20), §3.1/Fig. 1: mixed-precision Adam keeps 2+2+12 = 16 bytes per
    # parameter; a 7.5B-parameter model needs 120 GB of model states on one device.
    est = analytical.estimate(ModelSpec.from_params(7.5e9), WorkloadSpec(mode="train", mixed_precision=True))
    assert est.model_states_bytes == pytest.approx(120 * GB, rel=1e-9)
    assert est.full_parts == {"weights": 15 * GB, "gradients": 15 * GB, "optimizer_states": 90 * GB}


@pytest.mark.parametrize("stage,expected_gb", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_partitioned_model_states_at_dp_64(stage, expected_gb):
    # ZeRO paper, Fig. 1 (Psi = 7.5B, K = 12, Nd = 64): baseline 120 GB, P_os 31.4 GB,
    # P_os+g 16.6 GB, P_os+g+p 1.9 GB per device (their figures, rounded to 0.1 GB).
    est = analytical.estimate(ModelSpec.from_params(7.5e9),
                              WorkloadSpec(mode="train", mixed_precision=True, zero_stage=stage, dp=64))
    assert est.model_states_bytes / GB == pytest.approx(expected_gb, abs=0.05)


def test_llama2_7b_fp16_kv_cache_is_512_kib_per_token():
    # 2 (K and V) x 32 layers x 32 KV heads x 128 head dim x 2 bytes = 524,288 B per token,
    # the figure vLLM's paper (Kwon et al., SOSP'23) and NVIDIA's serving guides quote.
    model = ModelSpec.from_hf_config(LLAMA2_7B)
    est = analytical.estimate(model, WorkloadSpec(mode="infer", batch=4, seq=1000))
    assert est.kv_bytes_per_token == 512 * 1024
    assert est.parts["kv_cache"] == 512 * 1024 * 4 * 1000
    assert est.parts["weights"] == 2 * 6_738_415_616


def test_grouped_query_attention_shrinks_the_kv_cache_by_the_group_factor():
    # Llama-3-8B: 32 layers, 8 KV heads of 128 -> 128 KiB per token in bf16.
    cfg = dict(LLAMA2_7B, num_key_value_heads=8, vocab_size=128256, intermediate_size=14336, torch_dtype="bfloat16")
    est = analytical.estimate(ModelSpec.from_hf_config(cfg), WorkloadSpec(mode="infer", batch=1, seq=8192))
    assert est.kv_bytes_per_token == 128 * 1024


def korthikanti_bytes_per_layer(s: int, b: int, h: int, a: int, t: int = 1, sequence_parallel: bool = False,
                                recompute: str = "none") -> float:
    """The paper's closed forms (2-byte activations, 1-byte masks)."""
    if recompute == "full":
        return 2 * s * b * h
    quad = 0 if recompute == "selective" else 5 * a * s / h
    if sequence_parallel:
        return s * b * h / t * (34 + quad)
    if t == 1:
        return s * b * h * (34 + quad)
    return s * b * h * (10 + 24 / t + quad / t)


def megatron(s, b, h, a, t=1, sp=False, recompute="none"):
    """Korthikanti et al.'s implementation choices: GPT (GELU MLP of 4h, LayerNorm, biases),
    eager attention with dropout, 2-byte activations, 1-byte CUDA dropout masks."""
    model = ModelSpec(num_layers=1, hidden_size=h, num_heads=a, vocab_size=51200, gated_mlp=False,
                      norm="layernorm", bias=True)
    wl = WorkloadSpec(mode="train", batch=b, seq=s, dtype="fp16", attention="eager", dropout=0.1, tp=t,
                      sequence_parallel=sp, recompute=recompute, device="cuda")
    return analytical.layer_activations(model, wl, small_terms=False)["total"]


@pytest.mark.parametrize("s,b,h,a", [(2048, 1, 12288, 96), (2048, 4, 4096, 32), (1024, 8, 2048, 16)])
def test_activation_memory_per_layer_is_korthikanti_formula(s, b, h, a):
    # Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models"
    # (MLSys'23), eq. (1): activations per layer = s*b*h*(34 + 5*a*s/h) bytes.
    assert megatron(s, b, h, a) == pytest.approx(s * b * h * (34 + 5 * a * s / h), rel=1e-12)
    assert korthikanti_bytes_per_layer(s, b, h, a) == s * b * h * (34 + 5 * a * s / h)


@pytest.mark.parametrize("t", [2, 8])
def test_activation_memory_with_tensor_and_sequence_parallelism(t):
    s, b, h, a = 2048, 1, 12288, 96
    # Same paper, eq. (2): tensor parallel t: sbh(10 + 24/t + 5as/(ht)); eq. (4): with
    # sequence parallelism, sbh/t (34 + 5as/h).
    assert megatron(s, b, h, a, t=t) == pytest.approx(s * b * h * (10 + 24 / t + 5 * a * s / (h * t)), rel=1e-12)
    assert megatron(s, b, h, a, t=t, sp=True) == pytest.approx(s * b * h / t * (34 + 5 * a * s / h), rel=1e-12)


def test_selective_and_full_recomputation():
    s, b, h, a, t = 2048, 1, 12288, 96, 8
    # Same paper, eq. (6): selective recomputation with TP and SP keeps sbh*34/t; §4.1: full
    # recomputation keeps only each layer's input, 2sbh (replicated without SP).
    assert megatron(s, b, h, a, t=t, sp=True, recompute="selective") == pytest.approx(34 * s * b * h / t, rel=1e-12)
    assert megatron(s, b, h, a, recompute="full") == 2 * s * b * h


def test_training_flops_match_narayanan():
    # Narayanan et al., "Efficient Large-Scale Language Model Training on GPU Clusters Using
    # Megatron-LM" (SC'21), eq. (3): 96*B*s*l*h^2*(1 + s/(6h) + V/(16*l*h)) FLOPs per
    # iteration with activation recomputation; GPT-3 175B shape.
    h, l, s, b, V = 12288, 96, 2048, 8, 51200
    m = ModelSpec(num_layers=l, hidden_size=h, num_heads=96, vocab_size=V, gated_mlp=False, tie_word_embeddings=True)
    got = step_flops(m, WorkloadSpec(mode="train", batch=b, seq=s, recompute="full"))
    assert got == pytest.approx(96 * b * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h)), rel=1e-4)


def test_parts_sum_to_the_total_and_the_range_brackets_it():
    model = ModelSpec.from_hf_config(LLAMA2_7B)
    for wl in (WorkloadSpec(mode="train", batch=2, seq=4096, mixed_precision=True, zero_stage=2, dp=8),
               WorkloadSpec(mode="train", batch=1, seq=2048),
               WorkloadSpec(mode="infer", batch=16, seq=4096)):
        est = analytical.estimate(model, wl)
        assert sum(est.parts.values()) == est.total_bytes
        assert est.low_bytes < est.total_bytes < est.high_bytes
        assert est.parts["overhead"] > 0  # CUDA context and workspace on a CUDA target


def test_recomputation_and_flash_attention_lower_the_peak_in_the_right_order():
    model = ModelSpec.from_hf_config(LLAMA2_7B)
    peak = {r: analytical.estimate(model, WorkloadSpec(mode="train", batch=8, seq=4096, mixed_precision=True,
                                                       attention="eager", recompute=r)).total_bytes
            for r in ("none", "selective", "full")}
    assert peak["none"] > peak["selective"] > peak["full"]
    flash = analytical.estimate(model, WorkloadSpec(mode="train", batch=8, seq=4096, mixed_precision=True,
                                                    attention="flash"))
    # what flash attention saves: the fp16 softmax output, 8 x 32 heads x 4096^2 per layer
    assert peak["none"] - flash.total_bytes > 32 * 8 * 32 * 4096 * 4096 * 2 * 0.9


def test_only_a_parameter_count_says_activations_are_unknown():
    est = analytical.estimate(ModelSpec.from_params(1e9), WorkloadSpec(mode="train", batch=8, seq=2048))
    assert est.parts["activations"] == 0
    assert any("activations unknown" in n for n in est.notes)
    assert est.high_bytes >= 2 * est.model_states_bytes  # the range admits what it cannot see


def test_invalid_workloads_are_refused_with_a_reason():
    model = ModelSpec.from_hf_config(LLAMA2_7B)
    with pytest.raises(ValueError, match="zero stage"):
        analytical.estimate(model, WorkloadSpec(zero_stage=4))
    with pytest.raises(ValueError, match="mode"):
        analytical.estimate(model, WorkloadSpec(mode="serve"))
    with pytest.raises(ValueError, match="lacks"):
        ModelSpec.from_hf_config({"hidden_size": 10})


def test_architectures_it_does_not_model_are_refused_not_guessed():
    # DeepSeek-V3 caches a compressed latent (kv_lora_rank 512 + 64 rope dims) instead of K and V
    with pytest.raises(ValueError, match="multi-head latent attention"):
        ModelSpec.from_hf_config(dict(LLAMA2_7B, kv_lora_rank=512, qk_rope_head_dim=64, n_routed_experts=256,
                                      n_shared_experts=1))
    with pytest.raises(ValueError, match="shared experts"):
        ModelSpec.from_hf_config(dict(LLAMA2_7B, num_experts=60, shared_expert_intermediate_size=5632))
