"""Declarative key-map rules: one line per source -> target mapping, read forwards and backwards.

A pattern names its indices: ``layers.{layer}.attention.wq.weight``; ``{layer+1}`` shifts the index in the
key (mixformer numbers its blocks from 1). A rule whose source and target patterns use different placeholder
sets fails when it is constructed, quoting both.

Rule arguments that are sizes (``heads="n_heads"``) name entries of the family's ``dims``, computed from the
source config, so a table holds no numbers that fit only one model size.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.mapping import transforms

if TYPE_CHECKING:
    import torch

__all__ = [
    "CutVocab", "Dequantize", "Dims", "Drop", "GroupQKV", "Pattern", "Rename", "Rotary", "Rule", "Split", "Tie",
    "Transpose", "Unstack",
]

Dims = Mapping[str, int]
_PLACEHOLDER = re.compile(r"\{(\w+)(?:\+(\d+))?\}")


@dataclass(frozen=True)
class Pattern:
    """A key template such as ``layers.{layer}.w`` that formats to and matches concrete keys."""

    text: str

    @property
    def names(self) -> frozenset[str]:
        return frozenset(m.group(1) for m in _PLACEHOLDER.finditer(self.text))

    def format(self, binding: Mapping[str, int]) -> str:
        return _PLACEHOLDER.sub(lambda m: str(binding[m.group(1)] + int(m.group(2) or 0)), self.text)

    def regex(self) -> re.Pattern[str]:
        """A regex matching any concrete key of this pattern (``*`` matches anything)."""
        parts = _PLACEHOLDER.split(self.text)
        # split() yields literal, name, offset, literal, ...: keep literals, turn placeholders into \d+
        literal = [re.escape(p).replace(r"\*", ".*") for p in parts[::3]]
        return re.compile(r"\d+".join(literal) + r"\Z")


class Rule:
    """Maps the tensors of ``sources`` (one binding of the placeholders) to those of ``targets``."""

    sources: tuple[Pattern, ...]
    targets: tuple[Pattern, ...]
    extra: str | None = None  # a placeholder that only the targets carry (one source -> many targets)
    # Only moves data (rows, columns, names): rounding each source element commutes with it, so a cast of the
    # output is the same cast of the source (harness.parity.rounding). A rule that computes says False and
    # implements ``express``.
    moves_data = True

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
        raise NotImplementedError

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


class Rename(Rule):
    """The tensor is copied unchanged under a new name."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__([source], [target])

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return tensors

    inverse = forward


