"""A target parameter that transformers ties to another one instead of loading it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tie"]


@dataclass(frozen=True)
class Tie:
    """``target`` is not written: transformers ties it to ``to``."""

    target: str
    to: str
