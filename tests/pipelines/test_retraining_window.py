"""collect_window: the retraining pipeline's fresh window (logged requests and/or source rows)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kfloop.core.errors import ConfigError, DataError
from kfloop.data.window import collect_window, parse_time

T0 = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def _logs(folder: Path, n: int = 10) -> Path:
    """Payload-logger Parquet: request i at T0 + i minutes; request 3 logged twice (retry)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"r{i}" for i in range(n)] + ["r3"]
    times = [T0 + timedelta(minutes=i) for i in range(n)] + [T0 + timedelta(minutes=30)]
    table = pa.table(
        {
            "request_id": ids,
            "model_name": ["churn"] * (n + 1),
            "model_version": ["v1"] * (n + 1),
            "timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
            "endpoint": ["predict"] * (n + 1),
            "age": pa.array([float(20 + i) for i in range(n + 1)]),
            "plan": ["basic", "premium"] * ((n + 1) // 2) + ["basic"] * ((n + 1) % 2),
            "prediction": [0.5] * (n + 1),
        }
    )
    pq.write_table(table, folder / "part-0.parquet")
    return folder


def _truth(path: Path, ids: list[str]) -> Path:
    pq.write_table(pa.table({"request_id": ids, "label": [i % 2 for i in range(len(ids))]}), path)
    return path


def test_logged_requests_in_the_window_joined_with_ground_truth(tmp_path: Path) -> None:
    logs = _logs(tmp_path / "logs")
    truth = _truth(tmp_path / "truth.parquet", [f"r{i}" for i in range(9)])  # r9: none yet
    out = tmp_path / "window"
    result = collect_window(
        str(out),
        logs_uri=str(logs),
        ground_truth_uri=str(truth),
        window_start=(T0 + timedelta(minutes=2)).isoformat(),
        window_end="2026-11-28T03:09:00Z",
    )
    table = pq.read_table(out)
    # minutes 2..9 are in the window (8 requests; r3's retry at minute 30 is outside), r9 has
    # no ground truth yet: 7 labeled rows
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(2, 9)]
    assert table.column_names == ["id", "age", "plan", "label"]
    assert table.schema.field("id").type == pa.string()
    report = result.report
    assert (report.log_rows, report.log_rows_in_window, report.rows) == (11, 8, 7)
    assert report.feedback_unlabeled == 1
    assert result.metadata()["rows"] == 7
    assert "**7**" in report.to_markdown()


def test_open_window_deduplicates_retries(tmp_path: Path) -> None:
    logs = _logs(tmp_path / "logs")
    truth = _truth(tmp_path / "truth.parquet", [f"r{i}" for i in range(10)])
    result = collect_window(str(tmp_path / "w"), logs_uri=str(logs), ground_truth_uri=str(truth))
    assert result.report.rows == 10 and result.report.feedback_duplicates == 1


def test_source_rows_only_and_both_sources(tmp_path: Path) -> None:
    data = tmp_path / "data.parquet"
    pq.write_table(
        pa.table(
            {
                "id": pa.array([100, 101, 102], pa.int64()),
                "age": pa.array([30, 40, 50], pa.int64()),
                "plan": ["basic", "family", "premium"],
                "event_time": pa.array([T0] * 3, pa.timestamp("us")),
                "label": [0, 1, 1],
            }
        ),
        data,
    )
    only = collect_window(str(tmp_path / "only"), data_uri=str(data))
    assert only.report.rows == 3 and only.report.data_rows == 3
    assert pq.read_table(tmp_path / "only").schema.field("id").type == pa.string()

    logs = _logs(tmp_path / "logs")
    truth = _truth(tmp_path / "truth.parquet", [f"r{i}" for i in range(10)])
    both = collect_window(
        str(tmp_path / "both"), logs_uri=str(logs), ground_truth_uri=str(truth), data_uri=str(data)
    )
    table = pq.read_table(tmp_path / "both")
    assert both.report.rows == 13
    assert both.report.dropped_columns == ["event_time"]
    assert table.schema.field("age").type == pa.float64()  # cast to the logged type
    assert table.column("id").to_pylist()[-3:] == ["100", "101", "102"]


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    logs = _logs(tmp_path / "logs")
    truth = _truth(tmp_path / "truth.parquet", ["r0", "r1"])
    out = str(tmp_path / "out")
    cases = [
        ({}, "logs_uri"),
        ({"logs_uri": str(logs)}, "ground_truth_uri"),
        ({"ground_truth_uri": str(truth)}, "logs_uri"),
        (
            {"logs_uri": str(logs), "ground_truth_uri": str(truth), "window_start": "yesterday"},
            "window_start",
        ),
        (
            {
                "logs_uri": str(logs),
                "ground_truth_uri": str(truth),
                "window_start": "2026-11-28T05:00:00Z",
                "window_end": "2026-11-28T04:00:00Z",
            },
            "window_end",
        ),
    ]
    for kwargs, field in cases:
        with pytest.raises(ConfigError) as info:
            collect_window(out, **kwargs)  # type: ignore[arg-type]
        assert info.value.field == field
    # a window holding no request with ground truth: nothing to train on
    with pytest.raises(DataError, match="no logged request in the window"):
        collect_window(
            out, logs_uri=str(logs), ground_truth_uri=str(truth), window_start="2026-11-29"
        )
    # source rows without the label column
    nolabel = tmp_path / "nolabel.parquet"
    pq.write_table(pa.table({"id": [1], "age": [3.0]}), nolabel)
    with pytest.raises(DataError, match="no label column 'label'"):
        collect_window(out, data_uri=str(nolabel))
    # logs without timestamps cannot be windowed
    bare = tmp_path / "bare"
    bare.mkdir()
    pq.write_table(pa.table({"request_id": ["r0"], "age": [1.0]}), bare / "p.parquet")
    with pytest.raises(DataError, match="no 'timestamp' column"):
        collect_window(
            out, logs_uri=str(bare), ground_truth_uri=str(truth), window_end="2027-01-01"
        )
    assert not Path(out).exists()


def test_parse_time() -> None:
    assert parse_time("", "f") is None
    assert parse_time("2026-11-28T03:00:00", "f") == T0  # naive means UTC
    assert parse_time("2026-11-28T04:00:00+01:00", "f") == T0
