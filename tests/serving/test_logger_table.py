"""The Parquet table the logger writes from row blocks, and the drift it feeds, in process."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.exposition import generate_latest

from kfloop.serving.drift import DriftMonitor
from kfloop.serving.events import RowBlock, block_rows
from kfloop.serving.logger import LoggerConfig, PayloadLogger, _row_ids

PROFILE = {
    "numeric": {"age": {"edges": [0.0, 30.0, 60.0, 120.0], "frequencies": [0.3, 0.4, 0.3]}},
    "categorical": {"country": {"frequencies": {"DE": 0.5, "FR": 0.3, "__other__": 0.2}}},
    "prediction": {"edges": [0.0, 0.5, 1.0], "frequencies": [0.5, 0.5]},
}
T0 = 1_790_000_000_000_000  # epoch microseconds


def _logger(tmp_path: Path) -> PayloadLogger:
    return PayloadLogger(LoggerConfig("m", "v1", str(tmp_path)), PROFILE, ["age", "country"])


def _blocks() -> list[RowBlock]:
    return [
        RowBlock("a", T0, "default", 1, [[31.0], ["DE"]], [0.1]),
        RowBlock(
            "b", T0 + 1, "canary", 3, [[1.0, None, 3.0], ["FR", None, "XX"]], [0.2, None, 0.4]
        ),
        RowBlock("c", T0 + 2, None, 1, [[None], [None]], None),  # request without response
        RowBlock("d", T0 + 3, "default", 2, None, [0.7, 0.8]),  # response without request
        RowBlock("e", T0 + 4, "default", 1, [[50.0], ["FR"]], [0.9]),
    ]


def test_table_holds_every_row_of_every_block_in_order(tmp_path: Path) -> None:
    logger = _logger(tmp_path)
    blocks = _blocks()
    table = logger.to_table(blocks)
    expected = [
        {
            "request_id": r.request_id,
            "model_name": "m",
            "model_version": "v1",
            "timestamp": datetime.fromtimestamp(r.timestamp_us / 1e6, tz=UTC),
            "endpoint": r.endpoint,
            "age": None if r.features is None else r.features[0],
            "country": None if r.features is None else r.features[1],
            "prediction": r.prediction,
        }
        for r in block_rows(blocks)
    ]
    assert table.schema == logger.target.arrow_schema  # type: ignore[union-attr]
    assert table.to_pylist() == expected
    assert table.column("request_id").to_pylist() == [
        "a", "b:0", "b:1", "b:2", "c", "d:0", "d:1", "e",
    ]  # fmt: skip
    one_endpoint = logger.to_table([blocks[0], blocks[4]])
    assert one_endpoint.column("endpoint").to_pylist() == ["default", "default"]
    big = RowBlock("z", T0, "default", 5000, [[1.0] * 5000, ["DE"] * 5000], [0.5] * 5000)
    assert logger.to_table([big]).column("request_id").to_pylist()[-2:] == ["z:4998", "z:4999"]


def test_drift_and_prediction_histogram_see_the_blocks(tmp_path: Path) -> None:
    logger = _logger(tmp_path)
    target = logger.target
    assert target is not None
    target.drift_blocks = _blocks()
    logger.update_drift()
    age, country = target.drift.windows["age"], target.drift.windows["country"]
    # rows with features: a, b (3), c, e = 6; the orphan response has none
    assert (age.rows, country.rows) == (6, 6)
    assert np.isclose(logger.drift.feature_drift()["age"].missing_rate, 2 / 6)
    assert target.drift.prediction_window.rows == 8  # every row, null predictions missing
    exposition = generate_latest(logger.metrics.registry).decode()
    assert 'kfloop_prediction_count{model="m",version="v1"} 6.0' in exposition
    assert 'kfloop_prediction_bucket{le="0.5",model="m",version="v1"} 3.0' in exposition


def test_a_window_smaller_than_the_new_rows_holds_what_adding_every_row_gives(
    tmp_path: Path,
) -> None:
    """Only the newest blocks' features are binned when more rows arrive than the window
    holds; the window (and the drift it gives) is the one adding every row would give."""
    logger = PayloadLogger(
        LoggerConfig("m", "v1", str(tmp_path), window_rows=4, drift_every_rows=4),
        PROFILE,
        ["age", "country"],
    )
    target = logger.target
    assert target is not None
    blocks = _blocks()
    target.drift_blocks = blocks
    logger.update_drift()

    every = DriftMonitor(PROFILE, 4)
    with_features = [b for b in blocks if b.columns is not None]
    every.add_columns(
        {
            "age": [v for b in with_features for v in b.feature(0)],
            "country": [v for b in with_features for v in b.feature(1)],
        },
        np.array([v for b in blocks for v in b.prediction_values()], dtype=np.float64),
    )
    assert logger.drift.feature_drift() == every.feature_drift()
    assert logger.drift.feature_drift()["age"].rows == 4
    assert logger.drift.prediction_drift() == every.prediction_drift()
    exposition = generate_latest(logger.metrics.registry).decode()
    assert 'kfloop_prediction_count{model="m",version="v1"} 6.0' in exposition  # every row


def _numbered(blocks: list[RowBlock], k: int) -> list[RowBlock]:
    return [
        RowBlock(f"{b.request_id}{k}", b.timestamp_us, b.endpoint, b.n, b.columns, b.predictions)
        for b in blocks
    ]


def test_rows_between_rate_limited_drift_updates_are_let_go_without_changing_the_result(
    tmp_path: Path,
) -> None:
    """With updates at most every ``drift_min_seconds``, the rows that arrive in between are
    trimmed to what the next update bins; it publishes what updating on every row count
    gives, and the histogram still counts every prediction once."""
    kwargs = {"window_rows": 4, "drift_every_rows": 2, "flush_rows": 1_000}
    limited = PayloadLogger(
        LoggerConfig("m", "v1", str(tmp_path), drift_min_seconds=3600, **kwargs),  # type: ignore[arg-type]
        PROFILE,
        ["age", "country"],
    )
    every = PayloadLogger(
        LoggerConfig("m", "v1", str(tmp_path), drift_min_seconds=0, **kwargs),  # type: ignore[arg-type]
        PROFILE,
        ["age", "country"],
    )
    held = []
    for k in range(40):
        for block in _numbered(_blocks(), k):
            for logger in (limited, every):
                assert logger.target is not None
                logger._add_blocks(logger.target, [block])
            assert limited.target is not None
            held.append(limited.target.drift_rows)
    assert max(held) <= 2 * 4 + 2 + 3  # bounded: trimmed, never the 320 rows sent
    assert limited.target is not None and limited.target.drift_rows > 0  # not published yet
    limited.update_drift()
    every.update_drift()
    assert limited.drift.feature_drift() == every.drift.feature_drift()
    assert limited.drift.prediction_drift() == every.drift.prediction_drift()
    counts = [
        line
        for logger in (limited, every)
        for line in generate_latest(logger.metrics.registry).decode().splitlines()
        if line.startswith("kfloop_prediction_count")
    ]
    assert counts == ['kfloop_prediction_count{model="m",version="v1"} 240.0'] * 2


@pytest.mark.parametrize("rid", ["5f0c2a4e-8a53-4f7e-9f1e-0d6c1f0b9a77", "ünï-ç", "x"])
def test_batch_ids_are_the_id_and_the_row_whatever_the_batch_sizes(rid: str) -> None:
    """The ids of a flush's blocks, made by one gather per block from a cached layout per id
    length: batches of any size (below, at and past the layouts' sizes) in one column."""
    counts = [1, 2, 17, 1024, 1, 1025, 3000, 5]
    ids = [f"{rid}-{k}" for k in range(len(counts))]
    column = _row_ids(ids, counts)
    column.validate(full=True)
    expected = [
        i if n == 1 else f"{i}:{row}" for i, n in zip(ids, counts, strict=True) for row in range(n)
    ]
    assert column.to_pylist() == expected
