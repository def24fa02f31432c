"""``--html FILE``: one self-contained page a reviewer opens offline (no network, no CDN, no external file).

Verdict first (with the diagnosis under it where one was made); then, for ``verify`` and ``mutate``, the
results as a table coloured by each row's margin to its bound and a plot of the relative error per layer
(embeddings, each block, logits) on a log scale, with the bound and, in low precision, the reference's own
noise floor drawn in; the diagnosis where a case failed; then the environment, the exact command and the source
hashes (``harness.parity.report.environment``). ``check`` and ``gate`` open with an overview grid instead
(``html_check``). Templating is jinja2 (``harness/parity/templates``), plots are pygal's SVG (``html_plot``).

``verify_page`` reads verify's result as the plain dict of its ``--json`` (``VerifyResult.as_dict()``), every
field through ``.get``, so a field added later or left out changes what the page shows, never whether it renders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.parity.html_check import check_page
from harness.parity.html_model import Page, Plot, Row, margin_class, times
from harness.parity.html_plot import svg

__all__ = ["Page", "Plot", "Row", "check_page", "mutate_page", "render", "verify_page", "write_html"]

# Fields of verify's result shown in the table and headline; any other field that is a dict or a list of dicts
# (power, routing) is shown as a section of its own, so one added to the result later appears without a change here.
_VERIFY_SHOWN = {"logits", "blocks", "bound"}


def verify_page(result: Mapping[str, Any], hashes: dict[str, str] | None = None) -> Page:
    """The page of ``verify`` from its result dict: one row per block and the logits, one plot over them."""
    get = result.get
    points = [c for c in [*(get("blocks") or []), get("logits")] if isinstance(c, Mapping)]
    cast = any(c.get("cast") is not None for c in points)  # a declared cast: what the rounding alone moves
    rows = [Row([str(c.get("name", "")), _fmt(c.get("max_abs"), ".2e"), _fmt(c.get("scale"), ".3g"),
                 _fmt(_rel(c), ".1e"), _fmt(c.get("noise"), ".1e"), _fmt(c.get("bound"), ".1e"),
                 _fmt(_margin(c), ""), _fmt(c.get("cosine"), ".8f"), *([_fmt(c.get("cast"), ".1e")] if cast else [])],
                "pass" if c.get("passed") else "FAIL", _margin(c), "verify") for c in points]
    per_layer = [{"name": str(c.get("name", "")), "rel": _rel(c) if _rel(c) is not None else math.nan,
                  "bound": c.get("bound"), "noise": c.get("noise")} for c in points]
    verdict = str(get("verdict") or ("PASS" if get("passed") else "FAIL"))
    diagnosis = str(get("diagnosis") or "")
    card = list(get("violations") or []) + ([f"diagnosis: {diagnosis}"] if diagnosis else [])
    title = f"{get('family', '')}: {get('converted', '')} against {get('source', '')}"
    plots = [Plot.of(title, "verify", per_layer, verdict != "FAIL", card, verdict)] if points else []
    shape = " x ".join(map(str, get("tokens_shape") or []))
    head = (f"inputs {shape} {get('inputs', '')}; compute {get('compute_dtype', '?')} on {get('device', '?')}; "
            f"top-1 agreement {_fmt(get('top1'), '.3f')}, KL {_fmt(get('kl'), '.1e')}")
    head += "".join(f", {what} {_fmt(get(key), '.1e')}" for key, what in (
        ("kl_mean", "KL mean"), ("kl_p95", "KL p95"), ("resolution", "resolution")) if get(key) is not None)
    details = {key: _section(value) for key, value in result.items() if key not in _VERIFY_SHOWN and (
        isinstance(value, Mapping) or _records(value))}
    return Page(f"convparity verify: {get('family', '')}", verdict == "PASS", head,
                ["point", "max abs", "scale", "rel", "noise", "bound", "margin", "cosine", *(["cast"] if cast else [])],
                rows, plots, list(get("notes") or []) + list(get("violations") or []), sorted((hashes or {}).items()),
                verdict=verdict if verdict not in ("PASS", "FAIL") else "", diagnosis=diagnosis, details=details)


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
                         "" if margin is None else times(margin), r.detail], status, margin,
                        anchor if per_layer else None))
        if per_layer:
            plots.append(Plot.of(f"{r.family} {r.mutant} ({r.dtype}, case {r.case})", anchor, per_layer,
                                 not r.killed, [] if clean else [r.detail], status))
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
    svgs = {p.anchor: jinja2.utils.markupsafe.Markup(svg(p)) for p in page.plots}
    template = "check.html.j2" if page.grid is not None else "report.html.j2"
    return env.get_template(template).render(page=page, svgs=svgs, margin_class=margin_class)


def write_html(page: Page, path: Path) -> None:
    """Write ``render(page)`` to ``path``."""
    path.write_text(render(page), encoding="utf-8")


def _section(value: Mapping[str, Any] | list[Mapping[str, Any]]) -> dict[str, str]:
    """A dict, or a list of records keyed by their ``name`` or ``mutant``, as lines of text; a list of records
    inside (``power["mutants"]``) becomes one line per record."""
    rows = value.items() if isinstance(value, Mapping) else (
        (str(r.get("name") or r.get("mutant") or i), r) for i, r in enumerate(value))
    out = {}
    for key, item in rows:
        if _records(item):
            out |= {f"{key}: {k}": v for k, v in _section(item).items()}
        else:
            out[str(key)] = _text(item)
    return out


def _text(value: Any) -> str:
    if isinstance(value, Mapping):
        return "; ".join(f"{k} {_text(v)}" for k, v in value.items() if k not in ("name", "mutant"))
    if isinstance(value, list):
        return ", ".join(map(_text, value)) or "none"
    return _fmt(value, ".3g")


def _records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _rel(c: Mapping[str, Any]) -> float | None:
    """The relative error as recorded, or max abs over scale where only those are."""
    if c.get("rel") is not None:
        return float(c["rel"])
    max_abs, scale = c.get("max_abs"), c.get("scale")
    return None if max_abs is None else max_abs / scale if scale else max_abs


def _margin(c: Mapping[str, Any]) -> float | None:
    """Bound over relative error; inf for an exact match (recorded as None beside a zero ``rel``)."""
    if c.get("margin") is not None:
        return float(c["margin"])
    rel, bound = _rel(c), c.get("bound")
    return None if rel is None or bound is None else bound / rel if rel else math.inf


def _fmt(value: Any, spec: str) -> str:
    """A number as ``spec``, a margin (``spec`` empty) as the tables print it; text as it is, nothing as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (bool, int)) or not isinstance(value, float):
        return str(value)
    return times(value) if not spec else format(value, spec)
