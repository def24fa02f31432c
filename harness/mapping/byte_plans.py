"""The rules whose outputs are their inputs' bytes rearranged, stated as pieces of those bytes: what lets a
conversion run without torch.

A data-moving rule (``harness.mapping.rules.MovesData``) is planned from its one layout, run on the numbers of its
input's segments: each output is the segments it names, in order, and consecutive segments become one run. Two
shapes of that answer have a compact piece of their own: a whole input read as equal blocks and interleaved (rank
slices joined along a later axis: each output row is that row of every slice in turn), and a transposing rule's
output when it is one run before the transpose (a swap of a matrix's axes). Each plan gives, per output, its shape
and its pieces in order, positions counted in elements of the rule's input as if it were contiguous. Rules that
compute values (dequantisation, a unit offset) have no plan: their conversions take the torch path, as does a
transposed output made of several runs (GPT-SW3's regrouped, transposed qkv). ``tests/test_raw_conversion.py``
holds every plan to its rule's torch forward, bit for bit, on every family's tiny cases and on drawn layouts and
shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import NamedTuple

import numpy as np

from harness.mapping.rules import Dims, MovesData, Rule

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
    the shapes are ones its layout refuses (the torch path then raises the error).

    >>> from harness.mapping.rules import Rotary
    >>> [pieces for _, pieces in byte_plan(Rotary("a", "b", heads="h"), [(4, 1)], {"h": 1, "head_dim": 4})]
    [[Run(input=0, first=0, count=1), Run(input=0, first=2, count=1), Run(input=0, first=1, count=1), \
Run(input=0, first=3, count=1)]]
    """
    if len(shapes) != 1 or not isinstance(rule, MovesData):
        return None
    try:
        numbers, segment = rule.segments(tuple(shapes[0]), dims)
        out_shapes = rule.output_shapes(numbers, segment)
    except (ValueError, IndexError, KeyError, ZeroDivisionError):
        return None
    size, total = prod(segment), prod(shapes[0])
    plan = []
    for n, shape in zip(numbers, out_shapes, strict=True):
        pieces = _pieces(n, size, total)
        if rule.transposes:  # one run before the transpose is one transposed matrix; more go through torch
            if len(shape) != 2 or len(pieces) != 1 or not isinstance(pieces[0], Run):
                return None
            pieces = [TransposedRun(0, pieces[0].first, shape[1], shape[0])]
        plan.append((shape, pieces))
    return plan


def _pieces(numbers: np.ndarray, size: int, total: int) -> list[PlannedPiece]:
    """Segments of ``size`` elements, named by ``numbers``, as runs; a whole input interleaved as one piece."""
    flat = numbers.reshape(-1)
    if numbers.ndim >= 2 and flat.size * size == total and 1 < numbers.shape[-1] < flat.size:
        blocks = numbers.shape[-1]
        if np.array_equal(flat, np.arange(flat.size).reshape(blocks, -1).T.reshape(-1)):
            return [InterleavedRun(0, blocks, flat.size // blocks)]
    return _runs(flat, size)


def _runs(numbers: np.ndarray, size: int) -> list[PlannedPiece]:
    """Consecutive segment numbers as one run each (computed on whole arrays: a rotary plan has a run per row)."""
    if not numbers.size:
        return [Run(0, 0, 0)]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(numbers) != 1) + 1))
    lengths = np.diff(np.append(starts, numbers.size))
    return [Run(0, first * size, n * size) for first, n in zip(numbers[starts].tolist(), lengths.tolist(), strict=True)]
