"""Tensor transforms: pure functions of tensors and explicit integers, never config objects, so the same function
serves every family and size. All of them also run on the meta device, which is how output shapes are planned
before any data is read.

The rearrangements (the rotary permutation, the qkv split and grouping, expert blocks, the vocabulary cut, rank
joins) are written once, here, with only ``reshape``, ``swapaxes``, slicing and indexing, which numpy arrays share
with tensors: a data-moving rule's layout (``harness.mapping.rules.moves_data``) runs them on segment numbers to
derive its inverse and its byte plan, so none has a hand-written inverse. The transforms that compute
(dequantisation, the unit offset of a norm) come with theirs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the functions that call it: the rule tables load without it
    import torch

__all__ = [
    "add_unit_offset", "cut_vocab", "dequantize", "group_qkv_by_kind", "permute_rotary", "quantize",
    "remove_unit_offset", "split_qkv", "transpose", "unstack_experts",
]


def permute_rotary(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Reorder q/k projection rows from interleaved-pair rotary (Meta, Mistral) to rotate-half (transformers).

    Within each head, output rows (0, 1, 2, 3, ...) pair up as (2i, 2i+1) upstream; transformers pairs row i with
    row i + head_dim/2, so the even rows of a head go first, then the odd ones.
    """
    rest = w.shape[1:]
    # (n_heads, head_dim/2, 2, *rest) -> (n_heads, 2, head_dim/2, *rest)
    return w.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(n_heads * head_dim, *rest)


def split_qkv(w: torch.Tensor, n_heads: int, n_kv_heads: int, head_dim: int) -> list[torch.Tensor]:
    """Split a fused [q | k | v] projection (rows: heads·hd, kv·hd, kv·hd) into its three blocks."""
    q_rows, kv_rows = n_heads * head_dim, n_kv_heads * head_dim
    if w.shape[0] != q_rows + 2 * kv_rows:
        raise ValueError(f"fused qkv has {w.shape[0]} rows, expected {q_rows} + 2 x {kv_rows}")
    return [w[:q_rows], w[q_rows: q_rows + kv_rows], w[q_rows + kv_rows:]]


def group_qkv_by_kind(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Per-head fused rows [head, (q, k, v), head_dim] (Megatron) -> [q of all heads | k | v] (GPT-2)."""
    rest = w.shape[1:]
    # (n_heads, 3, head_dim, *rest) -> (3, n_heads, head_dim, *rest)
    return w.reshape(n_heads, 3, head_dim, *rest).swapaxes(0, 1).reshape(3 * n_heads * head_dim, *rest)


def transpose(w: torch.Tensor) -> torch.Tensor:
    """Swap the two axes of a matrix (nn.Linear [out, in] <-> Conv1D [in, out]); its own inverse."""
    return w.t()


def unstack_experts(w: torch.Tensor, n_experts: int) -> list[torch.Tensor]:
    """Cut a row-stacked expert tensor [E·rows, cols] into E blocks."""
    if n_experts < 1 or w.shape[0] % n_experts:
        raise ValueError(f"{w.shape[0]} rows do not split into {n_experts} equal expert blocks")
    size = w.shape[0] // n_experts
    return [w[e * size: (e + 1) * size] for e in range(n_experts)]


def add_unit_offset(w: torch.Tensor) -> torch.Tensor:
    """Norm weight stored as w for a (1 + w) formula -> the plain multiplier (1 + w)."""
    return w + 1


def remove_unit_offset(w: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`add_unit_offset` (exact for the values it produced, up to float rounding)."""
    return w - 1


def cut_vocab(w: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Keep the first ``vocab_size`` rows of a padded embedding (Megatron pads to a multiple of 128)."""
    if w.shape[0] < vocab_size:
        raise ValueError(f"embedding has {w.shape[0]} rows, fewer than the vocabulary size {vocab_size}")
    return w[:vocab_size]


def dequantize(weight: torch.Tensor, scaler: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """int8 rows times a per-row float scale (gemma_pytorch ``quant=True``), in ``dtype`` (default float32)."""
    import torch

    dtype = dtype or torch.float32
    return weight.to(dtype) * scaler.to(dtype).unsqueeze(-1)


def quantize(w: torch.Tensor) -> list[torch.Tensor]:
    """Symmetric per-row int8 quantisation; inverse of :func:`dequantize` for the values it produces."""
    import torch

    scaler = w.abs().amax(dim=-1).clamp_min(1e-12) / 127
    return [torch.round(w / scaler.unsqueeze(-1)).clamp(-127, 127).to(torch.int8), scaler.float()]


__all__ += ["concat_ranks", "first_rank", "replicate_rank"]


def concat_ranks(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Model-parallel slices stacked by rank [ranks, *slice] -> the whole tensor, joined along ``dim`` of a slice.

    Rank r's slice comes r-th, as fairscale's all-gather orders them (column-parallel: dim 0, row-parallel:
    dim 1). Along dim 0 this is a view, no copy.

    >>> import torch
    >>> concat_ranks(torch.tensor([[[0, 1]], [[2, 3]]]), dim=1).tolist()
    [[0, 1, 2, 3]]
    """
    ranks, *shape = w.shape
    for axis in range(dim):  # (ranks, *shape) -> (*shape[:dim], ranks, shape[dim], ...), in swaps numpy shares
        w = w.swapaxes(axis, axis + 1)
    # ... -> (..., ranks * shape[dim], ...): along dim 0, a view of the stacked rows, no copy
    return w.reshape(*shape[:dim], ranks * shape[dim], *shape[dim + 1:])


def first_rank(w: torch.Tensor) -> torch.Tensor:
    """A tensor every rank holds whole (a norm weight), stacked by rank -> rank 0's copy."""
    return w[0]


def replicate_rank(w: torch.Tensor, ranks: int) -> torch.Tensor:
    """Inverse of :func:`first_rank`: the same copy for each of ``ranks`` ranks, stacked."""
    return w.unsqueeze(0).expand(ranks, *w.shape)
