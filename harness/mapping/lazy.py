"""A family's heavy members, imported when first used: the registry, the CLI and a byte-only conversion load a
family's tables without importing torch, and its reference forward pass (all torch) loads when it is called."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_function"]


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
