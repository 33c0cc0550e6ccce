"""ingest_data under kfp.local: a CSV from a local path and from S3 (the session SeaweedFS)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from components.ingest_data.component import ingest_data
from kfloop.core.objectstore import ObjectStore, sha256_file

CSV = "id,amount,country\n1,10.5,DE\n2,,FR\n3,7.25,ES\n"


def test_ingest_local_csv(kfp_local: Path, tmp_path: Path) -> None:
    src = tmp_path / "raw.csv"
    src.write_text(CSV)
    task = ingest_data(source_uri=str(src), schema_hints={"id": "float64"})
    assert task.outputs["Output"] == 3
    dataset = task.outputs["dataset"]
    table = pq.read_table(dataset.path)
    assert table.to_pydict() == {
        "id": [1.0, 2.0, 3.0],
        "amount": [10.5, None, 7.25],
        "country": ["DE", "FR", "ES"],
    }
    assert dataset.metadata["rows"] == 3
    assert dataset.metadata["columns"] == 3
    assert dataset.metadata["sha256"] == sha256_file(dataset.path)
    assert dataset.metadata["sources"] == [str(src)]
    assert Path(dataset.path).is_relative_to(kfp_local)


def test_ingest_csv_from_s3_prefix(
    kfp_local: Path, store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    store.put_bytes(CSV.encode(), f"s3://{bucket}/landing/a.csv")
    store.put_bytes(b"id;amount;country\n4;1.5;IT\n", f"s3://{bucket}/landing/b.csv")
    # b.csv uses another delimiter: ingest it alone, with the right options
    task = ingest_data(source_uri=f"s3://{bucket}/landing/b.csv", delimiter=";")
    assert task.outputs["Output"] == 1
    assert pq.read_table(task.outputs["dataset"].path).column("country").to_pylist() == ["IT"]

    store.delete(f"s3://{bucket}/landing/b.csv")
    task = ingest_data(source_uri=f"s3://{bucket}/landing/")
    dataset = task.outputs["dataset"]
    assert task.outputs["Output"] == 3
    assert dataset.metadata["sources"] == [f"s3://{bucket}/landing/a.csv"]
    assert dataset.metadata["source_rows"] == {f"s3://{bucket}/landing/a.csv": 3}
    assert pq.read_table(dataset.path).num_rows == 3


def test_bad_input_fails_the_task(kfp_local: Path, tmp_path: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("a,b\n1,2\n3\n")
    with pytest.raises(RuntimeError, match="FAILURE"):
        ingest_data(source_uri=str(src))
