"""Model-parallel rank files: how fairscale split each tensor, reading the files as one lazy store stacked by rank,
and resharding to another number of ranks (golden/upstream/llama/README.md fact 12; ``L2`` = meta-llama/llama @
689c7f26 ``llama/model.py``, ``L2gen`` = its ``llama/generation.py``, ``L3`` = meta-llama/llama-models @ a9c89c47
``models/llama3/model.py``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import ConversionError
from harness.io.bit_casts import CASTABLE, cast_bits, unsigned
from harness.io.file_regions import FileRegion
from harness.io.raw_dtypes import BY_NAME
from harness.io.tensor_store import TensorStore, open_torch
from harness.mapping import transforms

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
    if dim is None:
        return transforms.replicate_rank(transforms.first_rank(stacked), ranks)
    merged = transforms.concat_ranks(stacked, dim)
    if merged.shape[dim] % ranks:
        raise ConversionError(f"cannot write {name} {tuple(merged.shape)} as {ranks} rank files: dimension {dim} "
                              f"does not split evenly (fairscale divide_and_check_no_remainder)")
    return transforms.split_ranks(merged, ranks, dim)


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
    first = stores[0]
    for f, store in zip(files[1:], stores[1:], strict=True):
        differ = sorted(set(first) ^ set(store))
        if differ:
            raise ConversionError(f"{f.name} and {files[0].name} hold different tensors ({len(differ)}, e.g. "
                                  f"{differ[0]}); every rank file holds a slice of every tensor")
        for k in first:
            if store.raw_meta(k) != first.raw_meta(k):
                (s, dt), (s0, dt0) = store.raw_meta(k), first.raw_meta(k)
                raise ConversionError(f"{f.name}: {k} is {tuple(s)} {dt}, but {files[0].name} has {tuple(s0)} "
                                      f"{dt0}; fairscale gives every rank an equal slice (fact 12)")
    layout = None
    if len(files) > 1 and "tok_embeddings.weight" in first:  # whole rows (vocabulary split) or a column slice
        layout = "llama3" if first.raw_meta("tok_embeddings.weight")[0][-1] == dim else "llama2"
    metas = {k: ((len(stores), *first.raw_meta(k)[0]), first.raw_meta(k)[1]) for k in first}
    loaders = {k: (lambda k=k: _load_stacked(files, stores, k, split_dim(k, layout or "llama2"))) for k in first}
    # One rank: the stacked tensor is the file's own bytes, so unchanged outputs can be copied file to file.
    regions = {k: r.sub(0, (1, *r.shape), r.dtype) for k, r in first.regions.items()} if len(stores) == 1 else {}
    # Several: its bytes are each rank's slice in turn, which the byte path joins without torch.
    parts = {k: tuple(s.regions[k] for s in stores) for k in first
             if len(stores) > 1 and all(k in s.regions for s in stores)}
    _check_replicas(files, parts, layout or "llama2")
    origins = dict.fromkeys(first, str(files[0].parent / "consolidated.*.pth"))
    return TensorStore(loaders, metas, origins, regions, parts), layout


def _check_replicas(files: list[Path], parts: dict[str, tuple[FileRegion, ...]], layout: str) -> None:
    """Every rank's copy of a replicated tensor equals rank 0's, as ``torch.equal`` sees it (read from the files,
    which is what lets the byte path take rank 0's copy; tensors read through torch are checked as they load)."""
    for name, regions in parts.items():
        if split_dim(name, layout) is not None:
            continue
        first = _values(regions[0])
        for r, region in enumerate(regions[1:], start=1):
            other = _values(region)
            if not np.array_equal(first, other):
                diff = float(np.abs(first - other).max()) if first.dtype == np.float32 else float("nan")
                raise _replica_differs(files, r, name, diff)


def _values(region: FileRegion) -> np.ndarray:
    """A float tensor's values as float32 (exact for the three float types), anything else as its bits."""
    bits = np.fromfile(region.path, dtype=unsigned(region.dtype), count=region.nbytes // region.dtype.itemsize,
                       offset=region.offset)
    if region.dtype.name not in CASTABLE:
        return bits
    return cast_bits(bits, region.dtype, BY_NAME["float32"]).view(np.float32)


def _replica_differs(files: list[Path], r: int, name: str, diff: float) -> ConversionError:
    return ConversionError(f"{files[r].name}: {name} differs from its copy in {files[0].name} (max |diff| "
                           f"{diff:.3g}); every rank holds the same norm weights (fact 12)")


def _load_stacked(files: list[Path], stores: list[TensorStore], name: str, dim: int | None) -> torch.Tensor:
    """Rank slices copied one at a time (from the mapped files) into one [ranks, *slice] tensor; the copies of a
    replicated tensor (``dim`` None) must agree. Slices split along ``dim`` are laid out side by side in memory,
    so that joining them there (``concat_ranks``) is a view, not a second copy."""
    import torch

    if len(stores) == 1:
        return stores[0][name][None]
    head = stores[0].mapped(name)
    axis = dim or 0
    buffer = head.new_empty((*head.shape[:axis], len(stores), *head.shape[axis:]))
    out = buffer.movedim(axis, 0)  # (ranks, *slice), a view
    out[0] = head
    del head
    for r in range(1, len(stores)):
        part = stores[r].mapped(name)
        if dim is None and not torch.equal(part, out[0]):
            diff = (part.float() - out[0].float()).abs().max().item()
            raise _replica_differs(files, r, name, diff)
        out[r] = part
    return out
