"""Families are discovered from the folders of the ``converters`` package: adding a folder is all it takes.

Each folder's ``__init__`` exports ``FAMILY``, a :class:`harness.family.Family`; each of its parts is checked
against its protocol here, at discovery (members, their types, and how the harness calls each callable), so that a
family that breaks the contract fails on import with the part and member named rather than deep inside a run.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import converters
from harness.errors import ConversionError
from harness.family.cases import Case
from harness.family.conformance import part_problems
from harness.family.family import PARTS, Family

__all__ = ["Case", "Family", "contract_problems", "families", "family", "family_about", "family_names"]


def family_names() -> list[str]:
    """The family folders under ``converters/``, without importing any of them."""
    return sorted(i.name for i in pkgutil.iter_modules(converters.__path__) if i.ispkg and not i.name.startswith("_"))


def families() -> dict[str, Family]:
    """Every family under ``converters/``, by folder name.

    >>> "mixtral" in families()
    True
    """
    return {name: _load(name) for name in family_names()}


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
        raise ConversionError(f"unknown family {name!r}; known families: {', '.join(known)}")
    return _load(name)


def _load(name: str) -> Family:
    module = importlib.import_module(f"converters.{name}")
    fam = module.__dict__.get("FAMILY")
    if not isinstance(fam, Family):
        raise ImportError(f"converters/{name}/__init__.py must export FAMILY = harness.family.Family(...)")
    if fam.name != name:
        raise ImportError(f"converters/{name}: FAMILY.name is {fam.name!r}; it must be the folder name {name!r}")
    problems = contract_problems(fam)
    if problems:
        raise ImportError(f"converters/{name}: FAMILY breaks the family contract: {'; '.join(problems)}")
    return fam


def contract_problems(fam: Family) -> list[str]:
    """Every member of every part of ``fam`` that breaks its protocol, as ``"part.member: what is wrong"``.

    ``read`` must also take each CLI option's keyword.
    """
    problems = {part: part_problems(vars(fam)[part], protocol) for part, protocol in PARTS.items()}
    if not problems["cli"]:  # the flags are sound: ``read`` must take each as a keyword
        problems["source"] = part_problems(fam.source, PARTS["source"], keywords=tuple(fam.option_names()))
    return [f"{part}.{problem}" for part, found in problems.items() for problem in found]
