"""Run one conversion end to end: read the source, convert, cast, stream into the output directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import ConversionError
from harness.io.staging import remove_stale_partials
from harness.io.writer import ShardPlan
from harness.mapping.conversion import Converted
from harness.mapping.output import DEFAULT_SHARD_SIZE, write_converted

if TYPE_CHECKING:
    from harness.family.family import Family

__all__ = ["convert_checkpoint"]


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
