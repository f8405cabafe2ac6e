"""Analytical peak-memory model of a decoder-only transformer (the "Horus" family).

The peak is derived, not fitted, from what each part of a training step or prefill keeps:

- model states per device: weights, gradients, optimizer states, with the ZeRO paper's
  layout for mixed precision (2 + 2 + 12 bytes per parameter for Adam: fp16 weights and
  gradients, fp32 master weights, momentum and variance) and its partitioning: stage 1
  splits optimizer states over the data-parallel degree, stage 2 also gradients, stage 3
  also weights. Tensor parallelism splits the layer and vocabulary matrices first.
- activations a training step keeps for the backward pass, per layer, counted tensor by
  tensor (norm inputs and outputs, Q, K, V, attention output, softmax output and dropout
  masks for eager attention, the MLP's intermediate tensors). With Megatron's
  implementation choices (2-byte activations, 1-byte dropout masks, GELU MLP of 4h, eager
  attention) the count is exactly sbh(34 + 5as/h) of Korthikanti et al., "Reducing
  Activation Recomputation in Large Transformer Models" (tests check it), including their
  tensor-parallel and sequence-parallel variants and selective/full recomputation.
- the KV cache for inference: 2 x layers x KV heads x head dim x bytes per element per token.
- temporaries at the peak moment: the loss (logits, log-softmax and their gradients), one
  layer's backward, the optimizer's foreach buffers, one layer's prefill.
- overhead (CUDA only, not verifiable without a GPU): the CUDA context and cuBLAS workspace.
- what transformers' modelling code keeps beyond that (ModelSpec.code == "hf", set by
  from_hf_config): the fp32 loss upcast, RMSNorm's fp32 copies, the fp32 eager softmax and
  float causal mask, attention weights and embeddings kept through the forward, decomposed
  activations (gelu_new), the grouped_mm experts path. Each is a named function below citing
  the code it follows; the reference decoder (code "") takes none of them.

The peak is the largest of the phases of a step (forward end / loss, backward start, top
and bottom layers' backward, optimizer step; for inference, the last layer of the prefill
and the logits), because with zero_grad(set_to_none=True) gradients only exist once
activations start to be freed. `parts` are the bytes live at that moment.

Pure Python; an estimate takes a few microseconds.
"""

from __future__ import annotations

from dataclasses import replace

from agentd.gpu.spec import DTYPE_BYTES, Estimate, ModelSpec, WorkloadSpec

CUBLAS_WORKSPACE_BYTES = 32 * 2**20
# The band the analytical model stands behind. On the CPU-measured grid its error runs from
# about -14 % to +12 % of the total (benchmarks/gpu_estimate.py), so the band is that wide
# around the total; the high end adds a quarter of the dynamic part (activations, KV cache,
# temporaries) for the CUDA caching allocator's rounding and fragmentation, which the grid
# cannot see. The benchmark reports how many measured peaks fall inside.
TOTAL_LOW = 0.12
TOTAL_HIGH = 0.05
DYNAMIC_HIGH = 0.25
UNKNOWN_ACTIVATIONS_HIGH = 1.0  # without an architecture, the high end doubles the model states


def model_state_bytes_per_param(wl: WorkloadSpec) -> tuple[float, float, float]:
    """(weights, gradients, optimizer states) bytes per parameter, before any partitioning."""
    e = DTYPE_BYTES[wl.dtype]
    if wl.mode != "train":
        return float(e), 0.0, 0.0
    moments = {"adam": 2, "adamw": 2, "sgd": 0, "sgd_momentum": 1}[wl.optimizer]
    if wl.mixed_precision:  # ZeRO paper: fp16 params and grads, fp32 master copy and moments
        return float(e), float(e), 4.0 + 4.0 * moments
    return float(e), float(e), float(e * moments)


def kv_bytes_per_token(model: ModelSpec, wl: WorkloadSpec) -> int:
    if not model.has_architecture:
        return 0
    e = DTYPE_BYTES[wl.dtype]
    return 2 * model.num_layers * model.kv_heads * model.hd * e // wl.tp


