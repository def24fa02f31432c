"""A family's config table: upstream hyper-parameters <-> a transformers ``config.json``, read both ways.

Every upstream field is either owned by exactly one ``Field`` or listed in ``ignored`` with a reason; anything
else is an error, not a silent default. Nested upstream fields are written with dots (``moe.num_experts``). An
entry may read several upstream fields and write several targets; each target has exactly one writer, checked
when the table is built. Each field declares the values it accepts (``kind=PositiveInt``) and the table the rules
between fields (``checks=[Divides("n_kv_heads", "n_heads")]``, see ``harness.mapping.config_kinds``): all are
checked, naming the field, before anything is converted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import ConversionError
from harness.mapping.config_kinds import Check, Kind, show

__all__ = ["REQUIRED", "ConfigMap", "Field"]

REQUIRED: Any = object()


@dataclass(frozen=True, init=False)
class Field:
    """One entry: the upstream field(s) it owns -> the transformers field(s) it writes.

    ``source`` is one upstream field or a tuple of them, each with its ``default`` (used when the file omits it;
    cite the upstream line that defines it) and ``kind`` (the values accepted, ``harness.mapping.config_kinds``;
    None accepts anything). With several sources, ``default`` and ``kind`` are tuples, one per source (one kind
    may stand for all). ``reads`` names upstream fields that other entries own and this one also needs.

    ``to_target(*source values, *reads values)`` returns the target's value (a tuple for several targets);
    ``to_source(*target values, *reads values)`` returns the source's value (a tuple for several sources), where
    ``reads`` values are the upstream values their own entries restored. Both pass one value through by default;
    an entry that is not one-to-one must give both. ``lossy`` says which upstream values ``to_source`` cannot
    restore exactly.

    >>> f = Field(("vocab_size", "multiple"), "vocab_size", default=(REQUIRED, 64),
    ...           to_target=lambda vocab, multiple: -(-vocab // multiple) * multiple,
    ...           to_source=lambda rows: (rows, 1), lossy="the padded rows come back as the vocabulary")
    >>> f.source, f.target, f.apply({"vocab_size": 100, "multiple": 64})
    ('vocab_size, multiple', 'vocab_size', {'vocab_size': 128})
    >>> f.restore({"vocab_size": 128}, {})
    {'vocab_size': 128, 'multiple': 1}
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    defaults: tuple[Any, ...]
    kinds: tuple[Kind | None, ...]
    reads: tuple[str, ...]
    to_target: Callable[..., Any]
    to_source: Callable[..., Any]
    lossy: str

    def __init__(self, source: str | Sequence[str], target: str | Sequence[str], *, default: Any = REQUIRED,
                 kind: Kind | None | Sequence[Kind | None] = None, reads: Sequence[str] = (),
                 to_target: Callable[..., Any] | None = None, to_source: Callable[..., Any] | None = None,
                 lossy: str = "") -> None:
        sources, targets = _names(source), _names(target)
        n = len(sources)
        defaults = (default,) if n == 1 else tuple(default) if isinstance(default, tuple) else (default,) * n
        kinds = tuple(kind) if isinstance(kind, (tuple, list)) else (kind,) * n
        text = f"Field({', '.join(sources)} -> {', '.join(targets)})"
        if len(defaults) != n or len(kinds) != n:
            raise ValueError(f"{text}: give one default and one kind per source field ({n})")
        if (n > 1 or len(targets) > 1) and (to_target is None or to_source is None):
            raise ValueError(f"{text} is not one-to-one: give to_target and to_source")
        for name, value in [("sources", sources), ("targets", targets), ("defaults", defaults), ("kinds", kinds),
                            ("reads", tuple(reads)), ("to_target", to_target or _same),
                            ("to_source", to_source or _same), ("lossy", lossy)]:
            object.__setattr__(self, name, value)

    @property
    def source(self) -> str:
        """The upstream field(s), joined with ", " for display."""
        return ", ".join(self.sources)

    @property
    def target(self) -> str:
        """The transformers field(s), joined with ", " for display."""
        return ", ".join(self.targets)

    def apply(self, upstream: Mapping[str, Any]) -> dict[str, Any]:
        """This entry's targets from a completed upstream config (its sources and reads)."""
        out = self.to_target(*(upstream[k] for k in self.sources + self.reads))
        return dict(zip(self.targets, _several(out, len(self.targets), self, "to_target"), strict=True))

    def restore(self, target: Mapping[str, Any], upstream: Mapping[str, Any]) -> dict[str, Any]:
        """This entry's upstream fields from a transformers config and the ``reads`` already restored."""
        out = self.to_source(*(target[k] for k in self.targets), *(upstream[k] for k in self.reads))
        return dict(zip(self.sources, _several(out, len(self.sources), self, "to_source"), strict=True))

    def __repr__(self) -> str:
        return f"Field({self.source} -> {self.target})"


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
    >>> ConfigMap([Field("dim", "hidden_size"), Field("width", "hidden_size")])
    Traceback (most recent call last):
    ValueError: config: hidden_size is written by Field(dim -> hidden_size) and by Field(width -> hidden_size); \
one entry must write it from both
    """

    def __init__(self, fields: list[Field], fixed: Mapping[str, Any] | None = None,
                 ignored: Mapping[str, str] | None = None, name: str = "config",
                 checks: Sequence[Check] = ()) -> None:
        self.fields, self.fixed, self.ignored, self.name = fields, dict(fixed or {}), dict(ignored or {}), name
        self.checks = list(checks)
        self._owners: dict[str, Field] = {}
        for f in fields:
            for s in f.sources:
                if s in self._owners:
                    raise ValueError(f"{name}: {s} is owned by {self._owners[s]!r} and by {f!r}; own it in one "
                                     "entry and name it in reads= of the other")
                self._owners[s] = f
        writers: dict[str, str] = dict.fromkeys(self.fixed, "fixed=")
        for f in fields:
            for t in f.targets:
                if t in writers:
                    raise ValueError(f"{name}: {t} is written by {writers[t]} and by {f!r}; one entry must write it "
                                     "from both")
                writers[t] = repr(f)
        for f in fields:
            if unowned := [r for r in f.reads if r not in self._owners]:
                raise ValueError(f"{name}: {f!r} reads {unowned}, which no entry owns")
        self._restore_order = _dependency_order(name, fields, self._owners)

    def complete(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The upstream config with defaults filled in; unknown or missing fields, values of the wrong kind and
        failed checks raise ConversionError."""
        flat = _flatten(config)
        unknown = [k for k in flat if k not in self._owners and not self._is_ignored(k)]
        if unknown:
            raise ConversionError(f"{self.name}: unknown field(s) {sorted(unknown)}; expected "
                                  f"{sorted(self._owners)} (ignored: {sorted(self.ignored)})")
        defaults = {s: d for f in self.fields for s, d in zip(f.sources, f.defaults, strict=True)}
        missing = [s for s, d in defaults.items() if s not in flat and d is REQUIRED]
        if missing:
            raise ConversionError(f"{self.name}: missing required field(s) {sorted(missing)}")
        flat = {**defaults, **flat}
        self._validate(flat)
        return {k: v for k, v in flat.items() if k in self._owners}

    def complete_nested(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``complete``, nested where upstream nests (``{"moe": {"num_experts": 8}}``): what ``shapes`` reads."""
        return _nest(self.complete(config))

    def to_target(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The transformers config dict for an upstream config."""
        flat = self.complete(config)
        out = dict(self.fixed)
        for f in self.fields:
            out.update(f.apply(flat))
        return out

    def to_source(self, target: Mapping[str, Any]) -> dict[str, Any]:
        """The upstream config for a transformers config dict (nested where the upstream nests)."""
        restored: dict[str, Any] = {}
        for f in self._restore_order:  # an entry's reads are restored before it
            restored.update(f.restore(target, restored))
        return _nest({source: restored[source] for f in self.fields for source in f.sources})

    def kind(self, field: str) -> Kind | None:
        """The kind the entry owning ``field`` declares for it (None: not owned, or any value accepted)."""
        f = self._owners.get(field)
        return None if f is None else f.kinds[f.sources.index(field)]

    def _validate(self, flat: Mapping[str, Any]) -> None:
        kinds = {k: kind for k in self._owners if (kind := self.kind(k)) is not None}
        problems = [f"{k} is {show(flat[k])}; {p}" for k, kind in kinds.items() if (p := kind.problem(flat[k]))]
        if not problems:  # the rules between fields assume each field is of its kind
            problems = [p for check in self.checks if (p := check.problem(flat))]
        if problems:
            raise ConversionError(f"{self.name}: {'; '.join(problems)}")

    def _is_ignored(self, key: str) -> bool:
        return any(key == i or key.startswith(i + ".") for i in self.ignored)


def _same(value: Any, *reads: Any) -> Any:
    return value


def _names(names: str | Sequence[str]) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)


def _several(out: Any, n: int, f: Field, fn: str) -> tuple[Any, ...]:
    if n == 1:
        return (out,)
    if not isinstance(out, (tuple, list)) or len(out) != n:
        raise TypeError(f"{f!r}: {fn} returned {out!r}; expected a tuple of {n} values")
    return tuple(out)


def _dependency_order(table: str, fields: list[Field], owners: Mapping[str, Field]) -> list[Field]:
    """The entries ordered so that each comes after the owners of what it reads; a cycle is a ValueError."""
    done: list[Field] = []
    visiting: list[Field] = []

    def visit(f: Field) -> None:
        if any(f is d for d in done):
            return
        if any(f is v for v in visiting):
            cycle = " -> ".join(repr(v) for v in visiting[visiting.index(f):] + [f])
            raise ValueError(f"{table}: entries read each other's fields ({cycle}); merge them into one entry")
        visiting.append(f)
        for r in f.reads:
            visit(owners[r])
        visiting.pop()
        done.append(f)

    for f in fields:
        visit(f)
    return done


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys as nested dicts: the inverse of ``_flatten``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
