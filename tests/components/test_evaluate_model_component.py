"""The evaluate_model component under kfp.local: blessing folder, KFP metrics, report."""

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Markdown, Metrics, Model
from sklearn.metrics import roc_auc_score

from components.evaluate_model.component import evaluate_model
from kfloop.model.predict import load_trained_model
from tests.model.evaluation_data import shared_model, shared_splits


class Outputs(NamedTuple):
    blessing: Artifact
    metrics: Metrics
    classification_metrics: ClassificationMetrics
    report: Markdown
    blessed: bool


def _outputs(task: dsl.PipelineTask) -> Outputs:
    return Outputs(
        task.outputs["blessing"],
        task.outputs["metrics"],
        task.outputs["classification_metrics"],
        task.outputs["report"],
        task.outputs["Output"],
    )


@dsl.pipeline(name="evaluate-model-test")
def evaluate_pipeline(
    model_uri: str, validation_uri: str, objectives: dict, slice_feature: str = ""
) -> Outputs:
    """No production model yet: the optional baseline_model input is left out."""
    model = dsl.importer(artifact_uri=model_uri, artifact_class=Model, reimport=False)
    data = dsl.importer(artifact_uri=validation_uri, artifact_class=Dataset, reimport=False)
    task = evaluate_model(
        model=model.output,
        validation=data.output,
        objectives=objectives,
        slice_feature=slice_feature,
    )
    return _outputs(task)


@dsl.pipeline(name="evaluate-model-baseline-test")
def evaluate_with_baseline_pipeline(
    model_uri: str, validation_uri: str, baseline_uri: str, objectives: dict
) -> Outputs:
    """Champion/challenger: the production model is connected as baseline_model."""
    model = dsl.importer(artifact_uri=model_uri, artifact_class=Model, reimport=False)
    baseline = dsl.importer(artifact_uri=baseline_uri, artifact_class=Model, reimport=False)
    data = dsl.importer(artifact_uri=validation_uri, artifact_class=Dataset, reimport=False)
    task = evaluate_model(
        model=model.output,
        validation=data.output,
        baseline_model=baseline.output,
        objectives=objectives,
        threshold=0.4,
    )
    return _outputs(task)


def test_baseline_model_is_an_optional_input(tmp_path: Path) -> None:
    """The production model may be left out (a first deployment)."""
    from kfp import compiler

    out = tmp_path / "evaluate_model.yaml"
    compiler.Compiler().compile(evaluate_model, str(out))
    spec = yaml.safe_load(out.read_text())
    artifacts = spec["root"]["inputDefinitions"]["artifacts"]
    assert artifacts["baseline_model"].get("isOptional") is True
    assert not artifacts["model"].get("isOptional", False)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "validation": shared_splits(tmp_path_factory)["validation"],
        "good": shared_model(tmp_path_factory, "good"),
        "weak": shared_model(tmp_path_factory, "weak"),
        "reg_validation": shared_splits(tmp_path_factory, "reg")["validation"],
        "reg": shared_model(tmp_path_factory, "reg"),
    }


def test_blessed_classifier(kfp_local: Path, models: dict[str, Path]) -> None:
    run = evaluate_pipeline(
        model_uri=str(models["good"]),
        validation_uri=str(models["validation"]),
        objectives={"min": {"auc": 0.7}},
        slice_feature="color",
    )
    assert run.outputs["blessed"] is True
    folder = Path(run.outputs["blessing"].path)
    blessing = json.loads((folder / "blessing.json").read_text())
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert blessing["blessed"] is True and blessing["reasons"] == []
    assert run.outputs["blessing"].metadata["blessed"] is True
    assert run.outputs["blessing"].metadata["has_baseline"] is False

    table = pq.read_table(models["validation"] / "data.parquet")
    y = np.asarray(table.column("label"))
    p = load_trained_model(models["good"]).predict_table(table)
    auc = roc_auc_score(y, p)
    metrics = run.outputs["metrics"].metadata
    assert metrics["auc"] == pytest.approx(auc)
    assert metrics["blessed"] == 1.0
    assert blessing["metrics"]["auc"] == pytest.approx(auc)
    assert json.loads(Path(run.outputs["metrics"].path).read_text())["auc"] == pytest.approx(auc)

    cls = run.outputs["classification_metrics"].metadata
    points = cls["confidenceMetrics"]
    assert 2 <= len(points) <= 200
    assert {"falsePositiveRate", "recall", "confidenceThreshold"} <= set(points[0])
    matrix = cls["confusionMatrix"]
    assert [c["displayName"] for c in matrix["annotationSpecs"]] == ["0", "1"]
    assert [r["row"] for r in matrix["rows"]] == evaluation["confusion_matrix"]
    assert sum(sum(r["row"]) for r in matrix["rows"]) == table.num_rows
    assert {s["value"] for s in evaluation["slices"]} >= {"red", "green", "__missing__"}
    report = Path(run.outputs["report"].path).read_text()
    assert "# Model evaluation: BLESSED" in report and "Slices by `color`" in report


def test_challenger_worse_than_production_is_not_blessed(
    kfp_local: Path, models: dict[str, Path]
) -> None:
    run = evaluate_with_baseline_pipeline(
        model_uri=str(models["weak"]),
        validation_uri=str(models["validation"]),
        baseline_uri=str(models["good"]),
        objectives={"max_regression": {"auc": 0.01}},
    )
    assert run.outputs["blessed"] is False  # the step itself succeeded
    blessing = json.loads((Path(run.outputs["blessing"].path) / "blessing.json").read_text())
    assert blessing["blessed"] is False
    assert len(blessing["reasons"]) == 1 and "vs production" in blessing["reasons"][0]
    assert blessing["baseline_metrics"]["auc"] > blessing["metrics"]["auc"]
    metrics = run.outputs["metrics"].metadata
    assert metrics["baseline_auc"] == pytest.approx(blessing["baseline_metrics"]["auc"])
    assert metrics["blessed"] == 0.0
    assert run.outputs["blessing"].metadata["threshold"] == 0.4
    assert "NOT BLESSED" in Path(run.outputs["report"].path).read_text()


def test_regression_model_has_empty_classification_metrics(
    kfp_local: Path, models: dict[str, Path]
) -> None:
    run = evaluate_pipeline(
        model_uri=str(models["reg"]),
        validation_uri=str(models["reg_validation"]),
        objectives={"max": {"rmse": 1000.0}},
    )
    assert run.outputs["blessing"].metadata["has_baseline"] is False
    assert run.outputs["blessed"] is True
    assert set(run.outputs["metrics"].metadata) == {"rmse", "mae", "r2", "blessed"}
    cls = run.outputs["classification_metrics"]
    assert "confusionMatrix" not in cls.metadata and "confidenceMetrics" not in cls.metadata
    assert json.loads(Path(cls.path).read_text()) == {"roc": None, "confusion_matrix": None}


def test_unknown_metric_fails_the_step_without_a_blessing(
    kfp_local: Path, models: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RuntimeError):
        evaluate_pipeline(
            model_uri=str(models["good"]),
            validation_uri=str(models["validation"]),
            objectives={"min": {"aucc": 0.8}},
        )
    logs = "".join(capfd.readouterr())
    assert "objectives.min.aucc" in logs
    assert not list(kfp_local.rglob("blessing.json"))
