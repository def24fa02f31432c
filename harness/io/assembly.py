"""A tensor computed from source bytes without torch: transposed blocks, model-parallel slices joined side by side,
and casts to another float type.

Its pieces are source regions read through memory maps, so nothing is loaded whole: the output is cut into chunks
of about ``AssemblyEngine.chunk`` elements, each filled from its pieces, cast where asked (``harness.io.bit_casts``),
buffered in a memory-backed file and copied into the shard at its own offset by the kernel. Chunks are
independent, so several are computed at once (numpy releases the GIL while it works); they enter the shard one at a
time. Memory stays near one chunk per thread whatever the tensor's size. Bytes that need neither a transpose, a
join nor a cast never come here: the kernel copies them (``harness.io.row_gather``).

One ``AssemblyEngine`` holds the worker threads, the chunk buffers and the bound on chunks in flight, with its sizes
as parameters; the writer makes one per output directory. Nothing is kept in module state, and an engine used
again in a forked child starts its threads afresh."""

from __future__ import annotations

import errno
import mmap
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from harness.io.bit_casts import cast_counting, unsigned
from harness.io.file_regions import FileRegion, copy_range, merged_spans, nbytes, write_all
from harness.io.nonfinite_bits import count_nonfinite_bits
from harness.io.raw_dtypes import RawDType

__all__ = ["Assembly", "AssemblyEngine", "Interleaved", "Piece", "Transposed", "write_assembly"]

_CARRIER = np.dtype(np.complex128)  # a 16-byte element that numpy copies as raw bytes (no arithmetic touches it)
_PAGE = mmap.PAGESIZE


