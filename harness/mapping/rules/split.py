"""A fused [q | k | v] tensor split by rows into its three blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.mapping import transforms
from harness.mapping.rules.moves_data import MovesData
from harness.mapping.rules.rule import Dims

__all__ = ["Split"]


class Split(MovesData):
    """A fused [q | k | v] tensor split by rows into three (GQA-aware: q rows = heads·hd, k = v = kv·hd)."""

    def __init__(self, source: str, targets: Sequence[str], *, heads: str = "n_heads",
                 kv_heads: str = "n_kv_heads", head_dim: str = "head_dim") -> None:
        super().__init__(source, targets)
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim

    def layout(self, x: Any, dims: Dims) -> list[Any]:
        return transforms.split_qkv(x, dims[self.heads], dims[self.kv_heads], dims[self.head_dim])
