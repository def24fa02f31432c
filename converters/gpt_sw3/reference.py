"""Forward pass of Megatron-LM's legacy GPT model, as NeMo 1.x trained and saved GPT-SW3.

Mirrors NVIDIA/Megatron-LM @ fd443f26abb03643c6f812a79a020e622054c749 (the last commit with
`megatron/legacy/model/`): `gpt_model.py`, `language_model.py`, `transformer.py`, `fused_softmax.py`,
`fused_bias_gelu.py` and `utils.py`, with tensor and pipeline parallel size 1, eval mode (dropout off) and the
causal mask of `megatron/training/utils.py::get_ltor_masks_and_position_ids`. Config names are NeMo's
(NVIDIA/NeMo @ 4a566310, `examples/nlp/language_modeling/conf/megatron_gpt_config.yaml`, `model:` section).

Activations keep Megatron's sequence-first layout `[s, b, h]` so each step reads against upstream. Weights are
the Lightning state dict as stored (`model.language_model.…`); `*._extra_state` entries are never read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.nn import functional

__all__ = ["Probe", "forward"]

# Sees named points, each as (input, output); diagnosis records them (forward's docstring lists them).
Probe = Callable[[dict[str, tuple[torch.Tensor, torch.Tensor]]], None]

PREFIX = "model.language_model."


def forward(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    tokens: torch.Tensor,
    *,
    hidden_states: bool = False,
    probe: Probe | None = None,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Mirror `GPTModel.forward` (legacy/model/gpt_model.py), `post_process=True`, `parallel_output=False`.

    Returns float32 logits `[B, T, vocab]`: Megatron scores every row of the padded word embedding
    (legacy/model/language_model.py L369), and the columns past the tokenizer's real vocabulary
    (`config["vocab_size"]` when given) are cut, since no token maps to them. With `hidden_states`
    also returns `num_layers + 1` float32 tensors `[B, T, h]`: the embedding output, then each layer's output.
    `probe`, when given, sees each named point's (input, output), batch-first: `word_embeddings`,
    `position_embeddings`, `layers.N.input_layernorm`, `layers.N.self_attention` (dense plus its bias),
    `layers.N.post_attention_layernorm`, `layers.N.mlp` (plus its bias), `final_layernorm`, `output_layer`.
    """
    _check(config)
    s = tokens.shape[1]
    mask = get_ltor_masks(s, tokens.device)
    hidden = embedding(tensors, tokens, probe)  # (s, b, h)
    states = [hidden]
    for i in range(config["num_layers"]):
        # ParallelTransformer numbers its layers from 1 (transformer.py build_layer(i + 1 + offset)).
        p = _layer_weights(tensors, i)
        named = probe and (lambda seen, i=i: probe(_batch_first(seen, f"layers.{i}.")))
        hidden = parallel_transformer_layer(hidden, p, mask, config, layer_number=i + 1, probe=named)
        states.append(hidden)
    eps = config["layernorm_epsilon"]
    last, hidden = hidden, layer_norm(hidden, tensors[PREFIX + "encoder.final_layernorm.weight"],
                                      tensors[PREFIX + "encoder.final_layernorm.bias"], eps)
    # Tied output: the word embedding is the output layer, no bias (gpt_model.py L55, L92).
    logits = parallel_lm_logits(hidden, tensors[PREFIX + "embedding.word_embeddings.weight"])  # (s, b, V)
    logits = logits.transpose(0, 1).contiguous().float()  # (b, s, V)
    logits = logits[..., : config.get("vocab_size", logits.shape[-1])]  # (b, s, real vocab)
    if probe is not None:
        probe({"final_layernorm": (last.transpose(0, 1), hidden.transpose(0, 1)),
               "output_layer": (hidden.transpose(0, 1), logits)})
    if not hidden_states:
        return logits
    return logits, [h.transpose(0, 1).float() for h in states]  # each (b, s, h)


def get_ltor_masks(s: int, device: torch.device) -> torch.Tensor:
    """Mirror `get_ltor_masks_and_position_ids` (training/utils.py), no resets: True marks a masked key."""
    ones = torch.ones(1, 1, s, s, device=device)  # (1, 1, sq, sk)
    return torch.tril(ones) < 0.5


def embedding(tensors: Mapping[str, torch.Tensor], tokens: torch.Tensor, probe: Probe | None = None
              ) -> torch.Tensor:
    """Mirror `Embedding.forward` (legacy/model/language_model.py): word + learned absolute position."""
    position_ids = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)  # (1, s)
    word_table = tensors[PREFIX + "embedding.word_embeddings.weight"]  # (padded_vocab, h)
    position_table = tensors[PREFIX + "embedding.position_embeddings.weight"]  # (max_positions, h)
    words = functional.embedding(tokens, word_table)  # (b, s, h)
    positions = functional.embedding(position_ids, position_table)  # (1, s, h)
    embeddings = words + positions
    if probe is not None:
        probe({"word_embeddings": (tokens, words), "position_embeddings": (position_ids, positions)})
    return embeddings.transpose(0, 1).contiguous()  # (s, b, h)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Mirror `MixedFusedLayerNorm.forward` (legacy/model/fused_layer_norm.py): apex's affine LayerNorm."""
    return functional.layer_norm(x, weight.shape, weight, bias, eps)


