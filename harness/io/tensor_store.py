"""Safe, lazy access to the tensors of checkpoint files.

Checkpoints are data, never code: pickles are opened with ``weights_only=True`` (and memory-mapped, so a
tensor's bytes are read only when it is used), safetensors through ``safe_open``. A ``TensorStore`` knows every
tensor's shape and dtype up front, which is all the shard planner needs. Zip-format torch files and safetensors
files are first described without torch (``harness.io.torch_zip_index``, ``harness.io.safetensors_index``): their
shapes, dtypes and byte regions are known without importing torch, which is loaded only when a tensor is.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConversionError, brief
from harness.io.file_regions import FileRegion, nbytes
from harness.io.raw_dtypes import RawDType, as_torch
from harness.io.safetensors_index import index_safetensors
from harness.io.sniff import container, describe_file
from harness.io.stored_tensor import NotIndexableError, StoredTensor
from harness.io.torch_zip_index import index_torch_zip

if TYPE_CHECKING:
    import torch

__all__ = ["TensorMeta", "TensorSpec", "TensorStore", "load_pickle", "open_safetensors", "open_torch",
           "safetensors_dtypes", "state_dict_problem"]


@dataclass(frozen=True)
class TensorSpec:
    """One output tensor as the writer plans it: name, shape and dtype (a ``torch.dtype``, or a ``RawDType`` on
    the torch-free path), no data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)

TensorMeta = tuple[tuple[int, ...], "torch.dtype"]


class TensorStore(Mapping[str, "torch.Tensor"]):
    """A read-only name -> tensor mapping whose tensors are produced on demand.

    >>> import torch
    >>> store = TensorStore.from_dict({"w": torch.zeros(2, 3)})
    >>> store.meta("w")
    ((2, 3), torch.float32)
    """

    def __init__(self, loaders: Mapping[str, Callable[[], torch.Tensor]], metas: Mapping[str, TensorMeta],
                 origins: Mapping[str, str] | None = None, regions: Mapping[str, FileRegion] | None = None,
                 parts: Mapping[str, tuple[FileRegion, ...]] | None = None) -> None:
        self._loaders = dict(loaders)
        self._metas = dict(metas)
        self.origins = dict(origins or {})  # name -> file that holds it, for error messages
        self.regions = dict(regions or {})  # name -> where its raw bytes sit, for tensors stored contiguously
        # name -> the regions whose bytes, end to end, are the tensor's (rank files stacked): no one mapping holds it
        self.parts = dict(parts or {})

    def byte_parts(self, name: str) -> tuple[FileRegion, ...] | None:
        """The file regions that hold ``name``'s bytes in order, or None where they are not all in files as is."""
        region = self.regions.get(name)
        return (region,) if region is not None else self.parts.get(name)

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
        parts: dict[str, tuple[FileRegion, ...]] = {}
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
            parts.update(store.parts)
        return cls(loaders, metas, origins, regions, parts)

    def meta(self, name: str) -> TensorMeta:
        """Shape and ``torch.dtype`` of ``name`` without reading its data."""
        shape, dtype = self._metas[name]
        return shape, as_torch(dtype)

    def raw_meta(self, name: str) -> tuple[tuple[int, ...], RawDType | Any]:
        """Shape and dtype as the file names it (a ``RawDType`` where the file was indexed without torch)."""
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

    >>> import torch
    >>> state_dict_problem({"w": torch.zeros(1)}) is None, state_dict_problem({1: torch.zeros(1)})
    (True, 'keys [1] are not strings')
    """
    import torch

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
    import torch

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
    A plain state dict is described without torch; anything else goes through torch's data-only loader.
    """
    if container(path) == "zip":
        try:
            return _indexed(path, index_torch_zip(path, key), partial(_copy_out, path, key))
        except NotIndexableError:
            pass
    obj, mapped = _state_dict(path, key)
    if not mapped:  # legacy format: already in memory
        return TensorStore.from_dict(obj, origin=str(path))
    metas = {name: (tuple(t.shape), t.dtype) for name, t in obj.items()}
    del obj  # unmaps the file
    return TensorStore({name: partial(_copy_out, path, key, name) for name in metas}, metas,
                       dict.fromkeys(metas, str(path)))


def _indexed(path: Path, found: Mapping[str, StoredTensor], load: Callable[[str], torch.Tensor]) -> TensorStore:
    """A store over an indexed file: metadata and regions from the index. A tensor is copied out of its region
    where it has one (nothing unpickled: a torch file's whole pickle is read again for every ``load``), else loaded
    by ``load(name)``."""
    return TensorStore({name: partial(_copy_region_out, t.region) if t.region is not None else partial(load, name)
                        for name, t in found.items()},
                       {name: (t.shape, t.dtype) for name, t in found.items()}, dict.fromkeys(found, str(path)),
                       {name: t.region for name, t in found.items() if t.region is not None})


def _copy_region_out(region: FileRegion) -> torch.Tensor:
    return region.mapped().clone()


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
        return _indexed(path, index_safetensors(path), partial(_get_tensor, _Handle(path), path))
    except NotIndexableError:
        pass
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt")
        raw = {name: (tuple(handle.get_slice(name).get_shape()), handle.get_slice(name).get_dtype())
               for name in handle.keys()}  # noqa: SIM118 - safe_open handles are not mappings
    except Exception as err:  # safetensors raises its own SafetensorError for a bad header
        raise _corrupt(path, "safetensors", err) from None
    known = safetensors_dtypes()
    unknown = {name: dtype for name, (_, dtype) in raw.items() if dtype not in known}
    if unknown:
        name = sorted(unknown)[0]
        raise ConversionError(f"{path}: tensor {name!r} has dtype {unknown[name]}, which convparity cannot read "
                              f"({len(unknown)} such tensors); expected one of {', '.join(known)}")
    metas = {name: (shape, known[dtype]) for name, (shape, dtype) in raw.items()}
    return TensorStore({name: partial(_get_tensor, lambda: handle, path, name) for name in metas}, metas,
                       dict.fromkeys(metas, str(path)))


class _Handle:
    """One ``safe_open`` handle, opened (importing torch) when the first tensor is read."""

    def __init__(self, path: Path) -> None:
        self.path, self.handle = path, None

    def __call__(self) -> Any:
        if self.handle is None:
            from safetensors import safe_open

            self.handle = safe_open(str(self.path), framework="pt")
        return self.handle


def _get_tensor(handle: Callable[[], Any], path: Path, name: str) -> torch.Tensor:
    try:
        return handle().get_tensor(name)
    except Exception as err:
        raise _corrupt(path, f"safetensors (tensor {name!r})", err) from None


def safetensors_dtypes() -> dict[str, torch.dtype]:
    """Every dtype name of the safetensors format that torch can hold. Which of them a conversion accepts is
    decided per rule at plan time (harness.mapping.keymap.check_dtypes): an unused buffer may be of any dtype."""
    import torch

    return {
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
