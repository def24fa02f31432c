"""Pieces every upstream layout reads the same way: a JSON side-car config, a shard index, weight files."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import ConversionError
from harness.io.sniff import describe_file, wide_text
from harness.io.tensor_store import TensorStore, open_safetensors, open_torch

__all__ = ["index_shards", "open_weights", "read_bytes", "read_json_config", "read_text"]


def read_json_config(file: Path, missing_hint: str) -> dict[str, Any]:
    """A JSON object from ``file``; a missing file is an error that ends with ``missing_hint``.

    >>> read_json_config(Path("/nowhere/params.json"), "pass --config FILE")
    Traceback (most recent call last):
    harness.errors.ConversionError: expected params.json beside the weights in /nowhere; pass --config FILE
    """
    if not file.exists():
        raise ConversionError(f"expected {file.name} beside the weights in {file.parent}; {missing_hint}")
    try:
        config = json.loads(read_text(file, "JSON config"))
    except (json.JSONDecodeError, RecursionError) as err:
        raise ConversionError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{file} must hold a JSON object of config fields, found {type(config).__name__}")
    return config


def read_bytes(file: Path, what: str) -> bytes:
    """The bytes of ``file``; a directory or an unreadable file is a ConversionError saying a ``what`` was expected."""
    if file.is_dir():
        raise ConversionError(f"{file} is a directory; expected a {what} file")
    try:
        return file.read_bytes()
    except OSError as err:
        raise ConversionError(f"cannot read {file}: {err.strerror or err}; expected a {what} file") from None


def read_text(file: Path, what: str) -> str:
    """The UTF-8 text of ``file``; a directory, an unreadable file or other bytes are a ConversionError.

    >>> read_text(Path("/"), "JSON config")
    Traceback (most recent call last):
    harness.errors.ConversionError: / is a directory; expected a JSON config file
    """
    data = read_bytes(file, what)
    wide = wide_text(data)
    try:
        if wide is None:
            return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConversionError(f"{file} is not UTF-8 text: expected a {what} in UTF-8, found {describe_file(file)} "
                              f"(byte {data[err.start]:#04x} at offset {err.start}); save it as UTF-8") from None
    raise ConversionError(f"{file} is not UTF-8 text: expected a {what} in UTF-8, found {wide}; save it as UTF-8")


def index_shards(index: Path) -> list[Path]:
    """The shard files a ``*.index.json`` names in its ``weight_map``, all of which must exist beside it."""
    expected = '{"weight_map": {tensor name: shard file name, ...}}'
    try:
        weight_map = json.loads(read_text(index, "JSON shard index"))["weight_map"]
    except (json.JSONDecodeError, RecursionError, KeyError, TypeError) as err:
        raise ConversionError(f"{index} is not a shard index with a weight_map ({type(err).__name__}: {err}); "
                              f"expected {expected}") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"{index}: weight_map is {_short(weight_map)}; expected {expected}")
    bad = sorted({_short(n) for n in weight_map.values() if not isinstance(n, str) or Path(n).name != n or
                  n in ("", ".", "..")})
    if bad:
        raise ConversionError(f"{index}: weight_map names {bad[:3]}, which are not file names beside the index; "
                              f"expected {expected}")
    names = sorted(set(weight_map.values()))
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise ConversionError(f"{index} names shard(s) {missing} that are missing from {index.parent} or are not "
                              f"files; copy them there")
    return [index.parent / n for n in names]


def open_weights(files: Iterable[Path]) -> TensorStore:
    """One lazy store over weight files holding disjoint keys: ``.safetensors`` or torch pickles (data only)."""
    return TensorStore.merge(open_safetensors(f) if f.suffix == ".safetensors" else open_torch(f) for f in files)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
