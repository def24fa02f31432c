"""Float casts on raw bits, without torch: ``convert --dtype`` on the byte path.

Every cast rounds to nearest, ties to even, as torch's ``Tensor.to`` does. The narrowing casts to float16 are
integer arithmetic on the bits for every value that lands on a normal float16 (nearly all weights): a shift and a
new exponent bias, rounded first where float32 has more mantissa. The few others (zeros, subnormals, overflow,
Inf, NaN) are picked out and cast the exact slow way: a 16-bit source by a table of all 65,536 patterns, built once
from exact float32 values; float32 by numpy's own rounding. float32 -> bfloat16 is integer arithmetic throughout,
and the remaining 16-bit casts are table lookups. The results are bit for bit what torch writes for every finite
and infinite value (``tests/test_bit_casts.py`` checks every 16-bit pattern); a NaN stays a NaN, quieted, as the
CPU's own conversion instructions do.

``cast_counting`` also counts the source's NaN and Inf, which a float16 cast finds among the values it singles
out, so a conversion's refusal test costs no pass of its own there.
"""

from __future__ import annotations

import threading
from functools import cache

import numpy as np

from harness.io.nonfinite_bits import count_nonfinite_bits
from harness.io.raw_dtypes import BY_NAME, RawDType

__all__ = ["CASTABLE", "cast_bits", "cast_counting", "unsigned"]

CASTABLE = ("float32", "bfloat16", "float16")  # the sources and targets this module casts between
_BLOCK = 1 << 16  # table indices converted at a time


def unsigned(dtype: RawDType) -> np.dtype:
    """The little-endian unsigned integer type as wide as ``dtype``: what its bits are handled as."""
    return np.dtype(f"<u{dtype.itemsize}")


def cast_bits(bits: np.ndarray, source: RawDType, target: RawDType, out: np.ndarray | None = None) -> np.ndarray:
    """``bits`` (of ``source`` values, as ``unsigned(source)``) cast to ``target``, as ``unsigned(target)``; into
    ``out`` (of that type and size) when given.

    >>> from harness.io.raw_dtypes import BY_NAME
    >>> one_third = np.array([0x3EAAAAAB], dtype=np.uint32)  # float32 1/3
    >>> hex(cast_bits(one_third, BY_NAME["float32"], BY_NAME["bfloat16"])[0])
    '0x3eab'
    """
    out = np.empty(bits.shape, dtype=unsigned(target)) if out is None else out
    cast_counting(bits, source, target, out)
    return out


def cast_counting(bits: np.ndarray, source: RawDType, target: RawDType, out: np.ndarray) -> int:
    """``bits`` cast into ``out`` as ``cast_bits`` does; returns how many source values are NaN or Inf."""
    if source.name not in CASTABLE or target.name not in CASTABLE:
        raise ValueError(f"cannot cast {source.name} to {target.name} on raw bits; expected {', '.join(CASTABLE)}")
    if not out.flags.c_contiguous:
        raise ValueError("the output of a cast must be contiguous")
    if target.name == "float16" and source.name != "float16":
        flat = bits.reshape(-1)
        return count_nonfinite_bits(flat[_to_float16(flat, source, out.reshape(-1))], source)
    if source == target:
        np.copyto(out, bits)
    elif source.itemsize == 2:
        _look_up(_table(source.name, target.name), bits, out)
    else:
        out[...] = _float32_to_bfloat16(bits)
    return count_nonfinite_bits(bits, source)


@cache
def _table(source: str, target: str) -> np.ndarray:
    """The cast of every 16-bit pattern of ``source`` to ``target``."""
    patterns = np.arange(1 << 16, dtype=np.uint32)
    if source == "bfloat16":
        exact = (patterns << 16).view(np.float32)  # bfloat16 is the top half of a float32
    else:
        exact = patterns.astype(np.uint16).view(np.float16).astype(np.float32)  # float16 -> float32 is exact
    return cast_bits(exact.view(np.uint32), BY_NAME["float32"], BY_NAME[target])


