"""A key template such as ``layers.{layer}.attention.wq.weight``: formats to and matches concrete keys.

``{layer+1}`` shifts the index in the key (mixformer numbers its blocks from 1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Pattern"]

_PLACEHOLDER = re.compile(r"\{(\w+)(?:\+(\d+))?\}")


@dataclass(frozen=True)
class Pattern:
    """A key template that formats to and matches concrete keys."""

    text: str

    @property
    def names(self) -> frozenset[str]:
        return frozenset(m.group(1) for m in _PLACEHOLDER.finditer(self.text))

    def format(self, binding: Mapping[str, int]) -> str:
        return _PLACEHOLDER.sub(lambda m: str(binding[m.group(1)] + int(m.group(2) or 0)), self.text)

    def regex(self) -> re.Pattern[str]:
        """A regex matching any concrete key of this pattern (``*`` matches anything)."""
        parts = _PLACEHOLDER.split(self.text)
        # split() yields literal, name, offset, literal, ...: keep literals, turn placeholders into \d+
        literal = [re.escape(p).replace(r"\*", ".*") for p in parts[::3]]
        return re.compile(r"\d+".join(literal) + r"\Z")
