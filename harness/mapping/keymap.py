"""A family's key table expanded over a concrete model, with the key ledger that guards it.

Expansion enumerates every binding of the placeholders (``layer`` over ``range(n_layers)``, ...), so the
table says exactly which keys a checkpoint must hold. The ledger then demands that every source tensor is
consumed by a rule or dropped with a reason, every rule matched, no rule half-matched (missing keys), and
every target produced once. Violations are reported together, naming the keys, and end with the family and
layout the table belongs to (``Layouts.pick``) and what to check next.

Steps come in the order the table declares them, layer by layer: the rules declared before the first rule
with a ``{layer}`` placeholder, once each; then, for each layer, that layer's rules in declared order, any
further placeholder (``{expert}``) counting up inside its rule; then the rules declared after. A rule without
``{layer}`` declared between two that have one is refused when the table is built.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import ConversionError
from harness.mapping.rules import Dims, Drop, Rule, RuleLike, Tie

if TYPE_CHECKING:
    import torch

__all__ = ["FLOATING", "LAYER", "KeyMap", "Layouts", "LedgerError", "Step", "check_dtypes"]

FLOATING = ("float32", "bfloat16", "float16", "float64")  # the weight dtypes a conversion reads (torch's names)
Range = str | Callable[[Dims], Iterable[int]]
LAYER = "layer"  # the placeholder that numbers the blocks: steps are ordered block by block


class LedgerError(ConversionError):
    """The source tensors and the key table disagree."""


@dataclass(frozen=True)
class Step:
    """One rule applied to one binding: these source keys become those target keys."""

    rule: Rule
    binding: tuple[tuple[str, int], ...]
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    hint: str = ""  # where the table comes from and what to check, ending its errors (Layouts.pick)

    def run(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        out = self.rule.forward(tensors, dims)
        if len(out) != len(self.targets):
            raise RuntimeError(f"{self.rule!r} produced {len(out)} tensors for {len(self.targets)} targets")
        return out


class KeyMap:
    """The declarative key table of one family.

    >>> from harness.mapping.rules import Rename
    >>> km = KeyMap([Rename("layers.{layer}.w", "model.layers.{layer}.w")], ranges={"layer": "n_layers"})
    >>> [s.targets for s in km.plan(["layers.0.w", "layers.1.w"], {"n_layers": 2})]
    [('model.layers.0.w',), ('model.layers.1.w',)]
    """

    def __init__(self, rules: Sequence[RuleLike], ranges: Mapping[str, Range] | None = None,
                 dims: Callable[[Mapping[str, Any]], dict[str, int]] = dict) -> None:
        self.dims = dims  # source config -> the sizes that rules and ranges name
        self.rules = [r for r in rules if isinstance(r, Rule)]
        self.drops = [r for r in rules if isinstance(r, Drop)]
        self.ties = [r for r in rules if isinstance(r, Tie)]
        self.ranges = dict(ranges or {})
        self.layout, self.where, self.hint = "default", "", ""  # set by Layouts.pick
        unknown = set().union(*(r.placeholders for r in self.rules)) - set(self.ranges)
        if unknown:
            raise ValueError(f"placeholders {sorted(unknown)} have no range; add them to ranges=")
        blocks = [i for i, r in enumerate(self.rules) if LAYER in r.placeholders]
        first, last = (blocks[0], blocks[-1] + 1) if blocks else (len(self.rules), len(self.rules))
        between = [r for r in self.rules[first:last] if LAYER not in r.placeholders]
        if between:
            raise ValueError(f"{between[0]!r} has no {{{LAYER}}} but is declared between rules that have one; "
                             "declare it before the first such rule or after the last")
        self._parts = (self.rules[:first], self.rules[first:last], self.rules[last:])

    def steps(self, dims: Dims) -> list[Step]:
        """Every step of the table for a model of these dims, in declared order, layer by layer (module doc)."""
        before, block, after = self._parts
        layers = self._span(LAYER, dims) if block else ()
        return ([s for rule in before for s in self._steps(rule, dims, {})]
                + [s for layer in layers for rule in block for s in self._steps(rule, dims, {LAYER: layer})]
                + [s for rule in after for s in self._steps(rule, dims, {})])

    def plan(self, keys: Iterable[str], dims: Dims,
             expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
             shapes: Mapping[str, tuple[int, ...]] | None = None) -> list[Step]:
        """The steps that convert a checkpoint holding ``keys``; raises LedgerError on any violation."""
        present = set(keys)
        all_steps = self.steps(dims)
        problems: dict[str, list[str]] = {}
        active = [s for s in all_steps if all(k in present for k in s.sources)]
        matched_rules = {id(s.rule) for s in active}
        problems["unused rules"] = [repr(r) for r in self.rules if id(r) not in matched_rules]
        problems["missing in source"] = [k for s in all_steps if id(s.rule) in matched_rules
                                         for k in s.sources if k not in present]
        consumed = {k for s in active for k in s.sources}
        leftover = present - consumed
        dropped = {k for k in leftover if any(d.regex.match(k) for d in self.drops)}
        problems["unused rules"] += [repr(d) for d in self.drops
                                     if not d.optional and not any(d.regex.match(k) for k in present)]
        problems["unmatched in source"] = sorted(leftover - dropped)
        produced = Counter(t for s in active for t in s.targets) + Counter(t.target for t in self.ties)
        problems["produced twice"] = [k for k, n in produced.items() if n > 1]
        if expected_shapes is not None and shapes is not None:
            problems["mis-shaped"] = [f"{k} is {tuple(shapes[k])}, expected {tuple(expected_shapes[k])}"
                                      for k in sorted(consumed)
                                      if k in expected_shapes and tuple(shapes[k]) != tuple(expected_shapes[k])]
        _raise_if_any(problems, self.hint)
        return active

    def invert(self, tensors: Mapping[str, torch.Tensor], dims: Dims) -> dict[str, torch.Tensor]:
        """Walk the table backwards: target tensors -> source tensors (dropped tensors are not recreated)."""
        out: dict[str, torch.Tensor] = {}
        for step in self.steps(dims):
            missing = [t for t in step.targets if t not in tensors]
            if missing:
                raise LedgerError(f"cannot invert: missing target tensors {missing[:5]}{self.where}")
            for key, tensor in zip(step.sources, step.rule.inverse([tensors[t] for t in step.targets], dims),
                                   strict=True):
                out[key] = tensor.contiguous()
        return out

    def _steps(self, rule: Rule, dims: Dims, fixed: dict[str, int]) -> Iterator[Step]:
        """The rule's steps with ``fixed`` bound, its other placeholders counting up (the last fastest)."""
        names = sorted(rule.placeholders - set(fixed))
        for values in itertools.product(*(self._span(n, dims) for n in names)):
            binding = {**fixed, **dict(zip(names, values, strict=True))}
            yield Step(rule, tuple(sorted(binding.items())), tuple(p.format(binding) for p in rule.sources),
                       tuple(rule.target_keys(binding, dims)), self.hint)

    def _labelled(self, layout: str, where: str, advice: str) -> KeyMap:
        labelled = copy.copy(self)
        labelled.layout, labelled.where, labelled.hint = layout, where, where + advice
        return labelled

    def _span(self, name: str, dims: Dims) -> Iterable[int]:
        spec = self.ranges[name]
        return range(dims[spec]) if isinstance(spec, str) else spec(dims)


