"""One lazy store over files that each hold a slice of every tensor (model-parallel rank files): name ->
``[files, *slice]``, each tensor read when it is used.

Where a tensor is split along a dimension, its slices are copied side by side into one buffer, so that joining them
is a view; where every file holds the same copy, the copies must agree (checked from the bytes for tensors the byte
path may copy, and as each loads otherwise). One file's store keeps its regions, so unchanged outputs go file to
file; several files' keep each tensor's slices as parts, which the byte path joins without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import ConversionError
from harness.io.bit_casts import CASTABLE, cast_bits, unsigned
from harness.io.file_regions import FileRegion
from harness.io.raw_dtypes import BY_NAME
from harness.io.tensor_store import TensorStore

if TYPE_CHECKING:
    import torch

__all__ = ["stacked_store"]


def stacked_store(files: Sequence[Path], stores: Sequence[TensorStore], split_dim: Callable[[str], int | None],
                  *, origin: str, why: str = "") -> TensorStore:
    """The stores of ``files`` (the same tensors, equal slices) stacked along a new first axis; ``split_dim(name)``
    is the axis a tensor is split along, None for one every file holds whole. ``origin`` is how errors name the
    files (``consolidated.*.pth``), ``why`` ends each error (a citation)."""
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
                                      f"{dt0}; every rank holds an equal slice{why}")
    metas = {k: ((len(stores), *first.raw_meta(k)[0]), first.raw_meta(k)[1]) for k in first}
    loaders = {k: (lambda k=k: _load_stacked(files, stores, k, split_dim(k), why)) for k in first}
    regions = {k: r.sub(0, (1, *r.shape), r.dtype) for k, r in first.regions.items()} if len(stores) == 1 else {}
    parts = {k: tuple(s.regions[k] for s in stores) for k in first
             if len(stores) > 1 and all(k in s.regions for s in stores)}
    for name, slices in parts.items():
        if split_dim(name) is None:
            _check_copies(files, name, slices, why)
    origins = dict.fromkeys(first, origin)
    return TensorStore(loaders, metas, origins, regions, parts)


def _check_copies(files: Sequence[Path], name: str, regions: tuple[FileRegion, ...], why: str) -> None:
    """Every file's copy of a replicated tensor equals the first's, as ``torch.equal`` sees it."""
    first = _values(regions[0])
    for r, region in enumerate(regions[1:], start=1):
        other = _values(region)
        if not np.array_equal(first, other):
            diff = float(np.abs(first - other).max()) if first.dtype == np.float32 else float("nan")
            raise _copy_differs(files, r, name, diff, why)


def _values(region: FileRegion) -> np.ndarray:
    """A float tensor's values as float32 (exact for the three float types), anything else as its bits."""
    bits = np.fromfile(region.path, dtype=unsigned(region.dtype), count=region.nbytes // region.dtype.itemsize,
                       offset=region.offset)
    if region.dtype.name not in CASTABLE:
        return bits
    return cast_bits(bits, region.dtype, BY_NAME["float32"]).view(np.float32)


def _copy_differs(files: Sequence[Path], r: int, name: str, diff: float, why: str) -> ConversionError:
    return ConversionError(f"{files[r].name}: {name} differs from its copy in {files[0].name} (max |diff| "
                           f"{diff:.3g}); every rank holds the same copy{why}")


def _load_stacked(files: Sequence[Path], stores: Sequence[TensorStore], name: str, dim: int | None,
                  why: str) -> torch.Tensor:
    """Slices copied one at a time (from the mapped files) into one [files, *slice] tensor, laid out side by side
    along ``dim`` so that joining them there is a view; the copies of a replicated tensor (``dim`` None) must agree."""
    import torch

    if len(stores) == 1:
        return stores[0][name][None]
    head = stores[0].mapped(name)
    axis = dim or 0
    buffer = head.new_empty((*head.shape[:axis], len(stores), *head.shape[axis:]))
    out = buffer.movedim(axis, 0)  # (files, *slice), a view
    out[0] = head
    del head
    for r in range(1, len(stores)):
        part = stores[r].mapped(name)
        if dim is None and not torch.equal(part, out[0]):
            raise _copy_differs(files, r, name, (part.float() - out[0].float()).abs().max().item(), why)
        out[r] = part
    return out

