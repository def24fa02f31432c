"""A fused int8 [q | k | v] weight and its per-row scale -> three float blocks: a rule that computes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.mapping import transforms
from harness.mapping.rules.dequantize import unit_scaled
from harness.mapping.rules.rule import Dims, Rule
from harness.mapping.rules.split import Split

if TYPE_CHECKING:
    import torch

__all__ = ["DequantizeSplit"]


class DequantizeSplit(Rule):
    """A fused int8 [q | k | v] weight + per-row scaler -> three float blocks (gemma_pytorch ``quant=True``).

    Per-row scales commute with the row split, so this is the ``Split`` layout of ``dequantize(w, s)``; the
    inverse merges with that layout's inverse and re-quantises per row.
    """

    source_dtypes = {0: ("int8",)}
    inverse_exact = False

    def __init__(self, weight: str, scaler: str, targets: Sequence[str], *, heads: str = "n_heads",
                 kv_heads: str = "n_kv_heads", head_dim: str = "head_dim") -> None:
        super().__init__([weight, scaler], targets)
        self.split = Split(weight, targets, heads=heads, kv_heads=kv_heads, head_dim=head_dim)

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return self.split.forward([transforms.dequantize(tensors[0], tensors[1], tensors[1].dtype)], dims)

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return transforms.quantize(self.split.inverse(tensors, dims)[0])

    def express(self, outputs: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return unit_scaled(self.split.inverse(outputs, dims)[0])
