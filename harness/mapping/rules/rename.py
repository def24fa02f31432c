"""The tensor copied unchanged under a new name."""

from __future__ import annotations

from typing import Any

from harness.mapping.rules.moves_data import MovesData
from harness.mapping.rules.rule import Dims

__all__ = ["Rename"]


class Rename(MovesData):
    """The tensor is copied unchanged under a new name."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__(source, [target])

    def layout(self, x: Any, dims: Dims) -> list[Any]:
        return [x]
