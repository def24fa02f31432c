"""Random weights of realistic spread for tiny source models, so that any wrong mapping moves the logits."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping

import torch

__all__ = ["random_weights"]


def random_weights(shapes: Mapping[str, tuple[int, ...]], seed: int, *, norms: Iterable[str] = (),
                   embeddings: Iterable[str] = (), gains: Mapping[str, float] | None = None,
                   dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """One tensor per name, drawn from a generator seeded with ``seed``.

    Names matching a glob in ``norms`` get 1 + 0.25·N(0, 1) (perturbed, so that a (1 + w) vs w or a
    swapped-norm bug shows); ``embeddings`` get N(0, 1); names ending in ``bias`` get 0.1·N(0, 1) (non-zero,
    so a dropped bias shows); every other tensor is a weight with std gain/sqrt(fan_in), fan_in being its
    last dimension and ``gains`` mapping globs to gains (default 1).

    >>> w = random_weights({"ln.weight": (4,), "fc.weight": (3, 4)}, seed=0, norms=["ln.*"])
    >>> sorted(w), w["fc.weight"].shape
    (['fc.weight', 'ln.weight'], torch.Size([3, 4]))
    """
    g = torch.Generator().manual_seed(seed)
    norms, embeddings, gains = list(norms), list(embeddings), dict(gains or {})
    out = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=g, dtype=torch.float32)
        if _matches(name, norms):
            t = 1 + 0.25 * noise
        elif _matches(name, embeddings):
            t = noise
        elif name.endswith("bias"):
            t = 0.1 * noise
        else:
            gain = next((v for pat, v in gains.items() if fnmatch.fnmatchcase(name, pat)), 1.0)
            t = noise * (gain / math.sqrt(shape[-1]))
        out[name] = t.to(dtype)
    return out


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)
