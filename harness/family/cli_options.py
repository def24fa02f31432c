"""The CLI part of a family: extra ``convparity convert <family>`` flags, passed to ``read`` by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.mapping.conversion import SourceCheckpoint

__all__ = ["CliOptions", "Flags", "Option"]

# A conversion option as argparse takes it: ``{"--vocab-size": {"type": int, "help": ...}}``; its value reaches
# ``read`` as the keyword of the flag's name (``vocab_size``).
Option = Mapping[str, Any]


class CliOptions(Protocol):
    """``options``: flag -> argparse keywords; ``upstream``: those options that are upstream config fields, read
    back from an oracle's ``meta.json`` by the tests (GPT-SW3's real vocabulary size); ``facts``: what upstream
    conversion scripts take as flags, from a source (``--converter`` templates): ``{"num_shards": "2"}``."""

    options: Mapping[str, Option]
    upstream: tuple[str, ...]
    facts: Callable[[SourceCheckpoint], Mapping[str, str]] | None


@dataclass(frozen=True)
class Flags:
    """The standard :class:`CliOptions`: ``Flags(OPTIONS, upstream=("vocab_size",))``."""

    options: Mapping[str, Option] = field(default_factory=dict)
    upstream: tuple[str, ...] = ()
    facts: Callable[[SourceCheckpoint], Mapping[str, str]] | None = None