def _look_up(table: np.ndarray, bits: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = table[bits]``, in blocks: numpy converts 16-bit indices to pointer-sized ones slowly inside
    ``take``, and a block of converted indices stays in cache (about 2x faster than one ``take`` of it all)."""
    flat_in, flat_out = bits.reshape(-1), out.reshape(-1)
    index = _scratch(0, min(flat_in.size, _BLOCK), np.dtype(np.intp))
    for start in range(0, flat_in.size, _BLOCK):
        block = flat_in[start: start + _BLOCK]
        np.copyto(index[: block.size], block, casting="safe")
        np.take(table, index[: block.size], out=flat_out[start: start + block.size], mode="clip")


def _float32_to_bfloat16(bits: np.ndarray) -> np.ndarray:
    """Round to nearest even on the bits (c10's ``round_to_nearest_even``); a NaN keeps its top bits, quieted."""
    bits = bits.astype(np.uint32, copy=False)
    nan = (bits & 0x7FFF_FFFF) > 0x7F80_0000
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded



# Where the rebiasing arithmetic holds: magnitudes (bits without the sign) from float16's smallest normal, 2**-14, up
# to the largest that rounds to a finite float16 or to its infinity; and the exponent bias difference, 127 - 15,
# in place for each source.
_NORMAL = {"bfloat16": (0x3880, 0x477F), "float32": (0x3880_0000, 0x477F_FFFF)}
_REBIAS = {"bfloat16": (127 - 15) << 7, "float32": (127 - 15) << 23}


def _to_float16(bits: np.ndarray, source: RawDType, out: np.ndarray) -> np.ndarray:
    """Cast ``bits`` (bfloat16 or float32, one dimension) to float16 into ``out``; returns the positions of the
    values cast the exact slow way, which hold every NaN and Inf."""
    table = _table("bfloat16", "float16") if source.name == "bfloat16" else None  # built before any scratch is in use
    low, high = _NORMAL[source.name]
    width = unsigned(source)
    magnitude = np.bitwise_and(bits, np.iinfo(width).max >> 1, out=_scratch(0, bits.size, width))  # sign cleared
    sign = _scratch(1, bits.size, np.dtype(np.uint16))
    if source.name == "bfloat16":  # 7 mantissa bits: they fit float16's 10, nothing to round
        np.subtract(magnitude, _REBIAS["bfloat16"], out=out)
        np.left_shift(out, 3, out=out)
        np.bitwise_and(bits, 0x8000, out=sign)
    else:  # round away 13 of 23 mantissa bits to nearest even: add just under half, plus the kept lowest bit
        kept = np.right_shift(magnitude, 13, out=_scratch(2, bits.size, width))
        np.bitwise_and(kept, 1, out=kept)
        np.add(kept, magnitude, out=kept)
        np.subtract(kept, _REBIAS["float32"] - 0xFFF, out=kept)
        np.right_shift(kept, 13, out=kept)
        np.copyto(out, kept, casting="unsafe")  # each fits in 15 bits where the arithmetic holds
        np.bitwise_and(bits.view("<u2")[1::2], 0x8000, out=sign)  # the top bit of each little-endian high half
    np.bitwise_or(out, sign, out=out)
    np.subtract(magnitude, low, out=magnitude)  # now wraps below ``low``: one unsigned comparison tests both ends
    elsewhere = np.flatnonzero(np.greater(magnitude, high - low, out=_scratch(3, bits.size, np.dtype(bool))))
    if elsewhere.size:
        chosen = bits[elsewhere]
        if table is not None:
            out[elsewhere] = table[chosen]
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is the cast's meaning
                out[elsewhere] = chosen.view(np.float32).astype(np.float16).view(np.uint16)
    return elsewhere


_SCRATCH = threading.local()


def _scratch(slot: int, size: int, dtype: np.dtype) -> np.ndarray:
    """``size`` elements of this thread's working memory number ``slot``, kept for its next cast: fresh memory for
    every chunk would cost a page fault per page, which is most of a cast's time on some hosts."""
    held: dict[int, np.ndarray] = getattr(_SCRATCH, "buffers", None) or {}
    _SCRATCH.buffers = held
    need = size * dtype.itemsize
    if slot not in held or held[slot].nbytes < need:
        held[slot] = np.empty(need, dtype=np.uint8)
    return held[slot][:need].view(dtype)
