"""Conversions that only move bytes, planned and streamed without torch.

When every step of a conversion is a rule with a row plan (``harness.mapping.row_plans``: renames, the rotary row
permutation, row blocks), every source tensor it reads lies contiguously in its file, and no cast is asked for
(or a cast to the dtype the tensors already have), each output is a run or a gather of runs of source bytes:
its shard header comes from the shapes alone and its bytes go file to file. Such a conversion never imports
torch. Anything else (a transpose, a dequantization, a cast, tensors that need loading) returns None here and
takes the torch path, which writes the same bytes (``tests/test_raw_conversion.py`` checks it file for file).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from harness.io.file_regions import FileRegion
from harness.io.raw_dtypes import RawDType
from harness.io.row_gather import RowGather
from harness.io.tensor_store import TensorSpec
from harness.mapping.conversion import Converted
from harness.mapping.keymap import FLOATING
from harness.mapping.row_plans import row_plan

__all__ = ["RawConversion", "raw_conversion"]


@dataclass(frozen=True)
class RawConversion:
    """Every output's spec and the file bytes it is made of, in the order the writer takes them."""

    specs: list[TensorSpec]
    parts: list[tuple[FileRegion, ...]]

    def payloads(self) -> Iterator[tuple[str, FileRegion | RowGather]]:
        for spec, parts in zip(self.specs, self.parts, strict=True):
            whole = len(parts) == 1
            yield spec.name, parts[0].sub(0, spec.shape, spec.dtype) if whole else RowGather(parts, spec.shape,
                                                                                             spec.dtype)


def raw_conversion(converted: Converted, dtype: str | None = None) -> RawConversion | None:
    """The byte plan of ``converted`` written as ``dtype`` (None: as stored), or None when a step computes."""
    store, specs, parts = converted.source, [], []
    for step in converted.steps:
        metas = [store.raw_meta(k) for k in step.sources]
        regions = [store.regions.get(k) for k in step.sources]
        dtypes = {d for _, d in metas}
        if len(dtypes) != 1 or any(r is None for r in regions):
            return None
        (kind,) = dtypes
        if not isinstance(kind, RawDType) or kind.name not in FLOATING or dtype not in (None, kind.name):
            return None
        plan = row_plan(step.rule, [shape for shape, _ in metas], converted.dims)
        if plan is None or len(plan) != len(step.targets):
            return None
        for name, (shape, runs) in zip(step.targets, plan, strict=True):
            specs.append(TensorSpec(name, shape, kind))
            parts.append(tuple(regions[i].sub(first * kind.itemsize, (count,), kind)  # type: ignore[union-attr]
                               for i, first, count in runs))
    return RawConversion(specs, parts)
