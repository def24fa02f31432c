"""The base of the rules that only move data: each states its layout once, and everything else is run from it.

A layout is a function of the input written with ``reshape``, ``swapaxes``, slicing and indexing only, operations
that numpy arrays share with tensors. Run on a tensor, it is the conversion (the torch path). Run on the numbers
of the input's *segments* (its first ``segment_axes`` axes; the axes after them move as one piece), it says where
every output segment comes from. That one answer gives

- the inverse: each output segment goes back to where it came from (segments no output took come back as zeros:
  the vocabulary padding), and
- the torch-free byte plan (``harness.mapping.byte_plans``): consecutive segments become one run of bytes.

A rule whose outputs are matrices transposed after the layout (nn.Linear [out, in] <-> Conv1D [in, out]) says
``transposes``; no rule writes its permutation, its inverse or its byte layout a second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import TYPE_CHECKING, Any

from harness.mapping import transforms
from harness.mapping.rules.rule import Dims, Meta, Rule

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["MovesData", "Shape", "output_shape"]

Shape = tuple[int, ...]


class MovesData(Rule):
    """One source tensor rearranged into the targets; a subclass writes ``layout`` and, where the source shape is not
    the outputs' rows stacked, ``source_shape``."""

    moves_data = True
    segment_axes: int = 1  # leading input axes the layout addresses; the axes after them are one segment
    transposes: bool = False  # each output is the transpose of the matrix the layout gives

    def __init__(self, source: str, targets: Sequence[str]) -> None:
        super().__init__([source], targets)

    def layout(self, x: Any, dims: Dims) -> list[Any]:
        """The outputs of input ``x`` (a tensor or an array of segment numbers), before any transpose."""
        raise NotImplementedError

    def source_shape(self, shapes: list[Shape], dims: Dims) -> Shape:
        """The input's shape for outputs of ``shapes`` (before any transpose): their rows stacked, by default."""
        return (sum(s[0] for s in shapes), *shapes[0][1:]) if shapes[0] else ()

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        outputs = self.layout(tensors[0], dims)
        return [transforms.transpose(o) for o in outputs] if self.transposes else list(outputs)

    def segments(self, shape: Shape, dims: Dims) -> tuple[list[np.ndarray], Shape]:
        """Per output, the numbers of the input segments it is made of (in an array shaped as the output, one
        element per segment), and the segment's shape. Raises what ``layout`` raises for a shape it refuses."""
        import numpy as np

        k = min(self.segment_axes, len(shape))
        segment = tuple(shape[k:])
        numbers = np.arange(prod(shape[:k])).reshape(*shape[:k], *((1,) if segment else ()))
        return [np.asarray(n) for n in self.layout(numbers, dims)], segment

    def output_shapes(self, numbers: list[np.ndarray], segment: Shape) -> list[Shape]:
        """The shape of each output (after any transpose) made of the segments ``numbers`` name."""
        shapes = [output_shape(n.shape, segment) for n in numbers]
        if not self.transposes:
            return shapes
        if any(len(s) > 2 for s in shapes):
            raise ValueError(f"{self!r} transposes matrices; its layout gave {shapes}")
        return [s[::-1] for s in shapes]

    def planned(self, inputs: list[Meta], dims: Dims) -> list[Meta]:
        """Each output's shape from the layout run on segment numbers, in the input's dtype: the same answer the
        byte plan places, with no torch."""
        (shape, dtype), = inputs
        numbers, segment = self.segments(tuple(shape), dims)
        return [(s, dtype) for s in self.output_shapes(numbers, segment)]

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        """Each output segment put back where the layout took it from."""
        import numpy as np
        import torch

        outputs = [transforms.transpose(t) for t in tensors] if self.transposes else list(tensors)
        shape = self.source_shape([tuple(o.shape) for o in outputs], dims)
        numbers, segment = self.segments(shape, dims)
        made = [output_shape(n.shape, segment) for n in numbers]
        if made != [tuple(o.shape) for o in outputs]:
            raise ValueError(f"{self!r}: outputs of shapes {[tuple(o.shape) for o in outputs]} are not what it makes "
                             f"from {shape} ({made})")
        source = outputs[0].new_zeros(shape)
        size = prod(segment)
        if source.numel():
            came_from = torch.as_tensor(np.concatenate([n.reshape(-1) for n in numbers]), device=source.device)
            source.view(-1, size)[came_from] = torch.cat([o.reshape(-1, size) for o in outputs])
        return [source]


def output_shape(numbers: Shape, segment: Shape) -> Shape:
    """The shape of an output whose segment numbers have shape ``numbers``: its last axis joins segments (one per
    row, or one per rank slice along a later axis)."""
    if not segment:
        return tuple(numbers)
    return (*numbers[:-1], numbers[-1] * segment[0], *segment[1:])

