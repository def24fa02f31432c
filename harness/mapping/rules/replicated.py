"""A tensor every rank file holds whole: rank 0's copy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.mapping import transforms
from harness.mapping.rules.moves_data import MovesData
from harness.mapping.rules.rule import Dims

if TYPE_CHECKING:
    import torch

__all__ = ["Replicated"]


class Replicated(MovesData):
    """A tensor that every rank file holds whole (a norm weight), stacked by rank -> rank 0's copy. The family's
    reader checks that the copies agree; the inverse replicates it (``ranks`` as in ``MergeRanks``): copies, not
    a rearrangement, so it is the one data-moving inverse written out."""

    def __init__(self, source: str, target: str, *, ranks: str | None = None) -> None:
        super().__init__(source, [target])
        self.ranks = ranks

    def layout(self, x: Any, dims: Dims) -> list[Any]:
        return [transforms.first_rank(x)]

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.replicate_rank(tensors[0], dims[self.ranks] if self.ranks else 1)]
