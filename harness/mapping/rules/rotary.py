"""q/k projection rows from interleaved-pair rotary (Meta, Mistral) to rotate-half (transformers)."""

from __future__ import annotations

from typing import Any

from harness.mapping import transforms
from harness.mapping.rules.moves_data import MovesData
from harness.mapping.rules.rule import Dims

__all__ = ["Rotary"]


class Rotary(MovesData):
    """q/k projection rows from interleaved-pair rotary to rotate-half, per head of ``head_dim`` rows."""

    def __init__(self, source: str, target: str, *, heads: str, head_dim: str = "head_dim") -> None:
        super().__init__(source, [target])
        self.heads, self.head_dim = heads, head_dim

    def layout(self, x: Any, dims: Dims) -> list[Any]:
        return [transforms.permute_rotary(x, dims[self.heads], dims[self.head_dim])]
