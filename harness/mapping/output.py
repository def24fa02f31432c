"""Write a ``Converted`` into a ``from_pretrained`` directory: cast, NaN/Inf refusal, shards written atomically.

A conversion that only moves bytes (``harness.mapping.raw_conversion``) is planned and written without torch;
any other is planned on the meta device and its computed tensors are written from memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import ConversionError
from harness.io.assembly import AssemblyEngine
from harness.io.finite import refuse_nonfinite
from harness.io.raw_dtypes import BY_NAME, CAST_DTYPES
from harness.io.tensor_store import TensorSpec
from harness.io.writer import CAST_CHUNK, ShardPlan, write_model_dir
from harness.mapping.conversion import Converted
from harness.mapping.keymap import check_dtypes
from harness.mapping.raw_conversion import raw_conversion
from harness.terminal import byte_progress

__all__ = ["DEFAULT_SHARD_SIZE", "write_converted"]

DEFAULT_SHARD_SIZE = 5 * 10**9


def write_converted(converted: Converted, output: Path, *, dtype: str | None = None,
                    max_shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = False,
                    allow_nonfinite: bool = False, engine: AssemblyEngine | None = None,
                    cast_chunk: int = CAST_CHUNK) -> ShardPlan:
    """Cast floating tensors to ``dtype`` (default: as stored) and write config and shards atomically.

    NaN/Inf weights are refused (ConversionError, nothing written) unless ``allow_nonfinite``; then they are
    written as they are and named in ``converted.notes``. ``engine`` computes the byte path's assemblies (default:
    ``harness.io.assembly.AssemblyEngine()``'s sizes); the torch path casts ``cast_chunk`` elements at a time.
    """
    if dtype is not None and dtype not in CAST_DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}; choose one of {', '.join(CAST_DTYPES)}")
    raw = raw_conversion(converted, dtype)
    if raw is not None:  # bytes only: no torch
        specs, payloads = raw.specs, raw.payloads()
    else:
        check_dtypes(converted.steps, converted.source.meta, converted.source.origins)  # before any rule runs
        target = BY_NAME[dtype].torch() if dtype else None
        specs, payloads = [_cast_spec(s, target) for s in converted.plan()], converted.payloads()
    floats = [s.dtype for s in specs if s.dtype.is_floating_point]
    config = {**converted.config, "dtype": dtype or str(floats[0] if floats else "torch.float32")[6:]}
    stream = refuse_nonfinite(payloads, allow=allow_nonfinite, notes=converted.notes)
    total = sum(s.nbytes for s in specs)
    files = converted.files() if converted.files is not None else {}  # a bad one fails before any tensor is read
    try:
        with byte_progress(total, enabled=progress) as advance:
            return write_model_dir(output, config, specs, stream, max_shard_size, advance, files=files,
                                   engine=engine, cast_chunk=cast_chunk)
    except OSError as err:  # the machine's, not the checkpoint's: a full disk, a read-only or vanished folder
        where = f" ({err.filename})" if err.filename else ""
        raise ConversionError(f"I/O error while converting into {output}: {err.strerror or err}{where}") from None


def _cast_spec(spec: TensorSpec, dtype: Any) -> TensorSpec:
    if dtype is None or not spec.dtype.is_floating_point:
        return spec
    return TensorSpec(spec.name, spec.shape, dtype)
