"""Mistral's original forward pass (dense models), over Mistral-format weights.

Written from the semantics of mistral-inference @ 2557e12d (``transformer.py`` = T, ``transformer_layers.py`` = TL,
``rope.py``, ``cache.py``, ``args.py``; line numbers below) and, for the v0.1 layout, its first commit c18d5b91:
interleaved-pair complex rotary, float32 RMSNorm with a plain weight, SwiGLU FFN, untied output, and the prefill
mask xformers builds for the cache (``BlockDiagonalCausalMask.make_local_attention(W)``): query i sees keys
i - W < j <= i, per layer where the window is a list. Never imports transformers: this is the independent side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Probe", "forward", "layer_windows", "rope_theta"]

# Sees named points, each as (input, output); diagnosis records them (forward's docstring lists them).
Probe = Callable[[dict[str, tuple[torch.Tensor, torch.Tensor]]], None]


def forward(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], tokens: torch.Tensor, *,
            hidden_states: bool = False, probe: Probe | None = None
            ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """``Transformer.forward`` (T L219-240) after a ``BufferCache`` prefill: logits [B, T, vocab] in float32.

    ``probe``, when given, sees each named point's (input, output): ``tok_embeddings``, ``layers.N.attention_norm``,
    ``layers.N.attention`` (``layers.N.attention.wo`` inside it), ``layers.N.ffn_norm``, ``layers.N.feed_forward``,
    ``norm``, ``output``."""
    B, T = tokens.shape
    freqs_cis = precompute_freqs_cis(config["head_dim"], T, rope_theta(config), tokens.device)
    h = tensors["tok_embeddings.weight"][tokens]  # (B, T, dim)
    states = [h.float()]
    for i, window in enumerate(layer_windows(config)):
        h = transformer_block(tensors, f"layers.{i}.", config, h, freqs_cis, local_causal_bias(T, window, h.device),
                              probe)
        states.append(h.float())
    normed = rms_norm(h, tensors["norm.weight"], config["norm_eps"])
    logits = (normed @ tensors["output.weight"].t()).float()  # (B, T, vocab); `.float()`, T L239-240
    if probe is not None:
        probe({"tok_embeddings": (tokens, states[0]), "norm": (h, normed), "output": (normed, logits)})
    return (logits, states) if hidden_states else logits


def rope_theta(config: Mapping[str, Any]) -> float:
    """HEAD reads ``rope_theta or 1e6`` (T L113-116); the v0.1 release code reads no theta at all and uses its
    default 10000 (c18d5b91 rope.py L5, model.py L185); its params.json is the one with an int sliding_window."""
    if config.get("rope_theta"):
        return float(config["rope_theta"])
    v01 = isinstance(config.get("sliding_window"), int) and config.get("_sliding_window") is None
    return 10000.0 if v01 else 1e6


def layer_windows(config: Mapping[str, Any]) -> list[int | None]:
    """Each layer's window (None: full causal). ``_sliding_window`` is copied into ``sliding_window`` (args.py
    L59); a list is a pattern, layer i taking entry i % len (cache.py L13-24, L160, L220-221)."""
    window = config.get("sliding_window")
    window = config.get("_sliding_window") if window is None else window
    n = config["n_layers"]
    return [window[i % len(window)] for i in range(n)] if isinstance(window, list) else [window] * n


def local_causal_bias(T: int, window: int | None, device: torch.device) -> torch.Tensor:
    """xformers' ``_materialize_causal_mask``: ``tril(diagonal=0)``, then ``triu(diagonal=-window+1)`` for a
    local one (attn_bias.py L114-139): 0 where query i sees key j, -inf elsewhere. (T, T)"""
    visible = torch.ones(T, T, dtype=torch.bool, device=device).tril(0)
    if window is not None:
        visible = visible.triu(-window + 1)
    return torch.zeros(T, T, device=device).masked_fill(~visible, float("-inf"))


def precompute_freqs_cis(dim: int, end: int, theta: float, device: torch.device) -> torch.Tensor:
    """rope.py L6-9: polar(1, t * theta^(-2j/dim)), complex64 (end, dim/2)."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device)[: dim // 2].float() / dim))
    t = torch.arange(end, device=device)
    return torch.polar(torch.ones(end, dim // 2, device=device), torch.outer(t, freqs).float())


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """rope.py L12-21: dimensions (2i, 2i+1) are one complex number, rotated in float32 and cast back."""
    x_ = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, T, heads, head_dim/2)
    return torch.view_as_real(x_ * freqs_cis[None, :, None, :]).flatten(3).type_as(x)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``RMSNorm`` (TL L109-120): normalise in float32, ``.type_as(x)``, then the plain weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def attention(t: Mapping[str, torch.Tensor], p: str, c: Mapping[str, Any], x: torch.Tensor,
              freqs_cis: torch.Tensor, bias: torch.Tensor, probe: Probe | None) -> torch.Tensor:
    """``Attention.forward`` (TL L56-97): rotary before the kv repeat, ``repeat_interleave`` GQA (TL L16-19), and
    ``memory_efficient_attention``'s own definition: softmax((q * head_dim**-0.5) @ k^T + bias) @ v in float32."""
    B, T, _ = x.shape
    H, KV, hd = c["n_heads"], c["n_kv_heads"], c["head_dim"]
    xq = (x @ t[p + "attention.wq.weight"].t()).view(B, T, H, hd)  # (B, T, n_heads, head_dim)
    xk = (x @ t[p + "attention.wk.weight"].t()).view(B, T, KV, hd)  # (B, T, n_kv_heads, head_dim)
    xv = (x @ t[p + "attention.wv.weight"].t()).view(B, T, KV, hd)
    xq, xk = apply_rotary_emb(xq, freqs_cis), apply_rotary_emb(xk, freqs_cis)
    key, val = (z.repeat_interleave(H // KV, dim=2) for z in (xk, xv))  # (B, T, n_heads, head_dim)
    q, k, v = (z.float().transpose(1, 2) for z in (xq, key, val))  # (B, n_heads, T, head_dim)
    scores = F.softmax((q * hd**-0.5) @ k.transpose(-1, -2) + bias, dim=-1)  # (B, n_heads, T, T)
    out = (scores @ v).type_as(x).transpose(1, 2).reshape(B, T, H * hd)  # (B, T, n_heads * head_dim)
    projected = out @ t[p + "attention.wo.weight"].t()  # (B, T, dim)
    if probe is not None:
        probe({p + "attention.wo": (out, projected)})
    return projected


def feed_forward(t: Mapping[str, torch.Tensor], p: str, x: torch.Tensor) -> torch.Tensor:
    """``FeedForward.forward`` (TL L105-106): w2(silu(w1 x) * w3 x)."""
    w1, w2, w3 = (t[f"{p}feed_forward.{w}.weight"] for w in ("w1", "w2", "w3"))
    return (F.silu(x @ w1.t()) * (x @ w3.t())) @ w2.t()


def transformer_block(t: Mapping[str, torch.Tensor], p: str, c: Mapping[str, Any], x: torch.Tensor,
                      freqs_cis: torch.Tensor, bias: torch.Tensor, probe: Probe | None) -> torch.Tensor:
    """``TransformerBlock.forward`` (TL L159-169): pre-norm attention, then pre-norm FFN, both residual."""
    a = rms_norm(x, t[p + "attention_norm.weight"], c["norm_eps"])
    h = x + (att := attention(t, p, c, a, freqs_cis, bias, probe))
    f = rms_norm(h, t[p + "ffn_norm.weight"], c["norm_eps"])
    out = h + (ffn := feed_forward(t, p, f))
    if probe is not None:
        probe({p + "attention_norm": (x, a), p + "attention": (a, att), p + "ffn_norm": (h, f),
               p + "feed_forward": (f, ffn)})
    return out
