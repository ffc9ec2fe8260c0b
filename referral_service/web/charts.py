"""Charts as server-side SVG: no network, no JavaScript; readable by screen readers.

Every chart is an `<svg role="img">` with a `<title>` and a `<desc>`, and the page shows the numbers in a
table next to it, so the chart is never the only way to read the figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 560, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 44
COLOURS = ("#1f5f99", "#c26a00", "#3b7d3b", "#8a3b8f")


@dataclass(frozen=True)
class Series:
    """One line or one set of bars: a name and a value per category (None: no value)."""

    name: str
    values: Sequence[float | None]


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 4, 6, 8, 10):
        top = step * magnitude
        if top >= value:
            return float(top)
    return float(10 * magnitude)


def _fmt(value: float, percent: bool) -> str:
    if percent:
        return f"{value:.0f}%"
    if value >= 10000:
        return f"{value / 10000:.1f}万"
    return f"{value:,.0f}" if value >= 100 else f"{value:g}"


def _frame(title: str, desc: str, body: list[str], chart_id: str) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" role="img" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" aria-labelledby="{escape(chart_id)}-title {escape(chart_id)}-desc">'
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>'
        f'<desc id="{escape(chart_id)}-desc">{escape(desc)}</desc>'
    )
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704  (every value above is escaped)


def _axes(labels: Sequence[str], top: float, percent: bool) -> list[str]:
    plot_h = HEIGHT - TOP - BOTTOM
    out = []
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#444">'
                   f"{escape(_fmt(value, percent))}</text>")
    step = (WIDTH - LEFT - RIGHT) / max(len(labels), 1)
    every = max(1, len(labels) // 12)
    for i, text in enumerate(labels):
        if i % every == 0:
            x = LEFT + step * (i + 0.5)
            out.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="11" '
                       f'fill="#444">{escape(text)}</text>')
    return out


def _legend(series: Sequence[Series]) -> list[str]:
    out = []
    x = LEFT
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        out.append(f'<rect x="{x}" y="{HEIGHT - 14}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14}" y="{HEIGHT - 5}" font-size="11" fill="#222">{escape(s.name)}</text>')
        x += 24 + 8 * len(s.name) + (6 * sum(ord(c) > 255 for c in s.name))
    return out


def bar_chart(chart_id: str, title: str, labels: Sequence[str], series: Sequence[Series], *,
              percent: bool = False, desc: str = "") -> Markup:
    """Grouped vertical bars, one group per label."""
    values = [v for s in series for v in s.values if v is not None]
    top = _nice_max(max(values, default=0.0))
    plot_h = HEIGHT - TOP - BOTTOM
    step = (WIDTH - LEFT - RIGHT) / max(len(labels), 1)
    bar_w = step * 0.7 / max(len(series), 1)
    body = _axes(labels, top, percent)
    for j, s in enumerate(series):
        colour = COLOURS[j % len(COLOURS)]
        for i, value in enumerate(s.values):
            if value is None:
                continue
            h = plot_h * value / top
            x = LEFT + step * i + step * 0.15 + bar_w * j
            body.append(
                f'<rect class="bar" x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" '
                f'fill="{colour}"><title>{escape(labels[i])} · {escape(s.name)}: '
                f"{escape(_fmt(value, percent))}</title></rect>"
            )
    if len(series) > 1:
        body += _legend(series)
    return _frame(title, desc or title, body, chart_id)


def line_chart(chart_id: str, title: str, labels: Sequence[str], series: Sequence[Series], *,
               percent: bool = False, desc: str = "") -> Markup:
    """One polyline per series with a dot on every value (gaps where a value is missing)."""
    values = [v for s in series for v in s.values if v is not None]
    top = 100.0 if percent else _nice_max(max(values, default=0.0))
    plot_h = HEIGHT - TOP - BOTTOM
    step = (WIDTH - LEFT - RIGHT) / max(len(labels), 1)
    body = _axes(labels, top, percent)
    for j, s in enumerate(series):
        colour = COLOURS[j % len(COLOURS)]
        points = []
        for i, value in enumerate(s.values):
            if value is None:
                continue
            x, y = LEFT + step * (i + 0.5), TOP + plot_h - plot_h * min(value, top) / top
            points.append(f"{x:.1f},{y:.1f}")
            body.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                        f"<title>{escape(labels[i])} · {escape(s.name)}: "
                        f"{escape(_fmt(value, percent))}</title>"
                        "</circle>")
        if len(points) > 1:
            line = " ".join(points)
            body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{line}"/>')
    if len(series) > 1:
        body += _legend(series)
    return _frame(title, desc or title, body, chart_id)
