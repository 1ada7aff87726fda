"""Small server-side SVG plots for the console (the training job's loss curve).

Hand-written: one polyline is a few lines of SVG, while a plotting library (matplotlib) would
add tens of megabytes and a font cache for it; a JavaScript chart would need a vendored bundle
and would not show in a page that polls with htmx fragments."""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.safestring import SafeString, mark_safe


def _ema(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average: the trend through a noisy batch-of-one loss."""
    smoothed: list[float] = []
    for value in values:
        smoothed.append(value if not smoothed else weight * smoothed[-1] + (1 - weight) * value)
    return smoothed


def loss_plot_svg(
    losses: Sequence[float], *, total_steps: int, width: int = 640, height: int = 220
) -> SafeString:
    """The loss per step (faint) and its moving average (bold), steps on x, loss on y."""
    if not losses:
        return mark_safe('<p class="help">No steps yet.</p>')  # noqa: S308 - a constant
    left, bottom, top, right = 48, 28, 12, 12
    plot_w, plot_h = width - left - right, height - top - bottom
    high, low = max(losses), min(0.0, min(losses))
    span = (high - low) or 1.0
    steps = max(total_steps, len(losses))

    def points(values: Sequence[float]) -> str:
        return " ".join(
            f"{left + plot_w * (index + 1) / steps:.1f},{top + plot_h * (1 - (value - low) / span):.1f}"
            for index, value in enumerate(values)
        )

    ticks = "".join(
        f'<text x="{left - 6}" y="{top + plot_h * (1 - fraction) + 4:.1f}" text-anchor="end">'
        f"{low + span * fraction:.2f}</text>"
        for fraction in (0.0, 0.5, 1.0)
    )
    # Every value above is a number formatted here, never user text: nothing to escape.
    return mark_safe(  # noqa: S308
        f'<svg class="loss-plot" role="img" aria-label="training loss by step" '
        f'width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-size="11" font-family="sans-serif">'
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>'
        f"{ticks}"
        f'<text x="{left}" y="{height - 8}">step 0</text>'
        f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end">step {steps}</text>'
        f'<polyline fill="none" stroke="#9bb7d4" stroke-width="1" points="{points(losses)}"/>'
        f'<polyline fill="none" stroke="#1f5fa5" stroke-width="2.5" points="{points(_ema(losses))}"/>'
        f'<text x="{left + plot_w}" y="{top + 12}" text-anchor="end">last {losses[-1]:.3f} · '
        f"trend {_ema(losses)[-1]:.3f}</text></svg>"
    )
