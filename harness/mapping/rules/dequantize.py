"""int8 weight and per-row float scale -> one float weight (gemma_pytorch ``quant=True``): a rule that computes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.mapping import transforms
from harness.mapping.rules.rule import Dims, Rule

if TYPE_CHECKING:
    import torch

__all__ = ["Dequantize", "unit_scaled"]


class Dequantize(Rule):
    """int8 ``weight`` + float ``weight_scaler`` -> one float weight; the inverse re-quantises per row."""

    source_dtypes = {0: ("int8",)}  # gemma_pytorch quant=True weights
    inverse_exact = False  # exact only for the values a quantisation produced

    def __init__(self, weight: str, scaler: str, target: str) -> None:
        super().__init__([weight, scaler], [target])

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.dequantize(tensors[0], tensors[1], tensors[1].dtype)]

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return transforms.quantize(tensors[0])

    def express(self, outputs: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return unit_scaled(outputs[0])


def unit_scaled(weight: torch.Tensor) -> list[torch.Tensor]:
    """A float weight with a per-row scale of one: ``dequantize`` gives back exactly ``weight``."""
    import torch

    return [weight, torch.ones(weight.shape[0], dtype=torch.float32)]