def dropout_mask_bytes(wl: WorkloadSpec) -> int:
    """CUDA's fused dropout keeps a 1-byte mask; the CPU kernel keeps a mask in the input dtype."""
    if wl.dropout <= 0:
        return 0
    return 1 if wl.device == "cuda" else DTYPE_BYTES[wl.dtype]


def norm_saved_bytes(model: ModelSpec, wl: WorkloadSpec) -> int:
    """Bytes per element a norm keeps of its input for backward. LayerNorm and CUDA's fused
    RMSNorm keep the input; on the CPU RMSNorm is decomposed in fp32 and keeps the input
    upcast to fp32 and the normalized fp32 tensor (for the weight's gradient)."""
    if model.norm == "rmsnorm" and model.code == "hf":
        return hf_rmsnorm_saved_bytes(wl)
    if model.norm == "rmsnorm" and wl.device == "cpu":
        return 8
    return DTYPE_BYTES[wl.dtype]


# Terms of transformers' modelling code (ModelSpec.code == "hf"), each following the code named.

def hf_rmsnorm_saved_bytes(wl: WorkloadSpec) -> int:
    """LlamaRMSNorm.forward (and its copies in Mistral, Qwen2/3, Mixtral): x.to(float32) is kept
    by pow and the rsqrt product, and the normalized tensor cast back to the input dtype is kept
    by the weight product. Plain Python on every device (no fused kernel), so CUDA keeps the same."""
    return 4 + DTYPE_BYTES[wl.dtype]


def hf_softmax_bytes(model: ModelSpec, wl: WorkloadSpec) -> int:
    """Bytes per attention score an eager softmax keeps for backward: Llama's
    eager_attention_forward takes softmax(dtype=torch.float32) (kept by SoftmaxBackward) and
    casts it .to(query.dtype) (kept by the value matmul; the same tensor in fp32). GPT-2's
    takes softmax in the input dtype (one tensor)."""
    e = DTYPE_BYTES[wl.dtype]
    if model.softmax_fp32 and e < 4:
        return 4 + e
    return e


def hf_mask_bytes(model: ModelSpec, wl: WorkloadSpec) -> int:
    """The eager 4-D float causal mask (masking_utils: torch.where(mask, 0, min_dtype) in the
    model's dtype, batch x 1 x s x s), built once per forward and referenced by every layer."""
    if model.code != "hf" or wl.attention != "eager":
        return 0
    return wl.batch * wl.seq * wl.seq * DTYPE_BYTES[wl.dtype]


def hf_forward_kept_bytes(model: ModelSpec, wl: WorkloadSpec) -> int:
    """Tensors a no_grad forward of transformers' models keeps from start to end: the embedding
    output (LlamaModel.forward's `inputs_embeds`, still referenced after `hidden_states =
    inputs_embeds`), and the positions: the learned position embeddings (GPT-2, OPT: 1 x s x h)
    or RoPE's cos and sin (1 x s x head_dim each, in the model's dtype)."""
    if model.code != "hf":
        return 0
    e = DTYPE_BYTES[wl.dtype]
    s, h = wl.seq, model.hidden_size
    positions = s * h * e if model.learned_positions else 2 * s * model.hd * e
    return wl.batch * s * h * e + positions


def mlp_saved_widths(model: ModelSpec) -> int:
    """f-wide tensors one MLP keeps for backward."""
    if model.gated_mlp:
        return 4  # gate and up outputs, act(gate), and their product (the down projection's input)
    if model.activation == "gelu_new":
        # NewGELUActivation: 0.5 * x * (1 + tanh(c * (x + 0.044715 * x**3))) in separate ops: pow keeps
        # x, tanh its output, the last product 0.5*x and (1 + tanh); fc2 keeps the result
        return 5
    if model.activation == "relu":
        return 1  # relu keeps its result, which is fc2's input too; fc1's output is not kept
    return 2  # fc1's output (the fused GELU's input) and the GELU's output (fc2's input)


