"""Small, exact corruptions for the pinned-message tests of tests/test_fuzz.py."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["Evil", "rewrite_json", "rewrite_torch", "truncate"]


class Evil:
    """Unpickling it would create ``folder/pwned``: what a malicious checkpoint does."""

    def __init__(self, folder: Path) -> None:
        self.marker = str(folder.parent / "pwned")

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def rewrite_json(file: Path, **fields: Any) -> None:
    file.write_text(json.dumps({**json.loads(file.read_text()), **fields}))


def rewrite_torch(file: Path, change: Callable[[dict[str, torch.Tensor]], object]) -> None:
    """Load a flat torch state dict (fully, not mapped), ``change`` it in place, save it back."""
    state = {k: v.clone() for k, v in torch.load(file, weights_only=True).items()}
    change(state)
    torch.save(state, file)


def truncate(file: Path, keep: int) -> None:
    file.write_bytes(file.read_bytes()[:keep])