def parallel_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Mirror `ColumnParallelLinear` / `RowParallelLinear` at TP=1: `x @ Wᵀ (+ b)`, weight `[out, in]`.

    With `skip_bias_add=True` upstream returns the bias instead of adding it; callers then pass `bias=None`
    and add it where Megatron does (`bias_gelu`, `bias_dropout_add`).
    """
    out = torch.matmul(x, weight.t())
    return out if bias is None else out + bias


def parallel_transformer_layer(
    hidden: torch.Tensor, p: Mapping[str, torch.Tensor], mask: torch.Tensor, config: Mapping[str, Any],
    layer_number: int, probe: Probe | None = None,
) -> torch.Tensor:
    """Mirror `ParallelTransformerLayer.forward` (legacy/model/transformer.py): pre-LN, input residual."""
    eps = config["layernorm_epsilon"]
    attention_in = layer_norm(hidden, p["input_layernorm.weight"], p["input_layernorm.bias"], eps)
    attention_output, attention_bias = parallel_attention(attention_in, p, mask, config, layer_number)
    # apply_residual_connection_post_layernorm is False in NeMo GPT: the residual is the layer input.
    norm_input = bias_dropout_add(attention_output, attention_bias, hidden)
    norm_output = layer_norm(norm_input, p["post_attention_layernorm.weight"],
                             p["post_attention_layernorm.bias"], eps)
    mlp_output, mlp_bias = parallel_mlp(norm_output, p, config)
    if probe is not None:
        probe({"input_layernorm": (hidden, attention_in), "self_attention": (attention_in, attention_output +
               attention_bias), "post_attention_layernorm": (norm_input, norm_output),
               "mlp": (norm_output, mlp_output + mlp_bias)})
    return bias_dropout_add(mlp_output, mlp_bias, norm_input)


def bias_dropout_add(x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Mirror `bias_dropout_add` (legacy/model/transformer.py) in eval mode: `residual + (x + bias)`."""
    return residual + (x + bias)


def parallel_attention(
    hidden: torch.Tensor, p: Mapping[str, torch.Tensor], mask: torch.Tensor, config: Mapping[str, Any],
    layer_number: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror `ParallelAttention.forward` (legacy/model/transformer.py) for self-attention, no GQA.

    The fused QKV rows are grouped per head, `[np, 3 (q, k, v), hn]` (the `[sq, b, ng, (np/ng + 2) * hn]` view
    with ng = np). Returns the dense output and its bias separately (`skip_bias_add=True`).
    """
    np_ = config["num_attention_heads"]
    hn = config.get("kv_channels") or config["hidden_size"] // np_
    mixed = parallel_linear(hidden, p["self_attention.query_key_value.weight"],
                            p["self_attention.query_key_value.bias"])  # (s, b, np * 3 * hn)
    mixed = mixed.view(*mixed.shape[:-1], np_, 3 * hn)  # (s, b, np, 3 * hn)
    q, k, v = torch.split(mixed, [hn, hn, hn], dim=3)  # each (s, b, np, hn)
    context = core_attention(q, k, v, mask, layer_number, config.get("apply_query_key_layer_scaling", True))
    return parallel_linear(context, p["self_attention.dense.weight"]), p["self_attention.dense.bias"]


def core_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, layer_number: int,
    apply_query_key_layer_scaling: bool,
) -> torch.Tensor:
    """Mirror `CoreAttention.forward` (legacy/model/transformer.py): scaled scores, masked softmax, context.

    With query-key layer scaling the scores are first divided by `sqrt(hn) * layer_number` inside `baddbmm`,
    then multiplied back by `layer_number` in the fp32 softmax: the net function is `softmax(QKᵀ / sqrt(hn))`.
    """
    sq, b, np_, hn = q.shape
    sk = k.shape[0]
    norm_factor = math.sqrt(hn)
    coeff = None
    if apply_query_key_layer_scaling:
        coeff = layer_number
        norm_factor *= coeff
    q = q.reshape(sq, b * np_, hn)  # (sq, b * np, hn)
    k = k.reshape(sk, b * np_, hn)  # (sk, b * np, hn)
    # Upstream's matmul_input_buffer: its contents are ignored because beta is 0.
    buffer = torch.empty(b * np_, sq, sk, dtype=q.dtype, device=q.device)
    scores = torch.baddbmm(buffer, q.transpose(0, 1), k.transpose(0, 1).transpose(1, 2),
                           beta=0.0, alpha=1.0 / norm_factor)  # (b * np, sq, sk)
    scores = scores.view(b, np_, sq, sk)  # (b, np, sq, sk)
    probs = fused_scale_mask_softmax(scores, mask, coeff)
    probs = probs.view(b * np_, sq, sk)  # (b * np, sq, sk)
    v = v.reshape(sk, b * np_, hn)  # (sk, b * np, hn)
    context = torch.bmm(probs, v.transpose(0, 1))  # (b * np, sq, hn)
    context = context.view(b, np_, sq, hn).permute(2, 0, 1, 3).contiguous()  # (sq, b, np, hn)
    return context.view(sq, b, np_ * hn)  # (sq, b, np * hn)


def fused_scale_mask_softmax(scores: torch.Tensor, mask: torch.Tensor, scale: int | None) -> torch.Tensor:
    """Mirror `FusedScaleMaskSoftmax.forward_torch_softmax` (legacy/model/fused_softmax.py), softmax in fp32.

    `attention_softmax_in_fp32` is forced on by query-key layer scaling (transformer.py CoreAttention) and set
    by NeMo otherwise; half inputs are upcast, scaled, masked, normalised and cast back.
    """
    dtype = scores.dtype
    x = scores.float()
    if scale is not None:
        x = x * scale
    x = attention_mask_func(x, mask)
    return torch.softmax(x, dim=-1).to(dtype)


def attention_mask_func(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror `attention_mask_func` (legacy/model/utils.py): masked scores become -10000.0, not -inf."""
    return scores.masked_fill(mask, -10000.0)


def parallel_mlp(
    hidden: torch.Tensor, p: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror `ParallelMLP.forward` (legacy/model/transformer.py): h -> ffn -> GELU -> h.

    The activation is chosen as in `ParallelMLP.__init__`: `openai_gelu` first, then `onnx_safe`, then the
    bias-GELU fusion, which NeMo turns on by default (`cfg.get('bias_activation_fusion', True)`) and which is
    the tanh approximation, not exact erf GELU.
    """
    intermediate = parallel_linear(hidden, p["mlp.dense_h_to_4h.weight"])  # (s, b, ffn)
    bias = p["mlp.dense_h_to_4h.bias"]
    if config.get("openai_gelu", False):
        intermediate = openai_gelu(intermediate + bias)
    elif config.get("onnx_safe", False):
        intermediate = erf_gelu(intermediate + bias)
    elif config.get("bias_activation_fusion", True):
        intermediate = bias_gelu(bias, intermediate)
    else:
        intermediate = functional.gelu(intermediate + bias)
    return parallel_linear(intermediate, p["mlp.dense_4h_to_h.weight"]), p["mlp.dense_4h_to_h.bias"]


def bias_gelu(bias: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mirror `bias_gelu` (legacy/model/fused_bias_gelu.py): tanh GELU, sqrt(2/pi) rounded to 0.79788456."""
    x = bias + y
    return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))


