"""Tensor transforms, each a pair of pure functions: the forward beside its inverse.

Arguments are tensors and explicit integers, never config objects, so the same function serves every family
and size. Every pair is property-tested: ``inverse(forward(x))`` is bit-exact and element counts are kept.
All functions also run on the meta device, which is how output shapes are planned before any data is read.

The rearrangements of rows (the rotary permutation, the qkv split and grouping, expert blocks, the vocabulary cut,
rank joins along rows) use only ``reshape``, ``swapaxes`` and slicing, which numpy arrays share with tensors: run on
an array of row numbers, the same function says where each output row comes from. That is the byte path's plan
(``harness.mapping.byte_plans``): the permutation is written once, here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the functions that call it: the rule tables load without it
    import torch

__all__ = [
    "add_unit_offset", "cut_vocab", "dequantize", "group_qkv_by_head", "group_qkv_by_kind", "merge_qkv",
    "invert_rows", "pad_vocab", "permute_rotary", "quantize", "remove_unit_offset", "split_qkv", "stack_experts",
    "transpose", "unstack_experts",
]


def permute_rotary(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Reorder q/k projection rows from interleaved-pair rotary (Meta, Mistral) to rotate-half (transformers).

    Within each head, output rows (0, 1, 2, 3, ...) pair up as (2i, 2i+1) upstream; transformers pairs row i with
    row i + head_dim/2, so the even rows of a head go first, then the odd ones.
    """
    rest = w.shape[1:]
    # (n_heads, head_dim/2, 2, *rest) -> (n_heads, 2, head_dim/2, *rest)
    return w.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(n_heads * head_dim, *rest)


def invert_rows(forward: Callable[[Any], Any], w: torch.Tensor) -> torch.Tensor:
    """The inverse of ``forward``, a rearrangement that keeps every row of its input once: run on row numbers, it
    says where each output row came from, and each row of ``w`` goes back there. A data-movement rule's inverse
    is thus derived from its one layout, never written a second time.

    >>> import torch
    >>> invert_rows(lambda rows: permute_rotary(rows, 1, 4), torch.tensor([0, 2, 1, 3])).tolist()
    [0, 1, 2, 3]
    """
    import numpy as np
    import torch

    came_from = np.asarray(forward(np.arange(w.shape[0]))).reshape(-1)
    if not np.array_equal(np.sort(came_from), np.arange(w.shape[0])):
        raise ValueError(f"not a rearrangement of {w.shape[0]} rows: no inverse by rows")
    return w.index_select(0, torch.as_tensor(np.argsort(came_from), device=w.device))


def split_qkv(w: torch.Tensor, n_heads: int, n_kv_heads: int, head_dim: int) -> list[torch.Tensor]:
    """Split a fused [q | k | v] projection (rows: heads·hd, kv·hd, kv·hd) into its three blocks."""
    q_rows, kv_rows = n_heads * head_dim, n_kv_heads * head_dim
    if w.shape[0] != q_rows + 2 * kv_rows:
        raise ValueError(f"fused qkv has {w.shape[0]} rows, expected {q_rows} + 2 x {kv_rows}")
    return [w[:q_rows], w[q_rows: q_rows + kv_rows], w[q_rows + kv_rows:]]


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_qkv`."""
    import torch

    return torch.cat([q, k, v], dim=0)


def group_qkv_by_kind(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Per-head fused rows [head, (q, k, v), head_dim] (Megatron) -> [q of all heads | k | v] (GPT-2)."""
    rest = w.shape[1:]
    # (n_heads, 3, head_dim, *rest) -> (3, n_heads, head_dim, *rest)
    return w.reshape(n_heads, 3, head_dim, *rest).swapaxes(0, 1).reshape(3 * n_heads * head_dim, *rest)


def group_qkv_by_head(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Inverse of :func:`group_qkv_by_kind`."""
    rest = w.shape[1:]
    # (3, n_heads, head_dim, *rest) -> (n_heads, 3, head_dim, *rest)
    return w.reshape(3, n_heads, head_dim, *rest).swapaxes(0, 1).reshape(3 * n_heads * head_dim, *rest)


def transpose(w: torch.Tensor) -> torch.Tensor:
    """Swap the two axes of a matrix (nn.Linear [out, in] <-> Conv1D [in, out]); its own inverse."""
    return w.t()


def unstack_experts(w: torch.Tensor, n_experts: int, transpose_blocks: bool = False) -> list[torch.Tensor]:
    """Cut a row-stacked expert tensor [E·rows, cols] into E blocks, each optionally transposed."""
    if n_experts < 1 or w.shape[0] % n_experts:
        raise ValueError(f"{w.shape[0]} rows do not split into {n_experts} equal expert blocks")
    size = w.shape[0] // n_experts
    blocks = [w[e * size: (e + 1) * size] for e in range(n_experts)]
    return [b.t() for b in blocks] if transpose_blocks else blocks


def stack_experts(blocks: list[torch.Tensor], transpose_blocks: bool = False) -> torch.Tensor:
    """Inverse of :func:`unstack_experts`."""
    import torch

    return torch.cat([b.t() for b in blocks] if transpose_blocks else blocks, dim=0)


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


def pad_vocab(w: torch.Tensor, rows: int) -> torch.Tensor:
    """Inverse of :func:`cut_vocab` up to the padding rows, which come back as zeros."""
    import torch

    return torch.cat([w, w.new_zeros(rows - w.shape[0], *w.shape[1:])], dim=0)


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


__all__ += ["concat_ranks", "first_rank", "replicate_rank", "split_ranks"]


def concat_ranks(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Model-parallel slices stacked by rank [ranks, *slice] -> the whole tensor, joined along ``dim`` of a slice.

    Rank r's slice comes r-th, as fairscale's all-gather orders them (column-parallel: dim 0, row-parallel:
    dim 1). Along dim 0 this is a view, no copy.

    >>> import torch
    >>> concat_ranks(torch.tensor([[[0, 1]], [[2, 3]]]), dim=1).tolist()
    [[0, 1, 2, 3]]
    """
    ranks, *shape = w.shape
    if dim == 0:  # the stacked rows are the merged rows: a reshape (row numbers take this path too)
        return w.reshape(ranks * shape[0], *shape[1:])
    # (ranks, *shape) -> (*shape[:dim], ranks, shape[dim], *shape[dim+1:]) -> (..., ranks * shape[dim], ...)
    return w.movedim(0, dim).reshape(*shape[:dim], ranks * shape[dim], *shape[dim + 1:])


def split_ranks(w: torch.Tensor, ranks: int, dim: int) -> torch.Tensor:
    """Inverse of :func:`concat_ranks`: ``ranks`` equal contiguous chunks along ``dim``, stacked by rank."""
    shape = w.shape
    if shape[dim] % ranks:
        raise ValueError(f"dimension {dim} of size {shape[dim]} does not split into {ranks} equal rank slices")
    # (..., shape[dim], ...) -> (..., ranks, shape[dim] / ranks, ...) -> (ranks, *slice)
    return w.reshape(*shape[:dim], ranks, shape[dim] // ranks, *shape[dim + 1:]).movedim(dim, 0)


def first_rank(w: torch.Tensor) -> torch.Tensor:
    """A tensor every rank holds whole (a norm weight), stacked by rank -> rank 0's copy."""
    return w[0]


def replicate_rank(w: torch.Tensor, ranks: int) -> torch.Tensor:
    """Inverse of :func:`first_rank`: the same copy for each of ``ranks`` ranks, stacked."""
    return w.unsqueeze(0).expand(ranks, *w.shape)