class Layouts(dict[str, KeyMap]):
    """A family's key tables by layout name, one of them the ``default``; ``pick`` chooses one.

    ``family`` is the folder name (``convparity describe FAMILY``), ``title`` how the family is written in prose.
    A single table is the layout ``"default"``. The picked table's errors end with where it comes from:

    >>> from harness.mapping.rules import Rename
    >>> keys = Layouts("demo", {"plain": KeyMap([Rename("w", "m.w")]), "fused": KeyMap([Rename("wf", "m.w")])},
    ...                default="plain", title="Demo")
    >>> keys.pick("default").plan(["v"], {})
    Traceback (most recent call last):
    harness.mapping.keymap.LedgerError: key ledger: unused rules: Rename(w -> m.w); unmatched in source: v \
(demo, layout 'plain'): is SOURCE a Demo checkpoint in this layout? `convparity describe demo` lists the keys each \
layout expects.
    >>> keys.pick("split")
    Traceback (most recent call last):
    harness.errors.ConversionError: demo has no key layout 'split'; known layouts: plain (the default), fused
    """

    def __init__(self, family: str, tables: KeyMap | Mapping[str, KeyMap], *, default: str = "default",
                 title: str = "") -> None:
        super().__init__({"default": tables} if isinstance(tables, KeyMap) else tables)
        if default not in self:
            raise ValueError(f"{family}: the default layout {default!r} is not one of {sorted(self)}")
        self.family, self.default, self.title = family, default, title or family

    def pick(self, layout: str) -> KeyMap:
        """The table of ``layout`` (``"default"``: the default one), its errors labelled with family and layout;
        its ``layout`` attribute names the layout picked."""
        name = self.default if layout == "default" else layout
        if name not in self:
            known = ", ".join(f"{k} (the default)" if k == self.default else k for k in self)
            raise ConversionError(f"{self.family} has no key layout {layout!r}; known layouts: {known}")
        a = _article(self.title)
        if len(self) == 1:
            return self[name]._labelled(name, f" ({self.family})", f": is SOURCE {a} {self.title} checkpoint? "
                                        f"`convparity describe {self.family}` lists the keys it expects.")
        return self[name]._labelled(name, f" ({self.family}, layout {name!r})",
                                    f": is SOURCE {a} {self.title} checkpoint in this layout? `convparity describe "
                                    f"{self.family}` lists the keys each layout expects.")


