"""NaN and Inf counted on raw bits: a float is NaN or Inf exactly when all its exponent bits are set, so the test
needs no torch and no conversion of the values (``RawDType.nonfinite`` gives the mask and threshold)."""

from __future__ import annotations

import numpy as np

from harness.io.raw_dtypes import RawDType

__all__ = ["count_nonfinite_bits"]


def count_nonfinite_bits(bits: np.ndarray, dtype: RawDType, scratch: np.ndarray | None = None) -> int:
    """How many of ``bits`` (values of ``dtype`` as unsigned integers of its width) are NaN or Inf; ``scratch``
    (same type, at least as long) saves an allocation.

    >>> from harness.io.raw_dtypes import BY_NAME
    >>> count_nonfinite_bits(np.array([0x3F80, 0x7F80, 0xFFC0, 0x0001], dtype=np.uint16), BY_NAME["bfloat16"])
    2
    """
    if dtype.nonfinite is None or not bits.size:
        return 0
    mask, threshold = dtype.nonfinite
    masked = np.bitwise_and(bits, mask, out=None if scratch is None else scratch[: bits.size])
    if masked.max() < threshold:  # one fast pass; the exact count only when there is something to count
        return 0
    return int(np.count_nonzero(masked >= threshold))
