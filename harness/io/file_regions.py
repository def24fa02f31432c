"""Where a tensor's bytes sit in its checkpoint file, so that a tensor that needs no transform is copied file to
file by the kernel instead of through Python.

Both containers store raw little-endian data at known offsets: a safetensors header gives each tensor's
``data_offsets``; a torch zip archive stores each storage uncompressed as ``<archive>/data/<key>``. A tensor
is a region when it covers a contiguous run of its storage's bytes.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["FileRegion", "copy_region", "nbytes", "safetensors_regions", "torch_zip_regions"]

_COPY_CHUNK = 1 << 26  # bytes per copy_file_range / sendfile call, and per buffered read when neither works


@dataclass(frozen=True)
class FileRegion:
    """``nbytes`` raw bytes at ``offset`` in ``path``, holding a contiguous tensor of ``shape`` and ``dtype``."""

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)

    def mapped(self) -> torch.Tensor:
        """The tensor, memory-mapped copy-on-write: nothing is read until it is used, the file never changes."""
        size = os.path.getsize(self.path)
        storage = torch.UntypedStorage.from_file(str(self.path), shared=False, nbytes=size)
        flat = torch.empty(0, dtype=torch.uint8).set_(storage, self.offset, (self.nbytes,), (1,))
        return flat.view(self.dtype).view(self.shape) if self.nbytes else torch.empty(self.shape, dtype=self.dtype)

    def sub(self, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> FileRegion:
        """The region of a tensor that lies ``offset`` bytes into this one."""
        return FileRegion(self.path, self.offset + offset, tuple(shape), dtype)


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes of a dense tensor of ``shape`` and ``dtype``.

    >>> nbytes((3, 4), torch.bfloat16)
    24
    """
    n = dtype.itemsize
    for d in shape:
        n *= d
    return n


def torch_zip_regions(path: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, FileRegion]:
    """Regions of the contiguous tensors of a zip-format ``torch.save`` file, loaded with ``mmap=True``.

    torch maps the whole file once and slices each storage out of it at its record's offset, so every
    storage's address minus its record's offset is the same base address. The base must put every storage
    in use on a record; if none does, no region is returned and the tensors take the ordinary path.
    """
    records = sorted(_zip_data_offsets(path))
    storages = {t.untyped_storage().data_ptr() for t in tensors.values() if t.numel()}
    lowest = min(storages, default=None)
    # The lowest storage in use is some record (not always the first: a sub-dict may skip some).
    base = next((b for b in (lowest - r for r in records) if all(p - b in set(records) for p in storages)), None) \
        if lowest is not None else None
    if base is None:
        return {}
    out = {}
    for name, t in tensors.items():
        if t.numel() and t.is_contiguous():
            out[name] = FileRegion(path, t.data_ptr() - base, tuple(t.shape), t.dtype)
    return out


def safetensors_regions(path: Path, dtypes: Mapping[str, torch.dtype]) -> dict[str, FileRegion]:
    """Regions of every tensor of a ``.safetensors`` file whose dtype torch knows (``dtypes``: name -> dtype)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    start = 8 + length
    return {name: FileRegion(path, start + info["data_offsets"][0], tuple(info["shape"]), dtypes[name])
            for name, info in header.items() if name != "__metadata__" and name in dtypes}


def copy_region(region: FileRegion, fd: int, offset: int) -> None:
    """Copy ``region`` into the open file ``fd`` at ``offset``: in the kernel where the system allows it."""
    with open(region.path, "rb", buffering=0) as src:
        done = 0
        while done < region.nbytes:
            n = _kernel_copy(src.fileno(), region.offset + done, fd, offset + done, region.nbytes - done)
            if n is None:  # no in-kernel copy between these files: a bounded buffered copy
                _buffered_copy(src.fileno(), region.offset + done, fd, offset + done, region.nbytes - done)
                return
            if n == 0:
                raise OSError(errno.EIO, f"{region.path} ended {region.nbytes - done} bytes early")
            done += n


def _kernel_copy(src: int, src_off: int, dst: int, dst_off: int, count: int) -> int | None:
    """Bytes copied by copy_file_range (or sendfile), or None where neither works for these files."""
    count = min(count, _COPY_CHUNK)
    if hasattr(os, "copy_file_range"):
        try:
            return os.copy_file_range(src, dst, count, src_off, dst_off)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                raise
    if hasattr(os, "sendfile"):
        try:
            os.lseek(dst, dst_off, os.SEEK_SET)
            return os.sendfile(dst, src, src_off, count)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
    return None


def _buffered_copy(src: int, src_off: int, dst: int, dst_off: int, count: int) -> None:
    buf = bytearray(min(count, _COPY_CHUNK))
    view = memoryview(buf)
    while count:
        n = os.preadv(src, [view[: min(count, len(buf))]], src_off)
        if n == 0:
            raise OSError(errno.EIO, "source ended early")
        os.pwrite(dst, view[:n], dst_off)
        src_off, dst_off, count = src_off + n, dst_off + n, count - n


def _zip_data_offsets(path: Path) -> list[int]:
    """Absolute offsets of the stored (uncompressed) ``*/data/<key>`` records of a torch zip archive."""
    offsets = []
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            if "/data/" not in info.filename or info.compress_type != zipfile.ZIP_STORED:
                continue
            f.seek(info.header_offset)
            local = f.read(30)  # the local file header: name and extra-field lengths at bytes 26-29
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            offsets.append(info.header_offset + 30 + name_len + extra_len)
    return offsets
