"""The acceptance_test component under kfp.local: ONNX and Keras, pass and fail."""

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Markdown, Model
from sklearn.metrics import roc_auc_score

from components.acceptance_test.component import acceptance_test
from kfloop.model.package import decide_release
from kfloop.model.predict import load_trained_model
from tests.model.evaluation_data import shared_model, shared_onnx, shared_splits


class Outputs(NamedTuple):
    acceptance: Artifact
    report: Markdown
    passed: bool


@dsl.pipeline(name="acceptance-test-test")
def acceptance_pipeline(
    model_uri: str,
    test_uri: str,
    onnx_uri: str,
    objectives: dict,
    latency_samples: int = 50,
) -> Outputs:
    """The packaged ONNX model is connected: it is what is tested."""
    model = dsl.importer(artifact_uri=model_uri, artifact_class=Model, reimport=False)
    onnx = dsl.importer(artifact_uri=onnx_uri, artifact_class=Model, reimport=False)
    data = dsl.importer(artifact_uri=test_uri, artifact_class=Dataset, reimport=False)
    task = acceptance_test(
        model=model.output,
        test=data.output,
        onnx_model=onnx.output,
        objectives=objectives,
        latency_samples=latency_samples,
    )
    return Outputs(task.outputs["acceptance"], task.outputs["report"], task.outputs["Output"])


@dsl.pipeline(name="acceptance-test-keras-test")
def acceptance_keras_pipeline(
    model_uri: str, test_uri: str, objectives: dict, max_model_bytes: int, latency_samples: int
) -> Outputs:
    """No ONNX package: the optional onnx_model input is left out; the Keras model is tested."""
    model = dsl.importer(artifact_uri=model_uri, artifact_class=Model, reimport=False)
    data = dsl.importer(artifact_uri=test_uri, artifact_class=Dataset, reimport=False)
    task = acceptance_test(
        model=model.output,
        test=data.output,
        objectives=objectives,
        max_model_bytes=max_model_bytes,
        latency_samples=latency_samples,
    )
    return Outputs(task.outputs["acceptance"], task.outputs["report"], task.outputs["Output"])


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "test": shared_splits(tmp_path_factory)["test"],
        "model": shared_model(tmp_path_factory, "good"),
        "onnx": shared_onnx(tmp_path_factory),
    }


def test_onnx_model_is_optional_input(tmp_path: Path) -> None:
    from kfp import compiler

    out = tmp_path / "acceptance_test.yaml"
    compiler.Compiler().compile(acceptance_test, str(out))
    spec = yaml.safe_load(out.read_text())
    artifacts = spec["root"]["inputDefinitions"]["artifacts"]
    assert artifacts["onnx_model"].get("isOptional") is True
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["max_latency_ms_p95"]["defaultValue"] == 50.0
    assert params["max_model_bytes"]["parameterType"] == "NUMBER_INTEGER"


def test_packaged_onnx_model_passes(kfp_local: Path, packaged: dict[str, Path]) -> None:
    run = acceptance_pipeline(
        model_uri=str(packaged["model"]),
        test_uri=str(packaged["test"]),
        onnx_uri=str(packaged["onnx"]),
        objectives={"min": {"auc": 0.7}},
    )
    assert run.outputs["passed"] is True
    folder = Path(run.outputs["acceptance"].path)
    saved = json.loads((folder / "acceptance.json").read_text())
    assert saved["passed"] is True and saved["source"] == "onnx"
    assert saved["model_bytes"] == (packaged["onnx"] / "model.onnx").stat().st_size
    assert saved["latency"]["samples"] == 50
    table = pq.read_table(packaged["test"] / "data.parquet")
    y = np.asarray(table.column("label"))
    keras_auc = roc_auc_score(y, load_trained_model(packaged["model"]).predict_table(table))
    assert saved["metrics"]["auc"] == pytest.approx(keras_auc, abs=1e-4)
    meta = run.outputs["acceptance"].metadata
    assert meta["passed"] is True and meta["source"] == "onnx"
    assert meta["test_auc"] == pytest.approx(saved["metrics"]["auc"])
    assert meta["model_bytes"] == saved["model_bytes"]
    assert meta["latency_ms_p95"] == pytest.approx(saved["latency_ms"]["p95"])
    report = Path(run.outputs["report"].path).read_text()
    assert report == (folder / "acceptance.md").read_text()
    assert "# Acceptance test: PASSED" in report
    assert decide_release(None, folder).accepted


def test_keras_fallback_failing_is_a_result(kfp_local: Path, packaged: dict[str, Path]) -> None:
    run = acceptance_keras_pipeline(
        model_uri=str(packaged["model"]),
        test_uri=str(packaged["test"]),
        objectives={"min": {"auc": 0.999}},
        max_model_bytes=1000,
        latency_samples=10,
    )
    assert run.outputs["passed"] is False  # the step itself succeeded
    saved = json.loads((Path(run.outputs["acceptance"].path) / "acceptance.json").read_text())
    assert saved["source"] == "keras"
    assert saved["model_bytes"] == (packaged["model"] / "model.keras").stat().st_size
    assert len(saved["reasons"]) == 2
    assert saved["reasons"][0].endswith("< min 0.999")
    assert saved["reasons"][1] == f"model_bytes {saved['model_bytes']} > max 1000"
    assert run.outputs["acceptance"].metadata["passed"] is False
    assert "# Acceptance test: FAILED" in Path(run.outputs["report"].path).read_text()


def test_onnx_folder_without_metadata_fails_the_step(
    kfp_local: Path, packaged: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare-onnx"
    bare.mkdir()
    shutil.copy(packaged["onnx"] / "model.onnx", bare / "model.onnx")
    with pytest.raises(RuntimeError):
        acceptance_pipeline(
            model_uri=str(packaged["model"]),
            test_uri=str(packaged["test"]),
            onnx_uri=str(bare),
            objectives={},
        )
    logs = "".join(capfd.readouterr())
    assert "onnx_dir" in logs and "has no metadata.json" in logs
    assert not list(kfp_local.rglob("acceptance.json"))
