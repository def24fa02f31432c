"""Named points: where a family's reference and the converted transformers model compute the same thing.

A family declares them once, in ``converters/<family>/points.py``: each :class:`Point` pairs a point its
reference reports through ``forward(..., probe=...)`` with the module path of the transformers sub-module that
computes the same output from the same input, and names the transformers config fields that drive it (a norm's
epsilon, the rotary base, the activation). Diagnosis records every point of the reference once, then feeds
each sub-module of the converted model the reference's own input at its point (``harness.parity.teacher``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.family.family import Family
from harness.mapping.conversion import SourceCheckpoint
from harness.mapping.points import Point
from harness.parity.parity import UpcastTensors

__all__ = ["Point", "Recording", "Site", "points_for", "record", "sites", "unsupported"]

Recording = dict[str, tuple[torch.Tensor, torch.Tensor]]  # point name -> (input, output), in forward order


@dataclass(frozen=True)
class Site:
    """One point resolved in one model: its reference name, module path, config fields, nesting depth."""

    name: str
    module: str
    config: tuple[str, ...]
    about: str
    depth: int  # how many other sites' modules contain this one: teacher forcing runs one depth at a time


def unsupported() -> str | None:
    """Why diagnosis cannot run with the installed transformers, or None when it can.

    The families' points name transformers 5's sub-modules: 4.x calls Mixtral's MoE block ``block_sparse_moe``
    and scales Gemma's embeddings outside ``embed_tokens``, so its modules would be compared at the wrong points.
    """
    from importlib.metadata import version

    major = int(version("transformers").split(".")[0])
    return None if major >= 5 else (f"no diagnosis: the named points map to transformers 5's sub-modules, and "
                                     f"transformers {version('transformers')} is installed")


def points_for(family: Family) -> list[Point]:
    """The family's declared points (``FAMILY.points``, from ``converters/<family>/points.py``)."""
    return list(family.points)


def record(family: Family, source: SourceCheckpoint, tokens: torch.Tensor) -> Recording:
    """Every named point of the reference in float32 on CPU: ``name -> (input, output)``, in forward order."""
    seen: Recording = {}

    def probe(points: Recording) -> None:
        for name, (inp, out) in points.items():
            seen.setdefault(name, (inp.detach(), out.detach().float()))

    with torch.no_grad():
        family.reference(UpcastTensors(source.tensors, "cpu", torch.float32), source.config, tokens, probe=probe)
    return seen


def sites(points: list[Point], recording: Recording) -> list[Site]:
    """The recorded points that a declared ``Point`` maps to a module, in forward order: the points declared
    before the first per-layer one, then layer by layer in declaration order, then the rest."""
    first = next((i for i, p in enumerate(points) if "{" in p.ref), len(points))
    found = []
    for name in recording:
        for index, point in enumerate(points):
            groups = point.match(name)
            if groups is not None:
                group = 1 if groups else (0 if index < first else 2)
                found.append(((group, int(groups.get("layer", 0)), index), name, point.module.format(**groups), point))
                break
    found.sort(key=lambda f: f[0])
    modules = [module for _, _, module, _ in found]
    return [Site(name, module, p.config, p.about, sum(module.startswith(m + ".") for m in modules))
            for _, name, module, p in found]
