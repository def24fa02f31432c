"""Safe, lazy access to the tensors of checkpoint files.

Checkpoints are data, never code: pickles are opened with ``weights_only=True`` (and memory-mapped, so a
tensor's bytes are read only when it is used), safetensors through ``safe_open``. A ``TensorStore`` knows every
tensor's shape and dtype up front, which is all the shard planner needs.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from harness.errors import ConversionError

__all__ = ["TensorMeta", "TensorStore", "load_pickle", "open_safetensors", "open_torch"]

TensorMeta = tuple[tuple[int, ...], torch.dtype]


class TensorStore(Mapping[str, torch.Tensor]):
    """A read-only name -> tensor mapping whose tensors are produced on demand.

    >>> store = TensorStore.from_dict({"w": torch.zeros(2, 3)})
    >>> store.meta("w")
    ((2, 3), torch.float32)
    """

    def __init__(self, loaders: Mapping[str, Callable[[], torch.Tensor]], metas: Mapping[str, TensorMeta],
                 origins: Mapping[str, str] | None = None) -> None:
        self._loaders = dict(loaders)
        self._metas = dict(metas)
        self.origins = dict(origins or {})  # name -> file that holds it, for error messages

    @classmethod
    def from_dict(cls, tensors: Mapping[str, torch.Tensor], origin: str = "<memory>") -> TensorStore:
        """Wrap tensors that are already in memory (or memory-mapped)."""
        return cls({k: (lambda t=t: t) for k, t in tensors.items()},
                   {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()},
                   dict.fromkeys(tensors, origin))

    @classmethod
    def merge(cls, stores: Iterable[TensorStore]) -> TensorStore:
        """One store over several files holding disjoint keys; a key in two files is an error."""
        loaders: dict[str, Callable[[], torch.Tensor]] = {}
        metas: dict[str, TensorMeta] = {}
        origins: dict[str, str] = {}
        for store in stores:
            clash = sorted(set(store._loaders) & set(loaders))
            if clash:
                raise ConversionError(
                    f"tensor {clash[0]!r} is in both {origins[clash[0]]} and {store.origins[clash[0]]}"
                    f" ({len(clash)} duplicated keys); shard files must hold disjoint keys")
            loaders.update(store._loaders)
            metas.update(store._metas)
            origins.update(store.origins)
        return cls(loaders, metas, origins)

    def meta(self, name: str) -> TensorMeta:
        """Shape and dtype of ``name`` without reading its data."""
        return self._metas[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._loaders[name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    def __contains__(self, name: object) -> bool:
        return name in self._loaders


def load_pickle(path: Path) -> Any:
    """``torch.load`` a pickle as data only: memory-mapped when the file allows it, never executing code."""
    return _load_pickle(path)[0]


def _load_pickle(path: Path) -> tuple[Any, bool]:
    """The unpickled object and whether it is memory-mapped."""
    try:
        return _load_data_only(path, mmap=True), True
    except RuntimeError as err:
        if "mmap" not in str(err) and "zip" not in str(err):
            raise ConversionError(f"cannot read {path} as a torch checkpoint: {_first_line(err)}") from None
    # The legacy (pre-zip) torch.save format cannot be memory-mapped; still data-only.
    try:
        return _load_data_only(path, mmap=False), False
    except (RuntimeError, EOFError) as err:
        raise ConversionError(f"cannot read {path} as a torch checkpoint: {_first_line(err)}") from None


def _load_data_only(path: Path, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message suggests weights_only=False: exactly what must not be done with untrusted files.
        found = next((line for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
        raise ConversionError(f"{path} holds objects other than tensors and plain containers; refusing to "
                              f"unpickle it (that could run code). {found.strip()}".strip()) from None


def open_torch(path: Path, key: str | None = None) -> TensorStore:
    """The tensors of a ``torch.save`` file (optionally the dict under ``key``), read one at a time.

    A zip-format file is memory-mapped only while one tensor is copied out of it: pages of tensors already
    converted leave the process, so resident memory stays near one tensor rather than growing to the file.
    """
    obj, mapped = _state_dict(path, key)
    if not mapped:  # legacy format: already in memory
        return TensorStore.from_dict(obj, origin=str(path))
    metas = {name: (tuple(t.shape), t.dtype) for name, t in obj.items()}
    del obj  # unmaps the file
    return TensorStore({name: partial(_copy_out, path, key, name) for name in metas}, metas,
                       dict.fromkeys(metas, str(path)))


def _state_dict(path: Path, key: str | None) -> tuple[dict[str, torch.Tensor], bool]:
    obj, mapped = _load_pickle(path)
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise ConversionError(f"{path} has no {key!r} entry; found {_describe_keys(obj)}")
        obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path} is not a state dict of tensors; found {_describe_keys(obj)}")
    return obj, mapped


def _copy_out(path: Path, key: str | None, name: str) -> torch.Tensor:
    return _state_dict(path, key)[0][name].clone()


def open_safetensors(path: Path) -> TensorStore:
    """The tensors of a ``.safetensors`` file, read one at a time on demand."""
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors raises its own SafetensorError for a bad header
        raise ConversionError(f"cannot read {path} as safetensors: {err}") from None
    metas: dict[str, TensorMeta] = {}
    for name in handle.keys():  # noqa: SIM118 - safe_open handles are not mappings
        sliced = handle.get_slice(name)
        metas[name] = (tuple(sliced.get_shape()), _SAFETENSORS_DTYPES[sliced.get_dtype()])
    return TensorStore({name: (lambda n=name: handle.get_tensor(n)) for name in metas}, metas,
                       dict.fromkeys(metas, str(path)))


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _describe_keys(obj: object) -> str:
    if isinstance(obj, dict):
        keys = sorted(map(str, obj))
        return f"keys {keys[:5]}{' ...' if len(keys) > 5 else ''}"
    return type(obj).__name__
