"""Random weights of realistic spread for tiny source models, so that any wrong mapping moves the logits.

The weights must be the same bits on every host: goldens hash them, and a verdict that depends on the CPU is
worthless. ``torch.randn`` is not (its vectorised Box-Muller kernel rounds differently per ISA and
``ATEN_CPU_CAPABILITY``), so draws here use only operations that IEEE 754 defines to the bit: a counter-based
integer hash (exact int64 arithmetic), 24-bit uniforms, and float64 ``+ - x / sqrt``, rounded once to float32.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from collections.abc import Iterable, Mapping

import torch

__all__ = ["random_normal", "random_uniform", "random_weights"]

_MASK32 = 0xFFFFFFFF
_UNIFORMS_PER_NORMAL = 4  # Irwin-Hall: the sum of 4 uniforms has variance 4/12, scaled by sqrt(3) to 1


def random_weights(shapes: Mapping[str, tuple[int, ...]], seed: int, *, norms: Iterable[str] = (),
                   embeddings: Iterable[str] = (), gains: Mapping[str, float] | None = None,
                   dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """One tensor per name, each drawn from its own stream keyed by ``(seed, name)``.

    Names matching a glob in ``norms`` get 1 + 0.25·N(0, 1) (perturbed, so that a (1 + w) vs w or a
    swapped-norm bug shows); ``embeddings`` get N(0, 1); names ending in ``bias`` get 0.1·N(0, 1) (non-zero,
    so a dropped bias shows); every other tensor is a weight with std gain/sqrt(fan_in), fan_in being its
    last dimension and ``gains`` mapping globs to gains (default 1). N(0, 1) is approximated (Irwin-Hall, 4
    terms: bounded at ±3.46, which tiny models do not miss).

    >>> w = random_weights({"ln.weight": (4,), "fc.weight": (3, 4)}, seed=0, norms=["ln.*"])
    >>> sorted(w), w["fc.weight"].shape
    (['fc.weight', 'ln.weight'], torch.Size([3, 4]))
    >>> torch.equal(w["fc.weight"], random_weights({"fc.weight": (3, 4)}, seed=0)["fc.weight"])
    True
    """
    norms, embeddings, gains = list(norms), list(embeddings), dict(gains or {})
    out = {}
    for name, shape in shapes.items():
        noise = random_normal(shape, seed, name)  # float64
        if _matches(name, norms):
            t = 1 + 0.25 * noise
        elif _matches(name, embeddings):
            t = noise
        elif name.endswith("bias"):
            t = 0.1 * noise
        else:
            gain = next((v for pat, v in gains.items() if fnmatch.fnmatchcase(name, pat)), 1.0)
            t = noise * (gain / math.sqrt(shape[-1]))
        out[name] = t.to(torch.float32).to(dtype)
    return out


def random_normal(shape: tuple[int, ...], seed: int, stream: str) -> torch.Tensor:
    """Approximately N(0, 1) float64 values, identical to the bit on every host.

    >>> x = random_normal((10_000,), 0, "x")
    >>> abs(x.mean().item()) < 0.05, abs(x.std().item() - 1) < 0.05
    (True, True)
    """
    n = math.prod(shape)
    u = random_uniform((n, _UNIFORMS_PER_NORMAL), seed, stream)
    # Each uniform has 24 significant bits: the sum and the subtraction are exact in float64.
    total = u[:, 0] + u[:, 1] + u[:, 2] + u[:, 3]
    return ((total - 2.0) * math.sqrt(3.0)).reshape(shape)


def random_uniform(shape: tuple[int, ...], seed: int, stream: str) -> torch.Tensor:
    """Uniform float64 values in [0, 1) on a 2^-24 grid, from a counter-based hash of ``(seed, stream, i)``.

    >>> random_uniform((3,), 0, "a").tolist() == random_uniform((3,), 0, "a").tolist()
    True
    """
    key = int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:4], "little")
    counter = torch.arange(math.prod(shape), dtype=torch.int64)
    bits = _hash32(_hash32(counter) ^ key)
    return ((bits >> 8).to(torch.float64) * 2.0**-24).reshape(shape)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (xor-shift-multiply), on int64 values below 2^32, with no overflow."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2^32`` in halves, so that no int64 product overflows (< 2^49)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)
