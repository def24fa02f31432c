"""A rename whose source carries an index the target does not."""

from __future__ import annotations

from harness.mapping.rules.pattern import Pattern
from harness.mapping.rules.rename import Rename

__all__ = ["RenameAt"]


class RenameAt(Rename):
    """A Rename whose source carries an index the target does not (``at``): mixformer-sequential's LM head is
    ``layers.{head}.ln.weight`` with ``head = n_layer + 1``, but transformers names it ``model.final_layernorm``.

    ``at``'s range (a callable in ``KeyMap(ranges=...)``) must give one value; more would produce the target
    twice, which the ledger reports.
    """

    def __init__(self, source: str, target: str, *, at: str) -> None:
        self.sources, self.targets, self.at = (Pattern(source),), (Pattern(target),), at
        if at not in self.sources[0].names or self.sources[0].names - {at} != self.targets[0].names:
            raise ValueError(f"RenameAt: {source!r} must carry {{{at}}} and otherwise the placeholders of "
                             f"{target!r}")
