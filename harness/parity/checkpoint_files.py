"""A transformers directory's weight files: which file holds each key, in what dtype, and one unit's tensors read.

safetensors are read with pread (file pages are not this process's memory); ``pytorch_model.bin`` goes through the
data-only unpickler. Every call opens its own handle, so a unit can be read on a thread beside the one running
the model (``StreamedModel``'s read ahead).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from harness.errors import ConversionError
from harness.io.file_regions import FileRegion
from harness.io.safetensors_index import index_safetensors
from harness.io.stored_tensor import NotIndexableError
from harness.io.tensor_store import load_pickle, safetensors_dtypes

__all__ = ["by_file", "read_tensors", "stored_dtypes", "weight_files"]


def stored_dtypes(folder: Path) -> dict[str, torch.dtype]:
    """Checkpoint key -> the dtype a transformers directory stores it in (safetensors: from the headers alone)."""
    return weight_files(folder)[1]


def weight_files(folder: Path) -> tuple[dict[str, Path], dict[str, torch.dtype]]:
    """Checkpoint key -> file and key -> dtype, for safetensors (sharded or not) or ``pytorch_model.bin``."""
    if not (folder / "config.json").is_file():
        raise ConversionError(f"{folder} is not a transformers model directory: no config.json")
    names = ("model.safetensors.index.json", "pytorch_model.bin.index.json", "model.safetensors", "pytorch_model.bin")
    found = next((folder / n for n in names if (folder / n).is_file()), None)
    if found is None:
        raise ConversionError(f"no weights in {folder}: expected one of {', '.join(names)}")
    files = ({k: folder / f for k, f in json.loads(found.read_text())["weight_map"].items()}
             if found.suffix == ".json" else dict.fromkeys(_open(found).keys(), found))
    return files, {k: _dtype(t) for _, tensors in by_file(files, list(files)) for k, t in tensors.items()}


def by_file(files: dict[str, Any], keys: list[str]) -> Iterator[tuple[Path | None, dict[str, Any]]]:
    """Per file, the tensors of ``keys`` unread: safetensors slices, or memory-mapped .bin tensors; tensors held in
    memory (``StreamedModel(tensors=...)``) come first, as they are."""
    held = {k: files[k] for k in keys if torch.is_tensor(files[k])}
    if held:
        yield None, held
    for path in dict.fromkeys(files[k] for k in keys if k not in held):
        handle = _open(path)
        yield path, {k: handle.get_slice(k) if path.suffix == ".safetensors" else handle[k]
                     for k in keys if files[k] == path}


def read_tensors(files: dict[str, Any], keys: list[str]) -> dict[str, torch.Tensor]:
    """The tensors of ``keys`` in memory, as stored: every byte read here, none left for whoever loads them
    (a safetensors tensor read into fresh memory from its region, a memory-mapped .bin tensor copied out of its map;
    tensors already held are returned as they are)."""
    out = {}
    for path, found in by_file(files, keys):
        regions = _regions(path) if path is not None and path.suffix == ".safetensors" else {}
        for key, t in found.items():
            region = regions.get(key)
            out[key] = t if path is None else region.read() if region is not None else (
                t.clone() if torch.is_tensor(t) else t[...])
    return out


def _regions(path: Path) -> dict[str, FileRegion]:
    """The byte region of each tensor of a safetensors file, from its header; none where the index declines it
    (then safetensors reads the file, and refuses it with its own message)."""
    try:
        return {k: t.region for k, t in index_safetensors(path).items() if t.region is not None}
    except NotIndexableError:
        return {}


def _open(path: Path) -> Any:
    """safetensors read with pread (file pages are not this process's memory), or a data-only .bin dict."""
    if path.suffix != ".safetensors":
        return load_pickle(path)
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", backend="pread")
    except TypeError:  # safetensors < 0.7 has no backend: memory-mapped
        return safe_open(str(path), framework="pt")


def _dtype(t: Any) -> torch.dtype:
    return t.dtype if torch.is_tensor(t) else safetensors_dtypes()[t.get_dtype()]
