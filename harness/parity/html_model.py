"""What an HTML report page holds, independent of how it is drawn (``html_report`` renders it).

The colour of a row, a grid cell or a fold is its margin to the bound (bound / error):

>>> margin_class(None, "skip"), margin_class(0.5, "FAIL"), margin_class(2.0, "pass"), margin_class(500, "pass")
('skip', 'fail', 'tight', 'wide')
>>> times(float("inf")), times(31.77)
('exact', '31.8x')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Cell", "Fold", "Grid", "GridRow", "Page", "Plot", "Row", "margin_class", "times"]


@dataclass
class Plot:
    """Relative error per layer of one case, with the bound and the noise floor at each point."""

    title: str
    anchor: str
    layers: list[str]
    error: list[float]
    bound: list[float]
    noise: list[float | None]
    passed: bool
    diagnosis: list[str] = field(default_factory=list)
    label: str = ""  # the verdict shown in the caption; pass / FAIL by default

    @classmethod
    def of(cls, title: str, anchor: str, per_layer: Sequence[Mapping[str, Any]], passed: bool,
           diagnosis: list[str], label: str = "") -> Plot:
        """From a result's ``per_layer`` points (``name``, ``rel``, ``bound`` and, where measured, ``noise``)."""
        return cls(title, anchor, [p["name"] for p in per_layer], [p["rel"] for p in per_layer],
                   [p["bound"] for p in per_layer], [p.get("noise") for p in per_layer], passed, diagnosis, label)


@dataclass
class Row:
    cells: list[str]
    status: str  # pass / FAIL / skip, or for mutants killed / SURVIVED / n/a
    margin: float | None  # bound / error (> 1 passes); None where no number applies
    anchor: str | None = None  # the plot of this row


@dataclass
class Cell:
    """One square of the check page's overview."""

    text: str
    css: str  # margin_class
    title: str = ""  # shown on hover: the numbers behind the colour, or why it was skipped
    anchor: str | None = None


@dataclass
class GridRow:
    family: str
    case: str
    cells: list[Cell]
    span: int = 1  # rows the family's cell spans; 0 where an earlier row's cell covers this one


@dataclass
class Grid:
    """The check page's overview: a row per family x case, a column per device x dtype that ran anywhere."""

    columns: list[str]
    rows: list[GridRow]
    skipped: list[str] = field(default_factory=list)  # one line per device skipped in every cell, with why


@dataclass
class Fold:
    """A family's plots under one ``<details>``, open where one of them failed."""

    name: str
    summary: str
    open: bool
    plots: list[Plot]


@dataclass
class Page:
    title: str
    passed: bool
    headline: str
    columns: list[str]
    rows: list[Row]
    plots: list[Plot]
    notes: list[str] = field(default_factory=list)
    hashes: list[tuple[str, str]] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    verdict: str = ""  # the banner's word where it is neither PASS nor FAIL (e.g. INCONCLUSIVE)
    diagnosis: str = ""  # under the banner: where the failure was made
    details: dict[str, dict[str, str]] = field(default_factory=dict)  # titled key/value sections, e.g. verify's
    grid: Grid | None = None  # with folds: the check page's layout (overview, then plots by family)
    folds: list[Fold] = field(default_factory=list)

    @property
    def word(self) -> str:
        """PASS, FAIL or the verdict given."""
        return self.verdict or ("PASS" if self.passed else "FAIL")


def margin_class(margin: float | None, status: str) -> str:
    """The colour class of a margin: wide (>= 30x), fair (3-30x), tight (1-3x), fail, or skip (no number)."""
    if status in ("FAIL", "SURVIVED"):
        return "fail"
    if status in ("killed",):
        return "wide"
    if margin is None:
        return "skip"
    return "fail" if margin < 1 else "tight" if margin < 3 else "fair" if margin < 30 else "wide"


def times(margin: float) -> str:
    """A margin as the tables print it."""
    return "exact" if math.isinf(margin) else f"{margin:.3g}x"