def openai_gelu(x: torch.Tensor) -> torch.Tensor:
    """Mirror `openai_gelu` / `gelu_impl` (legacy/model/utils.py): tanh GELU, full-precision sqrt(2/pi)."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


def erf_gelu(x: torch.Tensor) -> torch.Tensor:
    """Mirror `erf_gelu` (legacy/model/utils.py): erf GELU whose 1.41421 is not exactly sqrt(2)."""
    return x * 0.5 * (torch.erf(x / 1.41421).to(x.dtype) + torch.ones_like(x))


def parallel_lm_logits(hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
    """Mirror `parallel_lm_logits` (legacy/model/language_model.py) at TP=1 with `bias=None`."""
    return torch.matmul(hidden, word_embeddings.t())  # (s, b, padded_vocab)


def _batch_first(seen: dict[str, tuple[torch.Tensor, torch.Tensor]], prefix: str
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {prefix + k: (i.transpose(0, 1), o.transpose(0, 1)) for k, (i, o) in seen.items()}


def _layer_weights(tensors: Mapping[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Fetch layer `i`'s tensors by name: no scan, so lazy mappings stay lazy and `_extra_state` is unread."""
    prefix = f"{PREFIX}encoder.layers.{i}."
    return {name: tensors[prefix + name] for name in _LAYER_TENSORS}


_LAYER_TENSORS = tuple(f"{module}.{kind}" for module in (
    "input_layernorm", "self_attention.query_key_value", "self_attention.dense",
    "post_attention_layernorm", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h") for kind in ("weight", "bias"))

# NeMo cfg values this forward pass implements (each is the NeMo default); others change the architecture.
_SUPPORTED = {
    "normalization": "layernorm",
    "position_embedding_type": "learned_absolute",
    "transformer_block_type": "pre_ln",
    "activation": "gelu",
    "bias": True,
    "share_embeddings_and_output_weights": True,
    "normalize_attention_scores": True,  # NeMo-only switch; legacy Megatron always divides by sqrt(hn)
    "headscale": False,  # NeMo-only switch; legacy Megatron has no head scaling
}


def _check(config: Mapping[str, Any]) -> None:
    """Reject NeMo cfg values that legacy Megatron GPT (and therefore this mirror) does not compute."""
    bad = {k: config[k] for k, want in _SUPPORTED.items() if config.get(k, want) != want}
    if bad:
        raise ValueError(f"gpt_sw3 reference computes only {_SUPPORTED}; found {bad} in the NeMo cfg. "
                         "Such a checkpoint needs its own reference forward pass.")