@dataclass(frozen=True)
class Transposed:
    """The transpose of the ``[rows, cols]`` matrix that ``region`` holds (an expert's block of the Hub's fused w2)."""

    region: FileRegion

    @property
    def units(self) -> tuple[int, int]:  # output rows, elements per output row
        return self.region.shape[1], self.region.shape[0]

    def fill(self, first: int, count: int, out: np.ndarray, files: _Maps, tile: int) -> None:
        rows, cols = self.region.shape
        columns = files.elements(self.region).reshape(rows, cols)[:, first: first + count]
        block = out.reshape(count, rows)
        group = _CARRIER.itemsize // columns.itemsize
        if rows % group:
            _transpose_tiles(columns, block, tile)
            return
        # numpy copies one element per step whatever its size: moving 16-byte groups of ``group`` source rows
        # (zipped column by column) through the transpose moves ``group`` values per step, about twice as fast.
        zipped = np.empty((rows // group, count, group), dtype=columns.dtype)
        for j in range(group):
            zipped[:, :, j] = columns[j::group]
        _transpose_tiles(zipped.view(_CARRIER).reshape(rows // group, count),
                         block.view(_CARRIER).reshape(count, rows // group), tile)


def _transpose_tiles(source: np.ndarray, out: np.ndarray, tile: int) -> None:
    """``out[...] = source.T``, tile by tile: a plain strided copy would miss the cache on every element."""
    rows, cols = source.shape
    for r in range(0, rows, tile):
        for c in range(0, cols, tile):
            out[c: c + tile, r: r + tile] = source[r: r + tile, c: c + tile].T


@dataclass(frozen=True)
class Interleaved:
    """Row ``o`` of the output is row ``o`` of each region in turn: model-parallel slices joined along a dimension
    after the first (fairscale's RowParallelLinear splits columns). Each region holds ``[rows, width]``."""

    regions: tuple[FileRegion, ...]
    rows: int

    @property
    def units(self) -> tuple[int, int]:
        return self.rows, sum(_numel(r) for r in self.regions) // self.rows

    def fill(self, first: int, count: int, out: np.ndarray, files: _Maps, tile: int) -> None:
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

    def fill(self, first: int, count: int, out: np.ndarray, files: _Maps, tile: int) -> None:
        out[:] = files.elements(self.region)[first: first + count]


Piece = FileRegion | Transposed | Interleaved


@dataclass(frozen=True)
class Assembly:
    """A tensor of ``shape`` written as ``dtype``, the concatenation of ``pieces`` (all of one source dtype)."""

    pieces: tuple[Piece, ...]
    shape: tuple[int, ...]
    dtype: RawDType
    # NaN/Inf among the source values, counted as the tensor is written (harness.io.finite reads it)
    nonfinite: list[int] = field(default_factory=list, compare=False, repr=False)

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


def write_assembly(assembly: Assembly, fd: int, offset: int, engine: AssemblyEngine | None = None) -> None:
    """Write ``assembly``'s bytes into the open file ``fd`` at ``offset`` (with a fresh engine, closed after, when
    none is given)."""
    own = engine is None
    engine = engine or AssemblyEngine()
    try:
        writes = Writes(engine=engine)
        writes.start(assembly, fd, offset)
        writes.finish()
    finally:
        if own:
            engine.close()


@dataclass(eq=False)
class AssemblyEngine:
    """The worker threads that compute assemblies, and their sizes.

    ``threads`` workers; ``chunk`` output elements per chunk (large enough that per-chunk work, maps and opens, is
    small beside it); ``block`` elements cast and written at a time (the cast area and the cast's working memory
    stay in cache); ``window`` chunks queued or in flight at once (default twice the threads; each holds one set
    of buffers while it runs); ``direct``: a plain region at least this long is cast straight from its file, not
    copied first; ``tile``: rows and columns of one transposed tile (both sides stay in cache); ``memfd``: buffer
    chunks in a memory-backed file (None: where the platform allows, see ``_Buffers``).
    """

    threads: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    chunk: int = 1 << 22
    block: int = 1 << 19
    window: int = 0
    direct: int = 1 << 16
    tile: int = 128
    memfd: bool | None = None
    _pid: int = field(default=-1, init=False, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _free: queue.SimpleQueue[_Buffers] = field(default_factory=queue.SimpleQueue, init=False, repr=False)
    _in_flight: threading.BoundedSemaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.window = self.window or 2 * self.threads
        self.memfd = _memfd_usable() if self.memfd is None else self.memfd

    def submit(self, work: Callable[..., None], *args: object) -> Future[None]:
        """Run ``work(*args)`` on a worker once fewer than ``window`` chunks are in flight (it must ``release``)."""
        if self._pid != os.getpid():  # first use, or a forked child: the parent's threads are not here
            self._pid, self._pool, self._free = os.getpid(), None, queue.SimpleQueue()
            self._in_flight = threading.BoundedSemaphore(self.window)
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="convparity-assembly")
        self._in_flight.acquire()
        assert self._pool is not None
        return self._pool.submit(work, *args)

    def buffers(self) -> _Buffers:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return _Buffers(self)

    def release(self, buffers: _Buffers) -> None:
        self._free.put(buffers)
        self._in_flight.release()

    def close(self) -> None:
        """Stop the workers (after the chunks already queued)."""
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown()
        self._pid, self._pool = -1, None


class Writes:
    """Assemblies being written by the worker threads. ``start`` returns once the tensor's chunks are queued (it
    waits only while ``engine.window`` chunks are in flight, which bounds memory), so the caller goes on to the next
    tensor while this one is computed: workers never idle between tensors. ``finish`` waits for every chunk and
    raises the first error; the file must stay open until it returns.

    ``progress``, if given, is told the bytes of each chunk once they are in the file, from the worker threads;
    the caller reports the bytes it writes itself through ``advance``, so that one call runs at a time."""

    def __init__(self, progress: Callable[[int], None] | None = None, *, engine: AssemblyEngine) -> None:
        self._futures: list[Future[None]] = []
        self._progress = progress
        self._reporting = threading.Lock()
        self._engine = engine

    def start(self, assembly: Assembly, fd: int, offset: int) -> None:
        regions = assembly.regions()
        sizes = {path: os.path.getsize(path) for path in {r.path for r in regions}}
        for region in regions:
            if sizes[region.path] < region.offset + region.nbytes:
                raise OSError(errno.EIO, f"{region.path} ended inside a tensor")
        chunks = list(_chunks(assembly.pieces, self._engine.chunk))
        starts = np.cumsum([0] + [sum(n * per for _, _, n, per in chunk) for chunk in chunks]).tolist()
        tally = _Tally(assembly, len(chunks))
        source = regions[0].dtype if regions else assembly.dtype
        for i, chunk in enumerate(chunks):
            where = offset + starts[i] * assembly.dtype.itemsize
            self._futures.append(self._engine.submit(_write_chunk, self._engine, chunk, starts[i + 1] - starts[i],
                                                     source, assembly.dtype, fd, where, tally, self.advance))

    def finish(self, *, raising: bool = True) -> None:
        """Wait for every chunk (the file may close only then); raise the first error unless not ``raising``
        (the caller is already failing)."""
        futures, self._futures = self._futures, []
        errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None and raising:
            raise first

    def advance(self, nbytes: int) -> None:
        """Tell ``progress`` that ``nbytes`` more are in the file."""
        if self._progress is not None:
            with self._reporting:
                self._progress(nbytes)


def _write_chunk(engine: AssemblyEngine, chunk: list[tuple[_Filler, int, int, int]], size: int, source: RawDType,
                 target: RawDType, fd: int, offset: int, tally: _Tally, written: Callable[[int], None]) -> None:
    """Compute one chunk (fill from the files, cast, count NaN/Inf in the source bits), write it, and say so."""
    buffers = engine.buffers()
    try:
        casting = target != source
        bits = buffers.source(size, unsigned(source))
        at, files, filled, direct, bad = 0, _Maps(), [], [], 0
        for piece, first, count, per in chunk:
            n = count * per
            if casting and isinstance(piece, _Whole) and n >= engine.direct:  # cast straight from the mapped file
                direct.append((at, files.elements(piece.region)[first: first + n]))
            else:
                piece.fill(first, count, bits[at: at + n], files, engine.tile)
                filled.append((at, at + n))
            at += n
        with buffers.writer(fd) as write:
            if not casting:
                for begin, end in _merged(filled):
                    bad += count_nonfinite_bits(bits[begin: end], source, buffers.scratch(end - begin, bits.dtype))
                write(bits, offset)
            else:  # block by block through a small cast area, written while it is still in cache
                runs = sorted(direct + [(begin, bits[begin: end]) for begin, end in _merged(filled)],
                              key=lambda run: run[0])
                for at, values in runs:
                    for start in range(0, values.size, engine.block):
                        block = values[start: start + engine.block]
                        cast = buffers.cast_area(block.size, unsigned(target))
                        bad += cast_counting(block, source, target, cast)
                        write(cast, offset + (at + start) * target.itemsize)
        del files  # unmapped: the pages read leave the process
        tally.add(bad)
        written(size * target.itemsize)
    finally:
        engine.release(buffers)


class _Tally:
    """NaN/Inf counted by an assembly's chunks; the total goes to ``assembly.nonfinite`` when the last one ends."""

    def __init__(self, assembly: Assembly, chunks: int) -> None:
        self._assembly, self._left, self._total, self._lock = assembly, chunks, 0, threading.Lock()
        if not chunks:
            assembly.nonfinite.append(0)

    def add(self, bad: int) -> None:
        with self._lock:
            self._total += bad
            self._left -= 1
            if not self._left:
                self._assembly.nonfinite.append(self._total)


@cache
def _memfd_usable() -> bool:
    """Whether chunks can be buffered in a memfd: Linux, with /proc/self/fd to give each thread its own file."""
    if not (sys.platform.startswith("linux") and hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")):
        return False
    probe = os.memfd_create("convparity-probe")
    try:
        os.close(os.open(f"/proc/self/fd/{probe}", os.O_WRONLY))
        return True
    except OSError:
        return False
    finally:
        os.close(probe)


class _Buffers:
    """Where one chunk is computed: its source bits (written as they are when nothing is cast), then a small
    cast area for its cast output, block by block.

    The memory is a memory-backed file (``memfd``) mapped into the process, so that the finished output goes to
    the shard by an in-kernel copy: on the machines measured, ``pwrite`` of a process's own memory was two to
    three times slower than the kernel copying the same bytes from pages it already holds
    (``benchmarks/convert_throughput.py``). Buffers are kept and reused by later chunks and tensors, since
    faulting in fresh pages costs about as much as the copy. Without ``memfd`` (not Linux): plain memory and
    ``pwrite``.
    """

    def __init__(self, engine: AssemblyEngine) -> None:
        self._chunk, self._block = engine.chunk, engine.block
        self._fd = os.memfd_create("convparity-chunk") if engine.memfd else None
        self._memory: mmap.mmap | np.ndarray | None = None
        self._size = 0
        self._cast_at = 0  # where the cast area starts: after the largest source so far, on a page of its own
        self._scratch: np.ndarray | None = None

    def source(self, size: int, dtype: np.dtype) -> np.ndarray:
        """An array of ``size`` source elements; the cast area follows it (the memory grows only here, so
        views and ``writer`` stay valid for the whole chunk)."""
        self._cast_at = max(self._cast_at, -(-size * dtype.itemsize // _PAGE) * _PAGE)
        need = self._cast_at + self._block * 8
        if need > self._size:
            self._grow(max(need, self._chunk * 8 + self._block * 8 + _PAGE))
        return self._raw()[: size * dtype.itemsize].view(dtype)

    def cast_area(self, size: int, dtype: np.dtype) -> np.ndarray:
        """An array of ``size`` (at most the engine's ``block``) output elements, after the source's."""
        return self._raw()[self._cast_at: self._cast_at + size * dtype.itemsize].view(dtype)

    def scratch(self, size: int, dtype: np.dtype) -> np.ndarray:
        """``size`` elements of working memory (the NaN/Inf test's masked bits)."""
        if self._scratch is None or self._scratch.nbytes < size * dtype.itemsize:
            self._scratch = np.empty(max(size, self._chunk) * dtype.itemsize, dtype=np.uint8)
        return self._scratch[: size * dtype.itemsize].view(dtype)

    @contextmanager
    def writer(self, fd: int) -> Iterator[Callable[[np.ndarray, int], None]]:
        """A function that writes a view from ``source`` or ``cast_area`` into ``fd`` at an offset."""
        if self._fd is None:
            yield lambda out, offset: write_all(fd, memoryview(out), offset)
            return
        base = self._raw().ctypes.data
        # Its own open file: the kernel copy may write at the file position, which threads must not share.
        own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)
        try:
            yield lambda out, offset: copy_range(self._fd, out.ctypes.data - base, own, offset, out.nbytes,
                                                 "a chunk buffer")
        finally:
            os.close(own)

    def _raw(self) -> np.ndarray:
        return np.frombuffer(self._memory, dtype=np.uint8)  # type: ignore[arg-type]

    def _grow(self, size: int) -> None:
        self._memory = None  # drops the old mapping (no view of it outlives a chunk)
        if self._fd is None:
            self._memory = np.empty(size, dtype=np.uint8)
        else:
            os.ftruncate(self._fd, size)
            self._memory = mmap.mmap(self._fd, size)
        self._size = size


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` ranges joined, so that short rows are cast in one call."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _chunks(pieces: tuple[Piece, ...], size_limit: int) -> Iterator[list[tuple[_Filler, int, int, int]]]:
    """The output cut into chunks of about ``size_limit`` elements: lists of (piece, first unit, units, unit
    size)."""
    chunk: list[tuple[_Filler, int, int, int]] = []
    size = 0
    for piece in pieces:
        filler = _Whole(piece) if isinstance(piece, FileRegion) else piece
        units, per = filler.units
        if units == 0 or per == 0:
            continue
        first = 0
        while first < units:
            if chunk and size_limit - size < per:  # not one more unit fits: the next chunk starts with it
                yield chunk
                chunk, size = [], 0
            take = min(units - first, max(1, (size_limit - size) // per))
            chunk.append((filler, first, take, per))
            size, first = size + take * per, first + take
    if chunk:
        yield chunk


_Filler = _Whole | Transposed | Interleaved


class _Maps:
    """Each source file memory-mapped read-only once per chunk (a chunk may read thousands of rows of one file):
    pages are read as they are used and leave the process when the chunk is done."""

    def __init__(self) -> None:
        self._files: dict[str, np.ndarray] = {}

    def elements(self, region: FileRegion) -> np.ndarray:
        """``region``'s elements as unsigned integers of its width."""
        if not region.nbytes:
            return np.empty(0, dtype=unsigned(region.dtype))
        path = str(region.path)
        if path not in self._files:
            # a plain array over the map: slicing a ``np.memmap`` runs Python code for every row taken
            self._files[path] = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
        return self._files[path][region.offset: region.offset + region.nbytes].view(unsigned(region.dtype))


def _numel(region: FileRegion) -> int:
    return region.nbytes // region.dtype.itemsize
