"""generate_synthetic_data under kfp.local."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from components.generate_synthetic_data.component import generate_synthetic_data
from kfloop.core.objectstore import sha256_file
from kfloop.data.synth import generate_table


def test_generate_demo_data(kfp_local: Path) -> None:
    task = generate_synthetic_data(rows=2000, seed=7)
    assert task.outputs["Output"] == 2000
    dataset = task.outputs["dataset"]
    table = pq.read_table(dataset.path)
    assert table.equals(generate_table(2000, 7))  # same seed, same table as the library
    meta = dataset.metadata
    assert meta["rows"] == 2000 and meta["columns"] == 13
    assert meta["sha256"] == sha256_file(dataset.path)
    assert meta["seed"] == 7 and meta["drifted"] is False
    assert 0.1 < meta["positive_rate"] < 0.4


def test_generate_with_spec_and_drift(kfp_local: Path) -> None:
    spec = {
        "numeric": [{"name": "x", "mean": 0, "std": 1}],
        "categorical": [{"name": "c", "categories": ["a", "b"]}],
        "label": {"numeric_weights": {"x": 2.0}},
        "timestamp": False,  # KFP parameters cannot carry null
    }
    task = generate_synthetic_data(
        rows=500, seed=1, spec=spec, drift={"mean_shift_stds": {"x": 2.0}}
    )
    table = pq.read_table(task.outputs["dataset"].path)
    assert table.column_names == ["id", "x", "c", "label"]
    assert abs(sum(table.column("x").to_pylist()) / 500 - 2.0) < 0.2
    assert task.outputs["dataset"].metadata["drifted"] is True


def test_bad_spec_fails_the_task(kfp_local: Path) -> None:
    with pytest.raises(RuntimeError, match="FAILURE"):
        generate_synthetic_data(rows=10, spec={"numerics": []})
