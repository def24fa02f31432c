"""Pieces every upstream layout reads the same way: a JSON side-car config, a shard index, weight files."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import ConversionError
from harness.tensor_store import TensorStore, open_safetensors, open_torch

__all__ = ["index_shards", "open_weights", "read_json_config"]


def read_json_config(file: Path, missing_hint: str) -> dict[str, Any]:
    """A JSON object from ``file``; a missing file is an error that ends with ``missing_hint``.

    >>> read_json_config(Path("/nowhere/params.json"), "pass --config FILE")
    Traceback (most recent call last):
    harness.errors.ConversionError: expected params.json beside the weights in /nowhere; pass --config FILE
    """
    if not file.is_file():
        raise ConversionError(f"expected {file.name} beside the weights in {file.parent}; {missing_hint}")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{file} must hold a JSON object of config fields, found {type(config).__name__}")
    return config


def index_shards(index: Path) -> list[Path]:
    """The shard files a ``*.index.json`` names in its ``weight_map``, all of which must exist beside it."""
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ConversionError(f"{index} is not a shard index with a weight_map ({err!r}); expected "
                              f'{{"weight_map": {{tensor name: shard file}}}}') from None
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise ConversionError(f"{index} names shard(s) {missing} that are not in {index.parent}; copy them there")
    return [index.parent / n for n in names]


def open_weights(files: Iterable[Path]) -> TensorStore:
    """One lazy store over weight files holding disjoint keys: ``.safetensors`` or torch pickles (data only)."""
    return TensorStore.merge(open_safetensors(f) if f.suffix == ".safetensors" else open_torch(f) for f in files)
