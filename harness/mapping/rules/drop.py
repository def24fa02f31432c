"""A source tensor deliberately left out of the conversion, with the reason."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.mapping.rules.pattern import Pattern

__all__ = ["Drop"]


@dataclass(frozen=True)
class Drop:
    """A source tensor deliberately left out, with the reason (a rotary cache, a mask buffer).

    ``pattern`` may use placeholders and ``*``; ``optional`` drops need not match anything.
    """

    pattern: str
    reason: str
    optional: bool = False
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", Pattern(self.pattern).regex())
