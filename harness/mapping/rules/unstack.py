"""One row-stacked tensor of all experts -> one tensor per expert."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.mapping import transforms
from harness.mapping.rules.moves_data import MovesData
from harness.mapping.rules.rule import Dims

__all__ = ["Unstack"]


class Unstack(MovesData):
    """One row-stacked tensor of all experts -> one tensor per expert (``{expert}`` only in the target), each
    block transposed where ``transpose_blocks``."""

    def __init__(self, source: str, target: str, *, over: str = "expert", count: str = "n_experts",
                 transpose_blocks: bool = False) -> None:
        self.extra = over
        super().__init__(source, [target])
        self.count, self.transposes = count, transpose_blocks

    def target_keys(self, binding: Mapping[str, int], dims: Dims) -> list[str]:
        return [self.targets[0].format({**binding, self.extra: e}) for e in range(dims[self.count])]

    def layout(self, x: Any, dims: Dims) -> list[Any]:
        return transforms.unstack_experts(x, dims[self.count])
