"""Families are discovered from the folders of the ``converters`` package: adding a folder is all it takes."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import converters
from harness.errors import ConversionError

__all__ = ["REQUIRED_NAMES", "Case", "Family", "families", "family", "family_about", "family_names"]

# What every converters/<family>/__init__.py exports (STYLE rule 1).
REQUIRED_NAMES = ("read", "write", "tiny", "CASES", "SIZES", "convert", "invert", "forward")


@dataclass(frozen=True)
class Case:
    """A tiny source model that exercises one thing; ``about`` says what.

    ``config`` overrides the family's tiny defaults (passed to ``tiny``), ``container`` picks the on-disk
    form ``write`` produces, ``options`` are conversion options such as a GELU variant.
    """

    about: str
    config: dict[str, Any]
    container: str = "default"
    layout: str = "default"


@dataclass(frozen=True)
class Family:
    name: str
    module: ModuleType

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.module, attr)

    @property
    def about(self) -> str:
        return (self.module.__doc__ or "").strip().splitlines()[0]


def families() -> dict[str, Family]:
    """Every family under ``converters/``, by folder name.

    >>> "mixtral" in families()
    True
    """
    found = {}
    for info in sorted(pkgutil.iter_modules(converters.__path__), key=lambda i: i.name):
        if info.ispkg and not info.name.startswith("_"):
            found[info.name] = _load(info.name)
    return found


def family_names() -> list[str]:
    """The families' folder names, sorted, without importing any of them.

    >>> "mixtral" in family_names()
    True
    """
    return sorted(i.name for i in pkgutil.iter_modules(converters.__path__) if i.ispkg and not i.name.startswith("_"))


def family_about(name: str) -> str:
    """The first line of a family's docstring, read from its ``__init__.py`` without importing it (for --help)."""
    for folder in converters.__path__:
        init = Path(folder) / name / "__init__.py"
        if init.is_file():
            return ((ast.get_docstring(ast.parse(init.read_text())) or "").strip().splitlines() or [""])[0]
    return ""


def family(name: str) -> Family:
    """One family by name; an unknown name is a ConversionError listing the known ones."""
    known = family_names()
    if name not in known:
        raise ConversionError(f"unknown family {name!r}; known families: {', '.join(sorted(known))}")
    return _load(name)


def _load(name: str) -> Family:
    module = importlib.import_module(f"converters.{name}")
    missing = [n for n in REQUIRED_NAMES if not hasattr(module, n)]
    if missing:
        raise ImportError(f"converters/{name} does not export {missing}; every family exports {REQUIRED_NAMES}")
    return Family(name, module)
