"""The rules whose outputs are their inputs' bytes rearranged, stated as pieces of those bytes: what lets a
conversion run without torch.

A rename is its input whole; ``Rotary`` reorders the rows of each head (even rows, then odd); ``Split``, ``Unstack``
and ``CutVocab`` take row blocks; ``Transpose`` and a transposing ``Unstack`` take a matrix's transpose; the rank
rules join model-parallel slices (along the first dimension a concatenation, along a later one rows side by side)
or take rank 0's copy. Each plan gives, per output, its shape and its pieces in order, positions counted in
elements of the rule's inputs as if each were contiguous. Rules that compute values (dequantisation, a unit
offset) or regroup a transposed matrix have no plan: their conversions take the torch path.
``tests/test_raw_conversion.py`` holds every plan to its rule's torch forward, bit for bit, on every family's tiny
cases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod
from typing import NamedTuple

from harness.mapping.rules import (
    CutVocab,
    Dims,
    MergeRanks,
    MergeRotary,
    Rename,
    RenameAt,
    Replicated,
    Rotary,
    Rule,
    Split,
    Transpose,
    Unstack,
)

__all__ = ["InterleavedRun", "PlannedPiece", "Run", "TransposedRun", "byte_plan"]


class Run(NamedTuple):
    """``count`` elements of input ``input`` from element ``first``, as they are."""

    input: int
    first: int
    count: int


class TransposedRun(NamedTuple):
    """The transpose of the ``[rows, cols]`` matrix at element ``first`` of input ``input``."""

    input: int
    first: int
    rows: int
    cols: int


class InterleavedRun(NamedTuple):
    """Input ``input`` read as ``blocks`` equal consecutive blocks of ``rows`` rows each; output row ``o`` is row
    ``o`` of every block in turn (slices joined along a later dimension)."""

    input: int
    blocks: int
    rows: int


PlannedPiece = Run | TransposedRun | InterleavedRun  # in elements of the inputs; placed as harness.io.assembly.Piece
Shape = tuple[int, ...]
Output = tuple[Shape, list[PlannedPiece]]


def byte_plan(rule: Rule, shapes: Sequence[Shape], dims: Dims) -> list[Output] | None:
    """Each output of ``rule`` on inputs of ``shapes`` as pieces of their elements; None when the rule computes or
    the shapes are ones its forward refuses (the torch path then raises the error).

    >>> [pieces for _, pieces in byte_plan(Rotary("a", "b", heads="h"), [(4, 1)], {"h": 1, "head_dim": 4})]
    [[Run(input=0, first=0, count=1), Run(input=0, first=2, count=1), Run(input=0, first=1, count=1), \
Run(input=0, first=3, count=1)]]
    """
    plan = _PLANS.get(type(rule))
    return plan(rule, list(shapes), dims) if plan is not None else None


def _whole(rule: Rule, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    return [(shapes[0], [Run(0, 0, prod(shapes[0]))])]


def _rotary(rule: Rotary | MergeRotary, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    # Merging q/k slices along their rows lays the stacked [ranks, rows, cols] out as the merged [rows, cols].
    shape = (shapes[0][0] * shapes[0][1], *shapes[0][2:]) if isinstance(rule, MergeRotary) and len(shapes[0]) > 1 \
        else shapes[0]
    heads, head_dim = dims[rule.heads], dims[rule.head_dim]
    if isinstance(rule, MergeRotary) and len(shapes[0]) < 2 or not shape or shape[0] != heads * head_dim \
            or head_dim % 2:
        return None
    row = prod(shape[1:])
    # permute_rotary: within each head, rows 0, 2, 4, ... then 1, 3, 5, ...
    order = [h * head_dim + 2 * i + odd for h in range(heads) for odd in (0, 1) for i in range(head_dim // 2)]
    return [(shape, [Run(0, r * row, row) for r in order])]


def _rows(shape: Shape, blocks: list[tuple[int, int]]) -> list[Output]:
    """Row blocks ``(first row, row count)`` of one input."""
    row = prod(shape[1:])
    return [((n, *shape[1:]), [Run(0, first * row, n * row)]) for first, n in blocks]


def _split(rule: Split, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    q, kv = dims[rule.heads] * dims[rule.head_dim], dims[rule.kv_heads] * dims[rule.head_dim]
    if not shapes[0] or shapes[0][0] != q + 2 * kv:
        return None
    return _rows(shapes[0], [(0, q), (q, kv), (q + kv, kv)])


def _unstack(rule: Unstack, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    count, shape = dims[rule.count], shapes[0]
    if not shape or count < 1 or shape[0] % count:
        return None
    size = shape[0] // count
    if not rule.transpose_blocks:
        return _rows(shape, [(e * size, size) for e in range(count)])
    if len(shape) != 2:
        return None
    return [((shape[1], size), [TransposedRun(0, e * size * shape[1], size, shape[1])]) for e in range(count)]


def _transpose(rule: Transpose, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    if len(shapes[0]) != 2:
        return None
    rows, cols = shapes[0]
    return [((cols, rows), [TransposedRun(0, 0, rows, cols)])]


def _cut_vocab(rule: CutVocab, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    rows = dims[rule.rows]
    return _rows(shapes[0], [(0, rows)]) if shapes[0] and shapes[0][0] >= rows else None


def _merge(rule: MergeRanks, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    """Slices stacked by rank, [ranks, *slice], joined along ``rule.dim`` of a slice."""
    ranks, *piece = shapes[0] or (0,)
    if not piece or not 0 <= rule.dim < len(piece):
        return None
    shape = (*piece[:rule.dim], ranks * piece[rule.dim], *piece[rule.dim + 1:])
    rows = prod(piece[:rule.dim])
    if rows == 1 or ranks == 1:  # a concatenation: the stacked bytes are already the merged ones
        return [(shape, [Run(0, 0, prod(shapes[0]))])]
    return [(shape, [InterleavedRun(0, ranks, rows)])]


def _replicated(rule: Replicated, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    """Rank 0's copy (the family's reader checks that every rank's copy is the same)."""
    if not shapes[0]:
        return None
    return [(shapes[0][1:], [Run(0, 0, prod(shapes[0][1:]))])]


_PLANS: dict[type[Rule], Callable[..., list[Output] | None]] = {
    Rename: _whole, RenameAt: _whole, Rotary: _rotary, MergeRotary: _rotary, Split: _split, Unstack: _unstack,
    Transpose: _transpose, CutVocab: _cut_vocab, MergeRanks: _merge, Replicated: _replicated,
}
