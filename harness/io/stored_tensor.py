"""What the torch-free indexes of checkpoint files (``harness.io.torch_zip_index``, ``harness.io.safetensors_index``)
say about each tensor, and how they decline a file they cannot describe."""

from __future__ import annotations

from dataclasses import dataclass

from harness.io.file_regions import FileRegion
from harness.io.raw_dtypes import RawDType

__all__ = ["NotIndexableError", "StoredTensor"]


class NotIndexableError(Exception):
    """The file is not one an index can describe without torch; the caller takes the library's own reader,
    which reads the file or refuses it with its full message."""


@dataclass(frozen=True)
class StoredTensor:
    """A tensor of a checkpoint file: its shape and dtype, and its bytes' place in the file when they are one
    contiguous run (``region`` None otherwise: a strided view, an empty tensor)."""

    shape: tuple[int, ...]
    dtype: RawDType
    region: FileRegion | None
