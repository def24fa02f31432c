"""Mutants derived from a family's structure, not from parameter names: they apply to any family, whatever its
architecture looks like.

From the key table: each rule that changes data (not a rename) skipped (its input written as stored) or inverted
(its inverse applied instead), and a rule with several outputs writing two of them in each other's place; from a
tiny conversion: two same-shape targets of one layer exchanged. From the named points: each config field a point
reads perturbed (a size, an epsilon 1e-5 <-> 1e-6, another activation), and one tensor feeding each point scaled by
1.01, the smallest fault ``verify`` claims to see. Each mutant carries the points it is aimed at (``aimed``), so
kill rates are reported per point. The name-based catalogue (``harness.mutation.catalogue``) stays as extras.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from harness.family.family import Family
from harness.mapping.keymap import Step
from harness.mapping.rules import Rename, Rule
from harness.mutation.planting import Mutable, Mutant, config_items

__all__ = ["aimed_points", "point_table", "structural"]

SCALE = 1.01  # the smallest fault verify claims to see
# Another activation, far enough from the right one that no rounding hides it (transformers rewrites some GELU
# names into others, e.g. Gemma's "gelu" into the tanh approximation, so GELU variants are not used for each other).
_OTHER_ACTIVATION = {**dict.fromkeys(("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu"), "silu"),
                     **dict.fromkeys(("silu", "swish"), "gelu")}
_MAX_SWAPS = 6  # same-shape pairs per family: q/k/v/o, gate/up and the norms are enough to show order bugs
_CACHE: dict[str, list[Mutant]] = {}


def structural(family: Family) -> list[Mutant]:
    """The structural catalogue of ``family``: rule, swap, config and scale mutants, in that order."""
    if family.name not in _CACHE:
        _CACHE[family.name] = [*_rule_mutants(family), *_swap_mutants(family), *_config_mutants(family),
                               *_scale_mutants(family)]
    return _CACHE[family.name]


def aimed_points(mutant: Mutant) -> tuple[str, ...]:
    """The named points a structural mutant is aimed at (empty for the name-based catalogue)."""
    return getattr(mutant, "aimed", ())


def point_table(family: Family, records: list[Any]) -> list[str]:
    """Per named point: the structural mutants aimed at it that apply, and how many each dtype killed
    (``records`` from ``harness.mutation.runner.run_family``)."""
    aimed = {m.__name__: aimed_points(m) for m in structural(family)}
    dtypes = list(dict.fromkeys(r.dtype for r in records))
    lines = [f"{'point':<34} {'applied':>7} " + " ".join(f"{'killed ' + d:>16}" for d in dtypes)]
    for p in family.points:
        mine = [r for r in records if p.ref in aimed.get(r.mutant, ()) and r.applicable]
        applied = len({r.mutant for r in mine})
        lines.append(f"{p.ref:<34} {applied:>7} " + " ".join(
            f"{sum(r.killed for r in mine if r.dtype == d):>16}" for d in dtypes))
    return lines


def _mutant(name: str, about: str, aimed: tuple[str, ...], plant: Callable[[Mutable], None]) -> Mutant:
    plant.__name__ = plant.__qualname__ = name
    plant.__doc__ = about
    plant.aimed = aimed  # type: ignore[attr-defined]
    return plant


def _points_of(family: Family, targets: list[str]) -> tuple[str, ...]:
    """The points whose transformers module holds any of ``targets`` (patterns with ``{layer}``)."""
    return tuple(p.ref for p in family.points if any(t.startswith(p.module + ".") for t in targets))


def _rule_mutants(family: Family) -> list[Mutant]:
    rules = {repr(r): r for table in family.keys.values() for r in table.rules if not isinstance(r, Rename)}
    out = []
    for label, rule in rules.items():
        aimed = _points_of(family, [t.text for t in rule.targets])
        kind, source = type(rule).__name__, rule.sources[0].text
        if len(rule.targets) == 1:
            out.append(_mutant(f"skip {kind} {source}", f"{label} not applied: its input written as stored.", aimed,
                               lambda m, rule=rule: _rerun(m, rule, _skipped)))
        if len(rule.targets) == 1 and len(rule.sources) == 1:
            out.append(_mutant(f"invert {kind} {source}", f"{label} inverted: its inverse applied instead.", aimed,
                               lambda m, rule=rule: _rerun(m, rule, lambda step, src, dims: step.rule.inverse(
                                   src, dims))))
        if len(rule.targets) > 1:
            out.append(_mutant(f"misorder {kind} {source}", f"{label} writes two of its outputs in each other's "
                               "place.", aimed, lambda m, rule=rule: _rerun(m, rule, _misordered)))
    return out


def _rerun(m: Mutable, rule: Rule, fn: Callable[[Step, list[torch.Tensor], Any], list[torch.Tensor] | None]) -> None:
    """Every step of ``rule`` re-run with ``fn``; an output of another size than the clean one is written as it is
    (the load then fails), one that cannot be made at all leaves the step as it was."""
    for step in m.converted.steps:
        if step.rule is not rule:
            continue
        try:
            out = fn(step, [m.converted.source[k] for k in step.sources], m.converted.dims)
        except (RuntimeError, ValueError, IndexError):
            continue
        if out is not None and len(out) == len(step.targets):
            for name, t in zip(step.targets, out, strict=True):
                clean = m.tensors[name]
                m.tensors[name] = (t.reshape(clean.shape) if t.numel() == clean.numel() else t).to(clean.dtype)


def _skipped(step: Step, src: list[torch.Tensor], dims: Any) -> list[torch.Tensor]:
    return src[:1]  # the data input as stored (a dequantisation's int8 weight without its scale)


def _misordered(step: Step, src: list[torch.Tensor], dims: Any) -> list[torch.Tensor] | None:
    out = step.rule.forward(src, dims)
    pair = next(((i, j) for i in range(len(out)) for j in range(i + 1, len(out)) if out[i].shape == out[j].shape
                 and not torch.equal(out[i], out[j])), None)
    if pair is None:
        return None
    i, j = pair
    out[i], out[j] = out[j], out[i]
    return out


def _swap_mutants(family: Family) -> list[Mutant]:
    """Consecutive same-shape targets of layer 0 in the default tiny case, exchanged."""
    converted = family.convert(family.tiny(0))
    shapes = {spec.name: spec.shape for spec in converted.plan()}
    layer0 = [t for s in converted.steps if dict(s.binding).get("layer") == 0 for t in s.targets]
    pairs: list[tuple[str, str]] = []
    for shape in dict.fromkeys(shapes[t] for t in layer0):
        group = [t for t in layer0 if shapes[t] == shape]
        pairs += list(zip(group, group[1:], strict=False))[:2]
    return [_mutant(f"swap {a} {b}", f"{a} and {b} (both {tuple(shapes[a])}) written in each other's place.",
                    _layer0_points(family, [a, b]),
                    lambda m, a=a, b=b: _swap(m, a, b)) for a, b in pairs[:_MAX_SWAPS]]


def _layer0_points(family: Family, names: list[str]) -> tuple[str, ...]:
    return tuple(p.ref for p in family.points if any(n.startswith(p.module.format(layer=0) + ".") for n in names))


def _swap(m: Mutable, a: str, b: str) -> None:
    if a in m.tensors and b in m.tensors and m.tensors[a].shape == m.tensors[b].shape:
        m.tensors[a], m.tensors[b] = m.tensors[b], m.tensors[a]


def _config_mutants(family: Family) -> list[Mutant]:
    fields = dict.fromkeys(f for p in family.points for f in p.config)
    return [_mutant(f"perturb {field}", f"Config field {field} written wrong (a size off by one, an epsilon 1e-5 <-> "
                    "1e-6, another activation).",
                    tuple(p.ref for p in family.points if field in p.config),
                    lambda m, field=field: _perturb_field(m, field)) for field in fields]


def _perturb_field(m: Mutable, field: str) -> None:
    for node, key in config_items(m.config, lambda k: k == field):
        node[key] = _perturbed(node[key])


def _perturbed(v: Any) -> Any:
    """Another value of the same kind. A flag is left alone: transformers may ignore one (a tie flag beside both
    tensors), and the name-based catalogue ties and unties heads itself."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float) and 0 < v < 1e-3:
        return 1e-6 if v == 1e-5 else 1e-5
    if isinstance(v, float):
        return v * 2
    if isinstance(v, str) and v in _OTHER_ACTIVATION:
        return _OTHER_ACTIVATION[v]
    return v  # a nested table or an unknown string: nothing to perturb here


def _scale_mutants(family: Family) -> list[Mutant]:
    return [_mutant(f"scale {p.ref}", f"One tensor feeding {p.about} scaled by {SCALE} (the smallest fault verify "
                    "claims to see).", (p.ref,), lambda m, p=p: _scale_first(m, p.module.format(layer=0)))
            for p in family.points]


def _scale_first(m: Mutable, module: str) -> None:
    name = next((n for n, t in m.tensors.items() if n.startswith(module + ".") and t.is_floating_point()), None)
    if name is not None:
        m.tensors[name] = m.tensors[name] * SCALE
