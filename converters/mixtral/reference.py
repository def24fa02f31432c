"""Mixtral's original forward pass, over Mistral-format weights.

Written from the semantics of mistral-inference ``moe_one_file_ref.py`` @ 26a52a14 (line numbers below):
interleaved-pair complex rotary, float32 RMSNorm with a plain weight, top-k-then-softmax router, SwiGLU
experts, untied output. Reads either expert layout (per-expert keys, or the Hub's row-stacked fused tensors).
Never imports transformers: this is the independent side of the comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Probe", "forward"]

# Sees named points, each as (input, output); diagnosis records them (forward's docstring lists them).
Probe = Callable[[dict[str, tuple[torch.Tensor, torch.Tensor]]], None]


def forward(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], tokens: torch.Tensor, *,
            hidden_states: bool = False, probe: Probe | None = None
            ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """``Transformer.forward`` (L347-359): logits [B, T, vocab] in float32, optionally per-block states.

    ``probe``, when given, sees each named point's (input, output): ``tok_embeddings``, ``layers.N.attention_norm``,
    ``layers.N.attention`` (``layers.N.attention.wo`` inside it), ``layers.N.ffn_norm``, ``layers.N.feed_forward``
    (the MoE layer), ``norm``, ``output``."""
    B, T = tokens.shape
    theta = config.get("rope_theta") or 1e6  # L312
    freqs_cis = precompute_freqs_cis(config["head_dim"], T, theta, tokens.device)
    mask = torch.full((T, T), float("-inf"), device=tokens.device).triu(1)  # log(tril(ones)), L337-345
    h = tensors["tok_embeddings.weight"][tokens]  # (B, T, dim)
    states = [h.float()]
    for i in range(config["n_layers"]):
        h = transformer_block(tensors, f"layers.{i}.", config, h, freqs_cis, mask, probe)
        states.append(h.float())
    normed = rms_norm(h, tensors["norm.weight"], config["norm_eps"])
    logits = (normed @ tensors["output.weight"].t()).float()  # (B, T, vocab)
    if probe is not None:
        probe({"tok_embeddings": (tokens, states[0]), "norm": (h, normed), "output": (normed, logits)})
    return (logits, states) if hidden_states else logits


def precompute_freqs_cis(head_dim: int, T: int, theta: float, device: torch.device) -> torch.Tensor:
    """``precompute_freqs_cis`` (L257-261): e^{i·t·θ^(-2j/head_dim)}, complex64 (T, head_dim/2)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim)
    angles = torch.outer(torch.arange(T, device=device).float(), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """``apply_rotary_emb`` (L69-79): consecutive pairs (2j, 2j+1) are one complex number."""
    B, T, H, hd = x.shape
    x_c = torch.view_as_complex(x.float().reshape(B, T, H, hd // 2, 2))  # (B, T, H, hd/2)
    rotated = torch.view_as_real(x_c * freqs_cis[None, :, None, :])  # (B, T, H, hd/2, 2)
    return rotated.reshape(B, T, H, hd).type_as(x)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``RMSNorm`` (L190-201): normalise in float32, cast back, then multiply by the plain weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def attention(t: Mapping[str, torch.Tensor], p: str, c: Mapping[str, Any], x: torch.Tensor,
              freqs_cis: torch.Tensor, mask: torch.Tensor, probe: Probe | None = None) -> torch.Tensor:
    """``Attention.forward`` (L120-176): GQA by repeat_interleave, scale head_dim**-0.5, fp32 softmax."""
    B, T, _ = x.shape
    H, KV, hd = c["n_heads"], c["n_kv_heads"], c["head_dim"]
    q = (x @ t[p + "attention.wq.weight"].t()).view(B, T, H, hd)  # (B, T, n_heads, head_dim)
    k = (x @ t[p + "attention.wk.weight"].t()).view(B, T, KV, hd)  # (B, T, n_kv_heads, head_dim)
    v = (x @ t[p + "attention.wv.weight"].t()).view(B, T, KV, hd)  # (B, T, n_kv_heads, head_dim)
    q, k = apply_rotary_emb(q, freqs_cis), apply_rotary_emb(k, freqs_cis)
    k = k.repeat_interleave(H // KV, dim=2)  # (B, T, n_heads, head_dim): head h reads kv head h // (H/KV)
    v = v.repeat_interleave(H // KV, dim=2)
    q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, n_heads, T, head_dim)
    scores = (q @ k.transpose(2, 3)) * hd**-0.5 + mask  # (B, n_heads, T, T)
    scores = F.softmax(scores.float(), dim=-1).type_as(q)
    out = (scores @ v).transpose(1, 2).reshape(B, T, H * hd)  # (B, T, n_heads * head_dim)
    projected = out @ t[p + "attention.wo.weight"].t()  # (B, T, dim)
    if probe is not None:
        probe({p + "attention.wo": (out, projected)})
    return projected


def expert_weights(t: Mapping[str, torch.Tensor], p: str, e: int, hidden_dim: int) -> tuple[torch.Tensor, ...]:
    """w1, w2, w3 of expert ``e``: per-expert keys, or row block e of the Hub's fused tensors (w2 transposed)."""
    per_expert = f"{p}feed_forward.experts.{e}."
    if per_expert + "w1.weight" in t:
        return tuple(t[f"{per_expert}{w}.weight"] for w in ("w1", "w2", "w3"))
    rows = slice(e * hidden_dim, (e + 1) * hidden_dim)
    fused = f"{p}block_sparse_moe."
    return t[fused + "w1"][rows], t[fused + "w2"][rows].t(), t[fused + "w3"][rows]


def moe(t: Mapping[str, torch.Tensor], p: str, c: Mapping[str, Any], x: torch.Tensor,
        probe: Probe | None = None) -> torch.Tensor:
    """``MoeLayer.forward`` (L214-225): top-k of the raw gate logits, softmax over those k only.

    ``probe`` sees the router logits (tokens, experts) as ``feed_forward.router``: verify's routing agreement."""
    B, T, D = x.shape
    flat = x.reshape(B * T, D)  # (tokens, dim)
    gate = t.get(p + "feed_forward.gate.weight", t.get(p + "block_sparse_moe.gate.weight"))
    router = flat @ gate.t()
    if probe is not None:
        probe({p + "feed_forward.router": (flat, router)})
    top_logits, selected = torch.topk(router, c["moe"]["num_experts_per_tok"])  # (tokens, k)
    weights = F.softmax(top_logits.float(), dim=1).type_as(x)
    out = torch.zeros_like(flat)
    for e in range(c["moe"]["num_experts"]):
        token, nth = torch.where(selected == e)
        if token.numel():
            w1, w2, w3 = expert_weights(t, p, e, c["hidden_dim"])
            y = (F.silu(flat[token] @ w1.t()) * (flat[token] @ w3.t())) @ w2.t()  # FeedForward, L179-187
            out[token] += weights[token, nth, None] * y
    return out.view(B, T, D)


def transformer_block(t: Mapping[str, torch.Tensor], p: str, c: Mapping[str, Any], x: torch.Tensor,
                      freqs_cis: torch.Tensor, mask: torch.Tensor, probe: Probe | None = None) -> torch.Tensor:
    """``TransformerBlock.forward`` (L243-254): pre-norm attention then pre-norm MoE, both residual."""
    a = rms_norm(x, t[p + "attention_norm.weight"], c["norm_eps"])
    h = x + (att := attention(t, p, c, a, freqs_cis, mask, probe))
    f = rms_norm(h, t[p + "ffn_norm.weight"], c["norm_eps"])
    out = h + (ffn := moe(t, p, c, f, probe))
    if probe is not None:
        probe({p + "attention_norm": (x, a), p + "attention": (a, att), p + "ffn_norm": (h, f),
               p + "feed_forward": (f, ffn)})
    return out
