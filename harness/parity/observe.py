"""One converted directory observed the way diagnosis needs: its load report or its teacher-forced readings.

A load that reports keys (missing, unexpected, mis-shaped) is its own finding: the keys name the sub-modules.
Otherwise each sub-module is teacher-forced (``harness.parity.teacher``); the first that disagrees is the finding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.family.family import Family
from harness.parity.parity import load_converted
from harness.parity.points import Recording, Site
from harness.parity.signature import Mark, Signature, from_load, from_readings, owner
from harness.parity.teacher import Reading, feeds, teacher_force

__all__ = ["BOUND", "Finding", "Observation", "first_finding", "observe"]

# A sub-module disagrees when max |reference - converted| / max |reference| at its output exceeds this. Correct
# sub-modules of every tiny case measure at most 6.1e-7 in float32 (the attention's kernels differ; norms,
# embeddings and heads measure 0); a norm epsilon of 1e-6 for 1e-5, the smallest planted bug, measures 4.7e-6 at
# the first norm. Diagnosis runs only once parity has failed; this bound never decides a verdict.
BOUND = 2e-6


@dataclass
class Finding:
    """The first sub-module, in forward order, that disagrees with the reference when fed its input."""

    point: str
    module: str
    about: str
    status: str  # diverged | raised | shape | missing | unexpected | mismatched | load
    rel: float | None = None
    bound: float | None = None
    agree: float | None = None  # the largest error among the sub-modules that agree: a correct one's noise
    feeds: list[str] = field(default_factory=list)
    detail: str = ""

    def text(self) -> str:
        where = f"{self.point} ({self.module}: {self.about})" if self.about else self.point
        if self.status == "diverged":
            noise = f"; largest error of the sub-modules that agree: {self.agree:.1g}" if self.agree is not None else ""
            how = f"disagrees: error {self.rel:.2g} vs bound {self.bound:.1g}{noise}"
        elif self.status in ("missing", "unexpected", "mismatched"):
            how = f"does not load: {self.status} keys"
        else:
            how = {"raised": "raises on the reference's input", "shape": "gives an output of another shape"}.get(
                self.status, "does not load") + (f" ({self.detail})" if self.detail else "")
        tensors = ", ".join(self.feeds[:6]) + (f" (+{len(self.feeds) - 6})" if len(self.feeds) > 6 else "")
        return f"{where} {how}" + (f"; fed by {tensors}" if tensors else "")


@dataclass
class Observation:
    signature: Signature
    finding: Finding | None


def observe(family: Family, model_dir: Path, tokens: torch.Tensor, recording: Recording, sites: list[Site],
            bound: float) -> Observation:
    """Load ``model_dir`` in float32 and observe it against the reference's recorded points."""
    report: dict[str, list[str]] = {}
    try:
        model = load_converted(model_dir, "cpu", "float32", family, report=report)
    except Exception as err:  # noqa: BLE001 - a load that fails outright is the finding
        detail = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}"
        return Observation({"load": Mark("load")}, Finding("load", str(model_dir), "", "load", detail=detail))
    if report:
        return _from_report(report, sites)
    readings = teacher_force(model, tokens.cpu(), recording, sites, bound)
    return Observation(from_readings(readings), first_finding(readings, model, bound))


def _from_report(report: dict[str, list[str]], sites: list[Site]) -> Observation:
    point_of = {s.module: s.name for s in sites}
    signature = from_load(report, point_of)
    order = [s.name for s in sites]
    first = min(signature, key=lambda p: order.index(p) if p in order else len(order))
    site = next((s for s in sites if s.name == first), None)
    kind, keys = next((k, [n for n in v if owner(n, point_of) == first]) for k, v in report.items()
                      if any(owner(n, point_of) == first for n in v))
    return Observation(signature, Finding(first, site.module if site else first, site.about if site else "", kind,
                                          feeds=keys))


def first_finding(readings: list[Reading], model: object, bound: float) -> Finding | None:
    """The first reading that fails, with the noise of those that agree and the tensors feeding it."""
    bad = next((r for r in readings if r.failed), None)
    if bad is None:
        return None
    inner = [r for r in readings if r.failed and r.site.module.startswith(bad.site.module + ".")]
    bad = inner[0] if inner else bad  # the attention fails because its output projection does: name that
    agree = [r.rel for r in readings if r.status == "ok" and r.rel is not None]
    return Finding(bad.site.name, bad.site.module, bad.site.about, bad.status, bad.rel, bound,
                   max(agree) if agree else None, feeds(model, bad.site.module), bad.detail)

