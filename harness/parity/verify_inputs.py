"""Token ids for ``convparity verify``: read from a file, or made by the converted directory's own tokenizer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from harness.errors import ConversionError

__all__ = ["read_input_ids", "tokenize"]


def read_input_ids(path: Path) -> tuple[torch.Tensor, list[int]]:
    """Token ids from JSON (a list, a list of lists, or an object with ``input_ids``, such as an oracle's
    ``meta.json``) or safetensors (an ``input_ids`` tensor); sequences of unequal length are right-padded.

    >>> read_input_ids(Path("golden/upstream/mixtral/case-pth-gqa-8e-top2-notheta/meta.json"))[0].shape
    torch.Size([2, 7])
    """
    if not path.is_file():
        raise ConversionError(f"--input-ids {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            data: Any = load_file(path).get("input_ids")
        except Exception as err:  # safetensors raises its own error type for a bad header
            raise ConversionError(f"--input-ids {path}: not a safetensors file ({err})") from None
        data = data.tolist() if data is not None else None
    else:
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConversionError(f"--input-ids {path}: not JSON ({err})") from None
    data = data.get("input_ids") if isinstance(data, dict) else data
    rows = [data] if isinstance(data, list) and data and all(isinstance(x, int) for x in data) else data
    if not (isinstance(rows, list) and rows and all(isinstance(r, list) and r and all(isinstance(x, int) and x >= 0
                                                                                    for x in r) for r in rows)):
        raise ConversionError(f"--input-ids {path}: expected non-negative token ids, as a list, a list of lists or "
                              f"{{\"input_ids\": ...}} (JSON), or an input_ids tensor (safetensors)")
    return _pad(rows)


def tokenize(converted: Path, texts: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
    """``texts`` through the tokenizer saved in ``converted``, one sequence each, right-padded."""
    from transformers import AutoTokenizer

    files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((converted / f).is_file() for f in files):
        raise ConversionError(f"--text needs a tokenizer in {converted} ({' or '.join(files)}); found none; pass "
                              f"--input-ids FILE instead")
    try:
        tokenizer = AutoTokenizer.from_pretrained(converted)
    except (OSError, ValueError, TypeError) as err:
        raise ConversionError(f"--text: cannot load the tokenizer in {converted}: {str(err).splitlines()[0]}") from None
    rows = [tokenizer(t)["input_ids"] for t in texts]
    if not all(rows):
        raise ConversionError("--text: a text gave no tokens")
    return _pad(rows)


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
    width = max(map(len, rows))  # right padding: a causal model's earlier positions never see it
    return torch.tensor([r + [0] * (width - len(r)) for r in rows]), [len(r) for r in rows]
