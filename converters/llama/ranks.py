"""Model-parallel rank files: how fairscale split each tensor, reading the files as one lazy store stacked by rank,
and resharding to another number of ranks (golden/upstream/llama/README.md fact 12; ``L2`` = meta-llama/llama @
689c7f26 ``llama/model.py``, ``L2gen`` = its ``llama/generation.py``, ``L3`` = meta-llama/llama-models @ a9c89c47
``models/llama3/model.py``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import ConversionError
from harness.io.stacked_store import stacked_store
from harness.io.tensor_store import TensorStore, open_torch
from harness.mapping.rules import MergeRanks, Replicated

if TYPE_CHECKING:
    import torch

__all__ = ["local_shape", "model_parallel_size", "open_ranks", "rank_files", "reshard", "split_dim"]

_RANK_FILE = re.compile(r"consolidated\.(\d\d)\.pth")
# How fairscale splits each tensor over the ranks (fact 12): ColumnParallelLinear dim 0 (L2 207-227, 337-345,
# 446-448), RowParallelLinear dim 1 (L2 228-234, 340-342). The embedding depends on the layout; the rest
# (norms, rope.freqs) is replicated.
_SPLIT = {"attention.wq.weight": 0, "attention.wk.weight": 0, "attention.wv.weight": 0, "feed_forward.w1.weight": 0,
          "feed_forward.w3.weight": 0, "output.weight": 0, "attention.wo.weight": 1, "feed_forward.w2.weight": 1}


def split_dim(name: str, layout: str) -> int | None:
    """The axis fairscale splits ``name`` over ranks along, or None for a tensor every rank holds whole."""
    if name == "tok_embeddings.weight":  # VocabParallelEmbedding rows (L3 264) / ParallelEmbedding columns (L2 437)
        return 0 if layout == "llama3" else 1
    return next((dim for suffix, dim in _SPLIT.items() if name.endswith(suffix)), None)


def model_parallel_size(tensors: TensorStore) -> int:
    """How many rank files a stacked store was read from (its leading axis)."""
    return next((tensors.raw_meta(k)[0][0] for k in tensors), 1)


def local_shape(shape: tuple[int, ...], dim: int | None, ranks: int) -> tuple[int, ...]:
    """One rank's slice of a tensor of ``shape`` split along ``dim`` (None: the whole tensor)."""
    if dim is None:
        return shape
    return (*shape[:dim], shape[dim] // ranks, *shape[dim + 1:])


def reshard(name: str, stacked: torch.Tensor, ranks: int, layout: str) -> torch.Tensor:
    """A tensor stacked by rank, re-split for ``ranks`` rank files (``write`` at another model-parallel degree)."""
    dim = split_dim(name, layout)
    rule = Replicated(name, name, ranks="ranks") if dim is None else MergeRanks(name, name, dim=dim, ranks="ranks")
    (merged,) = rule.forward([stacked], {})
    try:  # the conversion's own rule, read backwards to another number of ranks
        (resharded,) = rule.inverse([merged], {"ranks": ranks})
    except ValueError:
        raise ConversionError(f"cannot write {name} {tuple(merged.shape)} as {ranks} rank files: dimension {dim} "
                              f"does not split evenly (fairscale divide_and_check_no_remainder)") from None
    return resharded


def rank_files(folder: Path) -> list[Path]:
    """Every ``*.pth`` in sorted order, file i = rank i (L2gen 101-106); the names must be consecutive."""
    files = sorted(folder.glob("*.pth"))
    if not files:
        raise ConversionError(f"no weights in {folder}: expected consolidated.00.pth (one file per model-parallel "
                              "rank) beside params.json")
    odd = [f.name for f in files if not _RANK_FILE.fullmatch(f.name)]
    if odd:
        raise ConversionError(f"{folder}: unexpected weight file(s) {odd}; Meta's layout is consolidated.00.pth "
                              "… consolidated.NN.pth, one per model-parallel rank")
    found = [int(_RANK_FILE.fullmatch(f.name).group(1)) for f in files]  # type: ignore[union-attr]
    missing = [f"consolidated.{i:02d}.pth" for i in range(max(found) + 1) if i not in found]
    if missing:
        raise ConversionError(f"{folder}: rank file(s) {missing} missing; found {[f.name for f in files]}, and "
                              "every model-parallel rank has one")
    return files


def open_ranks(files: list[Path], dim: int | None) -> tuple[TensorStore, str | None]:
    """One store over the rank files, name -> [ranks, *slice], each tensor read when it is used; and the layout the
    embedding's slices show (``dim`` is the model width), or None for one rank, whose files cannot tell."""
    stores = [open_torch(f) for f in files]
    layout = None
    if len(files) > 1 and "tok_embeddings.weight" in stores[0]:  # whole rows (vocabulary split) or a column slice
        layout = "llama3" if stores[0].raw_meta("tok_embeddings.weight")[0][-1] == dim else "llama2"
    store = stacked_store(files, stores, lambda name: split_dim(name, layout or "llama2"),
                          origin=str(files[0].parent / "consolidated.*.pth"), why=" (fairscale; fact 12)")
    return store, layout
