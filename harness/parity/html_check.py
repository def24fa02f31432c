"""The page of ``check`` and ``gate``: one screen of overview first, then the plots, then every number.

The overview is a grid of family x case against device x dtype, each square coloured by its margin and linked
to its plot. A device skipped in every cell (no CUDA here) is one line saying why, not a column of grey. The
plots follow folded by family, failing families first and open, failing cells first within a family; last,
folded, the table of every cell's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from harness.parity.html_model import Cell, Fold, Grid, GridRow, Page, Plot, Row, margin_class, times

__all__ = ["check_page"]

COLUMNS = ["family", "case", "device", "dtype", "max abs", "bound", "margin", "cosine", "top-1", "KL", "detail"]


def check_page(results: Sequence[Any], title: str = "convparity check", notes: Sequence[str] = ()) -> Page:
    """One row, one overview square and one plot per family x case x device x dtype (``ParityResult``)."""
    gone = _skipped_devices(results)
    shown = [r for r in results if r.device not in gone]
    rows: list[Row] = []
    plots: dict[str, list[Plot]] = {}  # by family
    cells: dict[tuple[str, str, str, str], Cell] = {}
    hashes: dict[str, str] = {}
    for r in shown:
        anchor = f"{r.family}-{r.case}-{r.device}-{r.dtype}"
        if r.source_sha256:
            hashes[f"{r.family}/{r.case}"] = r.source_sha256
        if r.metrics is None or r.tolerance is None:
            rows.append(Row([r.family, r.case, r.device, r.dtype, *[""] * 6, r.skipped or "; ".join(r.violations)],
                            r.status, None))
            cells[r.family, r.case, r.device, r.dtype] = Cell(r.status, "skip" if r.skipped else "fail",
                                                              r.skipped or "; ".join(r.violations))
            continue
        m, bound = r.metrics, r.tolerance.max_abs_bound(r.noise)
        margin = bound / m.max_abs if m.max_abs else math.inf
        link = anchor if r.per_layer else None
        rows.append(Row([r.family, r.case, r.device, r.dtype, f"{m.max_abs:.2e}", f"{bound:.1e}", times(margin),
                         f"{m.cosine:.7f}", f"{m.top1:.3f}", f"{m.kl:.1e}", "; ".join(r.violations)],
                        r.status, margin, link))
        text = times(margin) if r.passed else f"FAIL {times(margin)}"
        cells[r.family, r.case, r.device, r.dtype] = Cell(text, margin_class(margin, r.status),
                                                          f"max abs {m.max_abs:.2e}, bound {bound:.1e}", link)
        if r.per_layer:
            plots.setdefault(r.family, []).append(Plot.of(anchor, anchor, r.per_layer, r.passed, _diagnosis(r)))
    failed = sum(1 for r in results if r.status == "FAIL")
    skipped = sum(1 for r in results if r.skipped)
    notes = [*notes, *(f"skipped: {reason}" for reason in sorted({r.skipped for r in shown if r.skipped}))]
    return Page(title, failed == 0, f"{len(results) - failed - skipped} passed, {failed} failed, {skipped} skipped",
                COLUMNS, rows, [p for family in plots.values() for p in family], notes, sorted(hashes.items()),
                grid=_grid(shown, cells, [f"{d}: skipped in every cell: {why}" for d, why in gone.items()]),
                folds=_folds(shown, plots))


def _skipped_devices(results: Sequence[Any]) -> dict[str, str]:
    """Each device skipped in every cell, with the reason(s) given."""
    out = {}
    for device in dict.fromkeys(r.device for r in results):
        mine = [r for r in results if r.device == device]
        if all(r.skipped for r in mine):
            out[device] = "; ".join(sorted({r.skipped for r in mine}))
    return out


def _grid(results: Sequence[Any], cells: dict[tuple[str, str, str, str], Cell], skipped: list[str]) -> Grid:
    columns = list(dict.fromkeys((r.device, r.dtype) for r in results))
    cases = list(dict.fromkeys((r.family, r.case) for r in results))
    absent = Cell("", "skip", "not in this run")
    rows = [GridRow(f, c, [cells.get((f, c, d, t), absent) for d, t in columns]) for f, c in cases]
    for i, row in enumerate(rows):
        same = [r.family == row.family for r in rows[i:]]
        row.span = 0 if i and rows[i - 1].family == row.family else (same + [False]).index(False)
    return Grid([f"{d} {t}" for d, t in columns], rows, skipped)


def _folds(results: Sequence[Any], plots: dict[str, list[Plot]]) -> list[Fold]:
    """A fold per family, failing families first (open), failing plots first within each."""
    folds = []
    for family in dict.fromkeys(r.family for r in results):
        mine = [r for r in results if r.family == family and not r.skipped]
        bad = [r for r in mine if r.status == "FAIL"]
        margins = [r.tolerance.max_abs_bound(r.noise) / r.metrics.max_abs for r in mine
                   if r.metrics is not None and r.tolerance is not None and r.metrics.max_abs]
        summary = (f"{len(bad)} of {len(mine)} cells FAIL" if bad else
                   f"{len(mine)} cells, all pass" + (f"; smallest margin {times(min(margins))}" if margins else ""))
        drawn = sorted(plots.get(family, []), key=lambda p: p.passed)
        folds.append(Fold(family, f"{family}: {summary}", bool(bad), drawn))
    return sorted(folds, key=lambda f: not f.open)


def _diagnosis(r: Any) -> list[str]:
    lines = list(r.violations)
    if r.violations:
        lines.append(f"first divergent hidden state: {_hidden_name(r.first_divergent_layer)}")
    return lines + ([f"diagnosis: {r.diagnosis}"] if r.diagnosis else [])


def _hidden_name(index: int | None) -> str:
    if index is None:
        return "none: every hidden state agrees, the divergence is after the last block (final norm or head)"
    return "embeddings" if index == 0 else f"output of layers.{index - 1}"
