"""Charts as inline SVG drawn on the server: no script, no CDN, nothing to build.

Colours come from CSS classes (``s-<status>``) in console.css, so the charts match
the status pills and the Content-Security-Policy needs no inline styles. Each bar
segment carries a ``<title>``, which browsers show as a tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from html import escape

from markupsafe import Markup


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k at or above ``value`` (axis maximum)."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        candidate = step * 10**exponent
        if candidate >= value:
            return float(candidate)
    return float(10 ** (exponent + 1))


def compact(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def _css(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


def stacked_bars(
    labels: Sequence[str],
    series: Mapping[str, Sequence[int]],
    *,
    order: Sequence[str],
    name_of: Callable[[str], str],
    title: str,
    empty_text: str,
    width: int = 1100,
    height: int = 250,
) -> Markup:
    """Bars per time bucket, stacked by series key (statuses), with a y grid."""
    left, right, top, bottom = 46, 10, 10, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(labels)
    totals = [sum(series.get(k, [0] * n)[i] for k in series) for i in range(n)]
    top_value = nice_ceiling(max(totals, default=0))
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in range(5):
        value = top_value * tick / 4
        y = top + plot_h - plot_h * tick / 4
        out.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{compact(value)}</text>"
        )
    if n == 0 or not any(totals):
        out.append(
            f'<text class="empty" x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" '
            f'text-anchor="middle">{escape(empty_text)}</text>'
        )
    slot = plot_w / max(n, 1)
    bar = max(1.0, slot * 0.72)
    every = max(1, math.ceil(n / 10))
    last_label = (n - 1) % every  # labels evenly spaced, ending on the current bucket
    for i in range(n):
        x = left + slot * i + (slot - bar) / 2
        y = top + plot_h
        tooltip = [f"{labels[i]}: {totals[i]}"]
        for key in order:
            count = series.get(key, [0] * n)[i]
            if not count:
                continue
            tooltip.append(f"{name_of(key)}: {count}")
            h = plot_h * count / top_value
            y -= h
            out.append(
                f'<rect class="seg s-{_css(key)}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                f'height="{max(h, 0.5):.1f}"><title>{escape(labels[i])} · '
                f"{escape(name_of(key))}: {count}</title></rect>"
            )
        if i % every == last_label:
            out.append(
                f'<text class="axis" x="{x + bar / 2:.1f}" y="{height - 10}" '
                f'text-anchor="middle">{escape(labels[i])}</text>'
            )
    out.append(
        f'<line class="baseline" x1="{left}" x2="{width - right}" '
        f'y1="{top + plot_h}" y2="{top + plot_h}"/>'
    )
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - built from escaped text and numbers


def spark_bars(
    totals: Sequence[int], failures: Sequence[int], *, title: str, width: int = 180
) -> Markup:
    """A small bar chart of a channel's deliveries per bucket, failures in red."""
    height = 40
    n = len(totals)
    top_value = max(max(totals, default=0), 1)
    slot = width / max(n, 1)
    bar = max(1.0, slot * 0.7)
    out = [
        f'<svg class="spark" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<line class="baseline" x1="0" x2="{width}" y1="{height - 0.5}" y2="{height - 0.5}"/>',
    ]
    for i, (total, failed) in enumerate(zip(totals, failures, strict=True)):
        if not total:
            continue
        x = slot * i + (slot - bar) / 2
        h = (height - 2) * total / top_value
        out.append(
            f'<rect class="spark-all" x="{x:.1f}" y="{height - h:.1f}" width="{bar:.1f}" '
            f'height="{h:.1f}"/>'
        )
        if failed:
            fh = (height - 2) * failed / top_value
            out.append(
                f'<rect class="spark-fail" x="{x:.1f}" y="{height - fh:.1f}" '
                f'width="{bar:.1f}" height="{max(fh, 1):.1f}"/>'
            )
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - built from escaped text and numbers


def meter(rate: float | None, *, width: int = 90) -> Markup:
    """A horizontal bar for a rate in [0, 1]: green under 5 %, amber under 25 %, red."""
    if rate is None:
        return Markup("")
    level = "ok" if rate < 0.05 else "warn" if rate < 0.25 else "bad"
    filled = max(0.0, min(1.0, rate)) * width
    return Markup(  # noqa: S704 - numbers and a fixed class name only
        f'<svg class="meter" viewBox="0 0 {width} 8" aria-hidden="true">'
        f'<rect class="meter-bg" x="0" y="0" width="{width}" height="8" rx="4"/>'
        f'<rect class="meter-{level}" x="0" y="0" width="{max(filled, 2 if rate else 0):.1f}" '
        f'height="8" rx="4"/></svg>'
    )
