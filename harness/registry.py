"""Families are discovered from the folders of the ``converters`` package: adding a folder is all it takes.

Each folder's ``__init__`` exports ``FAMILY``, a :class:`harness.mapping.family.Family`; every field is
type-checked here, at discovery, so that a family that breaks the contract fails on import with the field named
rather than deep inside a run.
"""

from __future__ import annotations

import collections.abc as abc
import importlib
import pkgutil
import types
import typing
from typing import Any

import converters
from harness.errors import ConversionError
from harness.mapping.family import Case, Family
from harness.mutation.planting import Mutant

__all__ = ["Case", "Family", "families", "family", "family_names"]


def family_names() -> list[str]:
    """The family folders under ``converters/``, without importing any of them."""
    return sorted(i.name for i in pkgutil.iter_modules(converters.__path__) if i.ispkg and not i.name.startswith("_"))


def families() -> dict[str, Family]:
    """Every family under ``converters/``, by folder name.

    >>> "mixtral" in families()
    True
    """
    return {name: _load(name) for name in family_names()}


def family(name: str) -> Family:
    """One family by name; an unknown name is a ConversionError listing the known ones."""
    known = family_names()
    if name not in known:
        raise ConversionError(f"unknown family {name!r}; known families: {', '.join(known)}")
    return _load(name)


def _load(name: str) -> Family:
    module = importlib.import_module(f"converters.{name}")
    fam = module.__dict__.get("FAMILY")
    if not isinstance(fam, Family):
        raise ImportError(f"converters/{name}/__init__.py must export FAMILY = harness.mapping.Family(...)")
    if fam.name != name:
        raise ImportError(f"converters/{name}: FAMILY.name is {fam.name!r}; it must be the folder name {name!r}")
    problems = contract_problems(fam)
    if problems:
        raise ImportError(f"converters/{name}: FAMILY breaks the family contract: {'; '.join(problems)}")
    return fam


def contract_problems(fam: Family) -> list[str]:
    """Every field of ``fam`` whose value is not of its declared type, as ``"field: expected X, got Y"``."""
    hints = typing.get_type_hints(Family, localns={"Mutant": Mutant})
    values = vars(fam)
    return [f"{name}: expected {_show(hint)}, got {type(values[name]).__name__}"
            for name, hint in hints.items() if not _conforms(values[name], hint)]


def _conforms(value: Any, hint: Any) -> bool:  # noqa: PLR0911 - one return per kind of hint
    """A structural check of ``value`` against a type hint: classes, unions, callables, tuples and mappings."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is abc.Callable:
        return callable(value)
    if origin is tuple:
        return isinstance(value, tuple) and all(_conforms(v, args[0]) for v in value)
    if origin is abc.Mapping:
        return isinstance(value, abc.Mapping) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items())
    if hint is None or hint is type(None):
        return value is None
    return isinstance(value, origin or hint)


def _show(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "").replace("collections.abc.", "")
