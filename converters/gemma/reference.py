"""Independent forward pass of Gemma 1 in the layout of google/gemma_pytorch.

Mirrors `gemma/model.py` of github.com/google/gemma_pytorch at commit
014acb7ac4563a5f77c76d7ff98f31b568c16508 (the `Architecture.GEMMA_1` path: `GemmaForCausalLM` ->
`GemmaModel` -> `GemmaDecoderLayer`). It reads the upstream state dict as stored (`embedder.weight`,
`model.layers.{layer}.self_attn.qkv_proj.weight`, ...), including the int8 `quant=True` layout, and the
upstream `GemmaConfig` field names. The `freqs_cis` buffer is ignored: rotary tables are recomputed.

Extra config key (not an upstream field): `hidden_activation` selects the MLP gate activation.
`"gelu_tanh"` (default) is `F.gelu(approximate="tanh")` as upstream has used since commit 0a7afad
(2024-03-02); `"gelu_exact"` is the exact erf GELU of the original release (commit 09eee7b, model.py:197).
"""

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Probe", "forward"]

# Sees named points, each as (input, output); diagnosis records them (forward's docstring lists them).
Probe = Callable[[dict[str, tuple[torch.Tensor, torch.Tensor]]], None]

MASK_VALUE = -2.3819763e38  # generate(): the fill value of the causal mask, built in float32
ROPE_THETA = 10_000.0  # GemmaForCausalLM._register_freqs_cis default; Gemma 1 never overrides it
GELU_APPROXIMATE = {"gelu_tanh": "tanh", "gelu_exact": "none"}
# GemmaConfig fields that switch on Gemma 2/3 features; Gemma 1 leaves them None/False.
LATER_FEATURES = (
    "attn_types",
    "sliding_window_size",
    "final_logit_softcapping",
    "attn_logit_softcapping",
    "query_pre_attn_scalar",
    "use_pre_ffw_norm",
    "use_post_ffw_norm",
    "rope_wave_length",
    "use_qk_norm",
    "vision_config",
)


