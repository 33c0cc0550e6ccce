"""The six data components chained in one pipeline under kfp.local, on real data.

ingest_data (CSV from the real SeaweedFS) -> validate_data -> clean_data -> label_data ->
split_dataset, and generate_synthetic_data with injected drift -> validate_data against the
first run's statistics (the retraining path's drift check).
"""

from pathlib import Path
from typing import NamedTuple

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset

from components.clean_data.component import clean_data
from components.generate_synthetic_data.component import generate_synthetic_data
from components.ingest_data.component import ingest_data
from components.label_data.component import label_data
from components.split_dataset.component import split_dataset
from components.validate_data.component import validate_data
from kfloop.core.objectstore import ObjectStore
from kfloop.data.split import split_artifact_parquet
from kfloop.data.synth import generate_table

ROWS = 3000


class ChainOutputs(NamedTuple):
    train: Dataset
    validation: Dataset
    test: Dataset
    statistics: Artifact
    drift_report: HTML
    drift_anomalies: int


@pytest.mark.slow
def test_data_components_chain(
    kfp_local: Path, store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    table = generate_table(rows=ROWS, seed=1)
    csv = tmp_path / "customers.csv"
    pacsv.write_csv(table, csv)
    source = f"s3://{bucket}/raw/customers.csv"
    store.put_file(csv, source)

    @dsl.pipeline
    def chain(source_uri: str) -> ChainOutputs:
        ingest = ingest_data(source_uri=source_uri)
        validate = validate_data(dataset=ingest.outputs["dataset"], drift_exclude=["id"])
        clean = clean_data(
            dataset=ingest.outputs["dataset"],
            config={
                "deduplicate": True,
                "impute": {"income": {"strategy": "median"}},
                "drop_rows_with_missing": ["label"],
            },
        )
        clean.after(validate)
        labeled = label_data(dataset=clean.outputs["cleaned"], config={"label_column": "label"})
        split = split_dataset(
            dataset=labeled.outputs["labeled"],
            train_ratio=0.7,
            validation_ratio=0.15,
            test_ratio=0.15,
            key_column="id",
        )
        drifted = generate_synthetic_data(
            rows=ROWS, seed=2, drift={"mean_shift_stds": {"income": 2.0}}
        )
        recheck = validate_data(
            dataset=drifted.outputs["dataset"],
            previous_statistics=validate.outputs["statistics"],
            drift_exclude=["id", "event_time"],
        )
        return ChainOutputs(
            train=split.outputs["train"],
            validation=split.outputs["validation"],
            test=split.outputs["test"],
            statistics=validate.outputs["statistics"],
            drift_report=recheck.outputs["report"],
            drift_anomalies=recheck.outputs["Output"],
        )

    outputs = chain(source_uri=source).outputs
    sizes = {}
    keys: list[set[int]] = []
    for name in ("train", "validation", "test"):
        artifact = outputs[name]
        part = pq.read_table(split_artifact_parquet(artifact.path))
        sizes[name] = part.num_rows
        keys.append(set(part.column("id").to_pylist()))
        assert artifact.metadata["rows"] == part.num_rows
        assert set(part.column("label").to_pylist()) == {0, 1}
    deduplicated = table.to_pandas().drop_duplicates().shape[0]
    assert sum(sizes.values()) == deduplicated
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert sizes["train"] > sizes["validation"] > 0 and sizes["test"] > 0
    # The drifted income shows up against the first run's statistics.
    assert outputs["drift_anomalies"] >= 1
    page = Path(outputs["drift_report"].path).read_text(encoding="utf-8")
    assert "income" in page
