"""Localisation on a real checkpoint (``convparity verify``): the sub-module that disagrees, when fed its input.

The reference's named points are recorded on the real source (read lazily, in float32), and the streamed model
(one unit's weights in memory at a time) is teacher-forced through the same hooks as on tiny cases. There is no
clean conversion of a real checkpoint to plant the catalogue in, so verify names the sub-module and the tensors
that feed it, says how those tensors differ from the ones convparity's own rules make of the same source
(``harness.parity.tensor_evidence``: only those tensors are converted), and that the catalogue match needs a tiny
case (``convparity check``).
"""

from __future__ import annotations

from typing import Any

import torch

from harness.family.family import Family
from harness.mapping.conversion import SourceCheckpoint
from harness.parity.observe import first_finding
from harness.parity.points import points_for, record, sites, unsupported
from harness.parity.streamed_model import StreamedModel
from harness.parity.teacher import teacher_force
from harness.parity.tensor_evidence import expected_tensors, explain, feeding_keys, stored_tensors

__all__ = ["NO_CATALOGUE", "localise_streamed"]

NO_CATALOGUE = ("localisation only: a real checkpoint has no clean conversion to plant the catalogue in, so no "
                "likely bug is named; `convparity check` on a tiny case of the same converter names one")


def localise_streamed(family: Family, checkpoint: SourceCheckpoint, model: StreamedModel, tokens: torch.Tensor,
                      bound: float) -> str:
    """One line: the first sub-module that disagrees by more than ``bound`` (relative), or that none does."""
    if (why := unsupported()) is not None:
        return why
    recording = record(family, checkpoint, tokens.cpu())
    where = sites(points_for(family), recording)
    readings = teacher_force(_Forward(model), tokens, recording, where, bound)
    found = first_finding(readings, model.model, bound)
    if found is None:
        return (f"every sub-module agrees with the reference within {bound:.1g} when fed its input; "
                f"{NO_CATALOGUE}")
    keys = feeding_keys(found.feeds, model.renamed)
    stored = stored_tensors(model.model_dir, keys)
    evidence = explain(expected_tensors(family, checkpoint, list(stored)), stored, len(stored))
    return "; ".join(part for part in (found.text(), evidence, NO_CATALOGUE) if part)


class _Forward:
    """What teacher forcing needs of a model: its sub-modules, and a forward that streams the weights in."""

    def __init__(self, model: StreamedModel) -> None:
        self.streamed = model

    def get_submodule(self, path: str) -> Any:
        return self.streamed.model.get_submodule(path)

    def __call__(self, tokens: torch.Tensor) -> Any:
        return self.streamed(tokens)
