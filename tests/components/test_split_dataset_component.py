"""The split_dataset component under kfp.local: three folder-shaped Dataset artifacts."""

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kfp import dsl
from kfp.dsl import Dataset

from components.split_dataset.component import split_dataset
from kfloop.core.arrowio import write_parquet
from kfloop.core.objectstore import sha256_file
from kfloop.data.split import SPLITS, split_artifact_parquet, split_artifact_tfrecords
from kfloop.data.tfrecord import example_feature_types, read_tfrecord_table


def demo_table(rows: int) -> pa.Table:
    rng = np.random.default_rng(7)
    return pa.table(
        {
            "id": np.arange(rows, dtype=np.int64),
            "amount": rng.normal(100, 20, rows),
            "colour": pa.array(rng.choice(["red", "green", "blue"], rows)),
            "active": rng.random(rows) < 0.5,
            "event_time": pa.array(
                np.datetime64("2025-01-01T00:00:00", "us")
                + rng.integers(0, 10**12, rows).astype("timedelta64[us]")
            ),
            "label": (rng.random(rows) < 0.3).astype(np.int64),
        }
    )


class SplitOutputs(NamedTuple):
    train: Dataset
    validation: Dataset
    test: Dataset


@dsl.pipeline(name="split-dataset-test")
def split_pipeline(
    uri: str,
    method: str = "hash",
    stratify_column: str = "",
    time_column: str = "",
    train_ratio: float = 0.8,
    num_shards: int = 1,
) -> SplitOutputs:
    source = dsl.importer(artifact_uri=uri, artifact_class=Dataset, reimport=False)
    task = split_dataset(
        dataset=source.output,
        train_ratio=train_ratio,
        method=method,
        stratify_column=stratify_column,
        time_column=time_column,
        num_shards=num_shards,
    )
    return SplitOutputs(task.outputs["train"], task.outputs["validation"], task.outputs["test"])


def test_split_dataset_writes_three_split_artifacts(kfp_local: Path, tmp_path: Path) -> None:
    table = demo_table(600)
    source = tmp_path / "input.parquet"
    write_parquet(table, source)

    run = split_pipeline(uri=str(source), num_shards=2)

    ids: dict[str, set[int]] = {}
    total = 0
    for name in SPLITS:
        artifact = run.outputs[name]
        folder = Path(artifact.path)
        assert folder.is_dir()
        parquet = split_artifact_parquet(folder)
        assert parquet == str(folder / "data.parquet")
        part = pq.read_table(parquet)
        assert part.schema == table.schema
        ids[name] = set(part.column("id").to_pylist())
        total += part.num_rows
        meta = artifact.metadata
        assert meta["split"] == name
        assert meta["rows"] == part.num_rows
        assert meta["columns"] == table.num_columns
        assert meta["sha256"] == sha256_file(parquet)
        assert meta["method"] == "hash"
        assert meta["tfrecord_shards"] == [
            "tfrecord/part-00000-of-00002.tfrecord.gz",
            "tfrecord/part-00001-of-00002.tfrecord.gz",
        ]
        shards = split_artifact_tfrecords(folder)
        assert [str(Path(s).relative_to(folder)) for s in shards] == meta["tfrecord_shards"]
        decoded = read_tfrecord_table(shards, example_feature_types(table.schema))
        assert decoded.num_rows == part.num_rows
        assert [v[0] for v in decoded.column("id").to_pylist()] == part.column("id").to_pylist()
        assert [v[0] for v in decoded.column("colour").to_pylist()] == [
            s.encode() for s in part.column("colour").to_pylist()
        ]
        np.testing.assert_allclose(
            [v[0] for v in decoded.column("amount").to_pylist()],
            part.column("amount").to_numpy().astype(np.float32),
        )
    assert total == table.num_rows
    assert not ids["train"] & ids["validation"]
    assert not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    assert ids["train"] | ids["validation"] | ids["test"] == set(range(600))
    assert 420 <= len(ids["train"]) <= 540  # 80 % of 600, by hash


def test_split_dataset_bad_ratios_fail_and_leave_no_artifacts(
    kfp_local: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "input.parquet"
    write_parquet(demo_table(50), source)

    with pytest.raises(RuntimeError):
        split_pipeline(uri=str(source), train_ratio=0.9)

    logs = capfd.readouterr()
    assert "ratios" in logs.out + logs.err
    assert "0.9 + 0.1 + 0.1 = 1.1" in logs.out + logs.err
    leftovers = [
        p
        for p in kfp_local.rglob("*")
        if p.name in SPLITS or p.name == "data.parquet" or p.name.endswith(".part")
    ]
    assert leftovers == []
