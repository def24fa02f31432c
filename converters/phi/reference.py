"""Independent forward pass of Microsoft's original Phi models (phi-1, phi-1.5, phi-2).

Written from the semantics of the remote code Microsoft shipped on the Hugging Face Hub:

* phi-msft (phi-2): ``modeling_phi.py`` and ``configuration_phi.py``
  (GitHub copy ``awilliamson10/phineas@fe9cf5fbee882184d233356b15298060ec201ab8``);
* mixformer-sequential (phi-1, phi-1.5): ``modeling_mixformer_sequential.py`` and
  ``configuration_mixformer_sequential.py`` (mirror of microsoft/phi-1_5,
  ``StarHawkMK1/myphi@92557d03bb12543040c8bb5f0475cbdd9968f05f``, first upload ``@16982066``).

Only the plain-PyTorch path is mirrored: ``flash_attn``/``flash_rotary``/``fused_dense`` off, eval mode
(dropout is the identity), full causal sequence, no KV cache and no padding mask. Precision follows
phi-msft: rotary cos/sin are built in float32 and rounded to the activation dtype, the rotation, q·k and
softmax run in float32, everything else runs in the dtype of the weights. Never imports transformers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Probe", "forward"]

# Sees named points, each as (input, output); diagnosis records them (forward's docstring lists them).
Probe = Callable[[dict[str, tuple[torch.Tensor, torch.Tensor]]], None]

# Defaults of PhiConfig / MixFormerSequentialConfig.__init__ (identical in both classes) for absent fields.
DEFAULTS: dict[str, Any] = {
    "vocab_size": 50304,
    "n_embd": 1024,
    "n_layer": 20,
    "n_inner": None,  # None means 4 * n_embd (MLP.__init__)
    "n_head": 16,
    "n_head_kv": None,  # None means n_head (_find_mha_dims)
    "rotary_dim": 32,  # clamped to head_dim by the config class
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
}
ROTARY_BASE = 10000.0  # MHA(rotary_base=10000.0); never set from the config
MASK_VALUE = -10000.0  # additive causal mask of SelfAttention, not -inf

# The entries of transformers' ACT2FN that an original config can name, written out in plain torch.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # NewGELUActivation: tanh approximation, evaluated op by op in the input dtype.
    "gelu_new": lambda x: (
        0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3.0))))
    ),
    "gelu": F.gelu,  # GELUActivation: exact erf form
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def forward(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    tokens: torch.Tensor,
    *,
    hidden_states: bool = False,
    probe: Probe | None = None,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Mirror ``PhiForCausalLM.forward`` / ``MixFormerSequentialForCausalLM.forward`` without a cache.

    ``tensors`` is the upstream state dict in either layout; ``tokens`` is (B, T). Returns float32 logits
    (B, T, embedding rows) and, with ``hidden_states=True``, the embedding output followed by every
    block's output, as float32. ``probe``, when given, sees each named point's (input, output), named the same
    in either layout: ``embd``, ``h.N.ln``, ``h.N.mixer`` (``h.N.mixer.out_proj`` inside it), ``h.N.mlp``,
    ``head.ln``, ``head.linear``.

    >>> logits = forward(state_dict, json.load(open("config.json")), torch.tensor([[1, 2, 3]]))
    """
    cfg = _resolve(config)
    prefixes = _layout(tensors, cfg["n_layer"])
    x = embedding(tensors, prefixes["embd"], tokens)  # (B, T, n_embd)
    states = [x.float()]
    for i, block in enumerate(prefixes["blocks"]):
        x = parallel_block(tensors, block, x, cfg, probe and (lambda seen, i=i: probe(_named(f"h.{i}.", seen))))
        states.append(x.float())
    logits = causal_lm_head(tensors, prefixes["head"], x, cfg, probe)  # (B, T, vocab rows)
    if probe is not None:
        probe({"embd": (tokens, states[0])})
    return (logits, states) if hidden_states else logits


def embedding(tensors: Mapping[str, torch.Tensor], prefix: str, tokens: torch.Tensor) -> torch.Tensor:
    """Mirror ``Embedding.forward``: a ``wte`` lookup; ``embd_pdrop`` dropout is off in eval."""
    return F.embedding(tokens, _get(tensors, prefix + "wte.weight"))


