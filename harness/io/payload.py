"""What the writer takes for one output tensor: a tensor in memory, or bytes still in the source files (copied
file to file, or assembled from them without torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

from harness.io.assembly import Assembly
from harness.io.file_regions import FileRegion
from harness.io.row_gather import RowGather

if TYPE_CHECKING:
    import torch

__all__ = ["IN_FILES", "FilePayload", "Payload"]

FilePayload = FileRegion | RowGather | Assembly  # bytes the writer reads from files, never from memory
Payload = Union["torch.Tensor", FilePayload]
IN_FILES = (FileRegion, RowGather, Assembly)
