"""Whether a family's part keeps its ``Protocol``: every data member of the declared type, every callable taking
the arguments the harness passes it. The registry runs it at discovery, so a family that breaks the contract
fails on import with the member named, not deep inside a run."""

from __future__ import annotations

import collections.abc as abc
import inspect
import types
import typing
from typing import Any

__all__ = ["accepts", "part_problems"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def part_problems(part: object, protocol: type, *, keywords: tuple[str, ...] = ()) -> list[str]:
    """Every member of ``protocol`` that ``part`` lacks or breaks, as ``"member: what is wrong"``.

    ``keywords``: extra keyword arguments its ``read`` must take (the family's CLI options).
    """
    hints = typing.get_type_hints(protocol)
    problems = [f"{name}: expected {_show(hint)}, got {type(getattr(part, name)).__name__}"
                for name, hint in hints.items() if hasattr(part, name) and not _conforms(getattr(part, name), hint)]
    problems += [f"{name}: missing" for name in hints if not hasattr(part, name)]
    for name, wanted in _methods(protocol).items():
        value = getattr(part, name, None)
        if not callable(value):
            problems.append(f"{name}: missing" if value is None else f"{name}: not callable")
            continue
        extra = keywords if name == "read" else ()
        problems += [f"{name}: {why}" for why in accepts(value, wanted, extra)]
    return problems


def accepts(fn: Any, wanted: inspect.Signature, keywords: tuple[str, ...] = ()) -> list[str]:
    """Why ``fn`` cannot be called as ``wanted`` says the harness calls it (empty when it can).

    The harness passes the leading parameters by position and the keyword-only ones by name, and leaves out those
    with defaults: ``fn`` must take each (same names, same places), give a default where ``wanted`` does, and
    require nothing else.

    >>> def read(path, config=None): ...
    >>> accepts(read, inspect.signature(lambda path, config=None, *, variant=None: 0))
    ["takes no keyword 'variant' (it is called as (path, config=None, *, variant=None))"]
    """
    try:
        have = inspect.signature(fn)
    except (TypeError, ValueError):
        return []  # a builtin without a signature: nothing to check
    call = f"(it is called as {_format(wanted, keywords)})"
    params = list(have.parameters.values())
    takes_args = any(p.kind is p.VAR_POSITIONAL for p in params)
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    positional = [p for p in params if p.kind in _POSITIONAL]
    problems = []
    for i, p in enumerate(q for q in wanted.parameters.values() if q.kind in _POSITIONAL):
        mine = positional[i] if i < len(positional) else None
        if mine is None and not takes_args:
            problems.append(f"takes no argument {i + 1} ({p.name!r}) {call}")
        elif mine is not None and mine.name != p.name:
            problems.append(f"argument {i + 1} is {mine.name!r}, expected {p.name!r} {call}")
        elif mine is not None and p.default is not p.empty and mine.default is mine.empty:
            problems.append(f"{p.name!r} needs a default {call}")
    named = {p.name: p for p in params if p.kind is not p.POSITIONAL_ONLY}
    for name in [p.name for p in wanted.parameters.values() if p.kind is p.KEYWORD_ONLY] + list(keywords):
        if name not in named and not takes_kwargs:
            problems.append(f"takes no keyword {name!r} {call}")
    given = {p.name for p in wanted.parameters.values()} | set(keywords)
    n_given = sum(p.kind in _POSITIONAL for p in wanted.parameters.values())
    required = [p.name for i, p in enumerate(params) if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and not (i < n_given or p.name in given)]
    problems += [f"requires {name!r}, which the harness never passes {call}" for name in required]
    return problems


def _methods(protocol: type) -> dict[str, inspect.Signature]:
    """The protocol's callables and how the harness calls them (without ``self``)."""
    out = {}
    for name, value in vars(protocol).items():
        if inspect.isfunction(value) and not name.startswith("_"):
            sig = inspect.signature(value)
            out[name] = sig.replace(parameters=list(sig.parameters.values())[1:])
    return out


def _format(sig: inspect.Signature, keywords: tuple[str, ...]) -> str:
    P = inspect.Parameter  # noqa: N806 - the class, as inspect names it
    params = [p.replace(annotation=P.empty) for p in sig.parameters.values()]
    return str(inspect.Signature(params + [P(k, P.KEYWORD_ONLY) for k in keywords]))


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
    if origin is abc.Sequence:
        return isinstance(value, abc.Sequence) and all(_conforms(v, args[0]) for v in value)
    if origin is abc.Mapping:
        return isinstance(value, abc.Mapping) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items())
    if hint is None or hint is type(None):
        return value is None
    return isinstance(value, origin or hint)


def _show(hint: Any) -> str:
    if not typing.get_args(hint) and hasattr(hint, "__name__"):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")
