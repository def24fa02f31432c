"""The rules that only move bytes, stated as runs of their inputs' elements: what lets a conversion skip torch.

A rename is its input whole; ``Rotary`` reorders the rows of each head (even rows, then odd); ``Split``,
``Unstack`` (untransposed) and ``CutVocab`` take row blocks; the rank rules of a single rank file are renames.
Each plan gives, per output, its shape and its bytes as ``(input, first element, element count)`` runs of the
inputs' contiguous bytes, in order. The rest of the rules compute (transpose, dequantize, merge ranks across files)
and have no plan: their conversions take the torch path. ``tests/test_row_plans.py`` holds every plan to its
rule's torch forward, bit for bit, on every family's tiny cases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    Unstack,
)

__all__ = ["Run", "row_plan"]

Run = tuple[int, int, int]  # (input index, first element, element count)
Shape = tuple[int, ...]
Output = tuple[Shape, list[Run]]


def row_plan(rule: Rule, shapes: Sequence[Shape], dims: Dims) -> list[Output] | None:
    """Each output of ``rule`` on inputs of ``shapes`` as runs of their elements; None when the rule computes or
    the shapes are ones its forward refuses (the torch path then raises the error).

    >>> from harness.mapping.rules import Rotary
    >>> [runs for _, runs in row_plan(Rotary("a", "b", heads="h"), [(4, 1)], {"h": 1, "head_dim": 4})]
    [[(0, 0, 1), (0, 2, 1), (0, 1, 1), (0, 3, 1)]]
    """
    plan = _PLANS.get(type(rule))
    return plan(rule, list(shapes), dims) if plan is not None else None


def _whole(rule: Rule, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    return [(shapes[0], [(0, 0, _numel(shapes[0]))])]


def _rotary(rule: Rotary | MergeRotary, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    shape = shapes[0][1:] if isinstance(rule, MergeRotary) else shapes[0]
    if isinstance(rule, MergeRotary) and shapes[0][0] != 1:
        return None
    heads, head_dim = dims[rule.heads], dims[rule.head_dim]
    if not shape or shape[0] != heads * head_dim or head_dim % 2:
        return None
    row = _numel(shape[1:])
    # permute_rotary: within each head, rows 0, 2, 4, ... then 1, 3, 5, ...
    order = [h * head_dim + 2 * i + odd for h in range(heads) for odd in (0, 1) for i in range(head_dim // 2)]
    return [(shape, [(0, r * row, row) for r in order])]


def _rows(shape: Shape, blocks: list[tuple[int, int]]) -> list[Output]:
    """Row blocks ``(first row, row count)`` of one input."""
    row = _numel(shape[1:])
    return [((n, *shape[1:]), [(0, first * row, n * row)]) for first, n in blocks]


def _split(rule: Split, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    q, kv = dims[rule.heads] * dims[rule.head_dim], dims[rule.kv_heads] * dims[rule.head_dim]
    if not shapes[0] or shapes[0][0] != q + 2 * kv:
        return None
    return _rows(shapes[0], [(0, q), (q, kv), (q + kv, kv)])


def _unstack(rule: Unstack, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    count = dims[rule.count]
    if rule.transpose_blocks or not shapes[0] or count < 1 or shapes[0][0] % count:
        return None
    size = shapes[0][0] // count
    return _rows(shapes[0], [(e * size, size) for e in range(count)])


def _cut_vocab(rule: CutVocab, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    rows = dims[rule.rows]
    return _rows(shapes[0], [(0, rows)]) if shapes[0] and shapes[0][0] >= rows else None


def _one_rank(rule: Rule, shapes: list[Shape], dims: Dims) -> list[Output] | None:
    """A rank rule over one rank file, [1, *slice]: the slice itself."""
    if not shapes[0] or shapes[0][0] != 1:
        return None
    return [(shapes[0][1:], [(0, 0, _numel(shapes[0]))])]


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


_PLANS: dict[type[Rule], Callable[..., list[Output] | None]] = {
    Rename: _whole, RenameAt: _whole, Rotary: _rotary, MergeRotary: _rotary, Split: _split, Unstack: _unstack,
    CutVocab: _cut_vocab, MergeRanks: _one_rank, Replicated: _one_rank,
}
