"""Power charts as SVG, drawn by the server (no chart library, no CDN: the console works offline).

Pure: points and a time window in, markup out. The line is one ``<path class="line">`` whose ``d``
has a vertex per bucket; a gap of more than two buckets breaks the line (a plug that was silent is
not drawn as if it had drawn power).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from html import escape

from chargectl.services.adapters.timeseries import PowerPoint

__all__ = ["nice_ceiling", "power_chart"]

_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 8, 20, 22


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is ≥ ``value`` (the y axis' top); 10 W at least."""
    if value <= 10:
        return 10.0
    exp = math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        top = m * 10**exp
        if top >= value:
            return float(top)
    return float(10 ** (exp + 1))


def _watts(value: float) -> str:
    return f"{value / 1000:g} kW" if value >= 1000 else f"{value:g} W"


def _clock(ts_ms: int) -> str:
    return time.strftime("%H:%M", time.gmtime(ts_ms / 1000))


def power_chart(
    points: Sequence[PowerPoint],
    since_ms: int,
    until_ms: int,
    step_ms: int,
    *,
    title: str,
    width: int = 400,
    height: int = 150,
) -> str:
    """An SVG line chart of ``points`` over ``[since_ms, until_ms)`` (UTC time labels)."""
    span = max(1, until_ms - since_ms)
    plot_w = width - _LEFT - _RIGHT
    plot_h = height - _TOP - _BOTTOM
    inside = [p for p in points if since_ms - step_ms < p.ts_ms < until_ms and math.isfinite(p.power_w)]
    top = nice_ceiling(max((p.power_w for p in inside), default=0.0))

    def x(ts_ms: int) -> float:
        # A bucket is drawn at its middle, clamped into the plot.
        mid = min(max(ts_ms + step_ms / 2, since_ms), until_ms)
        return _LEFT + (mid - since_ms) / span * plot_w

    def y(watts: float) -> float:
        return _TOP + plot_h - max(0.0, min(watts, top)) / top * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet">',
        f'<text class="title" x="{_LEFT}" y="13">{escape(title)}</text>',
    ]
    for frac in (0.0, 0.5, 1.0):
        gy = _TOP + plot_h - frac * plot_h
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{width - _RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}"/>')
        parts.append(
            f'<text class="axis" x="{_LEFT - 4}" y="{gy + 4:.1f}" text-anchor="end">{_watts(top * frac)}</text>'
        )
    for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        ts = since_ms + round(frac * span)
        parts.append(
            f'<text class="axis" x="{_LEFT + frac * plot_w:.1f}" y="{height - 6}" '
            f'text-anchor="{anchor}">{_clock(ts)}</text>'
        )
    if inside:
        segments: list[str] = []
        prev: int | None = None
        for p in inside:
            cmd = "M" if prev is None or p.ts_ms - prev > 2 * step_ms else "L"
            segments.append(f"{cmd}{x(p.ts_ms):.1f},{y(p.power_w):.1f}")
            prev = p.ts_ms
        parts.append(f'<path class="line" fill="none" d="{" ".join(segments)}"/>')
        last = inside[-1]
        parts.append(f'<circle class="dot" r="2.5" cx="{x(last.ts_ms):.1f}" cy="{y(last.power_w):.1f}"/>')
        parts.append(
            f'<text class="now" x="{width - _RIGHT}" y="13" text-anchor="end">now {_watts(round(last.power_w, 1))}</text>'
        )
    else:
        parts.append(
            f'<text class="empty" x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2:.1f}" '
            'text-anchor="middle">no readings in this window</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
