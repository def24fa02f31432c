"""Stream converted tensors into sharded safetensors files, atomically.

The shard plan is computed from names, shapes and dtypes alone; every shard's header is therefore known
before its data, so each tensor is written the moment it is produced and then freed: peak memory is about
one tensor, whatever the size of the model or of a shard. A tensor whose bytes pass through unchanged arrives
as a ``FileRegion`` (or, reordered by rows, a ``RowGather`` of regions) and is copied from the source file in the
kernel, never through Python; one that is transposed, joined from rank files or cast arrives as an ``Assembly``
and is computed in chunks from the files; a conversion made only of those never imports torch. Everything goes
into a temporary sibling directory (``harness.io.staging``) that is renamed into place at the end; a failure
removes it, leaving nothing behind.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConversionError
from harness.io.assembly import Assembly, AssemblyEngine, Writes
from harness.io.file_regions import FileRegion, copy_region, write_all
from harness.io.payload import Payload
from harness.io.raw_dtypes import raw_dtype
from harness.io.row_gather import RowGather, write_gather
from harness.io.staging import staged_directory
from harness.io.tensor_store import TensorSpec

if TYPE_CHECKING:
    import torch

__all__ = ["CAST_CHUNK", "Payload", "ShardPlan", "parse_size", "plan_shards", "write_model_dir"]

CAST_CHUNK = 1 << 24  # elements cast at a time: a --dtype cast holds one chunk, not the tensor twice
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


@dataclass(frozen=True)
class ShardPlan:
    """Which tensor goes to which file; one file needs no index."""

    filename_to_tensors: dict[str, list[TensorSpec]]
    tensor_to_filename: dict[str, str]
    total_size: int


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000; ``"512MiB"`` -> 536_870_912; ints pass through.

    >>> parse_size("2GB")
    2000000000
    """
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", text.upper())
    if not m:
        raise ConversionError(f"cannot read size {text!r}; write it like 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def plan_shards(specs: Iterable[TensorSpec], max_shard_size: int) -> ShardPlan:
    """Greedy, order-preserving packing: a new shard starts when the next tensor would overflow."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    files = dict(zip(names, shards, strict=True))
    return ShardPlan(files, {s.name: f for f, group in files.items() for s in group},
                     sum(s.nbytes for group in shards for s in group))


def write_model_dir(output: Path, config: Mapping[str, Any], specs: list[TensorSpec],
                    payloads: Iterable[tuple[str, Payload]], max_shard_size: int,
                    progress: Callable[[int], None] | None = None,
                    files: Mapping[str, bytes] | None = None, engine: AssemblyEngine | None = None,
                    cast_chunk: int = CAST_CHUNK) -> ShardPlan:
    """Write ``config.json``, the planned shards and ``files`` (name -> bytes) into ``output``, which must not
    exist yet.

    ``payloads`` must arrive in the order of ``specs`` with matching shapes. A tensor is written from memory,
    a ``FileRegion`` is copied file to file in the kernel; either is cast to its spec's dtype ``cast_chunk`` elements
    at a time. An
    ``Assembly`` arrives already planned in its spec's dtype and is computed from the source files by ``engine``
    (default: a fresh ``AssemblyEngine`` for this directory).
    """
    plan = plan_shards(specs, max_shard_size)
    own = engine is None
    engine = engine or AssemblyEngine()
    with staged_directory(output) as staging:
        stream = iter(payloads)
        try:
            for filename, group in plan.filename_to_tensors.items():
                with open(staging / filename, "wb", buffering=0) as f:
                    _write_shard(f.fileno(), group, stream, progress, engine, cast_chunk)
        finally:
            if own:
                engine.close()
        if next(stream, None) is not None:
            raise RuntimeError("the converter produced more tensors than it planned")
        if len(plan.filename_to_tensors) > 1:
            index = {"metadata": {"total_size": plan.total_size}, "weight_map": plan.tensor_to_filename}
            (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (staging / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
        for name, data in (files or {}).items():
            (staging / name).write_bytes(data)
    return plan


def _write_shard(fd: int, group: list[TensorSpec], stream: Iterable[tuple[str, Payload]],
                 progress: Callable[[int], None] | None, engine: AssemblyEngine, cast_chunk: int) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in group:
        header[spec.name] = {"dtype": raw_dtype(spec.dtype).safetensors, "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    write_all(fd, struct.pack("<Q", len(raw)) + raw, 0)
    offset = 8 + len(raw)
    stream = iter(stream)
    writes = Writes(progress, engine=engine)  # assemblies computed by worker threads while this loop goes on
    try:
        for spec in group:
            name, payload = next(stream)
            castable = payload.dtype == spec.dtype or (payload.dtype.is_floating_point and
                                                       spec.dtype.is_floating_point)
            if name != spec.name or tuple(payload.shape) != spec.shape or not castable:
                raise RuntimeError(f"planned {spec.name} {spec.shape} {spec.dtype}, got {name} "
                                   f"{tuple(payload.shape)} {payload.dtype}")
            if isinstance(payload, Assembly):  # computed and cast without torch; its chunks report as they land
                writes.start(payload, fd, offset)
            else:
                if isinstance(payload, FileRegion) and payload.dtype == spec.dtype:
                    copy_region(payload, fd, offset)
                elif isinstance(payload, RowGather) and payload.dtype == spec.dtype:
                    write_gather(payload, fd, offset)
                else:
                    tensor = payload.mapped() if isinstance(payload, FileRegion) else payload  # (a gather: never cast)
                    _write_tensor(fd, tensor.detach().to("cpu"), spec.dtype, offset, cast_chunk)
                writes.advance(spec.nbytes)
            offset += spec.nbytes
    except BaseException:
        writes.finish(raising=False)
        raise
    writes.finish()


def _write_tensor(fd: int, tensor: torch.Tensor, dtype: torch.dtype, offset: int, chunk: int) -> None:
    """Write ``tensor`` as ``dtype`` at ``offset``; a cast goes ``chunk`` elements at a time so memory stays near one
    chunk."""
    import torch

    flat = tensor.reshape(-1) if tensor.is_contiguous() else tensor.contiguous().reshape(-1)
    step = flat.numel() if tensor.dtype == dtype else chunk
    for start in range(0, flat.numel(), max(step, 1)):
        cast = flat[start: start + step].to(dtype).view(torch.uint8)
        write_all(fd, memoryview(cast.numpy()), offset)
        offset += cast.numel()