def mlp_prefill_widths(model: ModelSpec) -> int:
    """f-wide tensors alive at once at the MLP's worst moment of a no_grad forward."""
    if model.gated_mlp:
        return 3  # act(gate), up, their product
    if model.activation == "gelu_new":
        return 4  # x, 0.5*x, (1 + tanh(...)) and the product (NewGELUActivation, left to right)
    return 2  # fc1's output and the activation's


def mlp_backward_widths(model: ModelSpec) -> int:
    """f-wide gradients the activation's backward adds once the down projection's backward ran."""
    if model.gated_mlp:
        return 2  # gate's and up's gradients
    if model.activation in ("gelu_new", "relu"):
        # gelu_new: the last product's backward makes two gradients; relu's kept result is fc2's
        # input as well, so nothing is released before its backward makes its own
        return 2
    return 1


def layer_activations(model: ModelSpec, wl: WorkloadSpec, small_terms: bool = True) -> dict:
    """Bytes one layer keeps for backward, split into the terms of Korthikanti et al.

    Returns {"replicated", "parallel", "quadratic", "stats", "total"}; `replicated` is the
    part tensor parallelism does not split unless sequence parallelism is on.
    """
    s, b, t = wl.seq, wl.batch, wl.tp
    e = DTYPE_BYTES[wl.dtype]
    m = dropout_mask_bytes(wl)
    h, a, f = model.hidden_size, model.num_heads, model.ffn
    hq, hkv = a * model.hd, model.kv_heads * model.hd
    sb = s * b
    eager = wl.attention == "eager"
    # norm1 in/out, norm2 in/out (one norm where attention and MLP share it), residual dropout
    # masks after attention and MLP
    replicated = sb * h * (model.norms_per_layer * (norm_saved_bytes(model, wl) + e) + 2 * m)
    k_width = hq if eager else hkv  # eager GQA repeats K/V heads (a real copy) before the matmul
    parallel = sb * e * (hq + 2 * k_width + hq)
    if model.qk_norm:  # Qwen3Attention: q_norm/k_norm (RMSNorm over head_dim) keep what any RMSNorm keeps
        parallel += sb * (hq + hkv) * norm_saved_bytes(model, wl)
    # every token's hidden state goes through `routed` MLPs (top-k experts); the router's
    # logits and softmax are kept too
    parallel += sb * e * f * mlp_saved_widths(model) * model.routed
    quadratic = 0
    stats = 0
    if model.num_experts:
        # each routed token's gathered input copy and its expert's output (kept for the
        # routing-weight product), int64 token indices, and the router's fp32 softmax
        parallel += 2 * sb * h * e * model.routed
        stats += sb * model.routed * 32 + sb * model.num_experts * 8
    if eager:
        quadratic = a * s * s * b * (hf_softmax_bytes(model, wl) + (m + e if m else 0))
    elif small_terms:
        stats += 4 * b * a * s  # logsumexp kept by flash attention
    if small_terms:
        stats += 2 * (8 if model.norm == "layernorm" else 4) * sb  # mean/rstd per norm
        if eager and model.code != "hf":  # (HF's float mask is one tensor for all layers: hf_mask_bytes)
            stats += s * s  # the causal mask masked_fill keeps
    if wl.recompute == "selective":
        quadratic = 0
    if wl.recompute == "full":
        keep = sb * h * e // (t if wl.sequence_parallel else 1)
        return {"replicated": keep, "parallel": 0, "quadratic": 0, "stats": 0, "total": keep,
                "recomputed": _per_device(replicated, parallel, quadratic, stats, wl)}
    total = _per_device(replicated, parallel, quadratic, stats, wl)
    return {"replicated": replicated, "parallel": parallel, "quadratic": quadratic, "stats": stats, "total": total}


def _per_device(replicated: int, parallel: int, quadratic: int, stats: int, wl: WorkloadSpec) -> int:
    t = wl.tp
    rep = replicated // t if wl.sequence_parallel else replicated
    return rep + (parallel + quadratic) // t + stats


