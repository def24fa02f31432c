"""Megatron's per-head fused qkv rows regrouped by kind."""

from __future__ import annotations

from typing import Any

from harness.mapping import transforms
from harness.mapping.rules.moves_data import MovesData
from harness.mapping.rules.rule import Dims

__all__ = ["GroupQKV"]


class GroupQKV(MovesData):
    """Per-head fused qkv rows [head, (q, k, v), hd] (Megatron) -> [q | k | v], optionally transposed (Conv1D)."""

    def __init__(self, source: str, target: str, *, heads: str = "n_heads", head_dim: str = "head_dim",
                 transpose: bool = False) -> None:
        super().__init__(source, [target])
        self.heads, self.head_dim, self.transposes = heads, head_dim, transpose

    def layout(self, x: Any, dims: Dims) -> list[Any]:
        return [transforms.group_qkv_by_kind(x, dims[self.heads], dims[self.head_dim])]
