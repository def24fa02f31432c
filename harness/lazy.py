"""Imports deferred to first use, so that `--help`, the registry and a byte-only conversion never load torch: a
package's exports (PEP 562) and a family's heavy functions (its reference forward pass)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
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
    """``module.name``, imported on the first call; its signature is read from the module's source now (without
    importing it), so that the registry can check how it is called. A module without that function is an
    ImportError here.

    >>> dumps = lazy_function("json", "dumps")
    >>> dumps([1]), dumps.__name__, list(inspect.signature(dumps).parameters)[:2]
    ('[1]', 'dumps', ['obj', 'skipkeys'])
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__module__ = module
    call.__doc__ = f"``{module}.{name}``, imported when first called."
    call.__signature__ = _signature(module, name)  # type: ignore[attr-defined]
    return call


def _signature(module: str, name: str) -> inspect.Signature:
    """The parameters of ``def name`` in ``module``'s source (defaults shown as ``...``: they are not evaluated)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"no module {module}")
    tree = ast.parse(Path(spec.origin).read_text())
    found = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if found is None:
        raise ImportError(f"{module} has no function {name}")
    a, P = found.args, inspect.Parameter  # noqa: N806 - the class, as inspect names it
    positional = [*a.posonlyargs, *a.args]
    defaults = [P.empty] * (len(positional) - len(a.defaults)) + [...] * len(a.defaults)
    params = [P(x.arg, P.POSITIONAL_ONLY if x in a.posonlyargs else P.POSITIONAL_OR_KEYWORD, default=d)
              for x, d in zip(positional, defaults, strict=True)]
    params += [P(a.vararg.arg, P.VAR_POSITIONAL)] if a.vararg else []
    params += [P(x.arg, P.KEYWORD_ONLY, default=P.empty if d is None else ...)
               for x, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
    params += [P(a.kwarg.arg, P.VAR_KEYWORD)] if a.kwarg else []
    return inspect.Signature(params)