def _layer_backward_peak(model: ModelSpec, wl: WorkloadSpec, grad_bytes: float = 0.0) -> int:
    """Bytes one layer holds at the worst moment of its own backward: its saved activations
    (recomputed first under full recomputation), the gradient tensors of that moment and
    the parameter gradients made so far (`grad_bytes` per parameter; 0 when persistent).
    The MLP half runs first, with the whole layer still saved and only the MLP's weight
    gradients made; by the attention half the MLP's tensors are gone."""
    s, b, t = wl.seq, wl.batch, wl.tp
    e = DTYPE_BYTES[wl.dtype]
    sb, h, f, a = s * b, model.hidden_size, model.ffn, model.num_heads
    full = layer_activations(model, replace(wl, recompute="none" if wl.recompute == "full" else wl.recompute))
    # experts run their backward one after another: at the MLP's worst moment only one
    # expert's weight gradients are new
    n_mlp = (3 if model.gated_mlp else 2) * h * f
    g_mlp = int(n_mlp / t * grad_bytes)
    g_layer = int(model.layer_parameters() / t * grad_bytes)
    mlp_saved = sb * e * f * mlp_saved_widths(model) * model.routed // t
    # the down projection's input is released when its backward ran; the activation's
    # backward then holds one (GELU) or two (gate and up of SwiGLU) new f-wide gradients
    # (for a mixture of experts, one expert's share of the tokens at a time)
    mlp_tmp = sb * f * e * mlp_backward_widths(model) * model.routed // moe_groups(model) // t
    if wl.attention == "eager" and wl.recompute != "selective":
        attn_tmp = 2 * a * s * s * b * e // t
        if model.softmax_fp32 and e < 4:
            # the fp32 softmax's backward: its fp32 gradient and result beside the cast back
            attn_tmp = a * s * s * b * (8 + e) // t
    else:  # flash (or selective recomputation) recomputes the scores block by block
        attn_tmp = 3 * sb * a * model.hd * e // t + (2 * a * s * s * b * e // t if wl.attention == "eager" else 0)
    dy = 2 * sb * h * e
    return max(full["total"] + mlp_tmp + g_mlp, full["total"] - mlp_saved + attn_tmp + g_layer) + dy


def moe_groups(model: ModelSpec) -> int:
    """How many pieces the routed tokens' expert MLPs run in. The reference decoder (and
    transformers 4's MixtralSparseMoeBlock) loops over experts, one at a time; transformers 5's
    default experts implementation ("grouped_mm", integrations/moe.py) runs every routed token
    in one grouped matmul."""
    return 1 if model.code == "hf" else model.experts


