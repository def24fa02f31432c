"""A report's plot: relative error per layer on a log scale, as pygal's inline SVG without script.

Line styles say what a line is: the error solid with dots, the bound dashed, the noise floor dotted; the grid
lines are solid and faint (pygal dashes them by default, which read as more bounds).
"""

from __future__ import annotations

import math
import re

from harness.parity.html_model import Plot

__all__ = ["BOUND_DASH", "NOISE_DASH", "svg"]

BOUND_DASH = "7, 4"
NOISE_DASH = "2, 3"


def svg(p: Plot) -> str:
    """The plot as one ``<svg>`` element."""
    import pygal
    from pygal.style import Style

    style = Style(background="white", plot_background="white", colors=("#1f5fbf", "#c0392b", "#7f8c8d"),
                  font_family="sans-serif", label_font_size=10, major_label_font_size=10, legend_font_size=11,
                  guide_stroke_dasharray="none", major_guide_stroke_dasharray="none",
                  guide_stroke_color="#e5e8e8", major_guide_stroke_color="#cfd4d6")
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
              stroke_style={"width": 2, "dasharray": BOUND_DASH})
    if any(n for n in p.noise):
        chart.add("noise floor", [n if n and n > 0 else None for n in p.noise], show_dots=False,
                  stroke_style={"width": 1.5, "dasharray": NOISE_DASH})
    # pygal writes its config into a <script> for its tooltips, whose script is left out: 3 kB per plot unused
    return re.sub(r"<script[^>]*>.*?</script>", "", chart.render(is_unicode=True), flags=re.S)
