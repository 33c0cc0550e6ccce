"""clean_data under kfp.local: a real subprocess run of the component, results checked."""

import json
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kfp import dsl
from kfp.dsl import Dataset, Markdown

from components.clean_data.component import clean_data
from kfloop.core.objectstore import sha256_file

NAN = float("nan")


class CleanOutputs(NamedTuple):
    cleaned: Dataset
    report: Markdown
    rows: int


@dsl.pipeline(name="clean-data-test")
def clean_pipeline(dataset_uri: str, config: dict) -> CleanOutputs:  # type: ignore[type-arg]
    source = dsl.importer(artifact_uri=dataset_uri, artifact_class=Dataset)
    task = clean_data(dataset=source.output, config=config)
    return CleanOutputs(
        cleaned=task.outputs["cleaned"], report=task.outputs["report"], rows=task.outputs["Output"]
    )


def raw_table() -> pa.Table:
    return pa.table(
        {
            "id": [1, 2, 2, 3, 4, 5],
            "income": ["1000", "2000", "2000", "n/a", "", "900000"],
            "plan": [" Basic", "PRO", "PRO", "pro ", None, "basic"],
            "label": [0, 1, 1, 0, 1, None],
        }
    )


CONFIG: dict[str, Any] = {
    "normalize_strings": {"plan": {"trim": True, "case": "lower"}},
    "coerce": {"income": {"type": "float64", "on_error": "null"}},
    "deduplicate": {"subset": ["id"]},
    "drop_rows_with_missing": ["label"],
    "clip_outliers": {"income": {"method": "range", "min": 0, "max": 100000}},
    "impute": {"income": {"strategy": "mean"}, "plan": {"strategy": "mode"}},
}


def test_clean_data_component_cleans_and_reports(kfp_local: Path, tmp_path: Path) -> None:
    source = tmp_path / "dataset"  # like ingest_data's output: one Parquet file, no suffix
    pq.write_table(raw_table(), source)

    task = clean_pipeline(dataset_uri=str(source), config=CONFIG)

    cleaned = task.outputs["cleaned"]
    table = pq.read_table(cleaned.path)
    assert table.column_names == ["id", "income", "plan", "label"]
    assert table["id"].to_pylist() == [1, 2, 3, 4]
    # incomes 1000, 2000, null (n/a), null (blank) -> mean 1500
    assert table["income"].to_pylist() == [1000.0, 2000.0, 1500.0, 1500.0]
    assert table["plan"].to_pylist() == ["basic", "pro", "pro", "pro"]
    assert task.outputs["rows"] == 4

    meta = cleaned.metadata
    assert meta["rows"] == 4 and meta["columns"] == 4
    assert meta["sha256"] == sha256_file(cleaned.path)
    assert meta["rows_in"] == 6 and meta["rows_dropped"] == 2
    assert meta["rows_dropped_by_rule"] == {"deduplicate": 1, "drop_rows_with_missing": 1}
    assert meta["fitted"] == {"income": 1500.0, "plan": "pro"}
    json.dumps(meta)

    report = Path(task.outputs["report"].path).read_text()
    assert report.startswith("# Data cleaning report")
    assert "| 6 | 4 | 2 | 4 | 4 |" in report
    assert "| income | string | double | null | 4 | 1 | 1 | 1 | 0 |" in report
    assert "| income | mean | 1500 | data | 2 |" in report


def test_clean_data_component_reuses_fitted_values(kfp_local: Path, tmp_path: Path) -> None:
    source = tmp_path / "serving.parquet"
    pq.write_table(pa.table({"income": [None, 7.0], "plan": ["x", None]}), source)
    config = {
        "impute": {"income": {"strategy": "mean"}, "plan": {"strategy": "mode"}},
        "fitted": {"income": 1500.0, "plan": "pro"},
    }
    task = clean_pipeline(dataset_uri=str(source), config=config)
    table = pq.read_table(task.outputs["cleaned"].path)
    assert table.to_pydict() == {"income": [1500.0, 7.0], "plan": ["x", "pro"]}


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"impute": {"incme": {"strategy": "mean"}}}, "config.impute.incme"),
        ({"impute": {"plan": {"strategy": "mean"}}}, "config.impute.plan.strategy"),
        ({"coerce": {"income": {"type": "int64", "on_error": "fail"}}}, "'n/a' at row 3"),
    ],
)
def test_clean_data_component_fails_on_bad_config_without_output(
    kfp_local: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    config: dict[str, Any],
    words: str,
) -> None:
    source = tmp_path / "dataset.parquet"
    pq.write_table(raw_table(), source)
    with pytest.raises(RuntimeError, match="FAILURE"):
        clean_pipeline(dataset_uri=str(source), config=config)
    logged = capfd.readouterr().out
    assert words in logged
    assert not [p for p in kfp_local.rglob("cleaned*") if p.is_file()]
    assert not [p for p in kfp_local.rglob("*.parquet")]
