"""The demo's HTML report: drift and traffic over time, the alert and the retraining run on
that timeline, and v1 against v2.

Series come from Prometheus (``/api/v1/query_range``) after the run; charts are inline SVG, so
the report is one self-contained file that opens offline.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

Series = list[tuple[float, float]]

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass
class Marker:
    at: float
    label: str
    colour: str = "#555"


@dataclass
class Band:
    start: float
    end: float
    label: str
    colour: str = "#f4cccc"


@dataclass
class Chart:
    title: str
    unit: str
    series: dict[str, Series] = field(default_factory=dict)
    threshold: float | None = None


def query_range(
    prometheus_url: str, query: str, start: float, end: float, step: float = 2.0
) -> dict[str, Series]:
    """``query`` over [start, end] as {legend: [(t, v), ...]}; {} when Prometheus is gone."""
    from kfloop.local.loop import http_json

    params = urlencode({"query": query, "start": start, "end": end, "step": step})
    data = http_json(f"{prometheus_url}/api/v1/query_range?{params}", timeout=10.0)
    out: dict[str, Series] = {}
    if not data or data.get("status") != "success":
        return out
    for item in data["data"]["result"]:
        metric = {k: v for k, v in item["metric"].items() if k != "__name__"}
        legend = ", ".join(f"{k}={v}" for k, v in sorted(metric.items())) or query
        points = [(float(t), float(v)) for t, v in item["values"]]
        out[legend] = [(t, v) for t, v in points if math.isfinite(v)]
    return out


def bands_from(series: Mapping[str, Series], label: str, step: float) -> list[Band]:
    """Intervals where a 0/1 series (e.g. ``ALERTS``) is 1."""
    bands: list[Band] = []
    for points in series.values():
        start = prev = None
        for t, v in points:
            if v >= 1 and start is None:
                start = t
            elif v >= 1 and prev is not None and t - prev > 2.5 * step and start is not None:
                bands.append(Band(start, prev, label))
                start = t
            elif v < 1 and start is not None and prev is not None:
                bands.append(Band(start, prev, label))
                start = None
            prev = t if v >= 1 else prev
        if start is not None and prev is not None:
            bands.append(Band(start, prev, label))
    return bands


def svg_chart(
    chart: Chart,
    start: float,
    end: float,
    markers: Sequence[Marker] = (),
    bands: Sequence[Band] = (),
    width: int = 900,
    height: int = 260,
) -> str:
    """One line chart as inline SVG (time on x, value on y)."""
    left, right, top, bottom = 60, 20, 30, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for points in chart.series.values() for _, v in points]
    if chart.threshold is not None:
        values.append(chart.threshold)
    top_value = max(values) * 1.1 if values and max(values) > 0 else 1.0
    span = max(end - start, 1.0)

    def x(t: float) -> float:
        return left + (t - start) / span * plot_w

    def y(v: float) -> float:
        return top + plot_h - (v / top_value) * plot_h

    esc = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{esc(chart.title)}">',
        f'<text x="{left}" y="18" font-weight="bold">{esc(chart.title)}</text>',
    ]
    for band in bands:
        x0, x1 = x(max(band.start, start)), x(min(band.end, end))
        parts.append(
            f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 2):.1f}" height="{plot_h}" '
            f'fill="{band.colour}" opacity="0.6"><title>{esc(band.label)}</title></rect>'
        )
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#333"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>'
    )
    for i in range(5):
        v = top_value * i / 4
        parts.append(
            f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">'
            f"{v:.3g}</text>"
        )
    for i in range(6):
        t = start + span * i / 5
        parts.append(
            f'<text x="{x(t):.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
            f'font-size="11">{(t - start):.0f}s</text>'
        )
    if chart.threshold is not None:
        ty = y(chart.threshold)
        parts.append(
            f'<line x1="{left}" y1="{ty:.1f}" x2="{left + plot_w}" y2="{ty:.1f}" '
            'stroke="#999" stroke-dasharray="6,4"/>'
            f'<text x="{left + plot_w}" y="{ty - 4:.1f}" text-anchor="end" font-size="11">'
            f"threshold {chart.threshold:g}</text>"
        )
    for marker in markers:
        mx = x(marker.at)
        parts.append(
            f'<line x1="{mx:.1f}" y1="{top}" x2="{mx:.1f}" y2="{top + plot_h}" '
            f'stroke="{marker.colour}" stroke-dasharray="2,3"/>'
            f'<text x="{mx + 3:.1f}" y="{top + 12}" font-size="11" fill="{marker.colour}">'
            f"{esc(marker.label)}</text>"
        )
    for index, (legend, points) in enumerate(sorted(chart.series.items())):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        if path:
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>'
            )
        parts.append(
            f'<text x="{left + 10 + 220 * index}" y="{height - 6}" font-size="11" '
            f'fill="{colour}">&#9632; {esc(legend)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def metrics_table(versions: Mapping[str, Mapping[str, Any]]) -> str:
    """v1 / v2 validation metrics side by side (numbers only)."""
    names: list[str] = []
    for metrics in versions.values():
        for key, value in metrics.items():
            if isinstance(value, int | float) and key not in names:
                names.append(key)
    head = "".join(f"<th>{html.escape(v)}</th>" for v in versions)
    rows = []
    for name in names:
        cells = []
        for metrics in versions.values():
            value = metrics.get(name)
            cells.append(f"<td>{value:.4g}</td>" if isinstance(value, int | float) else "<td></td>")
        rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def render_report(
    title: str,
    charts: Sequence[tuple[Chart, Sequence[Band]]],
    start: float,
    end: float,
    markers: Sequence[Marker],
    versions: Mapping[str, Mapping[str, Any]],
    steps: Sequence[Mapping[str, Any]],
    artifacts: Mapping[str, str],
) -> str:
    """The whole report as one HTML page."""
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    body.append("<h2>Drift, traffic and the loop on one timeline</h2>")
    body.append(
        "<p>Shaded: the drift alert firing. Dotted lines: the retraining run and deployments.</p>"
    )
    for chart, bands in charts:
        body.append(f"<div>{svg_chart(chart, start, end, markers, bands)}</div>")
    body.append("<h2>Champion (v1) and challenger (v2)</h2>")
    body.append(metrics_table(versions))
    body.append("<h2>Steps</h2><ol>")
    body.extend(
        f"<li><code>{esc(str(s.get('at', '')))}</code> (+{s.get('elapsed_s', '')}s) "
        f"{esc(str(s.get('step', '')))}</li>"
        for s in steps
    )
    body.append("</ol><h2>Where everything is</h2><table>")
    body.extend(
        f"<tr><th>{esc(k)}</th><td><code>{esc(v)}</code></td></tr>" for k, v in artifacts.items()
    )
    body.append("</table>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def dump(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)
