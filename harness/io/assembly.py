"""A tensor computed from source bytes without torch: transposed blocks, model-parallel slices joined side by side,
and casts to another float type.

Its pieces are source regions read through memory maps, so nothing is loaded whole: the output is cut into chunks
of about ``_CHUNK`` elements, each filled from its pieces, cast where asked (``harness.io.bit_casts``) and written
with ``pwrite`` at its own offset. Chunks are independent, so several run at once (numpy releases the GIL while it
copies). Memory stays near one chunk per thread whatever the tensor's size. Bytes that need neither a transpose, a
join nor a cast never come here: the kernel copies them (``harness.io.row_gather``).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from harness.io.bit_casts import cast_bits, unsigned
from harness.io.file_regions import FileRegion, merged_spans, nbytes
from harness.io.raw_dtypes import RawDType

__all__ = ["Assembly", "Interleaved", "Piece", "Transposed", "write_assembly"]

_CHUNK = 1 << 20  # output elements per chunk: small enough that one tensor keeps every thread busy
_TILE = 256  # rows and columns of one transposed tile: both sides stay in cache
_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Transposed:
    """The transpose of the ``[rows, cols]`` matrix that ``region`` holds (an expert's block of the Hub's fused w2)."""

    region: FileRegion

    @property
    def units(self) -> tuple[int, int]:  # output rows, elements per output row
        return self.region.shape[1], self.region.shape[0]

    def fill(self, first: int, count: int, out: np.ndarray, files: _Maps) -> None:
        rows, cols = self.region.shape
        source = files.elements(self.region).reshape(rows, cols)
        block = out.reshape(count, rows)
        for r in range(0, rows, _TILE):  # tile by tile: a plain strided copy would miss the cache on every element
            for c in range(first, first + count, _TILE):
                end = min(c + _TILE, first + count)
                block[c - first: end - first, r: r + _TILE] = source[r: r + _TILE, c: end].T


@dataclass(frozen=True)
class Interleaved:
    """Row ``o`` of the output is row ``o`` of each region in turn: model-parallel slices joined along a dimension
    after the first (fairscale's RowParallelLinear splits columns). Each region holds ``[rows, width]``."""

    regions: tuple[FileRegion, ...]
    rows: int

    @property
    def units(self) -> tuple[int, int]:
        return self.rows, sum(_numel(r) for r in self.regions) // self.rows

    def fill(self, first: int, count: int, out: np.ndarray, files: _Maps) -> None:
        block = out.reshape(count, -1)
        column = 0
        for region in self.regions:
            width = _numel(region) // self.rows
            rows = files.elements(region)[first * width: (first + count) * width]
            block[:, column: column + width] = rows.reshape(count, width)
            column += width


@dataclass(frozen=True)
class _Whole:
    """A region copied as it is, within an assembly that casts or joins."""

    region: FileRegion

    @property
    def units(self) -> tuple[int, int]:
        return _numel(self.region), 1

    def fill(self, first: int, count: int, out: np.ndarray, files: _Maps) -> None:
        out[:] = files.elements(self.region)[first: first + count]


Piece = FileRegion | Transposed | Interleaved


@dataclass(frozen=True)
class Assembly:
    """A tensor of ``shape`` written as ``dtype``, the concatenation of ``pieces`` (all of one source dtype)."""

    pieces: tuple[Piece, ...]
    shape: tuple[int, ...]
    dtype: RawDType

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)

    def regions(self) -> list[FileRegion]:
        """Every source region it reads."""
        out: list[FileRegion] = []
        for piece in self.pieces:
            out.extend(piece.regions if isinstance(piece, Interleaved) else
                       [piece.region if isinstance(piece, Transposed) else piece])
        return out

    def spans(self) -> list[FileRegion]:
        """The source bytes it covers, merged where regions touch: what the NaN/Inf scan reads (the values
        before any cast, as the torch path checks them)."""
        return merged_spans(self.regions())


def write_assembly(assembly: Assembly, fd: int, offset: int) -> None:
    """Write ``assembly``'s bytes into the open file ``fd`` at ``offset``."""
    regions = assembly.regions()
    sizes = {path: os.path.getsize(path) for path in {r.path for r in regions}}
    for region in regions:
        if sizes[region.path] < region.offset + region.nbytes:
            raise OSError(errno.EIO, f"{region.path} ended inside a tensor")
    source = regions[0].dtype if regions else assembly.dtype
    chunks = list(_chunks(assembly.pieces))
    starts = np.cumsum([0] + [sum(n * per for _, _, n, per in chunk) for chunk in chunks]).tolist()

    def write(i: int) -> None:
        out = np.empty(starts[i + 1] - starts[i], dtype=unsigned(source))
        at, files = 0, _Maps()
        for piece, first, count, per in chunks[i]:
            piece.fill(first, count, out[at: at + count * per], files)
            at += count * per
        del files  # unmapped: the pages read leave the process
        data = memoryview(cast_bits(out, source, assembly.dtype)).cast("B")
        where = offset + starts[i] * assembly.dtype.itemsize
        while data:
            n = os.pwrite(fd, data, where)
            data, where = data[n:], where + n

    if len(chunks) == 1:
        write(0)
        return
    with ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="convparity-assembly") as pool:
        for done in pool.map(write, range(len(chunks))):
            del done


def _chunks(pieces: tuple[Piece, ...]) -> Iterator[list[tuple[_Filler, int, int, int]]]:
    """The output cut into chunks of about ``_CHUNK`` elements: lists of (piece, first unit, units, unit size)."""
    chunk: list[tuple[_Filler, int, int, int]] = []
    size = 0
    for piece in pieces:
        filler = _Whole(piece) if isinstance(piece, FileRegion) else piece
        units, per = filler.units
        if units == 0 or per == 0:
            continue
        first = 0
        while first < units:
            if chunk and _CHUNK - size < per:  # not one more unit fits: the next chunk starts with it
                yield chunk
                chunk, size = [], 0
            take = min(units - first, max(1, (_CHUNK - size) // per))
            chunk.append((filler, first, take, per))
            size, first = size + take * per, first + take
    if chunk:
        yield chunk


_Filler = _Whole | Transposed | Interleaved


class _Maps:
    """Each source file memory-mapped read-only once per chunk (a chunk may read thousands of rows of one file):
    pages are read as they are used and leave the process when the chunk is done."""

    def __init__(self) -> None:
        self._files: dict[str, np.memmap] = {}

    def elements(self, region: FileRegion) -> np.ndarray:
        """``region``'s elements as unsigned integers of its width."""
        if not region.nbytes:
            return np.empty(0, dtype=unsigned(region.dtype))
        path = str(region.path)
        if path not in self._files:
            self._files[path] = np.memmap(path, dtype=np.uint8, mode="r")
        return self._files[path][region.offset: region.offset + region.nbytes].view(unsigned(region.dtype))


def _numel(region: FileRegion) -> int:
    return region.nbytes // region.dtype.itemsize
