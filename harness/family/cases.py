"""The tiny sources a family is checked on: what each exercises, and how a mutation-only one is scaled."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Case", "MutationCase"]


@dataclass(frozen=True)
class Case:
    """A tiny source model that exercises one thing; ``about`` says what.

    ``config`` overrides the family's tiny defaults (passed to ``tiny``), ``container`` picks the on-disk
    form ``write`` produces, ``layout`` the key layout ``tiny`` draws.
    """

    about: str
    config: dict[str, Any]
    container: str = "default"
    layout: str = "default"


@dataclass(frozen=True)
class MutationCase(Case):
    """A mutation-only case: a ``Case`` whose tiny source has some tensors scaled (``scale``: glob -> factor),
    for bugs that only show on realistic magnitudes (a norm epsilon next to small activations)."""

    scale: dict[str, float] = field(default_factory=dict)
