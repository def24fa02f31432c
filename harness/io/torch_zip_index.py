"""What a zip-format ``torch.save`` file holds, read with the standard library alone and without running it.

The archive's ``data.pkl`` is unpickled by a restricted unpickler whose ``find_class`` knows four names (the
tensor and parameter rebuild functions, the legacy storage classes, ``OrderedDict``) and returns stand-ins that
only record metadata: dtype, shape, stride, storage key and offset. Nothing from the file is ever called or
imported. Each storage is a stored (uncompressed) record ``<archive>/data/<key>``, so a contiguous tensor is a
byte range of the file. Anything else (another global, a compressed record, a big-endian archive, a value that is
not a tensor) raises ``NotIndexableError``: the caller then takes torch's own data-only loader, which reads or refuses
the file with its full messages.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.io.file_regions import FileRegion
from harness.io.raw_dtypes import BY_STORAGE, RawDType
from harness.io.stored_tensor import NotIndexableError, StoredTensor

__all__ = ["index_torch_zip"]

_MAX_PICKLE = 1 << 28  # a state dict's pickle holds names and shapes only; more than this is not one


def index_torch_zip(path: Path, key: str | None = None) -> dict[str, StoredTensor]:
    """The tensors of a zip-format ``torch.save`` state dict (or of the dict under ``key``), by name.

    >>> index_torch_zip(Path("/nowhere.pt"))
    Traceback (most recent call last):
    harness.io.stored_tensor.NotIndexableError: cannot open /nowhere.pt: FileNotFoundError
    """
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
            return _index(path, archive, f, key)
    except NotIndexableError:
        raise
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, struct.error) as err:
        raise NotIndexableError(f"cannot open {path}: {type(err).__name__}") from None


def _index(path: Path, archive: zipfile.ZipFile, f: io.BufferedReader, key: str | None) -> dict[str, StoredTensor]:
    infos = {i.filename: i for i in archive.infolist()}
    pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise NotIndexableError(f"{path}: expected one <archive>/data.pkl record, found {len(pickles)}")
    prefix = pickles[0][: -len("data.pkl")]
    order = infos.get(prefix + "byteorder")
    if order is not None and archive.read(order) != b"little":
        raise NotIndexableError(f"{path}: not a little-endian archive")
    if infos[pickles[0]].file_size > _MAX_PICKLE:
        raise NotIndexableError(f"{path}: data.pkl is too large for a state dict")
    try:
        obj = _MetadataUnpickler(io.BytesIO(archive.read(pickles[0]))).load()
    except NotIndexableError:
        raise
    except Exception as err:  # any malformed pickle: the torch loader will say what is wrong
        raise NotIndexableError(f"{path}: data.pkl: {type(err).__name__}") from None
    if key is not None:
        obj = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, _TensorRef)
                                                       for k, v in obj.items()):
        raise NotIndexableError(f"{path}: not a flat state dict of tensors")
    out = {}
    for name, t in obj.items():
        record = infos.get(f"{prefix}data/{t.storage.key}")
        if record is None or record.compress_type != zipfile.ZIP_STORED:
            raise NotIndexableError(f"{path}: storage {t.storage.key} of {name} is missing or compressed")
        item = t.storage.dtype.itemsize
        if record.file_size < t.storage.numel * item or t.end > t.storage.numel:
            raise NotIndexableError(f"{path}: {name} reaches past its storage")
        region = None
        if t.contiguous and t.numel:
            start = _data_offset(f, record) + t.offset * item
            region = FileRegion(path, start, t.shape, t.storage.dtype)
        out[name] = StoredTensor(t.shape, t.storage.dtype, region)
    return out


def _data_offset(f: io.BufferedReader, record: zipfile.ZipInfo) -> int:
    f.seek(record.header_offset)
    local = f.read(30)  # the local file header: name and extra-field lengths at bytes 26-29
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise NotIndexableError(f"record {record.filename} has no local header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return record.header_offset + 30 + name_len + extra_len


@dataclass(frozen=True)
class _StorageType:
    dtype: RawDType


@dataclass(frozen=True)
class _StorageRef:
    dtype: RawDType
    key: str
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def end(self) -> int:
        """One past the last storage element the tensor reaches."""
        if not self.numel:
            return self.offset
        return self.offset + 1 + sum((d - 1) * s for d, s in zip(self.shape, self.stride, strict=True))

    @property
    def contiguous(self) -> bool:
        expected = 1
        for d, s in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if d != 1 and s != expected:
                return False
            expected *= d
        return True


def _rebuild_tensor(storage: object, offset: object, shape: object, stride: object, *rest: object) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records the arguments, builds nothing."""
    if not (isinstance(storage, _StorageRef) and _is_int(offset) and _ints(shape) and _ints(stride)
            and len(shape) == len(stride) and min((*shape, *stride, offset), default=0) >= 0):  # type: ignore[arg-type]
        raise NotIndexableError("a tensor with unexpected rebuild arguments")
    return _TensorRef(storage, offset, tuple(shape), tuple(stride))  # type: ignore[arg-type]


def _rebuild_parameter(data: object, *rest: object) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is its data."""
    if not isinstance(data, _TensorRef):
        raise NotIndexableError("a parameter without tensor data")
    return data


def _is_int(v: object) -> bool:
    return type(v) is int


def _ints(v: object) -> bool:
    return isinstance(v, tuple) and all(_is_int(x) for x in v)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in BY_STORAGE.items()},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the names in ``_ALLOWED``, to stand-ins; storages become ``_StorageRef`` records."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise NotIndexableError(f"data.pkl names {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> _StorageRef:
        # torch.serialization's persistent_id: ('storage', storage type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and _is_int(pid[4]) and pid[4] >= 0):
            raise NotIndexableError("data.pkl holds a persistent id that is not a storage")
        return _StorageRef(pid[1].dtype, pid[2], pid[4])
