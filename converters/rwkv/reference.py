"""Reference forward pass of BlinkDL's RWKV-4 ("Pile" era), GPT mode over a whole sequence.

Written from the upstream semantics, not from transformers:

* the ``rwkv`` pip package 0.8.32 (ChatRWKV runtime), ``rwkv/model.py``, class ``RWKV``, RWKV-4 path:
  ``att_seq`` (time mixing + WKV loop), ``ffn_seq`` (channel mixing), ``forward`` (embedding, blocks,
  RESCALE_LAYER halving, ``ln_out``, head) — the producer of the stored oracle logits;
* BlinkDL/RWKV-LM ``RWKV-v4neo/src/model_run.py`` (``RWKV_RNN``) and ``src/model.py`` (``RWKV_TimeMix``,
  ``RWKV_ChannelMix``, ``Block``) for where ``ln0`` sits and the tensor layout.

Weights are the checkpoint's own tensors (``nn.Linear`` ``[out, in]`` layout, ``time_mix_*`` ``[1, 1, C]``,
``time_decay``/``time_first`` raw). Everything runs in the weights' dtype except the WKV recurrence, which
upstream keeps in float32 (k and v are upcast, the output is cast back). Sizes come from tensor shapes only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Probe", "forward"]

# Sees named points, each as (input, output); diagnosis records them (forward's docstring lists them).
Probe = Callable[[dict[str, tuple[torch.Tensor, torch.Tensor]]], None]

LN_EPS = 1e-5  # F.layer_norm default; the runtime passes no eps (pkg model.py), RWKV-LM uses nn.LayerNorm
PP_INIT = -1e30  # initial running max exponent of a fresh state (pkg forward: zeros - 1e30)


def layer_norm(x: torch.Tensor, tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    """Affine LayerNorm over the last dim, as ``F.layer_norm(x, (C,), w, b)`` everywhere upstream."""
    return F.layer_norm(x, (x.shape[-1],), tensors[f"{name}.weight"], tensors[f"{name}.bias"], LN_EPS)


def time_shift(xx: torch.Tensor) -> torch.Tensor:
    """Previous token's activations, zero before the first token of a fresh state.

    Mirrors ``torch.cat((sx.unsqueeze(0), xx[:-1,:]))`` in ``att_seq``/``ffn_seq`` with ``sx = 0``
    (RWKV-LM: ``nn.ZeroPad2d((0, 0, 1, -1))``).
    """
    return F.pad(xx, (0, 0, 1, -1))  # (B, T, C): row t holds xx[:, t-1], row 0 is zero


def wkv(time_decay: torch.Tensor, time_first: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The numerically stabilised WKV recurrence, the ``for t in range(T)`` loop of ``att_seq``.

    ``k``, ``v``: float32 ``(B, T, dim_att)``. State ``aa`` (weighted sum of v), ``bb`` (sum of weights) and
    ``pp`` (their common exponent) are float32 ``(B, dim_att)``, vectorised over the batch.
    """
    w = -torch.exp(time_decay.float())  # pkg load: time_decay -> -exp(w); per-step decay factor exp(w)
    u = time_first.float()  # v4 uses the bonus raw: ww = time_first + k
    B, T, A = k.shape
    aa = torch.zeros(B, A, dtype=torch.float32, device=k.device)
    bb = torch.zeros(B, A, dtype=torch.float32, device=k.device)
    pp = torch.full((B, A), PP_INIT, dtype=torch.float32, device=k.device)
    out = []
    for t in range(T):
        kk, vv = k[:, t], v[:, t]  # (B, A)
        ww = u + kk  # the current token gets the bonus u instead of a decay
        p = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
        out.append((e1 * aa + e2 * vv) / (e1 * bb + e2))
        ww = w + pp  # decay the past, then add the current token without bonus
        p = torch.maximum(ww, kk)
        e1, e2 = torch.exp(ww - p), torch.exp(kk - p)
        aa, bb, pp = e1 * aa + e2 * vv, e1 * bb + e2, p
    return torch.stack(out, dim=1)  # (B, T, A)


def time_mixing(
    x: torch.Tensor, tensors: Mapping[str, torch.Tensor], layer: int, scale: float, probe: Probe | None = None
) -> torch.Tensor:
    """``RWKV.att_seq`` (RWKV-LM ``RWKV_TimeMix``): returns the attention branch, without the residual.

    ``scale`` is the RESCALE_LAYER divisor of ``att.output.weight`` (1 when rescaling is off).
    """
    att = f"blocks.{layer}.att"
    xx = layer_norm(x, tensors, f"blocks.{layer}.ln1")
    sx = time_shift(xx)  # (B, T, C)
    mix_k, mix_v, mix_r = (tensors[f"{att}.time_mix_{c}"] for c in "kvr")  # (1, 1, C) each
    kx = xx * mix_k + sx * (1 - mix_k)
    vx = xx * mix_v + sx * (1 - mix_v)
    rx = xx * mix_r + sx * (1 - mix_r)
    r = torch.sigmoid(F.linear(rx, tensors[f"{att}.receptance.weight"]))  # (B, T, A)
    k = F.linear(kx, tensors[f"{att}.key.weight"]).float()  # (B, T, A), upcast as output_dtype=float32
    v = F.linear(vx, tensors[f"{att}.value.weight"]).float()  # (B, T, A)
    y = wkv(tensors[f"{att}.time_decay"], tensors[f"{att}.time_first"], k, v).to(x.dtype)
    # Upstream divides the weight at load (pkg model.py, RESCALE_LAYER); a new tensor, input left untouched.
    out = F.linear(r * y, tensors[f"{att}.output.weight"] / scale)  # (B, T, C)
    if probe is not None:
        probe({f"blocks.{layer}.ln1": (x, xx), att: (xx, out)})
    return out


