"""Divergence signatures: which points of a model diverge and how, and how alike two failures are.

A signature maps each failing point to a :class:`Mark`: how it fails (diverged, raised, wrong output shape,
or a key the load reported missing, unexpected or mis-shaped), how far off it is (log10 of the relative error),
and the error's profile over positions (a rotary error grows with position) and over channel blocks (a wrong
head or a split in the wrong place lights up one block). Points that agree are not in it, so a clean conversion
has the empty signature.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from harness.parity.teacher import Reading

__all__ = ["BINS", "Mark", "Signature", "from_load", "from_readings", "similarity"]

BINS = 8  # position bins and channel blocks per profile


@dataclass(frozen=True)
class Mark:
    status: str  # diverged | raised | shape | missing | unexpected | mismatched
    log_rel: float = 0.0
    position: tuple[float, ...] = ()  # max error per position bin, largest 1
    channel: tuple[float, ...] = ()  # max error per channel block, largest 1


Signature = dict[str, Mark]  # point name -> how it fails; points that agree are absent


def from_readings(readings: Iterable[Reading]) -> Signature:
    """The signature of a teacher-forced run."""
    return {r.site.name: _mark(r) for r in readings if r.failed}


def from_load(bad: dict[str, list[str]], point_of: dict[str, str]) -> Signature:
    """The signature of a load that reported keys: ``bad`` = kind (missing, unexpected, mismatched) -> keys;
    each key is marked at the point whose module holds it (``point_of``: module -> point), else at its module."""
    sig: Signature = {}
    for kind, keys in bad.items():
        for key in keys:
            sig.setdefault(owner(key, point_of), Mark(kind))
    return sig


def owner(key: str, point_of: dict[str, str]) -> str:
    """The point whose module holds tensor ``key`` (the deepest one), else the key's own module path."""
    module = key.rsplit(".", 1)[0]
    holders = [m for m in point_of if module == m or module.startswith(m + ".")]
    return point_of[max(holders, key=len)] if holders else module


def similarity(a: Signature, b: Signature) -> float:
    """1 for the same failure, 0 for failures with no point in common; per point, the same kind of failure
    at a similar magnitude with a similar position and channel profile scores close to 1.

    >>> similarity({"layers.0.attention": Mark("diverged", -1.0)}, {"layers.0.attention": Mark("diverged", -1.0)})
    1.0
    """
    points = a.keys() | b.keys()
    if not points:
        return 1.0
    return sum(_alike(a[p], b[p]) for p in points if p in a and p in b) / len(points)


def _alike(a: Mark, b: Mark) -> float:
    if a.status != b.status:
        return 0.0
    if a.status != "diverged":
        return 1.0
    magnitude = 1.0 / (1.0 + abs(a.log_rel - b.log_rel))
    return magnitude * (_cosine(a.position, b.position) + _cosine(a.channel, b.channel)) / 2


def _cosine(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    if len(a) != len(b):
        return 0.0
    dot, na, nb = sum(x * y for x, y in zip(a, b, strict=True)), math.hypot(*a), math.hypot(*b)
    return 1.0 if na == nb == 0 else dot / (na * nb) if na and nb else 0.0


def _mark(r: Reading) -> Mark:
    if r.status != "diverged" or r.diff is None or r.rel is None:
        return Mark(r.status)
    d = r.diff  # (-1, T, C)
    position = _profile(d.amax(dim=(0, 2)))
    channel = _profile(d.amax(dim=(0, 1)))
    return Mark("diverged", round(math.log10(min(max(r.rel, 1e-30), 1e30)), 3), position, channel)


def _profile(v: torch.Tensor) -> tuple[float, ...]:
    v = torch.nan_to_num(v.float(), nan=1.0, posinf=1.0)
    bins = torch.stack([c.max() for c in torch.tensor_split(v, min(BINS, v.numel()))])
    top = bins.max().item()
    return tuple(round(x / top, 3) if top else 0.0 for x in bins.tolist())
