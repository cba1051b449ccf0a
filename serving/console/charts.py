"""Charts drawn on the server as inline SVG: no chart library, no script, nothing fetched.

Each chart has a ``<title>`` and an ``aria-label`` saying what it shows, and
series differ by marker shape and dash pattern as well as colour (WCAG 2.2
success criterion 1.4.1, "Use of Color"); every chart sits beside a table
holding the same numbers. Values are escaped: names come from sites and
operators.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 120, 14, 30
PALETTE = ("#1f5fa8", "#b3261e", "#2e7d32", "#8e24aa", "#ef6c00", "#00838f")
DASHES = ("", "6 3", "2 3", "8 3 2 3", "1 5", "10 4")
MARKERS = ("circle", "square", "triangle", "diamond", "circle", "square")


def _nice_max(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return float(step * power)
    return 10.0 * power


def _marker(kind: str, x: float, y: float, colour: str) -> str:
    if kind == "square":
        return f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{colour}"/>'
    if kind == "triangle":
        return (f'<polygon points="{x:.1f},{y - 4:.1f} {x - 4:.1f},{y + 3:.1f} {x + 4:.1f},{y + 3:.1f}" '
                f'fill="{colour}"/>')
    if kind == "diamond":
        return (f'<polygon points="{x:.1f},{y - 4:.1f} {x + 4:.1f},{y:.1f} {x:.1f},{y + 4:.1f} {x - 4:.1f},{y:.1f}" '
                f'fill="{colour}"/>')
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>'


def line_chart(title: str, series: Mapping[str, Sequence[tuple[float, float]]], *, x_label: str,
               y_label: str, y_max: float | None = None, limit: float | None = None,
               limit_label: str = "") -> Markup:
    """A line chart of one or more ``name → [(x, y), ...]`` series, with an optional dashed limit line."""
    points = [p for values in series.values() for p in values if math.isfinite(p[1])]
    if not points:
        return Markup(f'<p class="empty">{escape(title)}: nothing to plot yet.</p>')
    xs = [p[0] for p in points]
    x_min, x_max = min(xs), max(xs)
    x_span = (x_max - x_min) or 1.0
    top = _nice_max(y_max if y_max is not None else max([p[1] for p in points] + ([limit] if limit else [])))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x_min) / x_span * plot_w if x_span else LEFT + plot_w / 2

    def sy(y: float) -> float:
        return TOP + plot_h - min(max(y, 0.0), top) / top * plot_h

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for i in range(5):
        value = top * i / 4
        y = sy(value)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{value:g}</text>')
    for x in sorted(set(xs))[:: max(1, len(set(xs)) // 10)]:
        parts.append(f'<text x="{sx(x):.1f}" y="{TOP + plot_h + 14}" text-anchor="middle" font-size="10">{x:g}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 2}" text-anchor="middle" font-size="11">'
                 f'{escape(x_label)}</text>'
                 f'<text x="10" y="{TOP + plot_h / 2:.1f}" font-size="11" '
                 f'transform="rotate(-90 10 {TOP + plot_h / 2:.1f})"'
                 f' text-anchor="middle">{escape(y_label)}</text>')
    if limit is not None and math.isfinite(limit):
        y = sy(limit)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#000" '
                     f'stroke-dasharray="4 4"/><text x="{LEFT + plot_w + 4}" y="{y + 4:.1f}" font-size="10">'
                     f'{escape(limit_label or "limit")} {limit:g}</text>')
    for i, (name, values) in enumerate(series.items()):
        colour, dash, marker = PALETTE[i % 6], DASHES[i % 6], MARKERS[i % 6]
        finite = [(x, y) for x, y in values if math.isfinite(y)]
        if not finite:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in finite)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"'
                     + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        parts += [_marker(marker, sx(x), sy(y), colour) for x, y in finite]
        ly = TOP + 12 + 16 * i
        parts.append(_marker(marker, LEFT + plot_w + 10, ly - 4, colour)
                     + f'<text x="{LEFT + plot_w + 18}" y="{ly:.1f}" font-size="11">{escape(name[:16])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def budget_bars(title: str, rows: Sequence[tuple[str, float, float | None]], *, capped: bool = True) -> Markup:
    """Horizontal bars, one per ``(label, spent, cap)``: spent ε against its cap, with the numbers written out.

    A bar over 80 % of its cap is hatched as well as red, so the warning does
    not rest on colour alone; the text says "over cap" past 100 %. With
    ``capped=False`` the bars are one run's share, which no cap applies to:
    they say so rather than "no cap".
    """
    if not rows:
        return Markup(f'<p class="empty">{escape(title)}: no privacy spent yet.</p>')
    bar_h, gap, label_w, plot_w = 18, 8, 190, 250
    height = TOP + len(rows) * (bar_h + gap) + 10
    width = label_w + plot_w + 150
    top = _nice_max(max([max(spent, cap or 0.0) for _, spent, cap in rows]))
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
             '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
             'patternTransform="rotate(45)"><rect width="6" height="6" fill="#b3261e"/>'
             '<line x1="0" y1="0" x2="0" y2="6" stroke="#fff" stroke-width="2"/></pattern></defs>']
    for i, (label, spent, cap) in enumerate(rows):
        y = TOP + i * (bar_h + gap)
        share = spent / cap if cap else 0.0
        fill = "url(#hatch)" if cap and share >= 0.8 else "#1f5fa8"
        w = min(spent, top) / top * plot_w
        words = f"ε {spent:.2f}" + (f" of {cap:g}" if cap is not None else " (no cap)" if capped else " in this run")
        if cap is not None and spent > cap:
            words += " over cap"
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" font-size="11">'
                     f'{escape(label[:30])}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{plot_w}" height="{bar_h}" fill="#eee"/>'
                     f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{fill}"/>')
        if cap is not None:
            cx = label_w + min(cap, top) / top * plot_w
            parts.append(f'<line x1="{cx:.1f}" y1="{y - 2}" x2="{cx:.1f}" y2="{y + bar_h + 2}" stroke="#000" '
                         'stroke-width="2"/>')
        parts.append(f'<text x="{label_w + plot_w + 6}" y="{y + 13}" font-size="11">{escape(words)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
