"""A matrix with its two axes swapped: nn.Linear [out, in] <-> Conv1D [in, out]."""

from __future__ import annotations

from typing import Any

from harness.mapping.rules.moves_data import MovesData
from harness.mapping.rules.rule import Dims

__all__ = ["Transpose"]


class Transpose(MovesData):
    """nn.Linear [out, in] <-> Conv1D [in, out]."""

    transposes = True

    def __init__(self, source: str, target: str) -> None:
        super().__init__(source, [target])

    def layout(self, x: Any, dims: Dims) -> list[Any]:
        return [x]
