"""What a ``.safetensors`` file holds, from its JSON header alone: no torch, no data read.

The header is checked as the format defines it (an 8-byte little-endian length, a JSON object of ``{dtype,
shape, data_offsets}`` entries whose byte ranges match their shapes and lie in the file); a header that is not
raises ``NotIndexableError`` and the caller takes ``safetensors.safe_open``, which refuses it with its own message.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from harness.io.file_regions import FileRegion, nbytes
from harness.io.raw_dtypes import BY_SAFETENSORS
from harness.io.stored_tensor import NotIndexableError, StoredTensor

__all__ = ["index_safetensors"]

_MAX_HEADER = 100_000_000  # safetensors' own limit on the header size


def index_safetensors(path: Path) -> dict[str, StoredTensor]:
    """The tensors of a safetensors file, by name, each with its region of the file.

    >>> index_safetensors(Path("/nowhere.safetensors"))
    Traceback (most recent call last):
    harness.io.stored_tensor.NotIndexableError: cannot read /nowhere.safetensors: FileNotFoundError
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            (length,) = struct.unpack("<Q", f.read(8))
            if length > min(_MAX_HEADER, size - 8):
                raise NotIndexableError(f"{path}: header length {length} does not fit the file")
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError, RecursionError) as err:
        raise NotIndexableError(f"cannot read {path}: {type(err).__name__}") from None
    if not isinstance(header, dict):
        raise NotIndexableError(f"{path}: the header is not a JSON object")
    start, out = 8 + length, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        out[name] = _entry(path, name, info, start, size)
    return out


def _entry(path: Path, name: str, info: object, start: int, size: int) -> StoredTensor:
    if not isinstance(info, dict) or info.get("dtype") not in BY_SAFETENSORS:
        raise NotIndexableError(f"{path}: {name} has no dtype this index knows")
    dtype, shape, offsets = BY_SAFETENSORS[info["dtype"]], info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
            and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise NotIndexableError(f"{path}: {name} has a malformed shape or data_offsets")
    length = nbytes(tuple(shape), dtype)
    if offsets[0] < 0 or offsets[1] - offsets[0] != length or start + offsets[1] > size:
        raise NotIndexableError(f"{path}: {name}'s data_offsets do not hold its shape inside the file")
    region = FileRegion(path, start + offsets[0], tuple(shape), dtype) if length else None
    return StoredTensor(tuple(shape), dtype, region)
