"""The source-format part of a family: the upstream on-disk layout (``converters/<family>/source.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from harness.family.cases import Case
from harness.mapping.conversion import SourceCheckpoint

__all__ = ["SourceFormat"]


class SourceFormat(Protocol):
    """What the family's ``source`` module holds; its callables are checked against these signatures at discovery.

    ``CASES`` are the tiny parity cases, ``SIZES`` the released sizes (upstream field names), ``HUB_FILES`` the globs
    of the files ``read`` uses (fetched when SOURCE is a Hub repository id).
    """

    CASES: Mapping[str, Case]
    SIZES: Mapping[str, Mapping[str, Any]]
    HUB_FILES: tuple[str, ...]

    def read(self, path: Path, config: Path | None = None) -> SourceCheckpoint:
        """A source as upstream ships it (a file, or the directory holding it); options arrive as keywords."""

    def write(self, checkpoint: SourceCheckpoint, path: Path, container: str = "default") -> None:
        """The exact upstream layout into the directory ``path``."""

    def tiny(self, seed: int = 0, layout: str = "default") -> SourceCheckpoint:
        """Random weights of realistic spread; config overrides arrive as keywords."""

    def shapes(self, config: dict[str, Any], layout: str = "default") -> dict[str, tuple[int, ...]]:
        """Every tensor upstream holds for a completed config, in upstream names."""
