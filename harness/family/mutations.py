"""The mutations part of a family: the bugs of the converter it replaces (``converters/<family>/mutants.py``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from harness.family.cases import MutationCase

__all__ = ["NO_MUTATIONS", "Mutations"]


class Mutations(Protocol):
    """``MUTANTS``: planted bugs, each ``mutant(mutable) -> None`` (``harness.mutation.planting``); ``CASES``: tiny
    sources on which some of them only show (realistic magnitudes)."""

    MUTANTS: Sequence[Callable[..., None]]
    CASES: Mapping[str, MutationCase]


class _None:
    MUTANTS: Sequence[Callable[..., None]] = ()
    CASES: Mapping[str, MutationCase] = {}


NO_MUTATIONS: Any = _None()  # a family without bugs of its own: the generic and structural catalogues still apply