def forward(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    tokens: torch.Tensor,
    *,
    hidden_states: bool = False,
    probe: Probe | None = None,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Mirror `GemmaForCausalLM.forward` (prefill over positions 0..T-1, logits for every position).

    Returns float32 logits (B, T, vocab); with `hidden_states=True` also n_layers + 1 float32 tensors:
    the scaled embedding output, then each decoder layer's output (before the final norm). `probe`, when
    given, sees each named point's (input, output): `embedder` (scaled), `model.layers.N.input_layernorm`,
    `model.layers.N.self_attn` (`model.layers.N.self_attn.o_proj` inside it),
    `model.layers.N.post_attention_layernorm`, `model.layers.N.mlp`, `model.norm`,
    `sampler`.

    Example: `logits = forward(state_dict, config, torch.tensor([[2, 651, 6996]]))`
    """
    _check_config(config)
    dtype = tensors["model.norm.weight"].dtype  # the activation dtype the caller chose
    T = tokens.shape[1]
    cos, sin = precompute_freqs_cis(config["head_dim"], T, tokens.device)
    # generate() builds triu(full(-2.38e38), 1) in float32; only the top-left T x T block matters here.
    mask = torch.full((T, T), MASK_VALUE, dtype=torch.float32, device=tokens.device).triu(1)  # (T, T)

    embedder = _weight(tensors, "embedder", config, dtype)
    # model.py:593-598: the normaliser is a tensor in the activation dtype (sqrt(3072) -> 55.5 in bf16).
    normalizer = torch.tensor(config["hidden_size"] ** 0.5, dtype=dtype, device=tokens.device)
    h = F.embedding(tokens, embedder) * normalizer  # (B, T, hidden)
    states = [h.float()]
    for layer in range(config["num_hidden_layers"]):
        h = decoder_layer(tensors, config, f"model.layers.{layer}", h, cos, sin, mask, probe)
        states.append(h.float())
    normed = rms_norm(h, tensors["model.norm.weight"], config["rms_norm_eps"])
    logits = sampler_logits(normed, embedder).float()  # (B, T, vocab)
    if probe is not None:
        probe({"embedder": (tokens, states[0]), "model.norm": (h, normed), "sampler": (normed, logits)})
    return (logits, states) if hidden_states else logits


def decoder_layer(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    prefix: str,
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor,
    probe: Probe | None = None,
) -> torch.Tensor:
    """Mirror `GemmaDecoderLayer.forward`: pre-norm attention then pre-norm MLP, each with a residual.

    Upstream's `post_attention_layernorm` is the norm *before* the MLP (model.py:372-391).
    """
    eps = config["rms_norm_eps"]
    x = rms_norm(h, tensors[f"{prefix}.input_layernorm.weight"], eps)
    mid = h + (att := gemma_attention(tensors, config, f"{prefix}.self_attn", x, cos, sin, mask, probe))
    y = rms_norm(mid, tensors[f"{prefix}.post_attention_layernorm.weight"], eps)
    out = mid + (mlp := gemma_mlp(tensors, config, f"{prefix}.mlp", y))
    if probe is not None:
        probe({f"{prefix}.input_layernorm": (h, x), f"{prefix}.self_attn": (x, att),
               f"{prefix}.post_attention_layernorm": (mid, y), f"{prefix}.mlp": (y, mlp)})
    return out


def gemma_attention(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    prefix: str,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor,
    probe: Probe | None = None,
) -> torch.Tensor:
    """Mirror `GemmaAttention.forward` for a global (causal, no softcapping) Gemma 1 layer."""
    B, T, _ = x.shape
    n_heads, n_kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config["head_dim"]
    if n_heads % n_kv_heads:
        raise ValueError(
            f"num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv_heads}"
        )
    qkv = F.linear(x, _weight(tensors, f"{prefix}.qkv_proj", config, x.dtype))  # (B, T, (nq + 2 nkv) hd)
    # Fused rows are [q | k | v], each head-major (model.py:277-283).
    q, k, v = qkv.split([n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim], dim=-1)
    q = q.view(B, T, n_heads, head_dim)  # (B, T, n_heads, head_dim)
    k = k.view(B, T, n_kv_heads, head_dim)  # (B, T, n_kv_heads, head_dim)
    v = v.view(B, T, n_kv_heads, head_dim)  # (B, T, n_kv_heads, head_dim)
    q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
    # Query head i reads kv head i // (n_heads / n_kv_heads) (repeat_interleave, model.py:301-306).
    k = k.repeat_interleave(n_heads // n_kv_heads, dim=2)  # (B, T, n_heads, head_dim)
    v = v.repeat_interleave(n_heads // n_kv_heads, dim=2)  # (B, T, n_heads, head_dim)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, n_heads, T, head_dim)
    q = q * head_dim**-0.5  # scaling uses head_dim, not hidden/heads (no query_pre_attn_scalar in Gemma 1)
    scores = q @ k.transpose(2, 3)  # (B, n_heads, T, T)
    # Upstream adds a float32 mask (promoting the scores) and takes the softmax in float32.
    probs = torch.softmax(scores.float() + mask, dim=-1).to(x.dtype)  # (B, n_heads, T, T)
    out = (probs @ v).transpose(1, 2).reshape(B, T, n_heads * head_dim)  # (B, T, n_heads * head_dim)
    projected = F.linear(out, _weight(tensors, f"{prefix}.o_proj", config, x.dtype))  # (B, T, hidden)
    if probe is not None:
        probe({f"{prefix}.o_proj": (out, projected)})
    return projected


def gemma_mlp(
    tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], prefix: str, x: torch.Tensor
) -> torch.Tensor:
    """Mirror `GemmaMLP.forward`: down(gelu(gate(x)) * up(x)), GELU variant per `hidden_activation`."""
    approximate = GELU_APPROXIMATE[config.get("hidden_activation", "gelu_tanh")]
    gate = F.gelu(
        F.linear(x, _weight(tensors, f"{prefix}.gate_proj", config, x.dtype)), approximate=approximate
    )
    up = F.linear(x, _weight(tensors, f"{prefix}.up_proj", config, x.dtype))  # (B, T, intermediate)
    return F.linear(gate * up, _weight(tensors, f"{prefix}.down_proj", config, x.dtype))  # (B, T, hidden)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Mirror `RMSNorm.forward` (add_unit_offset=True): float32 x * rsqrt(mean(x^2) + eps) * (1 + w)."""
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (y * (1 + weight.float())).type_as(x)


def precompute_freqs_cis(head_dim: int, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror `precompute_freqs_cis` (theta 10000, no scaling), as float32 cos/sin for positions 0..T-1.

    Returns cos and sin shaped (T, 1, head_dim // 2) so they broadcast over (B, T, heads, head_dim // 2).
    """
    inv_freq = 1.0 / (
        ROPE_THETA ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim)
    )
    angles = torch.outer(torch.arange(T, device=device).float(), inv_freq)  # (T, head_dim // 2)
    return angles.cos()[:, None, :], angles.sin()[:, None, :]  # (T, 1, head_dim // 2) each


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Mirror `apply_rotary_emb`: rotate pairs (i, i + head_dim/2) in float32, then cast back.

    Upstream views the two halves as (real, imag) of a complex number and multiplies by e^{i*angle},
    so the pairing is half-split (NeoX style), not interleaved (model.py:104-113).
    """
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, T, heads, head_dim // 2) each
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, T, heads, head_dim)
    return out.type_as(x)


def sampler_logits(h: torch.Tensor, embedder: torch.Tensor) -> torch.Tensor:
    """Mirror `Sampler.forward` up to the logits: tied head h @ E^T, no bias, no softcapping in Gemma 1."""
    return h @ embedder.t()  # (B, T, vocab)


def _weight(
    tensors: Mapping[str, torch.Tensor], prefix: str, config: Mapping[str, Any], dtype: torch.dtype
) -> torch.Tensor:
    """The `prefix.weight` matrix in the activation dtype, dequantised like `Linear`/`Embedding` if quant."""
    weight = tensors[f"{prefix}.weight"]
    if config.get("quant", False):
        # model.py:133-138, 158-163: int8 weight * per-output-row scaler.
        return weight.to(dtype) * tensors[f"{prefix}.weight_scaler"].to(dtype).unsqueeze(-1)
    if not weight.is_floating_point():
        raise ValueError(f"{prefix}.weight is {weight.dtype} but config quant is false; set quant=True")
    return weight


def _check_config(config: Mapping[str, Any]) -> None:
    """Refuse configs this Gemma 1 path would silently get wrong."""
    architecture = config.get("architecture", "GEMMA_1")
    if architecture not in ("GEMMA_1", 1):
        raise ValueError(f"expected architecture GEMMA_1, found {architecture!r}; Gemma 2/3 need other code")
    enabled = sorted(name for name in LATER_FEATURES if config.get(name))
    if enabled or config.get("rope_scaling_factor") not in (None, 1):
        found = enabled or ["rope_scaling_factor"]
        raise ValueError(f"config enables Gemma 2/3 features {found}; this reference covers Gemma 1 only")
    activation = config.get("hidden_activation", "gelu_tanh")
    if activation not in GELU_APPROXIMATE:
        raise ValueError(f"hidden_activation must be one of {sorted(GELU_APPROXIMATE)}, found {activation!r}")
