"""A tensor whose bytes are several runs of source files, in order: model-parallel slices of a column-parallel
weight, one after the other. It is written without torch and without computing anything: long runs are copied
file to file in the kernel, short ones are read straight into their place in one bounded buffer (one ``preadv``
per run of source-adjacent parts) and written with ``pwrite``; both sizes are ``write_gather``'s parameters. The
byte path sends only gathers of runs of at least ``KERNEL_RUN`` bytes here; gathers of short rows (a rotary
permutation) are assemblies (``harness.io.assembly``), gathered by worker threads while the writer goes on.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from harness.io.file_regions import FileRegion, copy_region, merged_spans, nbytes, write_all

__all__ = ["GATHER_BUFFER", "KERNEL_RUN", "RowGather", "write_gather"]

KERNEL_RUN = 1 << 20  # runs at least this long are copied in the kernel; shorter ones go through the buffer
GATHER_BUFFER = 1 << 24  # the buffer that gathers short runs
_IOV_MAX = 1024  # POSIX guarantees at least this many buffers per preadv


@dataclass(frozen=True)
class RowGather:
    """The concatenation of ``parts`` (regions of source files), holding a tensor of ``shape`` and ``dtype``."""

    parts: tuple[FileRegion, ...]
    shape: tuple[int, ...]
    dtype: Any

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)

    def spans(self) -> list[FileRegion]:
        """The source bytes the tensor covers, merged where parts touch (``merged_spans``)."""
        return merged_spans(list(self.parts))


def write_gather(gather: RowGather, fd: int, offset: int, *, buffer: int = GATHER_BUFFER,
                 kernel_run: int = KERNEL_RUN) -> None:
    """Write ``gather``'s bytes into the open file ``fd`` at ``offset``: parts of ``kernel_run`` bytes or more are
    copied in the kernel, shorter ones gathered into a buffer of at most ``buffer`` bytes."""
    buf = memoryview(bytearray(min(gather.nbytes, buffer)))
    pending: list[tuple[FileRegion, int]] = []  # short parts and their offsets in the buffer
    used, start = 0, offset
    for part in gather.parts:
        if part.nbytes >= kernel_run or used + part.nbytes > len(buf):
            _flush(buf, pending, fd, start, used)
            pending, used, start = [], 0, offset
        if part.nbytes >= kernel_run or part.nbytes > len(buf):
            copy_region(part, fd, offset)
            offset += part.nbytes
            start = offset
            continue
        pending.append((part, used))
        used += part.nbytes
        offset += part.nbytes
    _flush(buf, pending, fd, start, used)


def _flush(buf: memoryview, pending: list[tuple[FileRegion, int]], fd: int, offset: int, used: int) -> None:
    if not pending:
        return
    files: dict[str, int] = {}
    try:
        for group in _adjacent(pending):
            path = str(group[0][0].path)
            if path not in files:
                files[path] = os.open(path, os.O_RDONLY)
            want = sum(p.nbytes for p, _ in group)
            if os.preadv(files[path], [buf[at: at + p.nbytes] for p, at in group], group[0][0].offset) != want:
                raise OSError(errno.EIO, f"{path} ended inside a tensor")
    finally:
        for f in files.values():
            os.close(f)
    write_all(fd, buf[:used], offset)


def _adjacent(pending: list[tuple[FileRegion, int]]) -> Iterator[list[tuple[FileRegion, int]]]:
    """Parts grouped where each begins in its file where the previous one ended (one ``preadv`` per group)."""
    group: list[tuple[FileRegion, int]] = []
    for item in sorted(pending, key=lambda p: (str(p[0].path), p[0].offset)):
        last = group[-1][0] if group else None
        if last is not None and (last.path != item[0].path or last.offset + last.nbytes != item[0].offset
                                 or len(group) == _IOV_MAX):
            yield group
            group = []
        group.append(item)
    if group:
        yield group

