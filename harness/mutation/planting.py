"""The planting API: what a planted bug sees of a clean conversion, and the helpers bugs are written with.

A mutant receives a :class:`Mutable` (a clean conversion opened up: the transformers config, the ordered
``name -> tensor`` stream, and the key-table steps that produced it) and edits it in place, as a buggy
converter would have produced it. Families declare their own bugs with these helpers in
``converters/<family>/mutants.py``; the generic ones are in ``harness.mutation.catalogue``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.mapping.conversion import Converted
from harness.mapping.keymap import Step
from harness.mapping.rules import Rule

__all__ = ["Catalogue", "Mutable", "Mutant", "about", "config_items", "rerun", "set_config", "swap_blocks",
           "swap_names"]


@dataclass
class Mutable:
    """One conversion as a planted bug sees it; ``source_config`` is the upstream config as read."""

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    converted: Converted
    source_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, converted: Converted, source_config: dict[str, Any]) -> Mutable:
        """The clean conversion, materialised (tiny models only)."""
        import copy

        return cls(copy.deepcopy(converted.config), dict(converted.tensors()), converted, dict(source_config))

    def copy(self) -> Mutable:
        import copy

        return Mutable(copy.deepcopy(self.config), dict(self.tensors), self.converted, self.source_config)

    def same_as(self, other: Mutable) -> bool:
        """Config and every tensor identical (bit for bit): the mutant changed nothing here."""
        return (self.config == other.config and self.tensors.keys() == other.tensors.keys()
                and all(identical(t, other.tensors[k]) for k, t in self.tensors.items()))


Mutant = Callable[[Mutable], None]


class Catalogue(list[Mutant]):
    """An ordered list of mutants that a module fills by decorating them: ``@CATALOGUE.add``."""

    def add(self, mutant: Mutant) -> Mutant:
        self.append(mutant)
        return mutant


def about(mutant: Mutant) -> str:
    """The first sentence of the mutant's docstring: what the bug is."""
    return " ".join((mutant.__doc__ or "").split(".")[0].split())


def rerun(m: Mutable, kind: type[Rule], fn: Callable[[Step, list[torch.Tensor]], list[torch.Tensor] | None]
          ) -> None:
    """Re-run every step of rule ``kind`` with ``fn(step, source tensors) -> outputs`` (None keeps the step)."""
    for step in m.converted.steps:
        if isinstance(step.rule, kind):
            out = fn(step, [m.converted.source[k] for k in step.sources])
            if out is not None:
                m.tensors.update(zip(step.targets, out, strict=True))


def swap_names(m: Mutable, a: str, b: str) -> None:
    """Swap the tensors of every pair of names that differ only by ``a`` <-> ``b`` (same shape only)."""
    for name in list(m.tensors):
        other = name.replace(a, b)
        if a in name and other != name and other in m.tensors and m.tensors[name].shape == m.tensors[other].shape:
            m.tensors[name], m.tensors[other] = m.tensors[other], m.tensors[name]


def swap_blocks(w: torch.Tensor, size: int, i: int, j: int, dim: int = 0) -> torch.Tensor:
    """``w`` with its ``size``-long blocks i and j along ``dim`` exchanged."""
    w = w.clone()
    bi, bj = w.narrow(dim, i * size, size).clone(), w.narrow(dim, j * size, size).clone()
    w.narrow(dim, i * size, size).copy_(bj)
    w.narrow(dim, j * size, size).copy_(bi)
    return w


def config_items(config: dict[str, Any], pred: Callable[[str], bool]) -> Iterator[tuple[dict[str, Any], str]]:
    """(containing dict, key) for every key, at any depth, for which ``pred(key)`` holds."""
    for key, value in list(config.items()):
        if pred(key):
            yield config, key
        if isinstance(value, dict):
            yield from config_items(value, pred)


def set_config(m: Mutable, pred: Callable[[str], bool], fn: Callable[[Any], Any]) -> None:
    """Replace every config value whose key satisfies ``pred`` by ``fn(value)``."""
    for node, key in config_items(m.config, pred):
        node[key] = fn(node[key])


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))
