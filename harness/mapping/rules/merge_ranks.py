"""Model-parallel rank slices joined into one tensor."""

from __future__ import annotations

from typing import Any

from harness.mapping import transforms
from harness.mapping.rules.moves_data import MovesData, Shape
from harness.mapping.rules.rule import Dims

__all__ = ["MergeRanks"]


class MergeRanks(MovesData):
    """Model-parallel rank slices -> one tensor. The source is stacked by rank, [ranks, *slice] (rank r's file
    at index r), and the slices are joined along ``dim`` of a slice: fairscale's ColumnParallelLinear and
    VocabParallelEmbedding split dim 0, RowParallelLinear and ParallelEmbedding dim 1.

    The inverse writes ``dims[ranks]`` slices, or one when ``ranks`` is None: a model-parallel degree that the
    config does not state is a property of the files, not of the model (a family's ``write`` reshards).
    """

    def __init__(self, source: str, target: str, *, dim: int, ranks: str | None = None) -> None:
        super().__init__(source, [target])
        self.dim, self.ranks = dim, ranks
        # [ranks, rows, ...]: a join along a later axis takes, for each row, the part of it from every rank
        self.segment_axes = 2 + max(dim - 1, 0)

    def layout(self, x: Any, dims: Dims) -> list[Any]:
        return [transforms.concat_ranks(x, self.dim)]

    def source_shape(self, shapes: list[Shape], dims: Dims) -> Shape:
        ranks, shape = dims[self.ranks] if self.ranks else 1, shapes[0]
        if len(shape) <= self.dim or shape[self.dim] % ranks:
            raise ValueError(f"{shape} does not split into {ranks} equal rank slices along dimension {self.dim}")
        return (ranks, *shape[:self.dim], shape[self.dim] // ranks, *shape[self.dim + 1:])

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, dim={self.dim})"
