"""``--html FILE``: one self-contained page a reviewer opens offline (no network, no CDN, no external file).

Verdict first; the matrix as a table coloured by each cell's margin to its bound; for every case a plot of the
relative error per layer (embeddings, each block, logits) on a log scale, with the bound and, in low precision,
the reference's own noise floor drawn in; the diagnosis where a case failed; then the environment, the exact
command and the source hashes (``harness.parity.report.environment``). Templating is jinja2
(``harness/templates/report.html.j2``), plots are pygal's inline SVG with its script left out.

>>> _margin_class(None, "skip"), _margin_class(0.5, "FAIL"), _margin_class(2.0, "pass"), _margin_class(500, "pass")
('skip', 'fail', 'tight', 'wide')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Page", "Plot", "Row", "check_page", "mutate_page", "render", "verify_page", "write_html"]

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


@dataclass
class Row:
    cells: list[str]
    status: str  # pass / FAIL / skip, or for mutants killed / SURVIVED / n/a
    margin: float | None  # bound / error (> 1 passes); None where no number applies
    anchor: str | None = None  # the plot of this row


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


def check_page(results: Sequence[Any], title: str = "convparity check", notes: Sequence[str] = ()) -> Page:
    """The page of ``check`` and ``gate``: one row and one plot per family x case x device x dtype."""
    rows, plots, hashes = [], [], {}
    for r in results:
        anchor = f"{r.family}-{r.case}-{r.device}-{r.dtype}"
        if r.source_sha256:
            hashes[f"{r.family}/{r.case}"] = r.source_sha256
        if r.metrics is None or r.tolerance is None:
            rows.append(Row([r.family, r.case, r.device, r.dtype, *[""] * 6, r.skipped or "; ".join(r.violations)],
                            r.status, None))
            continue
        m, bound = r.metrics, r.tolerance.max_abs_bound(r.noise)
        margin = bound / m.max_abs if m.max_abs else math.inf
        rows.append(Row([r.family, r.case, r.device, r.dtype, f"{m.max_abs:.2e}", f"{bound:.1e}", _times(margin),
                         f"{m.cosine:.7f}", f"{m.top1:.3f}", f"{m.kl:.1e}", "; ".join(r.violations)],
                        r.status, margin, anchor if r.per_layer else None))
        if r.per_layer:
            diagnosis = list(r.violations)
            if r.violations:
                diagnosis.append(f"first divergent hidden state: {_hidden_name(r.first_divergent_layer)}")
            if r.diagnosis:
                diagnosis.append(f"diagnosis: {r.diagnosis}")
            plots.append(_plot(anchor, anchor, r.per_layer, r.passed, diagnosis))
    failed = sum(1 for r in results if r.status == "FAIL")
    skipped = sum(1 for r in results if r.skipped)
    return Page(title, failed == 0, f"{len(results) - failed - skipped} passed, {failed} failed, {skipped} skipped",
                ["family", "case", "device", "dtype", "max abs", "bound", "margin", "cosine", "top-1", "KL",
                 "detail"], rows, plots, list(notes) + sorted({f"skipped: {r.skipped}" for r in results if r.skipped}),
                sorted(hashes.items()))


def verify_page(result: Any, hashes: dict[str, str] | None = None) -> Page:
    """The page of ``verify``: one row per block and the logits, one plot over them."""
    checks = [*result.blocks, *([result.logits] if result.logits else [])]
    rows = [Row([c.name, f"{c.max_abs:.2e}", f"{c.scale:.3g}", f"{c.rel:.1e}", f"{c.noise:.1e}", f"{c.bound:.1e}",
                 _times(c.margin), f"{c.cosine:.8f}"], "pass" if c.passed else "FAIL", c.margin, "verify")
            for c in checks]
    per_layer = [{"name": c.name, "rel": c.rel, "bound": c.bound, "noise": c.noise} for c in checks]
    plots = [_plot(f"{result.family}: {result.converted} against {result.source}", "verify", per_layer,
                   result.passed, list(result.violations))] if checks else []
    head = (f"inputs {' x '.join(map(str, result.tokens_shape))} {result.inputs}; compute {result.compute_dtype} on "
            f"{result.device}; top-1 agreement {result.top1:.3f}, KL {result.kl:.1e}")
    return Page(f"convparity verify: {result.family}", result.passed, head,
                ["point", "max abs", "scale", "rel", "noise", "bound", "margin", "cosine"], rows, plots,
                list(result.notes) + list(result.violations), sorted((hashes or {}).items()))


def mutate_page(records: Sequence[Any], controls: Sequence[Any]) -> Page:
    """The page of ``mutate``: every mutant (killed is good) and the clean controls (passing is good)."""
    rows, plots = [], []
    for r in [*records, *controls]:
        clean = r.mutant == "(clean)"
        status = ("pass" if not r.killed else "FAIL") if clean else (
            "n/a" if not r.applicable else "killed" if r.killed else "SURVIVED")
        margin = 1 / r.margin if r.margin and math.isfinite(r.margin) else None  # bound / error, as elsewhere
        anchor = f"{r.family}-{r.mutant}-{r.dtype}-{r.case}".replace("(", "").replace(")", "")
        per_layer = getattr(r, "per_layer", None)
        rows.append(Row([r.family, r.mutant, r.dtype, r.case or "", r.metric or "",
                         "" if r.value is None else f"{r.value:.3g}", "" if r.bound is None else f"{r.bound:.3g}",
                         "" if margin is None else _times(margin), r.detail], status, margin,
                        anchor if per_layer else None))
        if per_layer:
            plots.append(_plot(f"{r.family} {r.mutant} ({r.dtype}, case {r.case})", anchor, per_layer,
                               not r.killed, [] if clean else [r.detail]))
            plots[-1].label = status
    survived = [r for r in records if r.applicable and not r.killed]
    false = [r for r in controls if r.killed]
    applicable = [r for r in records if r.applicable]
    head = (f"{len(applicable) - len(survived)} of {len(applicable)} applicable mutants killed, {len(survived)} "
            f"survived; {len(false)} false failures in {len(controls)} clean controls")
    return Page("convparity mutate", not survived and not false, head,
                ["family", "mutant", "dtype", "case", "metric", "value", "bound", "margin", "detail"], rows, plots,
                ["a mutant is killed when parity fails on it: for mutants, red (a margin above 1x) means the planted "
                 "bug slipped through"])


def render(page: Page) -> str:
    """The page as one HTML document (CSS and SVG inline)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.parity", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    if not page.environment:
        from harness.parity.report import environment

        page.environment = environment()
    svgs = {p.anchor: jinja2.utils.markupsafe.Markup(_svg(p)) for p in page.plots}
    return env.get_template("report.html.j2").render(page=page, svgs=svgs, margin_class=_margin_class)


