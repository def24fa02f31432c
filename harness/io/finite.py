"""Refuse weights that hold NaN or Inf before they reach a converted model.

A checkpoint with non-finite weights converts "fine" and fails much later, far from the cause. Every payload
is checked as it streams to the writer: tensors in memory with torch, file regions and row gathers (copied by
the kernel and never read by the writer) on a second thread, so the check overlaps the copy instead of adding to
it. Those are read into one reusable buffer and tested on their bits with numpy (``harness.io.nonfinite_bits``),
which needs no torch and no conversion of the values; a tensor in memory is tested on its bits the same way. An
``Assembly`` (computed from the files without torch) is counted by the writer from the source bits it already holds,
before any cast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import ConversionError
from harness.io.assembly import Assembly
from harness.io.bit_casts import unsigned
from harness.io.file_regions import FileRegion
from harness.io.nonfinite_bits import count_nonfinite_bits
from harness.io.payload import IN_FILES, Payload
from harness.io.raw_dtypes import RawDType, raw_dtype
from harness.io.row_gather import RowGather

if TYPE_CHECKING:
    import torch

__all__ = ["count_nonfinite", "refuse_nonfinite"]

_SCAN_BYTES = 1 << 24


def count_nonfinite(payload: Payload) -> int:
    """NaN and Inf values in a tensor or a file region (0 for integer tensors).

    >>> import torch
    >>> count_nonfinite(torch.tensor([1.0, float("nan"), float("inf"), -2.0]))
    2
    """
    if isinstance(payload, (RowGather, Assembly)):  # before a cast: what the torch path checks too
        return sum(_scan_region(span) for span in payload.spans())
    if isinstance(payload, FileRegion):
        return _scan_region(payload)
    if not payload.is_floating_point() or payload.device.type == "meta":
        return 0
    return _count(payload)


def refuse_nonfinite(stream: Iterator[tuple[str, Payload]], *, allow: bool = False,
                     notes: list[str] | None = None) -> Iterator[tuple[str, Payload]]:
    """Pass ``stream`` through; raise ConversionError at its end naming every tensor with NaN/Inf values.

    The error comes when the writer asks for the item after the last, before it renames its output into
    place, so nothing is left behind. With ``allow`` the tensors are named in ``notes`` instead.
    """
    found: dict[str, Future[int] | Assembly | int] = {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="convparity-finite") as pool:
        for name, payload in stream:
            if isinstance(payload, Assembly):  # counted as it is computed, from the bits in hand
                found[name] = payload
            elif isinstance(payload, IN_FILES):
                found[name] = pool.submit(count_nonfinite, payload)
            else:
                found[name] = count_nonfinite(payload)
            yield name, payload
        counts = {name: _result(n) for name, n in found.items()}
    bad = {name: n for name, n in counts.items() if n}
    if not bad:
        return
    listed = ", ".join(f"{name} ({n} NaN/Inf)" for name, n in list(bad.items())[:5])
    listed += f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    if not allow:
        raise ConversionError(f"non-finite weights: {listed}; the checkpoint is damaged or was saved mid-"
                              f"divergence (convert anyway with --allow-nonfinite)")
    if notes is not None:
        notes.append(f"warning: converted non-finite weights as they are (--allow-nonfinite): {listed}")


def _result(found: Future[int] | Assembly | int) -> int:
    if isinstance(found, Assembly):  # not written (a consumer that stopped early): scanned here instead
        return found.nonfinite[0] if found.nonfinite else count_nonfinite(found)
    return found if isinstance(found, int) else found.result()


def _count(t: torch.Tensor) -> int:
    import torch

    raw = raw_dtype(t.dtype)
    if raw is None or raw.nonfinite is None:
        return 0
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return _count_bits(flat.view(torch.uint8).numpy().view(unsigned(raw)), raw)


def _count_bits(bits: np.ndarray, raw: RawDType, scratch: np.ndarray | None = None) -> int:
    """``count_nonfinite_bits`` a scan buffer at a time, so its scratch stays small whatever the tensor."""
    step = max(_SCAN_BYTES // raw.itemsize, 1)
    scratch = np.empty(min(bits.size, step), dtype=bits.dtype) if scratch is None else scratch
    return sum(count_nonfinite_bits(bits[i: i + step], raw, scratch) for i in range(0, bits.size, step))


def _scan_region(region: FileRegion) -> int:
    raw = raw_dtype(region.dtype)
    if raw is None or raw.nonfinite is None:
        return 0
    kind = unsigned(raw)
    buf = bytearray(min(region.nbytes, _SCAN_BYTES) // raw.itemsize * raw.itemsize or raw.itemsize)
    scratch = np.empty(len(buf) // raw.itemsize, dtype=kind)
    bad, done = 0, 0
    with open(region.path, "rb", buffering=0) as f:
        while done < region.nbytes:
            n = os.preadv(f.fileno(), [memoryview(buf)[: min(len(buf), region.nbytes - done)]],
                          region.offset + done)
            if n == 0:
                raise ConversionError(f"{region.path} ends inside a tensor ({region.nbytes - done} bytes missing)")
            bad += _count_bits(np.frombuffer(buf, dtype=kind, count=n // raw.itemsize), raw, scratch)
            done += n
    return bad
