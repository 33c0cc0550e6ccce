"""The demo's report and progress helpers: pure functions, checked on known inputs."""

from __future__ import annotations

import math
from pathlib import Path

from kfloop.pipelines.demo import PipelineLog, task_events
from kfloop.pipelines.demo_report import (
    Band,
    Chart,
    Marker,
    bands_from,
    metrics_table,
    render_report,
    svg_chart,
)


def test_bands_from_a_zero_one_series_cover_the_firing_intervals() -> None:
    series = {"a": [(0.0, 0.0), (2.0, 1.0), (4.0, 1.0), (6.0, 0.0), (8.0, 1.0)]}
    bands = bands_from(series, "firing", step=2.0)
    assert [(b.start, b.end) for b in bands] == [(2.0, 4.0), (8.0, 8.0)]


def test_bands_split_where_the_series_has_a_gap() -> None:
    # ALERTS has no sample while an alert is not firing: a gap ends a band.
    series = {"a": [(0.0, 1.0), (2.0, 1.0), (20.0, 1.0), (22.0, 1.0)]}
    bands = bands_from(series, "firing", step=2.0)
    assert [(b.start, b.end) for b in bands] == [(0.0, 2.0), (20.0, 22.0)]


def test_svg_chart_draws_every_series_threshold_marker_and_band() -> None:
    chart = Chart("PSI", "PSI", {"version=v1": [(0.0, 0.1), (10.0, 0.9)]}, threshold=0.25)
    svg = svg_chart(chart, 0.0, 10.0, [Marker(5.0, "retraining started")], [Band(2, 4, "x")])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<polyline" in svg and "threshold 0.25" in svg
    assert "retraining started" in svg and "<rect" in svg
    # the highest point sits at the top of the value axis (10 % headroom), not outside it
    points = svg.split('points="')[1].split('"')[0].split()
    ys = [float(p.split(",")[1]) for p in points]
    assert all(30 <= y <= 220 for y in ys)


def test_svg_chart_escapes_labels() -> None:
    svg = svg_chart(Chart("<b>", "", {"a<script>": [(0.0, 1.0)]}), 0.0, 1.0)
    assert "<script>" not in svg and "&lt;script&gt;" in svg


def test_metrics_table_lines_up_versions_and_leaves_gaps_empty() -> None:
    html = metrics_table({"v1": {"auc": 0.55, "note": "x"}, "v2": {"auc": 0.81, "f1": 0.8}})
    assert "<th>auc</th><td>0.55</td><td>0.81</td>" in html
    assert "<th>f1</th><td></td><td>0.8</td>" in html
    assert "note" not in html


def test_render_report_is_one_page_with_steps_and_artifacts() -> None:
    page = render_report(
        "t",
        [(Chart("c", "", {"s": [(0.0, math.nan), (1.0, 1.0)]}), [])],
        0.0,
        1.0,
        [],
        {"v1": {"auc": 0.5}},
        [{"at": "now", "elapsed_s": 1, "step": "1. start"}],
        {"report": "/x/report.html"},
    )
    assert page.startswith("<!doctype html>") and "1. start" in page and "/x/report.html" in page


def test_task_events_reads_kfp_local_lines_with_colour_codes() -> None:
    assert task_events("04:26 - INFO - Executing task \x1b[96m'train-model'\x1b[0m") == (
        "- train-model"
    )
    assert task_events(
        "INFO - Task \x1b[96m'train-model'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m"
    ) == ("  train-model: SUCCESS")
    assert task_events("    [KFP Executor] epoch 1: auc=0.5") is None


def test_pipeline_log_keeps_everything_and_reports_tasks(tmp_path: Path) -> None:
    said: list[str] = []
    log = PipelineLog(tmp_path / "p.log", said.append)
    log.write("noise\nINFO - Executing task 'ingest-data'\npartial")
    log.write(" line\n")
    log.close()
    assert said == ["- ingest-data"]
    assert (tmp_path / "p.log").read_text() == (
        "noise\nINFO - Executing task 'ingest-data'\npartial line\n"
    )