def channel_mixing(
    x: torch.Tensor, tensors: Mapping[str, torch.Tensor], layer: int, scale: float, probe: Probe | None = None
) -> torch.Tensor:
    """``RWKV.ffn_seq`` (RWKV-LM ``RWKV_ChannelMix``): ``sigmoid(r(xr)) * value(relu(key(xk))**2)``.

    ``scale`` is the RESCALE_LAYER divisor of ``ffn.value.weight`` (1 when rescaling is off).
    """
    ffn = f"blocks.{layer}.ffn"
    xx = layer_norm(x, tensors, f"blocks.{layer}.ln2")
    sx = time_shift(xx)  # (B, T, C)
    mix_k, mix_r = tensors[f"{ffn}.time_mix_k"], tensors[f"{ffn}.time_mix_r"]  # (1, 1, C) each
    kx = xx * mix_k + sx * (1 - mix_k)
    rx = xx * mix_r + sx * (1 - mix_r)
    r = torch.sigmoid(F.linear(rx, tensors[f"{ffn}.receptance.weight"]))  # (B, T, C)
    kv = torch.square(torch.relu(F.linear(kx, tensors[f"{ffn}.key.weight"])))  # (B, T, dim_ffn)
    out = r * F.linear(kv, tensors[f"{ffn}.value.weight"] / scale)  # (B, T, C)
    if probe is not None:
        probe({f"blocks.{layer}.ln2": (x, xx), ffn: (xx, out)})
    return out


def forward(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    tokens: torch.Tensor,
    *,
    hidden_states: bool = False,
    probe: Probe | None = None,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """``RWKV.forward(tokens, None, full_output=True)`` batched: logits for every position from a fresh state.

    ``tokens``: ``(B, T)`` int64. ``config`` may be empty; ``config["rescale_every"]`` (default 0, the
    runtime's fp32 setting) is upstream's RESCALE_LAYER. Returns float32 ``(B, T, vocab)`` logits and, with
    ``hidden_states=True``, float32 ``(B, T, C)`` activations: the block-0 input (embedding after ``ln0``),
    then each block's output (after the RESCALE_LAYER halving, i.e. what the next block receives).
    ``probe``, when given, sees each named point's (input, output): ``emb``, ``blocks.0.ln0``, ``blocks.N.ln1``,
    ``blocks.N.att``, ``blocks.N.ln2``, ``blocks.N.ffn``, ``ln_out``, ``head``.

    Example: ``forward(torch.load(path, weights_only=True), {}, torch.tensor([[0, 5, 7]]))``.
    """
    if tokens.dim() != 2:
        raise ValueError(f"expected tokens of shape (B, T), found {tuple(tokens.shape)}; add a batch dim")
    rescale_every = int(config.get("rescale_every", 0) or 0)
    n_layer = 1 + max(int(name.split(".")[1]) for name in tensors if name.startswith("blocks."))
    # ln0 applied at run time in the weights' dtype (RWKV-LM Block, layer 0); the pip runtime folds it into the
    # embedding table at load, which for a bf16 file is the only deviation from this path (README fact 9).
    emb = F.embedding(tokens, tensors["emb.weight"])  # (B, T, C)
    x = layer_norm(emb, tensors, "blocks.0.ln0")  # (B, T, C)
    states = [x.float()]
    for i in range(n_layer):
        scale = float(2 ** (i // rescale_every)) if rescale_every > 0 else 1.0
        x = x + time_mixing(x, tensors, i, scale, probe)
        x = x + channel_mixing(x, tensors, i, scale, probe)
        if rescale_every > 0 and (i + 1) % rescale_every == 0:
            x = x / 2  # pkg forward; a no-op for the logits up to LayerNorm eps (scale invariance)
        states.append(x.float())
    normed = layer_norm(x, tensors, "ln_out")  # (B, T, C)
    logits = F.linear(normed, tensors["head.weight"]).float()  # (B, T, vocab)
    if probe is not None:
        probe({"emb": (tokens, emb), "blocks.0.ln0": (emb, states[0]), "ln_out": (x, normed), "head": (normed, logits)})
    return (logits, states) if hidden_states else logits