def parallel_block(
    tensors: Mapping[str, torch.Tensor], prefix: str, x: torch.Tensor, cfg: Mapping[str, Any],
    probe: Probe | None = None,
) -> torch.Tensor:
    """Mirror ``ParallelBlock.forward``: ONE LayerNorm feeds both the mixer and the MLP.

    ``out = mixer(ln(x)) + mlp(ln(x)) + x``; ``resid_dropout`` is off in eval.
    """
    h = layer_norm(tensors, prefix + "ln.", x, cfg["layer_norm_epsilon"])
    attn, ff = mha(tensors, prefix + "mixer.", h, cfg, probe), mlp(tensors, prefix + "mlp.", h, cfg)
    if probe is not None:
        probe({"ln": (x, h), "mixer": (h, attn), "mlp": (h, ff)})
    return attn + ff + x


def mha(
    tensors: Mapping[str, torch.Tensor], prefix: str, x: torch.Tensor, cfg: Mapping[str, Any],
    probe: Probe | None = None,
) -> torch.Tensor:
    """Mirror ``MHA.forward`` (``_forward_self_attn`` / ``_forward_cross_attn`` without a cache).

    ``Wqkv`` rows are ``[Q | K | V]``, each block head-major: ``"... (h d)"`` for the n_head query heads,
    then ``"... (two hkv d)"`` for keys and values. With n_head == n_head_kv this is the same split as
    ``"... (three h d)"``.
    """
    B, T, _ = x.shape
    H, H_kv, hd = cfg["n_head"], cfg["n_head_kv"], cfg["head_dim"]
    qkv = linear(tensors, prefix + "Wqkv.", x)  # (B, T, hd * (H + 2 * H_kv))
    q = qkv[..., : H * hd].reshape(B, T, H, hd)  # (B, T, n_head, head_dim)
    kv = qkv[..., H * hd :].reshape(B, T, 2, H_kv, hd)  # (B, T, 2, n_head_kv, head_dim)
    k, v = kv.unbind(dim=2)  # each (B, T, n_head_kv, head_dim)
    if cfg["rotary_dim"] > 0:
        cos, sin = rotary_emb(cfg["rotary_dim"], T, x.device, x.dtype)
        q = apply_rotary_emb(q, cos, sin)
        k = apply_rotary_emb(k, cos, sin)
    out = self_attention(q, k, v).reshape(B, T, H * hd)  # (B, T, n_head * head_dim)
    projected = linear(tensors, prefix + "out_proj.", out)  # (B, T, n_embd)
    if probe is not None:
        probe({"mixer.out_proj": (out, projected)})
    return projected


def rotary_emb(
    dim: int, T: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror ``RotaryEmbedding._compute_inv_freq`` and ``_update_cos_sin_cache``.

    Frequencies and positions are float32 (``pos_idx_in_fp32``); the cache is stored in the dtype of the
    qkv activations, so cos/sin are rounded to it. Any stored ``rotary_emb.inv_freq`` is ignored.
    """
    inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    freqs = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)  # (T, dim // 2)
    return torch.cos(freqs).to(dtype), torch.sin(freqs).to(dtype)


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Mirror ``_apply_rotary_emb`` (and the q/k halves of ``_apply_rotary_emb_qkv`` / ``_kv``).

    GPT-NeoX rotate-half on the first ``rotary_dim`` dims of each head, in float32; the rest pass through.
    """
    rotary_dim = 2 * cos.shape[-1]
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    x1, x2 = (t.float() for t in x_rot.chunk(2, dim=-1))  # each (B, T, heads, rotary_dim // 2)
    c, s = cos[:, None, :].float(), sin[:, None, :].float()  # (T, 1, rotary_dim // 2)
    x_rot = torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).to(x.dtype)
    return torch.cat([x_rot, x_pass], dim=-1)


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Mirror ``SelfAttention.forward`` / ``CrossAttention.forward`` (causal, no padding mask).

    KV heads repeat consecutively (``"... hkv d -> ... (hkv g) d"``). q and k are upcast to float32, the
    ``1/sqrt(head_dim)`` scale multiplies k, the causal mask ADDS -10000 (the GQA path fills -10000
    instead; after the float32 softmax both give the same zeros), and the probabilities are cast back to
    the dtype of v for the value product.
    """
    T, H, hd = q.shape[1], q.shape[2], q.shape[3]
    if k.shape[2] != H:
        k = k.repeat_interleave(H // k.shape[2], dim=2)  # (B, T, n_head, head_dim)
        v = v.repeat_interleave(H // v.shape[2], dim=2)  # (B, T, n_head, head_dim)
    scale = 1.0 / math.sqrt(hd)
    scores = torch.einsum("bthd,bshd->bhts", q.float(), k.float() * scale)  # (B, n_head, T, T)
    mask = torch.triu(torch.full((T, T), MASK_VALUE, device=q.device), 1)  # (T, T)
    attention = torch.softmax(scores + mask, dim=-1).to(v.dtype)
    return torch.einsum("bhts,bshd->bthd", attention, v)  # (B, T, n_head, head_dim)


def mlp(
    tensors: Mapping[str, torch.Tensor], prefix: str, x: torch.Tensor, cfg: Mapping[str, Any]
) -> torch.Tensor:
    """Mirror ``MLP.forward``: ``fc2(act(fc1(x)))`` with ``act = ACT2FN[activation_function]``."""
    return linear(tensors, prefix + "fc2.", cfg["act"](linear(tensors, prefix + "fc1.", x)))


def causal_lm_head(
    tensors: Mapping[str, torch.Tensor], prefix: str, x: torch.Tensor, cfg: Mapping[str, Any],
    probe: Probe | None = None,
) -> torch.Tensor:
    """Mirror ``CausalLMHead.forward``: LayerNorm, biased Linear over the padded vocab, cast to float32."""
    h = layer_norm(tensors, prefix + "ln.", x, cfg["layer_norm_epsilon"])
    logits = linear(tensors, prefix + "linear.", h).float()  # (B, T, vocab rows)
    if probe is not None:
        probe({"head.ln": (x, h), "head.linear": (h, logits)})
    return logits


def layer_norm(tensors: Mapping[str, torch.Tensor], prefix: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Mirror ``nn.LayerNorm(n_embd, eps=layer_norm_epsilon)`` with weight and bias."""
    weight = _get(tensors, prefix + "weight")
    return F.layer_norm(x, weight.shape, weight, _get(tensors, prefix + "bias"), eps)


