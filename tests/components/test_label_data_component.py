"""label_data under kfp.local in both modes; feedback mode reads logs and ground truth from S3."""

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kfp import dsl
from kfp.dsl import Dataset, Markdown

from components.label_data.component import label_data
from kfloop.core.objectstore import ObjectStore, sha256_file

T0 = datetime(2024, 5, 1, 12, 0, 0)


class LabelOutputs(NamedTuple):
    labeled: Dataset
    report: Markdown
    rows: int


@dsl.pipeline(name="label-rules-test")
def rules_pipeline(dataset_uri: str, config: dict) -> LabelOutputs:  # type: ignore[type-arg]
    source = dsl.importer(artifact_uri=dataset_uri, artifact_class=Dataset)
    task = label_data(dataset=source.output, mode="rules", config=config)
    return LabelOutputs(
        labeled=task.outputs["labeled"], report=task.outputs["report"], rows=task.outputs["Output"]
    )


@dsl.pipeline(name="label-feedback-test")
def feedback_pipeline(
    logs_uri: str,
    ground_truth_uri: str,
    config: dict,  # type: ignore[type-arg]
    unused_dataset_uri: str,
) -> LabelOutputs:
    # kfp.local 2.13 fails with KeyError when an optional input artifact is omitted, so the
    # feedback runs hand the component a placeholder dataset, which feedback mode ignores.
    placeholder = dsl.importer(artifact_uri=unused_dataset_uri, artifact_class=Dataset)
    task = label_data(
        dataset=placeholder.output,
        mode="feedback",
        config=config,
        logs_uri=logs_uri,
        ground_truth_uri=ground_truth_uri,
    )
    return LabelOutputs(
        labeled=task.outputs["labeled"], report=task.outputs["report"], rows=task.outputs["Output"]
    )


RULES: dict[str, Any] = {
    "label_column": "label",
    "rules": [
        {
            "when": [
                {"column": "income", "op": "<", "value": 20000},
                {"column": "plan", "op": "in", "value": ["basic"]},
            ],
            "label": 1,
        }
    ],
    "default": 0,
}


def test_label_data_component_rules_mode(kfp_local: Path, tmp_path: Path) -> None:
    source = tmp_path / "dataset"
    table = pa.table(
        {"income": [10_000, 50_000, 15_000, 8_000], "plan": ["basic", "basic", "pro", "basic"]}
    )
    pq.write_table(table, source)

    task = rules_pipeline(dataset_uri=str(source), config=RULES)

    labeled = task.outputs["labeled"]
    out = pq.read_table(labeled.path)
    assert out["label"].to_pylist() == [1, 0, 0, 1]
    assert task.outputs["rows"] == 4
    meta = labeled.metadata
    assert meta["rows"] == 4 and meta["columns"] == 3
    assert meta["sha256"] == sha256_file(labeled.path)
    assert meta["mode"] == "rules" and meta["label_column"] == "label"
    assert meta["class_balance"] == {"0": 2, "1": 2}
    assert (meta["labeled"], meta["unlabeled"]) == (4, 0)
    json.dumps(meta)
    report = Path(task.outputs["report"].path).read_text()
    assert report.startswith("# Labeling report (rules mode)")
    assert "| 0 | income < 20000 and plan in ['basic'] | 1 | 2 |" in report


def test_label_data_component_rules_mode_single_class_fails_without_output(
    kfp_local: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "dataset.parquet"
    pq.write_table(pa.table({"income": [50_000] * 3, "plan": ["pro"] * 3}), source)
    with pytest.raises(RuntimeError, match="FAILURE"):
        rules_pipeline(dataset_uri=str(source), config=RULES)
    assert "only one class: 0 (3 rows)" in capfd.readouterr().out
    assert not [p for p in kfp_local.rglob("labeled*") if p.is_file()]


def upload_logs(store: ObjectStore, tmp_path: Path, bucket: str) -> tuple[str, str]:
    """Two payload-logger files (one retried request) and a ground-truth CSV, on S3."""

    def logs(ids: list[str], start: int) -> pa.Table:
        n = len(ids)
        return pa.table(
            {
                "request_id": ids,
                "model_name": ["churn"] * n,
                "model_version": ["7"] * n,
                "timestamp": [T0 + timedelta(seconds=start + i) for i in range(n)],
                "income": [float(start + i) for i in range(n)],
                "plan": ["basic"] * n,
                "prediction": [0.25] * n,
            }
        )

    folder = tmp_path / "logs"
    folder.mkdir()
    pq.write_table(logs(["a", "b", "c"], 0), folder / "0001.parquet")
    pq.write_table(logs(["d", "b"], 10), folder / "0002.parquet")
    store.put_dir(folder, f"s3://{bucket}/payloads/churn/")
    truth = tmp_path / "truth.csv"
    truth.write_text("request_id,churned\na,0\nb,1\nd,1\nz,0\n")
    store.put_file(truth, f"s3://{bucket}/truth/churned.csv")
    return f"s3://{bucket}/payloads/churn/", f"s3://{bucket}/truth/churned.csv"


def test_label_data_component_feedback_mode_from_s3(
    kfp_local: Path, tmp_path: Path, store: ObjectStore, bucket: str
) -> None:
    logs_uri, truth_uri = upload_logs(store, tmp_path, bucket)
    config = {"label_column": "churned", "keep_prediction": True, "unlabeled": "keep"}

    task = feedback_pipeline(
        logs_uri=logs_uri,
        ground_truth_uri=truth_uri,
        config=config,
        unused_dataset_uri=str(tmp_path / "unused"),
    )

    labeled = task.outputs["labeled"]
    out = pq.read_table(labeled.path)
    assert out.column_names == ["request_id", "income", "plan", "logged_prediction", "churned"]
    assert out["request_id"].to_pylist() == ["a", "b", "c", "d"]
    assert out["income"].to_pylist() == [0.0, 1.0, 2.0, 10.0]
    assert out["churned"].to_pylist() == [0, 1, None, 1]
    assert task.outputs["rows"] == 4
    meta = labeled.metadata
    assert meta["mode"] == "feedback" and meta["label_column"] == "churned"
    assert (meta["labeled"], meta["unlabeled"], meta["unlabeled_dropped"]) == (3, 1, 0)
    assert (meta["duplicate_requests"], meta["orphans"]) == (1, 1)
    assert meta["class_balance"] == {"0": 1, "1": 2}
    assert meta["sha256"] == sha256_file(labeled.path)
    report = Path(task.outputs["report"].path).read_text()
    assert "# Labeling report (feedback mode)" in report
    assert "| duplicate requests (retries, written once) | 1 |" in report


def test_label_data_component_feedback_mode_no_logs_fails(
    kfp_local: Path,
    tmp_path: Path,
    store: ObjectStore,
    bucket: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    _, truth_uri = upload_logs(store, tmp_path, bucket)
    with pytest.raises(RuntimeError, match="FAILURE"):
        feedback_pipeline(
            logs_uri=f"s3://{bucket}/payloads/other-model/",
            ground_truth_uri=truth_uri,
            config={},
            unused_dataset_uri=str(tmp_path / "unused"),
        )
    assert f"no Parquet files under s3://{bucket}/payloads/other-model/" in capfd.readouterr().out
    assert not [p for p in kfp_local.rglob("labeled*") if p.is_file()]
