"""Float casts on raw bits, without torch: ``convert --dtype`` on the byte path.

Every cast rounds to nearest, ties to even, as torch's ``Tensor.to`` does. A 16-bit source has only 65,536 bit
patterns, so its cast is a table lookup, the table built once from exact float32 values; float32 -> bfloat16 is
integer arithmetic on the bits, float32 -> float16 numpy's own rounding. The results are bit for bit what torch
writes for every finite and infinite value (``tests/test_bit_casts.py`` checks every 16-bit pattern); a NaN stays a
NaN, quieted, as the CPU's own conversion instructions do.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from harness.io.raw_dtypes import BY_NAME, RawDType

__all__ = ["CASTABLE", "cast_bits", "unsigned"]

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
    if source.name not in CASTABLE or target.name not in CASTABLE:
        raise ValueError(f"cannot cast {source.name} to {target.name} on raw bits; expected {', '.join(CASTABLE)}")
    out = np.empty(bits.shape, dtype=unsigned(target)) if out is None else out
    if source == target:
        np.copyto(out, bits)
    elif source.itemsize == 2:
        _look_up(_table(source.name, target.name), bits, out)
    elif target.name == "bfloat16":
        out[...] = _float32_to_bfloat16(bits)
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is the cast's meaning
            np.copyto(out.view(np.float16), bits.view(np.float32), casting="unsafe")
    return out


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
    index = np.empty(min(flat_in.size, _BLOCK), dtype=np.intp)
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

