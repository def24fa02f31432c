"""Column-parallel q/k rank slices merged, then permuted to rotate-half."""

from __future__ import annotations

from typing import Any

from harness.mapping import transforms
from harness.mapping.rules.merge_ranks import MergeRanks
from harness.mapping.rules.rule import Dims

__all__ = ["MergeRotary"]


class MergeRotary(MergeRanks):
    """Column-parallel q/k rank slices merged on dim 0, then permuted from interleaved-pair rotary to rotate-half
    per head of ``head_dim`` rows. Each rank holds whole, contiguous heads, so the permutation runs on the merged
    matrix with the model's head count (``heads="n_kv_heads"`` for k under grouped-query attention).
    """

    def __init__(self, source: str, target: str, *, heads: str, head_dim: str = "head_dim",
                 ranks: str | None = None) -> None:
        super().__init__(source, target, dim=0, ranks=ranks)
        self.heads, self.head_dim = heads, head_dim

    def layout(self, x: Any, dims: Dims) -> list[Any]:
        merged = transforms.concat_ranks(x, 0)
        return [transforms.permute_rotary(merged, dims[self.heads], dims[self.head_dim])]

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, heads={self.heads})"
