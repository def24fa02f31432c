"""A family's config table: upstream hyper-parameters <-> a transformers ``config.json``, read both ways.

Every upstream field is either mapped by a ``Field`` or listed in ``ignored`` with a reason; anything else is
an error, not a silent default. Nested upstream fields are written with dots (``moe.num_experts``). Each field
declares the values it accepts (``kind=PositiveInt``) and the table the rules between fields
(``checks=[Divides("n_kv_heads", "n_heads")]``, see ``harness.mapping.config_kinds``): all are checked, naming the
field, before anything is converted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import ConversionError
from harness.mapping.config_kinds import Check, Kind, show

__all__ = ["REQUIRED", "ConfigMap", "Field"]

REQUIRED: Any = object()


def _same(value: Any, config: Mapping[str, Any]) -> Any:
    return value


@dataclass(frozen=True)
class Field:
    """One upstream field and the transformers field it becomes.

    ``default`` applies when the upstream file omits the field (cite the upstream line that defines it);
    ``to_target(value, upstream_config)`` and ``to_source(value, target_config)`` convert the value; ``kind``
    is the set of values accepted (``harness.mapping.config_kinds``; None accepts anything).
    """

    source: str
    target: str
    default: Any = REQUIRED
    to_target: Callable[[Any, Mapping[str, Any]], Any] = _same
    to_source: Callable[[Any, Mapping[str, Any]], Any] = _same
    kind: Kind | None = None


class ConfigMap:
    """Fields, constant target values and ignored upstream fields of one family.

    >>> cm = ConfigMap([Field("dim", "hidden_size")], fixed={"model_type": "x"})
    >>> cm.to_target({"dim": 8})
    {'model_type': 'x', 'hidden_size': 8}
    >>> cm.to_source({"model_type": "x", "hidden_size": 8})
    {'dim': 8}
    >>> from harness.mapping.config_kinds import PositiveInt
    >>> ConfigMap([Field("dim", "hidden_size", kind=PositiveInt)], name="params.json").complete({"dim": "8"})
    Traceback (most recent call last):
    harness.errors.ConversionError: params.json: dim is '8' (a string); expected a positive integer
    """

    def __init__(self, fields: list[Field], fixed: Mapping[str, Any] | None = None,
                 ignored: Mapping[str, str] | None = None, name: str = "config",
                 checks: Sequence[Check] = ()) -> None:
        self.fields, self.fixed, self.ignored, self.name = fields, dict(fixed or {}), dict(ignored or {}), name
        self.checks = list(checks)

    def complete(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The upstream config with defaults filled in; unknown or missing fields, values of the wrong kind and
        failed checks raise ConversionError."""
        flat = _flatten(config)
        known = {f.source for f in self.fields}
        unknown = [k for k in flat if k not in known and not self._is_ignored(k)]
        if unknown:
            raise ConversionError(f"{self.name}: unknown field(s) {sorted(unknown)}; expected "
                                  f"{sorted(known)} (ignored: {sorted(self.ignored)})")
        missing = [f.source for f in self.fields if f.source not in flat and f.default is REQUIRED]
        if missing:
            raise ConversionError(f"{self.name}: missing required field(s) {sorted(missing)}")
        for f in self.fields:
            if f.source not in flat:
                flat[f.source] = f.default
        self._validate(flat)
        return {k: v for k, v in flat.items() if k in known}

    def to_target(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The transformers config dict for an upstream config."""
        flat = self.complete(config)
        return {**self.fixed, **{f.target: f.to_target(flat[f.source], flat) for f in self.fields}}

    def to_source(self, target: Mapping[str, Any]) -> dict[str, Any]:
        """The upstream config for a transformers config dict (nested where the upstream nests)."""
        out: dict[str, Any] = {}
        for f in self.fields:
            value = f.to_source(target[f.target], target)
            node = out
            *parents, leaf = f.source.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return out

    def _validate(self, flat: Mapping[str, Any]) -> None:
        kinds = {f.source: f.kind for f in self.fields if f.kind is not None}
        problems = [f"{k} is {show(flat[k])}; {p}" for k, kind in kinds.items() if (p := kind.problem(flat[k]))]
        if not problems:  # the rules between fields assume each field is of its kind
            problems = [p for check in self.checks if (p := check.problem(flat))]
        if problems:
            raise ConversionError(f"{self.name}: {'; '.join(problems)}")

    def _is_ignored(self, key: str) -> bool:
        return any(key == i or key.startswith(i + ".") for i in self.ignored)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
