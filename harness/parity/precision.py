"""The float32 noise floor of a reference: how far its float32 logits sit from the same forward in float64.

References mirror upstream's explicit upcasts (``x.float()`` before a norm or a softmax). In a float64 run
those calls must not narrow back to float32, so inside :func:`float64_compute` ``Tensor.float()`` keeps
float64 tensors as they are; everything else is ordinary torch. The floor is measured on the host that runs
the check, so a bound derived from it holds on every CPU, whatever its kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["FLOOR_FACTOR", "float64_compute", "noise_bound", "reference_noise_floor"]

# Two correct float32 implementations (upstream's and ours) each sit about one floor from the exact logits:
# measured over the 21 upstream oracle cases, |converted - upstream| <= 1.5 x floor. 4 leaves room for a
# CPU whose kernels round less favourably, and stays far below what a planted bug moves (>= 4.8e-4).
FLOOR_FACTOR = 4.0


@contextmanager
def float64_compute() -> Iterator[None]:
    """Within the block, ``t.float()`` leaves float64 (and complex128) tensors in their precision.

    >>> with float64_compute():
    ...     torch.zeros(1, dtype=torch.float64).float().dtype
    torch.float64
    >>> torch.zeros(1, dtype=torch.float64).float().dtype
    torch.float32
    """
    narrowing = torch.Tensor.float

    def keep_wide(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if self.dtype in (torch.float64, torch.complex128):
            return self
        return narrowing(self, *args, **kwargs)

    torch.Tensor.float = keep_wide  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.float = narrowing  # type: ignore[method-assign]


def reference_noise_floor(forward: Callable[..., torch.Tensor], tensors: Mapping[str, torch.Tensor],
                          config: Mapping[str, Any], tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The reference's float32 logits and their max |float32 - float64| (at least one float32 ulp of the scale).

    ``forward(tensors, config, tokens)`` is a family's reference; ``tensors`` may be in any dtype.
    """
    def cast(dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {k: (t.to(dtype) if t.is_floating_point() else t) for k, t in tensors.items()}

    with torch.no_grad():
        logits32 = forward(cast(torch.float32), config, tokens).float()
        with float64_compute():
            logits64 = forward(cast(torch.float64), config, tokens).double()
    ulp = logits64.abs().max().item() * 2.0**-23
    return logits32, max((logits32.double() - logits64).abs().max().item(), ulp)


def noise_bound(floor: float) -> float:
    """The bound a correct float32 result is held to, given the measured floor."""
    return FLOOR_FACTOR * floor
