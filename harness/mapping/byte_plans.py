"""The rules whose outputs are their inputs' bytes rearranged, stated as pieces of those bytes: what lets a
conversion run without torch.

A rule that moves rows (``Rule.moves_rows``: a rename, the rotary permutation, the qkv split and grouping, expert
blocks, the vocabulary cut, rank joins along rows, rank 0's copy) is planned by running its own forward on an array
of row numbers: each output row is the input row it names, and consecutive rows become one run. The other layouts
are a swap of a matrix's axes (``Transpose``, a transposing ``Unstack``) and a join of rank slices along a later
axis (each output row is that row of every slice in turn). Each plan gives, per output, its shape and its pieces in
order, positions counted in elements of the rule's inputs as if each were contiguous. Rules that compute values
(dequantisation, a unit offset) have no plan: their conversions take the torch path.
``tests/test_raw_conversion.py`` holds every plan to its rule's torch forward, bit for bit, on every family's tiny
cases and on drawn shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import NamedTuple

import numpy as np

from harness.mapping.rules import Dims, MergeRanks, Rule, Transpose, Unstack

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


PlannedPiece = Run | TransposedRun | InterleavedRun  # in input elements; placed as harness.io.assembly.Piece
Shape = tuple[int, ...]
Output = tuple[Shape, list[PlannedPiece]]


def byte_plan(rule: Rule, shapes: Sequence[Shape], dims: Dims) -> list[Output] | None:
    """Each output of ``rule`` on inputs of ``shapes`` as pieces of their elements; None when the rule computes or
    the shapes are ones its forward refuses (the torch path then raises the error).

    >>> from harness.mapping.rules import Rotary
    >>> [pieces for _, pieces in byte_plan(Rotary("a", "b", heads="h"), [(4, 1)], {"h": 1, "head_dim": 4})]
    [[Run(input=0, first=0, count=1), Run(input=0, first=2, count=1), Run(input=0, first=1, count=1), \
Run(input=0, first=3, count=1)]]
    """
    shapes = list(shapes)
    if len(shapes) != 1:
        return None
    if rule.moves_rows:
        return _moved_rows(rule, shapes[0], dims)
    if isinstance(rule, Transpose | Unstack):
        return _swapped(rule, shapes[0], dims)
    if isinstance(rule, MergeRanks):
        return _joined(rule, shapes[0])
    return None


def _moved_rows(rule: Rule, shape: Shape, dims: Dims) -> list[Output] | None:
    """The rule's forward on the input's row numbers: where each output row comes from."""
    rows, row = shape[: rule.row_dims], prod(shape[rule.row_dims:])
    try:
        numbers = rule.forward([np.arange(prod(rows)).reshape(rows)], dims)
    except (ValueError, IndexError, KeyError, ZeroDivisionError):
        return None
    return [((*n.shape, *shape[rule.row_dims:]), _runs(n.reshape(-1), row)) for n in numbers]


def _runs(numbers: np.ndarray, row: int) -> list[PlannedPiece]:
    """Consecutive row numbers as one run each (computed on whole arrays: a rotary plan has a run per row)."""
    if not numbers.size:
        return [Run(0, 0, 0)]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(numbers) != 1) + 1))
    lengths = np.diff(np.append(starts, numbers.size))
    return [Run(0, first * row, n * row) for first, n in zip(numbers[starts].tolist(), lengths.tolist(), strict=True)]


def _swapped(rule: Transpose | Unstack, shape: Shape, dims: Dims) -> list[Output] | None:
    """Each output the transpose of a row block of a matrix: the whole of it, or one expert's block."""
    count = dims[rule.count] if isinstance(rule, Unstack) else 1
    if len(shape) != 2 or count < 1 or shape[0] % count:
        return None
    size, cols = shape[0] // count, shape[1]
    return [((cols, size), [TransposedRun(0, e * size * cols, size, cols)]) for e in range(count)]


def _joined(rule: MergeRanks, shape: Shape) -> list[Output] | None:
    """Slices stacked by rank, [ranks, *slice], joined along ``rule.dim`` of a slice."""
    ranks, *piece = shape or (0,)
    if not piece or not 0 <= rule.dim < len(piece):
        return None
    merged = (*piece[:rule.dim], ranks * piece[rule.dim], *piece[rule.dim + 1:])
    rows = prod(piece[:rule.dim])
    if rows == 1 or ranks == 1:  # a concatenation: the stacked bytes are already the merged ones
        return [(merged, [Run(0, 0, prod(shape))])]
    return [(merged, [InterleavedRun(0, ranks, rows)])]
