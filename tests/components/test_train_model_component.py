"""The train_model component under kfp.local: split folders in, a trained-model folder out."""

import json
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pytest
from kfp import dsl
from kfp.dsl import Dataset, Metrics, Model

from components.train_model.component import train_model
from kfloop.model.predict import load_trained_model
from tests.model.model_data import FAST_HP, make_splits, make_table, write_split


class TrainOutputs(NamedTuple):
    model: Model
    metrics: Metrics
    best_val_loss: float


@dsl.pipeline(name="train-model-test")
def train_pipeline(
    train_uri: str,
    validation_uri: str,
    label: str = "label",
    hyperparameters: dict = {},  # noqa: B006
) -> TrainOutputs:
    train = dsl.importer(artifact_uri=train_uri, artifact_class=Dataset, reimport=False)
    validation = dsl.importer(artifact_uri=validation_uri, artifact_class=Dataset, reimport=False)
    task = train_model(
        train=train.output,
        validation=validation.output,
        label=label,
        hyperparameters=hyperparameters,
        seed=3,
        exclude=["id"],
    )
    return TrainOutputs(task.outputs["model"], task.outputs["metrics"], task.outputs["Output"])


def test_train_model_component_writes_model_folder_and_metrics(
    kfp_local: Path, tmp_path: Path
) -> None:
    splits = make_splits(tmp_path / "splits", sizes=(500, 200, 10))
    run = train_pipeline(
        train_uri=str(splits["train"]),
        validation_uri=str(splits["validation"]),
        hyperparameters={**FAST_HP, "epochs": 4},
    )
    model = run.outputs["model"]
    folder = Path(model.path)
    assert {p.name for p in folder.iterdir()} == {
        "model.keras",
        "core.keras",
        "feature_spec.json",
        "reference_profile.json",
        "training.json",
    }
    training = json.loads((folder / "training.json").read_text())
    assert training["seed"] == 3 and training["excluded"] == ["id"]
    assert run.outputs["best_val_loss"] == pytest.approx(training["best_val_loss"])
    assert model.metadata["task"] == "binary_classification"
    assert model.metadata["features"] == ["x1", "x2", "color", "city", "flag"]
    assert model.metadata["train_rows"] == 500 and model.metadata["validation_rows"] == 200
    assert len(model.metadata["train_sha256"]) == 64
    metrics = run.outputs["metrics"].metadata
    assert metrics["validation_auc"] > 0.7
    assert {"train_loss", "validation_loss", "best_epoch", "epochs_run"} <= set(metrics)
    predictions = load_trained_model(folder).predict_table(make_table(20, seed=8))
    assert predictions.shape == (20,)


def test_train_model_component_fails_naming_a_missing_label(
    kfp_local: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    table = make_table(100)
    train = write_split(table, tmp_path / "train")
    validation = write_split(table.slice(0, 30), tmp_path / "validation")
    with pytest.raises(RuntimeError):
        train_pipeline(train_uri=str(train), validation_uri=str(validation), label="target")
    log = capfd.readouterr()
    text = log.out + log.err
    assert "ConfigError" in text and "label: column 'target'" in text
    assert "id, x1, x2, color, city, flag, event_time, label" in text
    outputs = list(kfp_local.rglob("training.json"))
    assert outputs == []


def test_train_model_component_fails_on_a_single_class(
    kfp_local: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    table = make_table(100)
    ones = pa.array([1] * 100, type=pa.int64())
    table = table.set_column(table.schema.get_field_index("label"), "label", ones)
    train = write_split(table, tmp_path / "train")
    validation = write_split(table.slice(0, 30), tmp_path / "validation")
    with pytest.raises(RuntimeError):
        train_pipeline(train_uri=str(train), validation_uri=str(validation))
    text = "".join(capfd.readouterr())
    assert "DataError" in text and "only class 1" in text
    assert list(kfp_local.rglob("model.keras")) == []
