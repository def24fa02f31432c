"""Llama's original forward pass, run the way Meta's model-parallel ranks run it, over the rank files' tensors.

Written from the semantics of meta-llama/llama @ 689c7f26 ``llama/model.py`` (``L2``, Llama 1/2) and
meta-llama/llama-models @ a9c89c47 ``models/llama3/model.py`` (``L3``, Llama 3/3.1), with fairscale 0.4.13's
parallel layers (``FS`` = ``fairscale/nn/model_parallel/layers.py``). Each tensor arrives stacked by rank,
[ranks, *slice]. Nothing is merged: every rank computes its own heads and FFN columns on the whole activation,
row-parallel outputs are summed over ranks (the all-reduce), column-parallel outputs and embedding columns
concatenated (the all-gather), a vocabulary-split embedding looked up rank by rank with the rows it does not hold
masked to zero. Interleaved-pair complex rotary, float32 RMSNorm with a plain weight, SwiGLU, untied output,
Llama 3.1's scaled rotary frequencies. Never imports transformers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Probe", "forward"]

# Sees a block's named points, each as (input, output); diagnosis records them (forward's docstring lists them).
Probe = Callable[[dict[str, tuple[torch.Tensor, torch.Tensor]]], None]


def forward(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], tokens: torch.Tensor, *,
            hidden_states: bool = False, probe: Probe | None = None
            ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """``Transformer.forward`` (L2 457-495, L3 281-...) at start_pos 0: float32 logits [B, T, vocab].

    ``probe``, when given, sees each named point's (input, output): ``embedding``, ``layers.N.attention_norm``,
    ``layers.N.attention`` (``layers.N.attention.wo`` inside it), ``layers.N.ffn_norm``, ``layers.N.feed_forward``,
    ``norm``, ``output``."""
    B, T = tokens.shape
    head_dim = config["dim"] // config["n_heads"]  # L2 205
    theta = config.get("rope_theta") or 10000.0  # Llama 1/2 ModelArgs has no field: the default of L2 80
    freqs_cis = precompute_freqs_cis(head_dim, T, theta, bool(config.get("use_scaled_rope")), tokens.device)
    mask = torch.full((T, T), float("-inf"), device=tokens.device).triu(1)  # L2 475-480
    h = embedding(tensors["tok_embeddings.weight"], tokens, config["dim"])  # (B, T, dim)
    states = [h.float()]
    for i in range(config["n_layers"]):
        h = transformer_block(tensors, f"layers.{i}.", config, h, freqs_cis, mask, probe)
        states.append(h.float())
    normed = rms_norm(h, replicated(tensors["norm.weight"]), config.get("norm_eps", 1e-5))
    # ColumnParallelLinear with gather_output (L2 446-448): each rank's vocabulary slice, gathered in rank order.
    logits = torch.cat([normed @ w.t() for w in tensors["output.weight"]], dim=-1).float()  # (B, T, vocab)
    if probe is not None:
        probe({"embedding": (tokens, states[0]), "norm": (h, normed), "output": (normed, logits)})
    return (logits, states) if hidden_states else logits


def embedding(weight: torch.Tensor, tokens: torch.Tensor, dim: int) -> torch.Tensor:
    """``ParallelEmbedding`` (L2 437; FS 187-...): rank r holds every row's columns r*dim/ranks ..., gathered.
    ``VocabParallelEmbedding`` (L3 264; FS 120-...): rank r holds rows r*V/ranks ..., looks up only those
    tokens (others give zeros), and the ranks' outputs are summed. One rank is both; its shape tells which."""
    if weight.shape[-1] != dim:  # (ranks, vocab, dim / ranks)
        return torch.cat([w[tokens] for w in weight], dim=-1)  # (B, T, dim)
    rows = weight.shape[1]  # (ranks, vocab / ranks, dim)
    out = torch.zeros(*tokens.shape, dim, dtype=weight.dtype, device=weight.device)
    for r, w in enumerate(weight):
        local = tokens - r * rows
        held = (local >= 0) & (local < rows)
        out = out + torch.where(held[..., None], w[local.clamp(0, rows - 1)], 0)  # (B, T, dim)
    return out


def replicated(w: torch.Tensor) -> torch.Tensor:
    """A norm weight every rank holds whole: each rank uses its own copy, and the copies are equal."""
    return w[0]


def apply_scaling(freqs: torch.Tensor) -> torch.Tensor:
    """``apply_scaling`` (L3 45-62): low frequencies / 8, high ones kept, the band between blended linearly in
    8192 / wavelength. The four numbers are constants upstream, not params.json fields."""
    factor, low, high, context = 8.0, 1.0, 4.0, 8192.0
    wavelength = 2 * math.pi / freqs
    blend = (context / wavelength - low) / (high - low)  # 0 at wavelength 8192, 1 at 2048
    mid = (1 - blend) * freqs / factor + blend * freqs
    scaled = torch.where(wavelength > context / low, freqs / factor, freqs)
    return torch.where((wavelength >= context / high) & (wavelength <= context / low), mid, scaled)


