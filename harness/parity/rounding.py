"""A declared cast is not an error: the source rounded exactly as a correct conversion to the stored dtypes rounds it.

A conversion that also changes the storage dtype (Meta's float32 weights written as bfloat16) is correct when
every output tensor is the correctly converted tensor rounded to nearest even in its stored dtype. So the
reference, to be held to the float32 bound, must read the source *as that conversion rounds it*:

- a step that only moves data (rename, rotary permutation, split, stack, rank merge) commutes with rounding each
  element, so its source tensors are rounded in place to the dtype their targets are stored in;
- a step that computes (int8 dequantisation) is rounded after it computes: its forward runs, the outputs are
  rounded, and the rule expresses them again in source terms (``Rule.express``: a float weight and a unit scale).

The stored dtype of each target comes from the converted directory's own headers (by name; a target the
directory names differently takes the directory's most common floating dtype). ``check_rounding`` reads a few
stored tensors back and says whether the converter rounded to nearest even, as assumed here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from harness.errors import ConversionError
from harness.io.tensor_store import TensorStore
from harness.mapping.conversion import Converted, SourceCheckpoint
from harness.mapping.keymap import Step

__all__ = ["Rounding", "check_rounding", "plan_rounding"]


@dataclass
class Rounding:
    """Which source tensors a correct conversion rounds, and to what.

    ``elementwise``: source key -> the dtype its targets are stored in (data movement: round in place);
    ``computed``: source key -> the step that computes from it (rounded after computing).
    """

    elementwise: dict[str, torch.dtype] = field(default_factory=dict)
    computed: dict[str, Step] = field(default_factory=dict)
    stored: dict[str, torch.dtype] = field(default_factory=dict)  # target name -> stored dtype, for computed steps
    dims: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.elementwise or self.computed)

    def describe(self) -> str:
        """One line: how many source tensors are rounded to which dtypes."""
        counts = Counter(_name(d) for d in self.elementwise.values())
        counts.update(_name(self.stored[t]) for s in {id(s): s for s in self.computed.values()}.values()
                      for t in s.targets if t in self.stored)
        return ", ".join(f"{n} tensors to {d}" for d, n in sorted(counts.items()))

    def apply(self, source: SourceCheckpoint) -> SourceCheckpoint:
        """``source`` with its tensors rounded on read (lazily: nothing is read here)."""
        if not self:
            return source
        tensors = source.tensors
        done: dict[int, dict[str, torch.Tensor]] = {}  # a computed step's rounded sources, until each is read

        def rounded(key: str) -> Callable[[], torch.Tensor]:
            if key in self.elementwise:
                return lambda: tensors[key].to(self.elementwise[key])
            step = self.computed[key]

            def compute() -> torch.Tensor:
                pending = done.get(id(step))
                if pending is None or key not in pending:
                    pending = done[id(step)] = self._computed(step, tensors)
                return pending.pop(key)
            return compute

        loaders = {k: (rounded(k) if k in self.elementwise or k in self.computed else (lambda k=k: tensors[k]))
                   for k in tensors}
        metas = {k: (tensors.meta(k)[0], self.elementwise[k]) if k in self.elementwise else tensors.meta(k)
                 for k in tensors}
        return SourceCheckpoint(source.config, TensorStore(loaders, metas, tensors.origins), source.layout,
                                source.path, list(source.notes))

    def _computed(self, step: Step, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = step.run([tensors[k] for k in step.sources], self.dims)
        outputs = [o.to(self.stored.get(t, o.dtype)) for t, o in zip(step.targets, outputs, strict=True)]
        return dict(zip(step.sources, step.rule.express(outputs, self.dims), strict=True))


def plan_rounding(converted: Converted, stored: Mapping[str, torch.dtype]) -> Rounding:
    """The rounding a correct conversion to ``stored`` (converted key -> stored dtype) applies to ``converted``'s
    source. A target missing from ``stored`` (another converter's names) takes its most common floating dtype."""
    floating = Counter(d for d in stored.values() if d.is_floating_point)
    default = floating.most_common(1)[0][0] if floating else None
    rounding = Rounding(dims=dict(converted.dims))
    source = converted.source
    for step in converted.steps:
        metas = [source.meta(k) for k in step.sources]
        targets = {t: stored.get(t, default) for t in step.targets}
        if not step.rule.moves_data:
            out = step.rule.planned(metas, rounding.dims)
            if any(d is not None and d != o for d, (_, o) in zip(targets.values(), out, strict=True)):
                rounding.computed.update(dict.fromkeys(step.sources, step))
                rounding.stored.update({t: d for t, d in targets.items() if d is not None})
            continue
        wanted = {d for d in targets.values() if d is not None}
        if len(wanted) > 1:
            raise ConversionError(f"{', '.join(step.targets)} are stored in {', '.join(sorted(map(_name, wanted)))}: "
                                  f"one source tensor cannot be rounded to two dtypes")
        for key, (_, dtype) in zip(step.sources, metas, strict=True):
            target = next(iter(wanted), None)
            if target is not None and dtype.is_floating_point and target.is_floating_point and target != dtype:
                rounding.elementwise[key] = target
    return rounding


def check_rounding(converted: Converted, rounding: Rounding, read: Callable[[str], torch.Tensor | None],
                   budget: int = 64 * 2**20) -> str | None:
    """Whether the stored tensors of the smallest narrowing steps (up to ``budget`` bytes) are the source rounded to
    nearest even, as ``Rounding`` assumes; a line naming the first that is not (and whether truncation explains
    it), or None when all checked agree. ``read(name)`` gives the converted directory's tensor, or None."""
    steps = [s for s in converted.steps if s.rule.moves_data and any(k in rounding.elementwise for k in s.sources)]
    steps.sort(key=lambda s: sum(_numel(converted.source.meta(k)[0]) for k in s.sources))
    spent = 0
    for step in steps:
        spent += sum(_numel(converted.source.meta(k)[0]) * 4 for k in step.sources)
        if spent > budget:
            break
        outputs = step.run([converted.source[k] for k in step.sources], converted.dims)
        for name, exact in zip(step.targets, outputs, strict=True):
            got = read(name)
            if got is None or got.shape != exact.shape or got.dtype == exact.dtype:
                continue
            if not torch.equal(exact.to(got.dtype), got):
                how = ("it matches truncation (round toward zero)" if torch.equal(_truncate(exact, got.dtype), got)
                       else "nor does truncation explain it")
                return (f"{name} is not the source rounded to nearest even in {_name(got.dtype)}: {how}; verify "
                        f"holds the conversion to round-to-nearest-even")
    return None


def _truncate(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 -> bfloat16 by dropping the low 16 bits (what a converter that shifts bits does); else a plain cast."""
    if t.dtype != torch.float32 or dtype != torch.bfloat16:
        return t.to(dtype)
    bits = t.contiguous().view(torch.int32) & ~0xFFFF
    return bits.view(torch.float32).to(torch.bfloat16)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
