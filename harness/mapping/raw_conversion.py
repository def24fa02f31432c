"""Conversions that rearrange bytes, planned and written without torch.

When every step of a conversion is a rule with a byte plan (``harness.mapping.byte_plans``: renames, row
permutations and blocks, transposes, model-parallel joins), every source tensor it reads lies in its files as is
(one region, or one region per rank file), and a ``--dtype`` cast, if any, is between float32, bfloat16 and
float16, each output is made of source regions: its shard header comes from the shapes alone. An output that is
its regions end to end goes file to file in the kernel; one that transposes, joins or casts is computed in
chunks with numpy (``harness.io.assembly``). Such a conversion never imports torch. Anything else (dequantization,
a regrouped transpose, tensors that need loading) returns None here and takes the torch path, which writes the
same bytes (``tests/test_raw_conversion.py`` checks it file for file).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate

from harness.io.assembly import Assembly, Interleaved, Piece, Transposed
from harness.io.bit_casts import CASTABLE
from harness.io.file_regions import FileRegion
from harness.io.payload import FilePayload
from harness.io.raw_dtypes import BY_NAME, RawDType
from harness.io.row_gather import KERNEL_RUN, RowGather
from harness.io.tensor_store import TensorSpec
from harness.mapping.byte_plans import InterleavedRun, PlannedPiece, Run, TransposedRun, byte_plan
from harness.mapping.conversion import Converted
from harness.mapping.keymap import FLOATING

__all__ = ["RawConversion", "raw_conversion"]


@dataclass(frozen=True)
class RawConversion:
    """Every output's spec and its payload (regions to copy, or an assembly to compute), in the writer's order."""

    specs: list[TensorSpec]
    outputs: list[FilePayload]

    def payloads(self) -> Iterator[tuple[str, FilePayload]]:
        for spec, payload in zip(self.specs, self.outputs, strict=True):
            yield spec.name, payload


def raw_conversion(converted: Converted, dtype: str | None = None) -> RawConversion | None:
    """The byte plan of ``converted`` written as ``dtype`` (None: as stored), or None when a step computes."""
    store, specs, outputs = converted.source, [], []
    target = BY_NAME.get(dtype) if dtype is not None else None
    for step in converted.steps:
        metas = [store.raw_meta(k) for k in step.sources]
        parts = [store.byte_parts(k) for k in step.sources]
        dtypes = {d for _, d in metas}
        if len(dtypes) != 1 or any(p is None for p in parts):
            return None
        (kind,) = dtypes
        if not isinstance(kind, RawDType) or kind.name not in FLOATING:
            return None
        written = target or kind
        if written != kind and (kind.name not in CASTABLE or written.name not in CASTABLE):
            return None
        sources = [(p, list(accumulate(r.nbytes for r in p))) for p in parts if p is not None]
        plan = byte_plan(step.rule, [shape for shape, _ in metas], converted.dims)
        if plan is None or len(plan) != len(step.targets):
            return None
        for name, (shape, pieces) in zip(step.targets, plan, strict=True):
            placed = _placed(pieces, sources, kind)
            if placed is None:
                return None
            specs.append(TensorSpec(name, shape, written))
            outputs.append(_payload(placed, shape, kind, written))
    return RawConversion(specs, outputs)




# A source tensor's file regions in order, and where each ends (bytes from the start of the first).
_Parts = tuple[tuple[FileRegion, ...], list[int]]


def _placed(pieces: list[PlannedPiece], parts: list[_Parts], kind: RawDType) -> list[Piece] | None:
    """The plan's pieces as regions of the source files; None where a transposed or joined block would straddle
    two files (never for the layouts the families write: each rank file holds whole slices)."""
    out: list[Piece] = []
    size = kind.itemsize
    for piece in pieces:
        if isinstance(piece, Run):
            out.extend(_cut(parts[piece.input], piece.first * size, piece.count * size, (piece.count,)))
        elif isinstance(piece, TransposedRun):
            block = _cut(parts[piece.input], piece.first * size, piece.rows * piece.cols * size,
                         (piece.rows, piece.cols))
            if len(block) != 1:
                return None
            out.append(Transposed(block[0]))
        else:
            assert isinstance(piece, InterleavedRun)
            total = parts[piece.input][1][-1]
            step = total // piece.blocks
            blocks = [_cut(parts[piece.input], b * step, step, (step // size,)) for b in range(piece.blocks)]
            if any(len(b) != 1 for b in blocks):
                return None
            out.append(Interleaved(tuple(b[0] for b in blocks), piece.rows))
    return out


def _cut(source: _Parts, offset: int, length: int, shape: tuple[int, ...]) -> list[FileRegion]:
    """Bytes ``[offset, offset + length)`` of the parts laid end to end, as one region per part they touch
    (one region of ``shape`` when they lie in one part)."""
    parts, ends = source
    if not length:
        return [parts[0].sub(0, shape, parts[0].dtype)]
    i = bisect_right(ends, offset)  # the part holding the first byte
    spans: list[tuple[FileRegion, int, int]] = []  # (part, offset in it, bytes)
    while length:
        begin = ends[i - 1] if i else 0
        take = min(length, ends[i] - offset)
        spans.append((parts[i], offset - begin, take))
        offset, length, i = offset + take, length - take, i + 1
    if len(spans) == 1:
        part, start, _ = spans[0]
        return [part.sub(start, shape, part.dtype)]
    return [part.sub(start, (take // part.dtype.itemsize,), part.dtype) for part, start, take in spans]


def _payload(placed: list[Piece], shape: tuple[int, ...], kind: RawDType, written: RawDType) -> FilePayload:
    """A region copied whole, a gather of long runs (each copied in the kernel), or an assembly: computed, cast,
    or made of short rows (a rotary permutation), which worker threads gather while the writer goes on."""
    plain = all(isinstance(p, FileRegion) for p in placed)
    if written == kind and plain and len(placed) == 1:
        region = placed[0]
        assert isinstance(region, FileRegion)
        return region.sub(0, shape, kind)
    if written == kind and plain and all(p.nbytes >= KERNEL_RUN for p in placed):  # type: ignore[union-attr]
        return RowGather(tuple(placed), shape, kind)  # type: ignore[arg-type]
    return Assembly(tuple(placed), shape, written)
