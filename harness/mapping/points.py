"""A family's named points: where its reference and the converted transformers model compute the same thing.

Declared once per family in ``converters/<family>/points.py`` and carried by ``FAMILY.points``; diagnosis
(``harness.parity.points``, ``harness.parity.teacher``) records and compares them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Point"]


@dataclass(frozen=True)
class Point:
    """A reference point (``ref``, with ``{layer}``) and the transformers module computing it (``module``).

    >>> Point("layers.{layer}.attention", "model.layers.{layer}.self_attn", config=("rope_theta",)).about
    'attention'
    """

    ref: str
    module: str
    config: tuple[str, ...] = ()  # transformers config fields (at any depth) whose value this sub-module uses
    about: str = ""

    def __post_init__(self) -> None:
        if not self.about:
            object.__setattr__(self, "about", self.ref.rsplit("}.", 1)[-1].replace("_", " "))

    def match(self, name: str) -> dict[str, str] | None:
        found = re.fullmatch(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>\\d+)", re.escape(self.ref)), name)
        return found.groupdict() if found else None
