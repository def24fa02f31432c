"""What the writer takes for one output tensor: a tensor in memory, or bytes still in the source files (copied
file to file, or assembled from them without torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

from harness.io.assembly import Assembly
from harness.io.file_regions import FileRegion
from harness.io.row_gather import RowGather

if TYPE_CHECKING:
    import torch

__all__ = ["IN_FILES", "Payload"]

Payload = Union["torch.Tensor", FileRegion, RowGather, Assembly]
IN_FILES = (FileRegion, RowGather, Assembly)  # payloads whose bytes the writer reads from files, never from memory
