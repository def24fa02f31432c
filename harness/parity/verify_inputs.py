"""Token ids for ``convparity verify``: read from a file, made by the converted directory's own tokenizer, or drawn at
random; every one checked to fit the model's vocabulary and positions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from harness.errors import ConversionError
from harness.parity.parity import make_tokens

__all__ = ["fitted_tokens", "position_limit", "read_input_ids", "tokenize"]


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


def fitted_tokens(cfg: Any, where: Path, tokens: torch.Tensor | None, inputs: str, batch: int, seq_len: int | None,
                  seed: int) -> tuple[torch.Tensor, str]:
    """The given ids, checked against the vocabulary and position limit of the model in ``where`` (``cfg``, its
    transformers config), or random ones that fit both; with how they were made."""
    vocab = int(cfg.vocab_size)
    limit = position_limit(cfg)
    if tokens is None:
        if seq_len is not None and limit is not None and seq_len > limit:
            raise ConversionError(f"--seq-len {seq_len} is beyond the {limit} positions of {where} "
                                  f"(learned position embeddings); choose at most {limit}")
        seq_len = seq_len or min(32, limit or 32)
        tokens, inputs = make_tokens(vocab, batch, seq_len, seed), f"random token ids (seed {seed}, below {vocab})"
    if int(tokens.max()) >= vocab:
        raise ConversionError(f"token id {int(tokens.max())} is outside the vocabulary of {where} "
                              f"({vocab} ids)")
    if limit is not None and tokens.shape[1] > limit:
        raise ConversionError(f"{tokens.shape[1]} tokens per sequence are beyond the {limit} positions of "
                              f"{where} (learned position embeddings); pass at most {limit}")
    return tokens, inputs


def position_limit(cfg: Any) -> int | None:
    """How many positions a model with learned position embeddings has (None where positions are computed)."""
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute" or "rope" in str(cfg.to_dict()):
        return None
    for name in ("n_positions", "max_position_embeddings"):
        if isinstance(getattr(cfg, name, None), int):
            return int(getattr(cfg, name))
    return None
