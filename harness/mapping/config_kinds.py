"""What values a config field accepts (its ``kind``) and the cross-field rules an architecture needs (``checks``).

Both are data in a family's config table, checked before any conversion starts, so that a bad value is refused
naming the field instead of surfacing as a ZeroDivisionError three calls later:

    Field("n_heads", "num_attention_heads", kind=PositiveInt)
    ConfigMap([...], checks=[Divides("n_kv_heads", "n_heads", why="each kv head serves a whole group of q heads")])

Counts that the key table enumerates (layers, experts) are ``Count``: at most 1024, so that a typo cannot make
the ledger enumerate a billion keys (the largest released models have 126 layers and 256 experts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AnyOf", "Bool", "Check", "Count", "Divides", "Kind", "NonNegativeFloat", "NonNegativeInt", "NotAbove",
           "OneOf", "Optional", "PositiveFloat", "PositiveInt", "Probability", "String", "Valid", "show"]

_INT64 = 2**63 - 1  # no tensor dimension or count exceeds what torch can index


class Kind:
    """A set of accepted values; ``problem(value)`` is None for an accepted value, else what was expected.

    >>> PositiveInt.problem(0)
    'expected a positive integer'
    >>> PositiveFloat.problem(float("nan")), PositiveFloat.problem(1e-5) is None
    ('expected a finite number > 0', True)
    """

    def __init__(self, expected: str) -> None:
        self.expected = expected

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def problem(self, value: Any) -> str | None:
        return None if self.accepts(value) else f"expected {self.expected}"

    def __repr__(self) -> str:
        return f"Kind({self.expected!r})"


class _Int(Kind):
    def __init__(self, expected: str, low: int, high: int = _INT64) -> None:
        super().__init__(expected)
        self.low, self.high = low, high

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def problem(self, value: Any) -> str | None:
        if _is_int(value) and value > self.high == _INT64:
            return f"expected {self.expected} below 2**63"
        return super().problem(value)


class _Real(Kind):
    def __init__(self, expected: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
        super().__init__(expected)
        self.low, self.high, self.low_open = low, high, low_open

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        try:
            x = float(value)
        except OverflowError:  # an integer beyond float range
            return False
        return math.isfinite(x) and (x > self.low if self.low_open else x >= self.low) and x <= self.high


class _Predicate(Kind):
    def __init__(self, expected: str, test: Any) -> None:
        super().__init__(expected)
        self.test = test

    def accepts(self, value: Any) -> bool:
        return bool(self.test(value))


PositiveInt: Kind = _Int("a positive integer", 1)
NonNegativeInt: Kind = _Int("an integer >= 0", 0)
Count: Kind = _Int("an integer from 1 to 1024", 1, 1024)
PositiveFloat: Kind = _Real("a finite number > 0", 0.0, low_open=True)
NonNegativeFloat: Kind = _Real("a finite number >= 0", 0.0)
Probability: Kind = _Real("a number from 0 to 1", 0.0, 1.0)
Bool: Kind = _Predicate("true or false", lambda v: isinstance(v, bool))
String: Kind = _Predicate("a string", lambda v: isinstance(v, str))


def OneOf(*values: Any) -> Kind:  # noqa: N802 - reads like the other kinds
    """Exactly one of ``values`` (``True`` is not ``1``)."""
    return _Predicate(f"one of {', '.join(map(repr, values))}",
                      lambda v: any(type(v) is type(x) and v == x for x in values))


def Optional(kind: Kind) -> Kind:  # noqa: N802 - reads like the other kinds
    """``kind`` or null (None)."""
    return _Predicate(f"{kind.expected} or null", lambda v: v is None or kind.accepts(v))


def AnyOf(*kinds: Kind) -> Kind:  # noqa: N802 - reads like the other kinds
    """Any one of ``kinds`` (Llama 1/2's ``vocab_size``: a positive integer, or -1 for "from the weights")."""
    return _Predicate(" or ".join(k.expected for k in kinds), lambda v: any(k.accepts(v) for k in kinds))


class Check:
    """A rule over several fields of the completed upstream config; ``problem`` says what is wrong, or None."""

    def problem(self, config: Mapping[str, Any]) -> str | None:
        raise NotImplementedError


@dataclass(frozen=True)
class Divides(Check):
    """``divisor`` (a field, or a number such as 2) divides ``field``; a null field means "not set" and passes."""

    divisor: str | int
    field: str
    why: str = ""

    def problem(self, config: Mapping[str, Any]) -> str | None:
        d = config.get(self.divisor) if isinstance(self.divisor, str) else self.divisor
        n = config.get(self.field)
        if not (_is_int(d) and _is_int(n)) or d == 0 or n % d == 0:
            return None
        what = f"{self.divisor} {d}" if isinstance(self.divisor, str) else str(d)
        return f"{self.field} {n} is not a multiple of {what}{'; ' + self.why if self.why else ''}"


@dataclass(frozen=True)
class NotAbove(Check):
    """``field`` <= ``limit`` (another field); a null side passes."""

    field: str
    limit: str
    why: str = ""

    def problem(self, config: Mapping[str, Any]) -> str | None:
        a, b = config.get(self.field), config.get(self.limit)
        if not (_is_int(a) and _is_int(b)) or a <= b:
            return None
        return f"{self.field} {a} is more than {self.limit} {b}{'; ' + self.why if self.why else ''}"


@dataclass(frozen=True)
class Valid(Check):
    """A field read outside the table (an ignored field that still selects code) must be of ``kind`` when present."""

    field: str
    kind: Kind

    def problem(self, config: Mapping[str, Any]) -> str | None:
        if self.field not in config:
            return None
        problem = self.kind.problem(config[self.field])
        return None if problem is None else f"{self.field} is {show(config[self.field])}; {problem}"


def show(value: Any) -> str:
    """A config value as a message quotes it: its repr, shortened, and its type where the repr hides it.

    >>> show("1e-05"), show([32]), show(7)
    ("'1e-05' (a string)", '[32] (a list)', '7')
    """
    if _is_int(value) and len(str(value)) > 40:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    if value is None or isinstance(value, bool | int | float):
        return text
    name = {"str": "string", "dict": "mapping"}.get(type(value).__name__, type(value).__name__)
    return f"{text} ({'an' if name[0] in 'aeiou' else 'a'} {name})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
