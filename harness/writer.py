"""Stream converted tensors into sharded safetensors files, atomically.

The shard plan is computed from names, shapes and dtypes alone; every shard's header is therefore known
before its data, so each tensor is written the moment it is produced and then freed: peak memory is about
one tensor, whatever the size of the model or of a shard. Everything goes into a temporary sibling
directory that is renamed into place at the end; a failure removes it, leaving nothing behind.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from harness.conversion import TensorSpec
from harness.errors import ConversionError

__all__ = ["ShardPlan", "parse_size", "plan_shards", "remove_stale_partials", "write_model_dir"]

_PARTIAL = ".partial"
_OWNER = ".convparity-owner.json"  # inside a staging directory: which process is writing it

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
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
                    tensors: Iterable[tuple[str, torch.Tensor]], max_shard_size: int,
                    progress: Callable[[int], None] | None = None) -> ShardPlan:
    """Write ``config.json`` and the planned shards into ``output``, which must not exist yet.

    ``tensors`` must arrive in the order of ``specs`` with matching shapes and dtypes (cast beforehand).
    """
    if output.exists():
        raise ConversionError(f"output {output} already exists; choose a new directory or remove it")
    if not output.parent.is_dir():
        raise ConversionError(f"parent directory {output.parent} of the output does not exist")
    plan = plan_shards(specs, max_shard_size)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=_PARTIAL, dir=output.parent))
    try:
        (staging / _OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        stream = iter(tensors)
        for filename, group in plan.filename_to_tensors.items():
            with open(staging / filename, "wb") as f:
                _write_shard(f, group, stream, progress)
        if next(stream, None) is not None:
            raise RuntimeError("the converter produced more tensors than it planned")
        if len(plan.filename_to_tensors) > 1:
            index = {"metadata": {"total_size": plan.total_size}, "weight_map": plan.tensor_to_filename}
            (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (staging / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
        (staging / _OWNER).unlink()
        os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return plan


def remove_stale_partials(output: Path) -> list[str]:
    """Remove staging directories that an earlier, killed conversion into ``output`` left behind.

    A staging directory is stale when the process that made it (recorded inside it) no longer runs on this
    host. One that is still being written, or that another host made (a shared filesystem), is left alone
    with an error saying how to remove it. Returns one note per directory removed.
    """
    notes = []
    for partial in sorted(output.parent.glob(f".{glob.escape(output.name)}.*{_PARTIAL}")):
        owner = _read_owner(partial)
        if owner.get("host") == socket.gethostname() and _running(owner.get("pid")):
            raise ConversionError(f"{partial} is being written by process {owner['pid']}; wait for it to finish "
                                  f"or stop it, then run again (if no conversion is running, rm -r '{partial}')")
        if owner and owner.get("host") != socket.gethostname():
            raise ConversionError(f"{partial} was left by a conversion on host {owner.get('host')!r}; if none is "
                                  f"running there, remove it: rm -r '{partial}'")
        shutil.rmtree(partial, ignore_errors=True)
        notes.append(f"removed {partial}, left by an interrupted conversion"
                     f"{' (process ' + str(owner['pid']) + ')' if owner.get('pid') else ''}")
    return notes


def _read_owner(partial: Path) -> dict[str, Any]:
    try:
        owner = json.loads((partial / _OWNER).read_text())
    except (OSError, ValueError):
        return {}  # the owner file is written first: without one, the directory was abandoned at once
    return owner if isinstance(owner, dict) else {}


def _running(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _write_shard(f: BinaryIO, group: list[TensorSpec], stream: Iterable[tuple[str, torch.Tensor]],
                 progress: Callable[[int], None] | None) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in group:
        header[spec.name] = {"dtype": _DTYPE_NAMES[spec.dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    f.write(struct.pack("<Q", len(raw)) + raw)
    stream = iter(stream)
    for spec in group:
        name, tensor = next(stream)
        if name != spec.name or tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise RuntimeError(f"planned {spec.name} {spec.shape} {spec.dtype}, got {name} "
                               f"{tuple(tensor.shape)} {tensor.dtype}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        f.write(memoryview(data.numpy()))
        if progress is not None:
            progress(spec.nbytes)
