"""The tables part of a family: its config and key tables, and the conversion both ways derived from them.

``KeyTables(CONFIG, KEYS, shapes)`` is the whole of most families' ``convert``/``invert``: the source's layout
picks the key table, the completed config gives the shapes the ledger expects, and ``invert`` reads the same
tables backwards into the default layout. A family departs from that in one hook, where upstream makes it: which
layout converts a source (Gemma's follows its config), or a whole ``convert`` that adds notes or files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from harness.mapping.config_map import ConfigMap
from harness.mapping.conversion import Converted, SourceCheckpoint, convert_with, invert_with
from harness.mapping.keymap import Layouts

__all__ = ["KeyTables", "Tables"]


class Tables(Protocol):
    """``config`` and ``keys`` are the family's tables; ``convert`` and ``invert`` run them (forward, backward)."""

    config: ConfigMap
    keys: Layouts

    def convert(self, source: SourceCheckpoint) -> Converted:
        """The transformers config and the tensor stream; the ledger checks keys and shapes first."""

    def invert(self, config: dict[str, Any], tensors: dict[str, Any]) -> SourceCheckpoint:
        """A transformers config and state dict back to the upstream layout."""


@dataclass(frozen=True)
class KeyTables:
    """The standard :class:`Tables`, with its hooks.

    ``layout(source)`` names the key layout that converts ``source`` (default: the one ``read`` saw);
    ``custom_convert`` replaces the derived ``convert`` where a conversion adds notes or files (it calls
    :meth:`derived_convert` for the tables' part); ``inverse_layout(config)`` names the layout ``invert`` writes
    (default: the key table's default).
    """

    config: ConfigMap
    keys: Layouts
    shapes: Callable[..., dict[str, tuple[int, ...]]]
    layout: Callable[[SourceCheckpoint], str] | None = None
    custom_convert: Callable[[SourceCheckpoint], Converted] | None = None
    inverse_layout: Callable[[Mapping[str, Any]], str] | None = None

    def convert(self, source: SourceCheckpoint) -> Converted:
        return self.custom_convert(source) if self.custom_convert else self.derived_convert(source)

    def derived_convert(self, source: SourceCheckpoint, **shape_args: Any) -> Converted:
        """The tables alone: the key table of the source's layout, the shapes of its completed config."""
        keys = self.keys.pick(self.layout(source) if self.layout else source.layout)
        expected = self.shapes(self.config.complete_nested(source.config), keys.layout, **shape_args)
        return convert_with(source, self.config, keys, expected)

    def invert(self, config: dict[str, Any], tensors: dict[str, Any]) -> SourceCheckpoint:
        layout = self.inverse_layout(self.config.to_source(config)) if self.inverse_layout else self.keys.default
        return invert_with(config, tensors, self.config, self.keys.pick(layout), layout=layout)
