"""Imports deferred to first use, so that `--help`, the registry and a byte-only conversion never load torch: a
package's exports (PEP 562) and a family's heavy functions (its reference forward pass)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports", "lazy_function"]


def lazy_exports(package: str, modules: Mapping[str, Sequence[str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from the submodule that defines it."""
    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's own name
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return vars(importlib.import_module(f"{package}.{home[name]}"))[name]

    return __getattr__


def lazy_function(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported on the first call.

    >>> dumps = lazy_function("json", "dumps")
    >>> dumps([1]), dumps.__name__
    ('[1]', 'dumps')
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__module__ = module
    call.__doc__ = f"``{module}.{name}``, imported when first called."
    return call