def linear(tensors: Mapping[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """Mirror ``nn.Linear`` with bias (every Linear in Phi has one)."""
    return F.linear(x, _get(tensors, prefix + "weight"), _get(tensors, prefix + "bias"))


def _resolve(config: Mapping[str, Any]) -> dict[str, Any]:
    """Apply the config class defaults and derived sizes (``configuration_phi.py``, ``_find_mha_dims``)."""
    cfg = {name: config.get(name, default) for name, default in DEFAULTS.items()}
    cfg["head_dim"] = cfg["n_embd"] // cfg["n_head"]
    cfg["n_head_kv"] = cfg["n_head_kv"] or cfg["n_head"]
    cfg["rotary_dim"] = min(cfg["rotary_dim"], cfg["head_dim"])
    if cfg["activation_function"] not in ACTIVATIONS:
        raise ValueError(
            f"activation_function {cfg['activation_function']!r} in config is not supported; "
            f"expected one of {sorted(ACTIVATIONS)}"
        )
    cfg["act"] = ACTIVATIONS[cfg["activation_function"]]
    return cfg


def _layout(tensors: Mapping[str, torch.Tensor], n_layer: int) -> dict[str, Any]:
    """Name the key prefixes of the phi-msft or mixformer-sequential layout, detected from the keys."""
    if "transformer.embd.wte.weight" in tensors:  # PhiForCausalLM: transformer.{embd,h} + lm_head
        return {
            "embd": "transformer.embd.",
            "blocks": [f"transformer.h.{i}." for i in range(n_layer)],
            "head": "lm_head.",
        }
    if "layers.0.wte.weight" in tensors:  # MixFormerSequentialForCausalLM: one nn.Sequential `layers`
        return {
            "embd": "layers.0.",
            "blocks": [f"layers.{i + 1}." for i in range(n_layer)],
            "head": f"layers.{n_layer + 1}.",
        }
    raise ValueError(
        "expected a phi-msft ('transformer.embd.wte.weight') or mixformer-sequential ('layers.0.wte.weight') "
        f"state dict; found keys {sorted(tensors)[:5]}..."
    )


def _named(prefix: str, seen: dict[str, tuple[torch.Tensor, torch.Tensor]]
           ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {prefix + name: pair for name, pair in seen.items()}


def _get(tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    """Fetch one weight, failing with the missing name instead of a bare KeyError."""
    if name not in tensors:
        raise KeyError(f"expected tensor {name!r} in the state dict (check n_layer in config.json)")
    return tensors[name]