def check_dtypes(steps: Iterable[Step], meta: Callable[[str], tuple[tuple[int, ...], torch.dtype]],
                 origins: Mapping[str, str] | None = None) -> None:
    """Refuse, from dtypes alone, any source tensor a step would read that is not of a dtype its rule expects:
    integer, bool, complex or float8 where a floating-point weight belongs (int8 only for quantised weights).

    >>> from harness.mapping.rules import Rename
    >>> step = Step(Rename("w", "w"), (), ("w",), ("w",))
    >>> import torch
    >>> check_dtypes([step], lambda k: ((2,), torch.int64))
    Traceback (most recent call last):
    harness.errors.ConversionError: tensor dtypes: w is int64, expected float32, bfloat16, float16 or float64
    """
    bad, hint = [], ""
    for step in steps:
        hint = hint or step.hint
        for i, key in enumerate(step.sources):
            expected = step.rule.source_dtypes.get(i, FLOATING)
            dtype = str(meta(key)[1]).removeprefix("torch.")
            if dtype not in expected:
                where = f" ({origins[key]})" if origins and key in origins else ""
                bad.append(f"{key}{where} is {_names((dtype,))}, expected {_names(expected)}")
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ConversionError(f"tensor dtypes: {'; '.join(bad[:3])}{more}{hint}")


def _article(title: str) -> str:
    """'an' before a vowel sound: Our, RWKV (an acronym read letter by letter); 'a' otherwise."""
    return "an" if title[0] in "AEIOU" or (title[:2].isupper() and title[0] in "FHLMNRSX") else "a"


def _names(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _raise_if_any(problems: dict[str, list[str]], hint: str) -> None:
    parts = []
    for heading, keys in problems.items():
        if keys:
            keys = sorted(set(keys))
            shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
            parts.append(f"{heading}: {shown}")
    if parts:
        raise LedgerError("key ledger: " + "; ".join(parts) + hint)
