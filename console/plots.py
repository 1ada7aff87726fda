"""Server-side SVG line charts for the ops dashboard (tier counts and latency over time).

Hand-written for the reason training/plots.py gives: a few polylines are a few lines of SVG,
and the dashboard polls htmx fragments, where a JavaScript chart would have to be re-created
at every refresh. Every value drawn is a number formatted here; series names are escaped.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

Point = tuple[float, float]


def line_chart_svg(
    series: dict[str, Sequence[Point]],
    *,
    colours: dict[str, str],
    label: str,
    unit: str = "",
    width: int = 640,
    height: int = 200,
) -> SafeString:
    """One polyline per series (x: time in seconds since the epoch, y: value), a shared y axis
    from 0, minutes ago on x, the last value of each series in the legend."""
    points = [point for values in series.values() for point in values]
    if not points:
        return mark_safe(f'<p class="help">No {escape(label)} yet.</p>')  # noqa: S308 - escaped
    left, bottom, top, right = 48, 26, 12, 110
    plot_w, plot_h = width - left - right, height - top - bottom
    x_low, x_high = min(x for x, _ in points), max(x for x, _ in points)
    y_high = max(y for _, y in points) or 1.0
    x_span = (x_high - x_low) or 1.0

    def xy(x: float, y: float) -> str:
        return f"{left + plot_w * (x - x_low) / x_span:.1f},{top + plot_h * (1 - y / y_high):.1f}"

    lines, legend = [], []
    for row, (name, values) in enumerate(series.items()):
        colour = colours.get(name, "#555")
        if values:
            path = " ".join(xy(x, y) for x, y in values)
            lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        last = f"{values[-1][1]:g}{unit}" if values else "–"
        legend.append(
            f'<text x="{left + plot_w + 8}" y="{top + 14 + 16 * row}" fill="{colour}">'
            f"{escape(name)} {last}</text>"
        )
    minutes = x_span / 60
    return mark_safe(  # noqa: S308 - numbers formatted here and escaped names
        f'<svg class="ops-chart" role="img" aria-label="{escape(label)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-size="11" font-family="sans-serif">'
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>'
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{y_high:g}</text>'
        f'<text x="{left - 6}" y="{top + plot_h + 4}" text-anchor="end">0</text>'
        f'<text x="{left}" y="{height - 8}">{minutes:.0f} min ago</text>'
        f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end">now</text>'
        f"{''.join(lines)}{''.join(legend)}</svg>"
    )
