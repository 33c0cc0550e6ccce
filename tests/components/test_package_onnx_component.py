"""The package_onnx component under kfp.local: convert, check parity, publish when released."""

import json
import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
import pytest
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Markdown, Model

from components.package_onnx.component import package_onnx
from kfloop.core.objectstore import ObjectStore, S3Uri
from kfloop.core.settings import Settings
from kfloop.model.features import table_to_inputs
from kfloop.model.predict import load_trained_model
from kfloop.model.train import TrainResult, train_model
from tests.model.model_data import FAST_HP, make_splits, make_table


class PackageOutputs(NamedTuple):
    onnx_model: Model
    model_card: Markdown
    uri: str


@dsl.pipeline(name="package-onnx-released")
def released_pipeline(
    model_uri: str, test_uri: str, blessing_uri: str, acceptance_uri: str, model_name: str
) -> PackageOutputs:
    model = dsl.importer(artifact_uri=model_uri, artifact_class=Model, reimport=False)
    test = dsl.importer(artifact_uri=test_uri, artifact_class=Dataset, reimport=False)
    blessing = dsl.importer(artifact_uri=blessing_uri, artifact_class=Artifact, reimport=False)
    acceptance = dsl.importer(artifact_uri=acceptance_uri, artifact_class=Artifact, reimport=False)
    task = package_onnx(
        model=model.output,
        test=test.output,
        blessing=blessing.output,
        acceptance=acceptance.output,
        model_name=model_name,
        version="v1",
        metrics={"auc": 0.9},
        lineage={"pipeline_run_id": "run-1"},
    )
    return PackageOutputs(
        task.outputs["onnx_model"], task.outputs["model_card"], task.outputs["Output"]
    )


@dsl.pipeline(name="package-onnx-not-released")
def unreleased_pipeline(
    model_uri: str, test_uri: str, acceptance_uri: str, model_name: str
) -> PackageOutputs:
    model = dsl.importer(artifact_uri=model_uri, artifact_class=Model, reimport=False)
    test = dsl.importer(artifact_uri=test_uri, artifact_class=Dataset, reimport=False)
    acceptance = dsl.importer(artifact_uri=acceptance_uri, artifact_class=Artifact, reimport=False)
    task = package_onnx(  # no blessing input at all
        model=model.output, test=test.output, acceptance=acceptance.output, model_name=model_name
    )
    return PackageOutputs(
        task.outputs["onnx_model"], task.outputs["model_card"], task.outputs["Output"]
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Path]:
    splits = make_splits(tmp_path_factory.mktemp("splits"), sizes=(500, 150, 100))
    result = train_model(
        splits["train"],
        splits["validation"],
        tmp_path_factory.mktemp("models") / "model",
        label="label",
        hyperparameters=FAST_HP,
        epochs=3,
        exclude=["id"],
    )
    return result, splits["test"]


def _gate(path: Path, **content: object) -> str:
    path.write_text(json.dumps(content))
    return str(path)


def test_package_onnx_component_publishes_a_released_model(
    kfp_local: Path,
    tmp_path: Path,
    trained: tuple[TrainResult, Path],
    settings: Settings,
    store: ObjectStore,
) -> None:
    result, test = trained
    name = f"churn-{random.randrange(16**6):06x}"
    run = released_pipeline(
        model_uri=result.model_dir,
        test_uri=str(test),
        blessing_uri=_gate(tmp_path / "blessing.json", blessed=True, reasons=[]),
        acceptance_uri=_gate(tmp_path / "acceptance.json", passed=True),
        model_name=name,
    )
    uri = run.outputs["uri"]
    assert uri == f"s3://{settings.models_bucket}/{name}/v1/"
    keys = sorted(o.uri.key for o in store.list_objects(S3Uri.parse(uri)))
    assert keys == [
        f"{name}/v1/{f}"
        for f in (
            "MODEL_CARD.md",
            "metadata.json",
            "model.onnx",
            "reference_profile.json",
            f"triton/{name}/1/model.onnx",
        )
    ]
    published = json.loads(store.get_bytes(f"{uri}metadata.json"))
    assert published["release"]["publish"] is True
    assert published["lineage"]["pipeline_run_id"] == "run-1"
    assert published["metrics"] == {"auc": 0.9}

    onnx_model = run.outputs["onnx_model"]
    folder = Path(onnx_model.path)
    assert onnx_model.metadata["published_uri"] == uri
    assert onnx_model.metadata["parity_max_abs_diff"] <= 1e-5
    assert onnx_model.metadata["inputs"] == ["x1", "x2", "color", "city", "flag"]
    card = Path(run.outputs["model_card"].path).read_text()
    assert card == (folder / "MODEL_CARD.md").read_text()
    assert f"published to {uri}" in card

    # The packaged file serves raw rows, unseen categories and NaN included, like Keras.
    keras_model = load_trained_model(result.model_dir)
    raw = table_to_inputs(make_table(10, seed=4), keras_model.spec)
    raw["color"][0, 0] = "never-seen"
    raw["x1"][1, 0] = np.nan
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["prediction"], raw)[0].reshape(-1)
    assert np.max(np.abs(got - keras_model.predict_inputs(raw))) <= 1e-5


def test_package_onnx_component_does_not_publish_without_release(
    kfp_local: Path,
    tmp_path: Path,
    trained: tuple[TrainResult, Path],
    settings: Settings,
    store: ObjectStore,
) -> None:
    result, test = trained
    name = f"churn-{random.randrange(16**6):06x}"
    run = unreleased_pipeline(
        model_uri=result.model_dir,
        test_uri=str(test),
        acceptance_uri=_gate(
            tmp_path / "acceptance.json", passed=False, reasons=["latency_ms_p95 12 > 5"]
        ),
        model_name=name,
    )
    assert run.outputs["uri"] == ""
    store.ensure_bucket(settings.models_bucket)
    assert list(store.list_objects(S3Uri(settings.models_bucket, f"{name}/"))) == []
    onnx_model = run.outputs["onnx_model"]
    assert (Path(onnx_model.path) / "model.onnx").is_file()  # still converted and checked
    reasons = onnx_model.metadata["not_published_because"]
    assert any("no blessing" in r for r in reasons)
    assert any("latency_ms_p95 12 > 5" in r for r in reasons)
    card = Path(run.outputs["model_card"].path).read_text()
    assert "not published" in card and "latency_ms_p95 12 > 5" in card and "no blessing" in card
