"""Run one conversion end to end: read the source, convert, cast, stream into the output directory.

A conversion that only moves bytes (``harness.mapping.raw_conversion``) is planned and written without torch; any other
is planned on the meta device and its computed tensors are written from memory.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConversionError
from harness.io.finite import refuse_nonfinite
from harness.io.raw_dtypes import BY_NAME, CAST_DTYPES
from harness.io.staging import remove_stale_partials
from harness.io.writer import ShardPlan, write_model_dir
from harness.mapping.conversion import Converted, TensorSpec
from harness.mapping.keymap import check_dtypes
from harness.mapping.raw_conversion import raw_conversion

if TYPE_CHECKING:
    from harness.registry import Family

__all__ = ["DEFAULT_SHARD_SIZE", "convert_checkpoint", "write_converted"]

DEFAULT_SHARD_SIZE = 5 * 10**9


def convert_checkpoint(family: Family, source: Path, output: Path, *, config: Path | None = None,
                       dtype: str | None = None, max_shard_size: int = DEFAULT_SHARD_SIZE,
                       progress: bool = False, allow_nonfinite: bool = False, **options: object
                       ) -> tuple[Converted, ShardPlan]:
    """``convparity convert``: source path as upstream ships it -> a ``from_pretrained`` directory.

    Bad input raises ConversionError before ``output`` is created.

    >>> convert_checkpoint(family("mixtral"), Path("ckpt"), Path("out"))  # doctest: +SKIP
    """
    if output.exists():
        raise ConversionError(f"output {output} already exists; choose a new directory or remove it")
    if not source.exists():
        raise ConversionError(f"source {source} does not exist")
    checkpoint = family.read(source, config=config, **options)
    converted = family.convert(checkpoint)
    converted.notes += remove_stale_partials(output)
    plan = write_converted(converted, output, dtype=dtype, max_shard_size=max_shard_size, progress=progress,
                           allow_nonfinite=allow_nonfinite)
    return converted, plan


def write_converted(converted: Converted, output: Path, *, dtype: str | None = None,
                    max_shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = False,
                    allow_nonfinite: bool = False) -> ShardPlan:
    """Cast floating tensors to ``dtype`` (default: as stored) and write config and shards atomically.

    NaN/Inf weights are refused (ConversionError, nothing written) unless ``allow_nonfinite``; then they are
    written as they are and named in ``converted.notes``.
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
        with _progress_bar(total, enabled=progress) as advance:
            return write_model_dir(output, config, specs, stream, max_shard_size, advance, files=files)
    except OSError as err:  # the machine's, not the checkpoint's: a full disk, a read-only or vanished folder
        where = f" ({err.filename})" if err.filename else ""
        raise ConversionError(f"I/O error while converting into {output}: {err.strerror or err}{where}") from None


def _cast_spec(spec: TensorSpec, dtype: Any) -> TensorSpec:
    if dtype is None or not spec.dtype.is_floating_point:
        return spec
    return TensorSpec(spec.name, spec.shape, dtype)


class _progress_bar:  # noqa: N801 - used as a context manager like a function
    """A byte-count progress bar on stderr, shown only when asked for and stderr is a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc="writing", file=sys.stderr)

    def __enter__(self) -> Callable[[int], None] | None:
        return self.bar.update if self.bar is not None else None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
