"""The base of every rule kind: ``sources`` (one binding of the placeholders) become ``targets``.

Rule arguments that are sizes (``heads="n_heads"``) name entries of the family's ``dims``, computed from the
source config, so a table holds no numbers that fit only one model size. A rule whose source and target patterns
use different placeholder sets fails when it is constructed, quoting both.

What the rest of the harness needs to know about a rule kind is stated on its class, once: ``source_dtypes`` (the
inputs that are not floating point: a dequantisation's int8 weight), ``inverse_exact`` (whether ``inverse`` gives
back every source bit) and ``moves_data`` (verify's rounding reads it). A rule that only moves data derives from
:class:`~harness.mapping.rules.moves_data.MovesData` and states its layout once; a rule that computes derives from
this class and writes ``forward``, ``inverse`` and ``express``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from harness.mapping.rules.pattern import Pattern

if TYPE_CHECKING:
    import torch

__all__ = ["Dims", "DimsFn", "Meta", "Rule"]

Dims = Mapping[str, int]
DimsFn = Callable[[Mapping[str, object]], dict[str, int]]
Meta = tuple[tuple[int, ...], Any]  # a tensor's shape and dtype, no data


class Rule:
    """Maps the tensors of ``sources`` (one binding of the placeholders) to those of ``targets``."""

    sources: tuple[Pattern, ...]
    targets: tuple[Pattern, ...]
    extra: str | None = None  # a placeholder that only the targets carry (one source -> many targets)
    source_dtypes: ClassVar[Mapping[int, tuple[str, ...]]] = {}  # input index -> the non-float dtypes it takes
    inverse_exact: ClassVar[bool] = True  # inverse(forward(x)) gives back every bit of x
    # Only moves data (rows, columns, names): rounding each source element commutes with it, so a cast of the
    # output is the same cast of the source (harness.parity.rounding). A rule that computes says False and
    # implements ``express``.
    moves_data: ClassVar[bool] = False

    def __init__(self, sources: Sequence[str], targets: Sequence[str]) -> None:
        self.sources = tuple(Pattern(s) for s in sources)
        self.targets = tuple(Pattern(t) for t in targets)
        src = frozenset().union(*(p.names for p in self.sources))
        dst = frozenset().union(*(p.names for p in self.targets)) - {self.extra}
        if src != dst:
            raise ValueError(f"{type(self).__name__}: placeholders differ between {self.sources[0].text!r} "
                             f"{sorted(src)} and {self.targets[0].text!r} {sorted(dst)}")

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset().union(*(p.names for p in self.sources))

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        raise NotImplementedError

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} states no inverse")

    def planned(self, inputs: list[Meta], dims: Dims) -> list[Meta]:
        """Each output's shape and dtype for inputs of these shapes and dtypes, before any data is read: the
        forward run on the meta device (a data-moving rule answers from its layout)."""
        import torch

        outputs = self.forward([torch.empty(shape, dtype=dtype, device="meta") for shape, dtype in inputs], dims)
        return [(tuple(o.shape), o.dtype) for o in outputs]

    def target_keys(self, binding: Mapping[str, int], dims: Dims) -> list[str]:
        return [t.format(binding) for t in self.targets]

    def express(self, outputs: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        """Source tensors that this rule's ``forward`` turns into exactly ``outputs`` (values it did not produce,
        such as outputs rounded to a narrower dtype): for rules that compute, where ``inverse`` is lossy."""
        raise NotImplementedError(f"{type(self).__name__} moves data: round its sources instead")

    def __repr__(self) -> str:
        src = ", ".join(p.text for p in self.sources)
        dst = ", ".join(p.text for p in self.targets)
        return f"{type(self).__name__}({src} -> {dst})"