def write_html(page: Page, path: Path) -> None:
    """Write ``render(page)`` to ``path``."""
    path.write_text(render(page), encoding="utf-8")


def _plot(title: str, anchor: str, per_layer: Sequence[dict[str, Any]], passed: bool, diagnosis: list[str]) -> Plot:
    return Plot(title, anchor, [p["name"] for p in per_layer], [p["rel"] for p in per_layer],
                [p["bound"] for p in per_layer], [p.get("noise") for p in per_layer], passed, diagnosis)


def _svg(p: Plot) -> str:
    import pygal
    from pygal.style import Style

    style = Style(background="white", plot_background="white", colors=("#1f5fbf", "#c0392b", "#7f8c8d"),
                  font_family="sans-serif", label_font_size=10, major_label_font_size=10, legend_font_size=11)
    shown = [v for v in [*p.error, *p.bound, *p.noise] if v and v > 0 and math.isfinite(v)] or [1.0]
    lo, hi = math.floor(math.log10(min(shown))), math.floor(math.log10(max(shown))) + 1
    lo -= 1 if any(e == 0 for e in p.error) else 0  # exact matches sit on the bottom line
    chart = pygal.Line(logarithmic=True, js=[], disable_xml_declaration=True, width=620, height=280,
                       explicit_size=True, legend_at_bottom=True, legend_at_bottom_columns=3, style=style,
                       x_label_rotation=30 if len(p.layers) > 6 else 0, show_minor_x_labels=len(p.layers) <= 24,
                       x_labels_major_count=12, truncate_label=-1, dots_size=3, range=(10.0**lo, 10.0**hi),
                       y_labels=[10.0**k for k in range(lo, hi + 1)], value_formatter=lambda v: f"{v:.0e}",
                       y_title="max |error| / scale")
    chart.x_labels = p.layers
    chart.add("relative error", [max(e, 10.0**lo) if math.isfinite(e) else None for e in p.error])
    chart.add("bound", [b if b and b > 0 else None for b in p.bound], show_dots=False,
              stroke_style={"width": 2, "dasharray": "7, 4"})
    if any(n for n in p.noise):
        chart.add("noise floor", [n if n and n > 0 else None for n in p.noise], show_dots=False,
                  stroke_style={"width": 1.5, "dasharray": "2, 3"})
    return chart.render(is_unicode=True)


def _margin_class(margin: float | None, status: str) -> str:
    if status in ("FAIL", "SURVIVED"):
        return "fail"
    if status in ("killed",):
        return "wide"
    if margin is None:
        return "skip"
    return "fail" if margin < 1 else "tight" if margin < 3 else "fair" if margin < 30 else "wide"


def _times(margin: float) -> str:
    return "exact" if math.isinf(margin) else f"{margin:.3g}x"


def _hidden_name(index: int | None) -> str:
    if index is None:
        return "none: every hidden state agrees, the divergence is after the last block (final norm or head)"
    return "embeddings" if index == 0 else f"output of layers.{index - 1}"
