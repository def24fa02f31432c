"""Safe, lazy access to the tensors of checkpoint files.

Checkpoints are data, never code: pickles are opened with ``weights_only=True`` (and memory-mapped, so a
tensor's bytes are read only when it is used), safetensors through ``safe_open``. A ``TensorStore`` knows every
tensor's shape and dtype up front, which is all the shard planner needs.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from harness.errors import ConversionError, brief
from harness.io.file_regions import FileRegion, nbytes, safetensors_regions, torch_zip_regions
from harness.io.sniff import container, describe_file

__all__ = ["DTYPES", "SAFETENSORS_DTYPES", "TensorMeta", "TensorSpec", "TensorStore", "load_pickle", "open_safetensors",
           "open_torch", "state_dict_problem"]

# The dtypes a checkpoint may be written in and parity run in, by the names the CLI takes.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TensorSpec:
    """One output tensor as the writer plans it: name, shape and dtype, no data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)


TensorMeta = tuple[tuple[int, ...], torch.dtype]


class TensorStore(Mapping[str, torch.Tensor]):
    """A read-only name -> tensor mapping whose tensors are produced on demand.

    >>> store = TensorStore.from_dict({"w": torch.zeros(2, 3)})
    >>> store.meta("w")
    ((2, 3), torch.float32)
    """

    def __init__(self, loaders: Mapping[str, Callable[[], torch.Tensor]], metas: Mapping[str, TensorMeta],
                 origins: Mapping[str, str] | None = None, regions: Mapping[str, FileRegion] | None = None) -> None:
        self._loaders = dict(loaders)
        self._metas = dict(metas)
        self.origins = dict(origins or {})  # name -> file that holds it, for error messages
        self.regions = dict(regions or {})  # name -> where its raw bytes sit, for tensors stored contiguously

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
        regions: dict[str, FileRegion] = {}
        for store in stores:
            clash = sorted(set(store._loaders) & set(loaders))
            if clash:
                raise ConversionError(
                    f"tensor {clash[0]!r} is in both {origins[clash[0]]} and {store.origins[clash[0]]}"
                    f" ({len(clash)} duplicated keys); shard files must hold disjoint keys")
            loaders.update(store._loaders)
            metas.update(store._metas)
            origins.update(store.origins)
            regions.update(store.regions)
        return cls(loaders, metas, origins, regions)

    def meta(self, name: str) -> TensorMeta:
        """Shape and dtype of ``name`` without reading its data."""
        return self._metas[name]

    def mapped(self, name: str) -> torch.Tensor:
        """``name`` memory-mapped in place where its file allows it (nothing read or copied yet), else loaded.

        Views of a mapped tensor keep pointing into the file, which is how the writer recognises bytes it can
        copy file to file (``harness.io.file_regions``).
        """
        region = self.regions.get(name)
        return region.mapped() if region is not None else self[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._loaders[name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    def __contains__(self, name: object) -> bool:
        return name in self._loaders


def load_pickle(path: Path) -> Any:
    """``torch.load`` a pickle as data only: memory-mapped when the file allows it, never executing code.

    Anything else under the name (a directory, safetensors, text, zeros, a truncated file) is a ConversionError
    that says what the file holds.
    """
    return _load_pickle(path)[0]


def state_dict_problem(obj: object) -> str | None:
    """Why ``obj`` is not a flat ``{name: dense CPU tensor}`` dict, or None when it is one.

    >>> state_dict_problem({"w": torch.zeros(1)}) is None, state_dict_problem({1: torch.zeros(1)})
    (True, 'keys [1] are not strings')
    """
    if not isinstance(obj, dict):
        return f"found {_describe_keys(obj)}"
    bad_keys = [k for k in obj if not isinstance(k, str)]
    if bad_keys:
        return f"keys {bad_keys[:3]!r} are not strings"
    not_tensors = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        return (f"entries {not_tensors[:5]} are not tensors (the first is a {type(obj[not_tensors[0]]).__name__}); "
                f"found {_describe_keys(obj)}")
    odd = sorted(k for k, v in obj.items() if v.layout != torch.strided or v.device.type != "cpu")
    if odd:
        t = obj[odd[0]]
        return f"tensor {odd[0]!r} is {t.layout} on {t.device.type}; expected dense tensors"
    return None


def _load_pickle(path: Path) -> tuple[Any, bool]:
    """The unpickled object and whether it is memory-mapped."""
    kind = container(path)
    if kind not in ("zip", "pickle"):
        raise ConversionError(f"{path} is not a torch checkpoint: expected a torch.save file (a zip archive or a "
                              f"pickle), found {describe_file(path)}")
    if kind == "zip":
        try:
            return _load_data_only(path, mmap=True), True
        except _MmapRefusedError:
            pass
    # The legacy (pre-zip) torch.save format cannot be memory-mapped; still data-only.
    return _load_data_only(path, mmap=False), False


class _MmapRefusedError(Exception):
    pass


def _load_data_only(path: Path, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message suggests weights_only=False: exactly what must not be done with untrusted files.
        found = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), None)
        if found is None:
            raise ConversionError(f"cannot read {path} as a torch checkpoint, refusing to unpickle it: it uses a "
                                  f"pickle instruction that the data-only loader does not allow "
                                  f"({_unpickler_reason(err)}); is it corrupt, or not written by torch.save?") from None
        raise ConversionError(f"{path} holds objects other than tensors and plain containers; refusing to "
                              f"unpickle it (that could run code). {found}") from None
    except RuntimeError as err:
        if mmap and "mmap" in str(err):
            raise _MmapRefusedError from None
        raise _corrupt(path, "a torch checkpoint", err) from None
    except Exception as err:  # a corrupt file makes torch.load raise almost anything: KeyError, IndexError, ...
        raise _corrupt(path, "a torch checkpoint", err) from None


def open_torch(path: Path, key: str | None = None) -> TensorStore:
    """The tensors of a ``torch.save`` file (optionally the dict under ``key``), read one at a time.

    A zip-format file is memory-mapped only while one tensor is copied out of it: pages of tensors already
    converted leave the process, so resident memory stays near one tensor rather than growing to the file.
    """
    obj, mapped = _state_dict(path, key)
    if not mapped:  # legacy format: already in memory
        return TensorStore.from_dict(obj, origin=str(path))
    metas = {name: (tuple(t.shape), t.dtype) for name, t in obj.items()}
    regions = _regions(torch_zip_regions, path, obj)
    del obj  # unmaps the file
    return TensorStore({name: partial(_copy_out, path, key, name) for name in metas}, metas,
                       dict.fromkeys(metas, str(path)), regions)


def _state_dict(path: Path, key: str | None) -> tuple[dict[str, torch.Tensor], bool]:
    obj, mapped = _load_pickle(path)
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise ConversionError(f"{path} has no {key!r} entry; found {_describe_keys(obj)}")
        obj = obj[key]
    problem = state_dict_problem(obj)
    if problem is not None:
        raise ConversionError(f"{path} is not a state dict of tensors; {problem}")
    return obj, mapped


def _copy_out(path: Path, key: str | None, name: str) -> torch.Tensor:
    tensors = _state_dict(path, key)[0]
    if name not in tensors:
        raise ConversionError(f"{path} changed while it was being converted: tensor {name!r} is gone")
    return tensors[name].clone()


def open_safetensors(path: Path) -> TensorStore:
    """The tensors of a ``.safetensors`` file, read one at a time on demand."""
    if container(path) != "safetensors":
        raise ConversionError(f"{path} is not a safetensors file: expected an 8-byte header size and a JSON "
                              f"header, found {describe_file(path)}")
    try:
        handle = safe_open(str(path), framework="pt")
        raw = {name: (tuple(handle.get_slice(name).get_shape()), handle.get_slice(name).get_dtype())
               for name in handle.keys()}  # noqa: SIM118 - safe_open handles are not mappings
    except Exception as err:  # safetensors raises its own SafetensorError for a bad header
        raise _corrupt(path, "safetensors", err) from None
    unknown = {name: dtype for name, (_, dtype) in raw.items() if dtype not in SAFETENSORS_DTYPES}
    if unknown:
        name = sorted(unknown)[0]
        raise ConversionError(f"{path}: tensor {name!r} has dtype {unknown[name]}, which convparity cannot read "
                              f"({len(unknown)} such tensors); expected one of {', '.join(SAFETENSORS_DTYPES)}")
    metas = {name: (shape, SAFETENSORS_DTYPES[dtype]) for name, (shape, dtype) in raw.items()}
    regions = _regions(safetensors_regions, path, {name: dtype for name, (_, dtype) in metas.items()})
    return TensorStore({name: partial(_get_tensor, handle, path, name) for name in metas}, metas,
                       dict.fromkeys(metas, str(path)), regions)


def _regions(find: Callable[[Path, Any], dict[str, FileRegion]], path: Path, arg: Any) -> dict[str, FileRegion]:
    """Where the tensors' bytes sit, for file-to-file copies; none (the ordinary path) if the file's layout is
    not what ``find`` expects: the loader has already read it, so the ordinary path reads it correctly."""
    try:
        return find(path, arg)
    except (OSError, ValueError, KeyError, IndexError, struct.error, zipfile.BadZipFile):
        return {}


def _get_tensor(handle: Any, path: Path, name: str) -> torch.Tensor:
    try:
        return handle.get_tensor(name)
    except Exception as err:
        raise _corrupt(path, f"safetensors (tensor {name!r})", err) from None


# Every dtype name of the safetensors format that torch can hold. Which of them a conversion accepts is decided
# per rule at plan time (harness.mapping.keymap.check_dtypes): an unused buffer may be of any dtype.
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "C64": torch.complex64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}


def _corrupt(path: Path, what: str, err: BaseException) -> ConversionError:
    return ConversionError(f"cannot read {path} as {what}: it is {describe_file(path)}, but {brief(err)}; "
                           f"is it truncated or corrupt?")


def _unpickler_reason(err: BaseException) -> str:
    """The line of torch's weights-only message that says what it met (its first lines are boilerplate)."""
    lines = [line.strip() for line in str(err).splitlines()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = [line.split("WeightsUnpickler error:", 1)[-1].strip()] + lines[i + 1:]
            return next((r for r in rest if r), brief(err))
    return brief(err)


def _describe_keys(obj: object) -> str:
    if isinstance(obj, dict):
        keys = sorted(map(str, obj))
        return f"keys {keys[:5]}{' ...' if len(keys) > 5 else ''}"
    return type(obj).__name__