class Transpose(Rule):
    """nn.Linear [out, in] <-> Conv1D [in, out]."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__([source], [target])

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.transpose(tensors[0])]

    inverse = forward


class Rotary(Rule):
    """q/k projection rows from interleaved-pair rotary to rotate-half, per head of ``head_dim`` rows."""

    def __init__(self, source: str, target: str, *, heads: str, head_dim: str = "head_dim") -> None:
        super().__init__([source], [target])
        self.heads, self.head_dim = heads, head_dim

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.permute_rotary(tensors[0], dims[self.heads], dims[self.head_dim])]

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.unpermute_rotary(tensors[0], dims[self.heads], dims[self.head_dim])]


class Split(Rule):
    """A fused [q | k | v] tensor split by rows into three (GQA-aware: q rows = heads·hd, k = v = kv·hd)."""

    def __init__(self, source: str, targets: Sequence[str], *, heads: str = "n_heads",
                 kv_heads: str = "n_kv_heads", head_dim: str = "head_dim") -> None:
        super().__init__([source], targets)
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return transforms.split_qkv(tensors[0], dims[self.heads], dims[self.kv_heads], dims[self.head_dim])

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.merge_qkv(*tensors)]


class Unstack(Rule):
    """One row-stacked tensor of all experts -> one tensor per expert (``{expert}`` only in the target)."""

    def __init__(self, source: str, target: str, *, over: str = "expert", count: str = "n_experts",
                 transpose_blocks: bool = False) -> None:
        self.extra = over
        super().__init__([source], [target])
        self.count, self.transpose_blocks = count, transpose_blocks

    def target_keys(self, binding: Mapping[str, int], dims: Dims) -> list[str]:
        return [self.targets[0].format({**binding, self.extra: e}) for e in range(dims[self.count])]

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return transforms.unstack_experts(tensors[0], dims[self.count], self.transpose_blocks)

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.stack_experts(tensors, self.transpose_blocks)]


class GroupQKV(Rule):
    """Per-head fused qkv rows [head, (q, k, v), hd] (Megatron) -> [q | k | v], optionally transposed (Conv1D)."""

    def __init__(self, source: str, target: str, *, heads: str = "n_heads", head_dim: str = "head_dim",
                 transpose: bool = False) -> None:
        super().__init__([source], [target])
        self.heads, self.head_dim, self.transpose = heads, head_dim, transpose

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        w = transforms.group_qkv_by_kind(tensors[0], dims[self.heads], dims[self.head_dim])
        return [transforms.transpose(w) if self.transpose else w]

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        w = transforms.transpose(tensors[0]) if self.transpose else tensors[0]
        return [transforms.group_qkv_by_head(w, dims[self.heads], dims[self.head_dim])]


class CutVocab(Rule):
    """Padded embedding rows cut to the real vocabulary (``rows`` names the dims entry holding its size)."""

    def __init__(self, source: str, target: str, *, rows: str = "vocab_size", padded: str = "padded_vocab_size"
                 ) -> None:
        super().__init__([source], [target])
        self.rows, self.padded = rows, padded

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.cut_vocab(tensors[0], dims[self.rows])]

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.pad_vocab(tensors[0], dims[self.padded])]


class Dequantize(Rule):
    """int8 ``weight`` + float ``weight_scaler`` -> one float weight; the inverse re-quantises per row."""

    def __init__(self, weight: str, scaler: str, target: str) -> None:
        super().__init__([weight, scaler], [target])

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.dequantize(tensors[0], tensors[1], tensors[1].dtype)]

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return transforms.quantize(tensors[0])

    moves_data = False

    def express(self, outputs: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return _unit_scaled(outputs[0])


@dataclass(frozen=True)
class Drop:
    """A source tensor deliberately left out, with the reason (a rotary cache, a mask buffer).

    ``pattern`` may use placeholders and ``*``; ``optional`` drops need not match anything.
    """

    pattern: str
    reason: str
    optional: bool = False
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", Pattern(self.pattern).regex())


@dataclass(frozen=True)
class Tie:
    """A target parameter that transformers ties to another one instead of loading it."""

    target: str
    to: str


RuleLike = Rule | Drop | Tie
DimsFn = Callable[[Mapping[str, object]], dict[str, int]]


class DequantizeSplit(Rule):
    """A fused int8 [q | k | v] weight + per-row scaler -> three float blocks (gemma_pytorch ``quant=True``).

    Per-row scales commute with the row split, so this is ``split_qkv(dequantize(w, s))``; the inverse merges
    and re-quantises per row.
    """

    def __init__(self, weight: str, scaler: str, targets: Sequence[str], *, heads: str = "n_heads",
                 kv_heads: str = "n_kv_heads", head_dim: str = "head_dim") -> None:
        super().__init__([weight, scaler], targets)
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        w = transforms.dequantize(tensors[0], tensors[1], tensors[1].dtype)
        return transforms.split_qkv(w, dims[self.heads], dims[self.kv_heads], dims[self.head_dim])

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return transforms.quantize(transforms.merge_qkv(*tensors))

    moves_data = False

    def express(self, outputs: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return _unit_scaled(transforms.merge_qkv(*outputs))


def _unit_scaled(weight: torch.Tensor) -> list[torch.Tensor]:
    """A float weight with a per-row scale of one: ``dequantize`` gives back exactly ``weight``."""
    import torch

    return [weight, torch.ones(weight.shape[0], dtype=torch.float32)]


class RenameAt(Rename):
    """A Rename whose source carries an index the target does not (``at``): mixformer-sequential's LM head is
    ``layers.{head}.ln.weight`` with ``head = n_layer + 1``, but transformers names it ``model.final_layernorm``.

    ``at``'s range (a callable in ``KeyMap(ranges=...)``) must give one value; more would produce the target
    twice, which the ledger reports.
    """

    def __init__(self, source: str, target: str, *, at: str) -> None:
        self.sources, self.targets, self.at = (Pattern(source),), (Pattern(target),), at
        if at not in self.sources[0].names or self.sources[0].names - {at} != self.targets[0].names:
            raise ValueError(f"RenameAt: {source!r} must carry {{{at}}} and otherwise the placeholders of "
                             f"{target!r}")


__all__ += ["MergeRanks", "MergeRotary", "Replicated"]


class MergeRanks(Rule):
    """Model-parallel rank slices -> one tensor. The source is stacked by rank, [ranks, *slice] (rank r's file
    at index r), and the slices are joined along ``dim`` of a slice: fairscale's ColumnParallelLinear and
    VocabParallelEmbedding split dim 0, RowParallelLinear and ParallelEmbedding dim 1.

    The inverse writes ``dims[ranks]`` slices, or one when ``ranks`` is None: a model-parallel degree that the
    config does not state is a property of the files, not of the model (a family's ``write`` reshards).
    """

    def __init__(self, source: str, target: str, *, dim: int, ranks: str | None = None) -> None:
        super().__init__([source], [target])
        self.dim, self.ranks = dim, ranks

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.concat_ranks(tensors[0], self.dim)]

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.split_ranks(tensors[0], dims[self.ranks] if self.ranks else 1, self.dim)]

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, dim={self.dim})"


class MergeRotary(MergeRanks):
    """Column-parallel q/k rank slices merged on dim 0, then permuted from interleaved-pair rotary to rotate-half
    per head of ``head_dim`` rows. Each rank holds whole, contiguous heads, so the permutation runs on the merged
    matrix with the model's head count (``heads="n_kv_heads"`` for k under grouped-query attention).
    """

    def __init__(self, source: str, target: str, *, heads: str, head_dim: str = "head_dim",
                 ranks: str | None = None) -> None:
        super().__init__(source, target, dim=0, ranks=ranks)
        self.heads, self.head_dim = heads, head_dim

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        merged = transforms.concat_ranks(tensors[0], 0)
        return [transforms.permute_rotary(merged, dims[self.heads], dims[self.head_dim])]

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        w = transforms.unpermute_rotary(tensors[0], dims[self.heads], dims[self.head_dim])
        return super().inverse([w], dims)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, heads={self.heads})"


class Replicated(Rule):
    """A tensor that every rank file holds whole (a norm weight), stacked by rank -> rank 0's copy. The family's
    reader checks that the copies agree; the inverse replicates it (``ranks`` as in :class:`MergeRanks`)."""

    def __init__(self, source: str, target: str, *, ranks: str | None = None) -> None:
        super().__init__([source], [target])
        self.ranks = ranks

    def forward(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.first_rank(tensors[0])]

    def inverse(self, tensors: list[torch.Tensor], dims: Dims) -> list[torch.Tensor]:
        return [transforms.replicate_rank(tensors[0], dims[self.ranks] if self.ranks else 1)]