def precompute_freqs_cis(head_dim: int, T: int, theta: float, scaled: bool, device: torch.device) -> torch.Tensor:
    """``precompute_freqs_cis`` (L2 80-104, L3 65-72): e^{i·t·θ^(-2j/head_dim)}, complex64 (T, head_dim/2)."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim)
    if scaled:
        freqs = apply_scaling(freqs)
    angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), freqs)  # (T, head_dim/2)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """``apply_rotary_emb`` (L2 156-161, L3 88-93): adjacent pairs (2j, 2j+1) are one complex number."""
    B, T, H, hd = x.shape
    x_c = torch.view_as_complex(x.float().reshape(B, T, H, hd // 2, 2))  # (B, T, H, hd/2)
    rotated = torch.view_as_real(x_c * freqs_cis[None, :, None, :])  # (B, T, H, hd/2, 2)
    return rotated.reshape(B, T, H, hd).type_as(x)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``RMSNorm`` (L2 63, 76-77; L3 38-42): normalise in float32, cast back, multiply by the plain weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def attention(t: Mapping[str, torch.Tensor], p: str, c: Mapping[str, Any], x: torch.Tensor,
              freqs_cis: torch.Tensor, mask: torch.Tensor, probe: Probe | None = None) -> torch.Tensor:
    """``Attention.forward`` (L2 273-304, L3 171-202) on every rank: rank r holds n_heads/ranks query heads and
    n_kv_heads/ranks kv heads (L2 201-204); ``wo`` is row-parallel, so the ranks' outputs are summed."""
    B, T, _ = x.shape
    hd = c["dim"] // c["n_heads"]
    wq, wk, wv, wo = (t[f"{p}attention.{w}.weight"] for w in ("wq", "wk", "wv", "wo"))
    out, context = None, []
    for r in range(wq.shape[0]):
        q = (x @ wq[r].t()).view(B, T, -1, hd)  # (B, T, local heads, head_dim)
        k = (x @ wk[r].t()).view(B, T, -1, hd)  # (B, T, local kv heads, head_dim)
        v = (x @ wv[r].t()).view(B, T, -1, hd)
        q, k = apply_rotary_emb(q, freqs_cis), apply_rotary_emb(k, freqs_cis)
        n_rep = q.shape[2] // k.shape[2]  # repeat_kv (L2 164-173): kv head j serves q heads j*n_rep ...
        k, v = k.repeat_interleave(n_rep, dim=2), v.repeat_interleave(n_rep, dim=2)  # (B, T, local heads, hd)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, local heads, T, head_dim)
        scores = q @ k.transpose(2, 3) / math.sqrt(hd) + mask  # (B, local heads, T, T)
        scores = F.softmax(scores.float(), dim=-1).type_as(q)
        o = (scores @ v).transpose(1, 2).reshape(B, T, -1)  # (B, T, local heads * head_dim)
        part = o @ wo[r].t()  # (B, T, dim): this rank's share of the row-parallel product
        out, context = part if out is None else out + part, [*context, o]
    if probe is not None:  # wo's input: every rank's heads, in rank order (B, T, n_heads * head_dim)
        probe({p + "attention.wo": (torch.cat(context, dim=-1), out)})
    return out


def feed_forward(t: Mapping[str, torch.Tensor], p: str, x: torch.Tensor) -> torch.Tensor:
    """``FeedForward.forward`` (L2 347-348, L3 224-225): w2(silu(w1 x) * w3 x), w1/w3 column-parallel, w2
    row-parallel: each rank's hidden columns, summed over ranks."""
    w1, w2, w3 = (t[f"{p}feed_forward.{w}.weight"] for w in ("w1", "w2", "w3"))
    out = None
    for r in range(w1.shape[0]):
        part = (F.silu(x @ w1[r].t()) * (x @ w3[r].t())) @ w2[r].t()  # (B, T, dim)
        out = part if out is None else out + part
    return out


def transformer_block(t: Mapping[str, torch.Tensor], p: str, c: Mapping[str, Any], x: torch.Tensor,
                      freqs_cis: torch.Tensor, mask: torch.Tensor, probe: Probe | None = None) -> torch.Tensor:
    """``TransformerBlock.forward`` (L2 406-409, L3 252-254): pre-norm attention, then pre-norm FFN, residual."""
    eps = c.get("norm_eps", 1e-5)
    a = rms_norm(x, replicated(t[p + "attention_norm.weight"]), eps)
    h = x + (att := attention(t, p, c, a, freqs_cis, mask, probe))
    f = rms_norm(h, replicated(t[p + "ffn_norm.weight"]), eps)
    out = h + (ffn := feed_forward(t, p, f))
    if probe is not None:
        probe({p + "attention_norm": (x, a), p + "attention": (a, att), p + "ffn_norm": (h, f),
               p + "feed_forward": (f, ffn)})
    return out
