"""Padded embedding rows cut to the real vocabulary."""

from __future__ import annotations

from typing import Any

from harness.mapping import transforms
from harness.mapping.rules.moves_data import MovesData, Shape
from harness.mapping.rules.rule import Dims

__all__ = ["CutVocab"]


class CutVocab(MovesData):
    """Padded embedding rows cut to the real vocabulary (``rows`` names the dims entry holding its size)."""

    inverse_exact = False  # the padding rows come back as zeros

    def __init__(self, source: str, target: str, *, rows: str = "vocab_size", padded: str = "padded_vocab_size"
                 ) -> None:
        super().__init__(source, [target])
        self.rows, self.padded = rows, padded

    def layout(self, x: Any, dims: Dims) -> list[Any]:
        return [transforms.cut_vocab(x, dims[self.rows])]

    def source_shape(self, shapes: list[Shape], dims: Dims) -> Shape:
        return (dims[self.padded], *shapes[0][1:])