def _prefill_temporaries(model: ModelSpec, wl: WorkloadSpec) -> int:
    """Tensors alive inside the last layer of a prefill (no_grad), besides weights and KV cache."""
    s, b, t = wl.seq, wl.batch, wl.tp
    e = DTYPE_BYTES[wl.dtype]
    sb, h, f, a = s * b, model.hidden_size, model.ffn, model.num_heads
    hq = a * model.hd
    gqa = model.kv_heads != a
    mask = hf_mask_bytes(model, wl)
    probs = 0
    if wl.attention == "eager":
        # scores and softmax alive together (an fp32 softmax beside its input-dtype source); the
        # CPU's softmax(dtype=float32) of a half input first makes an fp32 copy of it (aten::softmax
        # -> to -> _softmax), where CUDA's _softmax(half_to_float=True) reads the half input directly
        score = e + (4 if model.softmax_fp32 else e)
        if model.softmax_fp32 and e < 4 and wl.device == "cpu":
            score += 4
        mask_tmp = 0 if model.code == "hf" else 2 * s * s
        attn = sb * e * (2 * h + hq + (2 * hq if gqa else 0)) // 1 + a * s * s * b * score // t + mask_tmp
        if model.code == "hf":
            # the decoder layer keeps the returned attention weights (`hidden_states, _ = self.self_attn(...)`)
            # until it returns, so they are alive through the MLP
            probs = a * s * s * b * e // t
    else:
        attn = sb * e * (2 * h + 2 * hq // t)
    # experts run in moe_groups pieces, each on its share of the routed tokens
    mlp = sb * e * 3 * h + sb * e * f * mlp_prefill_widths(model) * model.routed // moe_groups(model) // t
    if model.num_experts and model.code == "hf":
        routed_tokens = sb * model.routed
        # grouped_mm's gathered copy of every routed token's input, and its gate_up output (2f wide,
        # one tensor) alive beside act(gate) and the product: one f more than separate gate/up
        mlp += routed_tokens * e * (h + f // t)
        # grouped_mm_experts_forward's end: beside that copy and the down projection's output, the
        # product with the routing weights (the router's fp32 softmax, so fp32) and its reordering
        # back to token order (`weighted_out[inv_perm]`)
        mlp = max(mlp, sb * e * 3 * h + routed_tokens * h * (2 * e + 8) // t)
    return max(attn, mlp + probs) + mask + hf_forward_kept_bytes(model, wl)


def estimate(model: ModelSpec, workload: WorkloadSpec) -> Estimate:
    wl = workload.resolved(model)
    n = model.parameter_count()
    if n <= 0:
        raise ValueError("the model needs a parameter count or an architecture (layers, hidden size, heads, vocab)")
    e = DTYPE_BYTES[wl.dtype]
    wb, gb, ob = model_state_bytes_per_param(wl)
    n_dev = n / wl.tp
    W = n_dev * wb / (wl.dp if wl.zero_stage >= 3 else 1)
    G = n_dev * gb / (wl.dp if wl.zero_stage >= 2 else 1)
    O = n_dev * ob / (wl.dp if wl.zero_stage >= 1 else 1)
    W, G, O = int(W), int(G), int(O)
    notes: list[str] = []
    details: dict = {"bytes_per_param": {"weights": wb, "gradients": gb, "optimizer_states": ob}}
    overhead = (wl.cuda_context_bytes + CUBLAS_WORKSPACE_BYTES) if wl.device == "cuda" else 0
    kvpt = kv_bytes_per_token(model, wl) if wl.mode == "infer" else 0
    full = {"weights": W, "gradients": G, "optimizer_states": O}

    parts = dict.fromkeys(("weights", "gradients", "optimizer_states", "activations", "kv_cache",
                           "temporaries", "overhead"), 0)
    parts.update(weights=W, overhead=overhead)
    phase = ""
    if not model.has_architecture:
        parts.update(gradients=G, optimizer_states=O)
        if wl.mode == "infer":
            notes.append("KV cache and activations unknown without an architecture; give --hf-config")
        else:
            notes.append("activations unknown without an architecture (layers, hidden size); give --hf-config")
        phase = "model states only"
        total = sum(parts.values())
        states = W + G + O
        return Estimate(method="analytical", total_bytes=total, parts=parts, low_bytes=total,
                        high_bytes=int(total + UNKNOWN_ACTIVATIONS_HIGH * states), parameters=n,
                        model_states_bytes=states, kv_bytes_per_token=kvpt, phase=phase, full_parts=full,
                        notes=notes, details=details)

    s, b, t = wl.seq, wl.batch, wl.tp
    h, V, L = model.hidden_size, model.vocab_size, model.num_layers
    sb = s * b
    if wl.mode == "train":
        layer = layer_activations(model, wl)
        # Megatron computes the vocab-parallel loss in fp32; so does transformers' ForCausalLMLoss
        # (`logits = logits.float()` before cross_entropy)
        e_loss = 4 if (wl.mixed_precision or model.code == "hf") else e
        logits = sb * V * e_loss // t
        inputs = 2 * 8 * sb  # token ids and targets (int64)
        m = dropout_mask_bytes(wl)
        norm_stats = (8 if model.norm == "layernorm" else 4) * sb
        outside = inputs + m * sb * h + (norm_saved_bytes(model, wl) + e) * sb * h + norm_stats + logits
        A_layers = L * layer["total"]
        persistent = wl.grad_buffers == "persistent"
        base = W + O + (G if persistent else 0)
        g_layer = 0 if persistent else int(model.layer_parameters() / t * gb / (wl.dp if wl.zero_stage >= 2 else 1))
        g_head = 0 if persistent else int(V * h / t * gb / (wl.dp if wl.zero_stage >= 2 else 1))
        g_all = 0 if persistent else G
        # gradients made only by the embedding's own backward, after every layer's
        g_emb_only = 0 if persistent else int(((0 if model.tie_word_embeddings else V * h)
                                              + model.learned_positions * h) / t * gb
                                             / (wl.dp if wl.zero_stage >= 2 else 1))
        layer_peak = _layer_backward_peak(model, wl, 0.0 if persistent else gb / (wl.dp if wl.zero_stage >= 2 else 1))
        t_opt = 0
        if wl.optimizer in ("adam", "adamw"):
            o_elem = 4 if wl.mixed_precision else e
            if wl.optimizer_impl == "foreach":
                t_opt = int(n_dev / (wl.dp if wl.zero_stage >= 1 else 1) * o_elem)
            elif wl.optimizer_impl == "single":
                t_opt = 2 * model.largest_tensor_parameters() // t * o_elem
        grads_live = G if persistent else 0
        phases = {
            # nll_loss and log_softmax backward allocate two logits-sized gradients while
            # every activation and the kept log-softmax output are still alive
            "backward start (loss gradients)": (A_layers + outside, 2 * logits, 0),
            "backward of the LM head": (A_layers + outside, sb * h * e + g_head, 0),
            "backward of the top layer": (A_layers - layer["total"] + inputs + m * sb * h, layer_peak, g_head),
            "backward of the first layer": (inputs, layer_peak,
                                            max(g_all - g_head - g_layer - g_emb_only, 0)),
            # a tied embedding's second gradient is summed out of place into the first
            "backward of the embedding": (inputs, sb * h * e + (2 * g_head if model.tie_word_embeddings else 0), g_all),
            "optimizer step": (0, t_opt, g_all),
        }
        best = None
        for name, (act, tmp, grads_new) in phases.items():
            tot = base + act + tmp + grads_new
            if best is None or tot > best[0]:
                best = (tot, name, act, tmp, grads_new)
        _, phase, act, tmp, grads_new = best
        parts.update(gradients=grads_live + grads_new, optimizer_states=O, activations=act, temporaries=tmp)
        details.update(activation_bytes_per_layer=layer["total"], activation_terms_per_layer=layer,
                       activations_outside_layers=outside, logits_bytes=logits,
                       layer_backward_peak=layer_peak, optimizer_temporaries=t_opt,
                       grad_buffers=wl.grad_buffers)
        if not persistent:
            notes.append("gradients are freed by zero_grad(set_to_none=True) and only exist from the backward on")
    else:
        kv = kvpt * sb
        logits = b * (s if wl.logits == "all" else 1) * V * e // t
        tmp = max(_prefill_temporaries(model, wl), logits + sb * h * e)
        parts.update(kv_cache=kv, activations=8 * sb, temporaries=tmp)
        phase = "prefill of the last layer"
        details.update(kv_cache_tokens=sb, prefill_temporaries=tmp)
    if wl.zero_stage == 3:
        gathered = int(2 * model.layer_parameters() / t * wb)
        parts["temporaries"] += gathered
        notes.append("ZeRO-3 gathers about two layers' weights at a time (prefetch); counted in temporaries")
    if wl.device == "cuda":
        notes.append("overhead (CUDA context, cuBLAS workspace) and allocator fragmentation are not measured here")
    total = int(sum(parts.values()))
    dynamic = parts["activations"] + parts["temporaries"] + parts["kv_cache"]
    low = max(int(total * (1 - TOTAL_LOW)), parts["weights"] + parts["optimizer_states"] + parts["overhead"])
    high = int(total * (1 + TOTAL_HIGH) + DYNAMIC_HIGH * dynamic)
    return Estimate(method="analytical", total_bytes=total, parts=parts, low_bytes=low, high_bytes=high,
                    parameters=n, model_states_bytes=W + G + O, kv_bytes_per_token=kvpt, phase=phase,
                    full_parts=full, notes=notes, details=details)
