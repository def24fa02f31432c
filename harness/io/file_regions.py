"""Where a tensor's bytes sit in its checkpoint file, so that a tensor that needs no transform is copied file to
file by the kernel instead of through Python.

Both containers store raw little-endian data at known offsets: a safetensors header gives each tensor's
``data_offsets``; a torch zip archive stores each storage uncompressed as ``<archive>/data/<key>``. A tensor
is a region when it covers a contiguous run of its storage's bytes.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.io.raw_dtypes import as_torch

if TYPE_CHECKING:
    import torch

__all__ = ["FileRegion", "copy_range", "copy_region", "merged_spans", "nbytes", "write_all"]

_COPY_CHUNK = 1 << 26  # bytes per copy_file_range / sendfile call, and per buffered read when neither works
# Held for each write into an output file, so that the process writes one thing at a time: the file system takes
# the file's lock for each write anyway, and a thread that waits here sleeps and leaves its core to a thread that
# computes (an assembly's next chunk), where in the kernel it would spin (measured: 8% of a cast's CPU time).
_WRITING = threading.Lock()


@dataclass(frozen=True)
class FileRegion:
    """``nbytes`` raw bytes at ``offset`` in ``path``, holding a contiguous tensor of ``shape`` and ``dtype`` (a
    ``torch.dtype``, or a ``RawDType`` where the conversion never imports torch)."""

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)

    def mapped(self) -> torch.Tensor:
        """The tensor, memory-mapped copy-on-write: nothing is read until it is used, the file never changes."""
        import torch

        dtype = as_torch(self.dtype)
        size = os.path.getsize(self.path)
        storage = torch.UntypedStorage.from_file(str(self.path), shared=False, nbytes=size)
        flat = torch.empty(0, dtype=torch.uint8).set_(storage, self.offset, (self.nbytes,), (1,))
        return flat.view(dtype).view(self.shape) if self.nbytes else torch.empty(self.shape, dtype=dtype)

    def read(self) -> torch.Tensor:
        """The tensor in fresh memory, its bytes read with ``preadv`` straight into it: one copy, from the page
        cache (safetensors' own slicing measured 2-3x slower for the same bytes), and no file pages mapped."""
        import torch

        out = torch.empty(self.shape, dtype=as_torch(self.dtype))
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        fd = os.open(self.path, os.O_RDONLY)
        try:
            done = 0
            while done < self.nbytes:
                got = os.preadv(fd, [view[done: done + _COPY_CHUNK]], self.offset + done)
                if got == 0:
                    raise OSError(errno.EIO, f"{self.path} ends inside a tensor", str(self.path))
                done += got
        finally:
            os.close(fd)
        return out

    def sub(self, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> FileRegion:
        """The region of a tensor that lies ``offset`` bytes into this one."""
        return FileRegion(self.path, self.offset + offset, tuple(shape), dtype)


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes of a dense tensor of ``shape`` and ``dtype``.

    >>> from harness.io.raw_dtypes import BY_NAME
    >>> nbytes((3, 4), BY_NAME["bfloat16"])
    24
    """
    n = dtype.itemsize
    for d in shape:
        n *= d
    return n


def merged_spans(regions: list[FileRegion]) -> list[FileRegion]:
    """``regions`` merged where they touch in their file, in file order: the source bytes they cover, as few
    regions as can hold them (what a scan of the bytes reads).

    >>> from harness.io.raw_dtypes import BY_NAME
    >>> u8 = BY_NAME["uint8"]
    >>> spans = merged_spans([FileRegion(Path("f"), o, (2,), u8) for o in (2, 0, 6)])
    >>> [(s.offset, s.nbytes) for s in spans]
    [(0, 4), (6, 2)]
    """
    out: list[FileRegion] = []
    for region in sorted(regions, key=lambda r: (str(r.path), r.offset)):
        last = out[-1] if out else None
        if last is not None and last.path == region.path and last.offset + last.nbytes == region.offset:
            out[-1] = _flat(last.path, last.offset, last.nbytes + region.nbytes, region.dtype)
        else:
            out.append(_flat(region.path, region.offset, region.nbytes, region.dtype))
    return out


def _flat(path: Path, offset: int, length: int, dtype: torch.dtype) -> FileRegion:
    return FileRegion(path, offset, (length // dtype.itemsize,), dtype)


def copy_region(region: FileRegion, fd: int, offset: int) -> None:
    """Copy ``region`` into the open file ``fd`` at ``offset``: in the kernel where the system allows it."""
    with open(region.path, "rb", buffering=0) as src:
        copy_range(src.fileno(), region.offset, fd, offset, region.nbytes, str(region.path))


def copy_range(src: int, src_off: int, dst: int, dst_off: int, count: int, name: str) -> None:
    """Copy ``count`` bytes between two open files in the kernel where the system allows it, else through one
    bounded buffer; ``name`` (the source) is what an early end of the source is reported against."""
    done = 0
    while done < count:
        with _WRITING:
            n = _kernel_copy(src, src_off + done, dst, dst_off + done, count - done)
        if n is None:  # no in-kernel copy between these files: a bounded buffered copy
            _buffered_copy(src, src_off + done, dst, dst_off + done, count - done)
            return
        if n == 0:
            raise OSError(errno.EIO, f"{name} ended {count - done} bytes early")
        done += n


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` into ``fd`` at ``offset``, one write of this process at a time."""
    view = memoryview(data).cast("B")
    with _WRITING:
        while view:
            n = os.pwrite(fd, view, offset)  # may write less than asked (Linux caps one call near 2 GiB)
            view, offset = view[n:], offset + n


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
        write_all(dst, view[:n], dst_off)
        src_off, dst_off, count = src_off + n, dst_off + n, count - n
