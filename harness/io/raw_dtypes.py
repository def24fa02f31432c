"""Tensor dtypes as the files name them, without torch: the safetensors names, torch's storage class names,
item sizes, and the bit patterns of NaN and Inf.

A ``RawDType`` stands in for a ``torch.dtype`` wherever a conversion only moves bytes (the torch-free fast path):
it has the ``itemsize``, ``is_floating_point`` and ``str()`` (``torch.bfloat16``) that the writer reads, and
``.torch()`` gives the real dtype when one is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BY_NAME", "BY_SAFETENSORS", "BY_STORAGE", "CAST_DTYPES", "RawDType", "as_torch", "raw_dtype"]


@dataclass(frozen=True)
class RawDType:
    """One dtype: torch's name (``bfloat16``), the safetensors name (``BF16``) and the item size in bytes.

    ``nonfinite`` is (mask, threshold) for float formats: a value is NaN or Inf exactly when its bits, read as an
    unsigned integer of ``itemsize`` bytes and masked, are at least the threshold (all exponent bits set).

    >>> BY_SAFETENSORS["BF16"], str(BY_SAFETENSORS["BF16"]), BY_SAFETENSORS["BF16"].itemsize
    (RawDType('bfloat16'), 'torch.bfloat16', 2)
    """

    name: str
    safetensors: str
    itemsize: int
    nonfinite: tuple[int, int] | None = None

    @property
    def is_floating_point(self) -> bool:
        return self.nonfinite is not None

    def torch(self) -> Any:
        """The ``torch.dtype`` (imports torch)."""
        import torch

        return getattr(torch, self.name)

    def __str__(self) -> str:
        return f"torch.{self.name}"  # as str(torch.bfloat16): the writer and config.json read it this way

    def __repr__(self) -> str:
        return f"RawDType({self.name!r})"


_ALL = [
    RawDType("float64", "F64", 8, (0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000)),
    RawDType("float32", "F32", 4, (0x7FFF_FFFF, 0x7F80_0000)),
    RawDType("float16", "F16", 2, (0x7FFF, 0x7C00)),
    RawDType("bfloat16", "BF16", 2, (0x7FFF, 0x7F80)),
    RawDType("int64", "I64", 8), RawDType("int32", "I32", 4), RawDType("int16", "I16", 2), RawDType("int8", "I8", 1),
    RawDType("uint8", "U8", 1), RawDType("bool", "BOOL", 1),
    # Complex buffers (gemma_pytorch's freqs_cis) are only ever dropped: indexed so that reading needs no torch.
    RawDType("complex64", "C64", 8),
]
BY_NAME = {d.name: d for d in _ALL}
CAST_DTYPES = ("float32", "bfloat16", "float16")  # what ``convert --dtype`` and the parity matrix offer
BY_SAFETENSORS = {d.safetensors: d for d in _ALL}
# The storage classes torch.save pickles (torch/storage.py _LegacyStorage subclasses) -> their dtype.
BY_STORAGE = {
    "DoubleStorage": BY_NAME["float64"], "FloatStorage": BY_NAME["float32"], "HalfStorage": BY_NAME["float16"],
    "BFloat16Storage": BY_NAME["bfloat16"], "LongStorage": BY_NAME["int64"], "IntStorage": BY_NAME["int32"],
    "ShortStorage": BY_NAME["int16"], "CharStorage": BY_NAME["int8"], "ByteStorage": BY_NAME["uint8"],
    "BoolStorage": BY_NAME["bool"], "ComplexFloatStorage": BY_NAME["complex64"],
}


def raw_dtype(dtype: Any) -> RawDType | None:
    """The ``RawDType`` of a ``torch.dtype`` or ``RawDType`` (None for dtypes the files here never move raw).

    >>> raw_dtype(BY_NAME["int8"]).safetensors
    'I8'
    """
    return dtype if isinstance(dtype, RawDType) else BY_NAME.get(str(dtype).removeprefix("torch."))


def as_torch(dtype: Any) -> Any:
    """A ``torch.dtype`` for a ``RawDType`` (importing torch), anything else as it is."""
    return dtype.torch() if isinstance(dtype, RawDType) else dtype
