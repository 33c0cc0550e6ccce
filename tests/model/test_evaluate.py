"""evaluate_model on tiny real models: metrics checked against independent computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import log_loss, mean_squared_error, roc_auc_score

from kfloop.core.errors import ConfigError, DataError
from kfloop.model.evaluate import (
    BLESSING_FILE,
    EVALUATION_FILE,
    evaluate_model,
    evaluation_markdown,
)
from kfloop.model.predict import load_trained_model
from tests.model.evaluation_data import shared_model, shared_splits, write_split


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Classification splits + a good and a weak (shuffled-label) model; a regression model."""
    return {
        "validation": shared_splits(tmp_path_factory)["validation"],
        "good": shared_model(tmp_path_factory, "good"),
        "weak": shared_model(tmp_path_factory, "weak"),
        "reg_validation": shared_splits(tmp_path_factory, "reg")["validation"],
        "reg": shared_model(tmp_path_factory, "reg"),
    }


def _validation(models: dict[str, Path], key: str = "validation") -> pa.Table:
    return pq.read_table(models[key] / "data.parquet")


def _predict(model_dir: Path, table: pa.Table) -> np.ndarray:
    return np.asarray(load_trained_model(model_dir).predict_table(table), dtype=np.float64)


def test_blessed_model_metrics_match_independent_computation(
    models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    result = evaluate_model(
        models["good"],
        models["validation"],
        out,
        objectives={"min": {"auc": 0.75}, "max": {"log_loss": 0.65}},
        slice_feature="color",
        slice_min_rows=20,
    )
    table = _validation(models)
    y = np.asarray(table.column("label"))
    p = _predict(models["good"], table)
    assert result.blessed and result.reasons == ()
    assert result.rows == 300
    assert result.metrics["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert result.metrics["log_loss"] == pytest.approx(log_loss(y, p), abs=1e-9)
    pred = p >= 0.5
    expected_matrix = [
        [int(np.sum((y == 0) & ~pred)), int(np.sum((y == 0) & pred))],
        [int(np.sum((y == 1) & ~pred)), int(np.sum((y == 1) & pred))],
    ]
    assert result.confusion_matrix == expected_matrix
    assert result.metrics["accuracy"] == pytest.approx(np.mean(pred == (y == 1)))

    blessing = json.loads((out / BLESSING_FILE).read_text())
    assert blessing["blessed"] is True
    assert blessing["reasons"] == []
    assert blessing["baseline_metrics"] is None
    assert blessing["metrics"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert [(o["op"], o["metric"], o["passed"]) for o in blessing["objectives"]] == [
        ("min", "auc", True),
        ("max", "log_loss", True),
    ]
    evaluation = json.loads((out / EVALUATION_FILE).read_text())
    assert evaluation["confusion_matrix"] == expected_matrix
    roc = evaluation["roc"]
    assert 2 <= len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"]) <= 200
    assert np.trapz(roc["tpr"], roc["fpr"]) == pytest.approx(result.metrics["auc"], abs=0.01)

    # slices: one per colour (6 < top_n) + missing; each checked against its own rows
    slices = {s["value"]: s for s in evaluation["slices"]}
    colors = table.column("color").to_pylist()
    assert sum(s["rows"] for s in slices.values()) == 300
    assert "__missing__" in slices and "__other__" not in slices
    red = np.array([c == "red" for c in colors])
    assert slices["red"]["rows"] == int(red.sum())
    assert slices["red"]["metrics"]["auc"] == pytest.approx(roc_auc_score(y[red], p[red]))
    for s in slices.values():
        assert s["small"] == (s["rows"] < 20)
    assert "BLESSED" in evaluation_markdown(result)


def test_missed_objective_is_not_an_error(models: dict[str, Path], tmp_path: Path) -> None:
    result = evaluate_model(
        models["good"], models["validation"], tmp_path, objectives={"min": {"auc": 0.999}}
    )
    assert not result.blessed
    blessing = json.loads((tmp_path / BLESSING_FILE).read_text())
    assert blessing["blessed"] is False
    assert len(blessing["reasons"]) == 1
    assert blessing["reasons"][0].startswith("auc 0.")
    assert blessing["reasons"][0].endswith("< min 0.999")
    assert blessing["objectives"][0]["passed"] is False
    assert blessing["objectives"][0]["value"] == pytest.approx(result.metrics["auc"])
    assert (tmp_path / EVALUATION_FILE).is_file()
    assert "NOT BLESSED" in evaluation_markdown(result)


def test_champion_challenger(models: dict[str, Path], tmp_path: Path) -> None:
    objectives = {"max_regression": {"auc": 0.01, "log_loss": 0.02}}
    # the weak challenger against the good production model: regressions, not blessed
    worse = evaluate_model(
        models["weak"],
        models["validation"],
        tmp_path / "weak",
        objectives=objectives,
        baseline_model_dir=models["good"],
    )
    table = _validation(models)
    y = np.asarray(table.column("label"))
    good_auc = roc_auc_score(y, _predict(models["good"], table))
    weak_auc = roc_auc_score(y, _predict(models["weak"], table))
    assert good_auc > weak_auc + 0.05  # the test set-up works
    assert not worse.blessed
    blessing = json.loads((tmp_path / "weak" / BLESSING_FILE).read_text())
    assert blessing["baseline_metrics"]["auc"] == pytest.approx(good_auc)
    auc_obj = blessing["objectives"][0]
    assert auc_obj["metric"] == "auc" and auc_obj["op"] == "max_regression"
    assert auc_obj["regression"] == pytest.approx(good_auc - weak_auc)
    assert not auc_obj["passed"]
    assert len(blessing["reasons"]) == 2
    assert "vs production" in blessing["reasons"][0]

    # the good challenger against the weak production model: improvements, blessed
    better = evaluate_model(
        models["good"],
        models["validation"],
        tmp_path / "good",
        objectives=objectives,
        baseline_model_dir=models["weak"],
    )
    assert better.blessed
    assert better.objectives[0].regression == pytest.approx(weak_auc - good_auc)
    assert better.baseline_metrics is not None
    assert better.baseline_metrics["auc"] == pytest.approx(weak_auc)

    # no production model: max_regression is skipped and the model is blessed
    first = evaluate_model(
        models["weak"], models["validation"], tmp_path / "first", objectives=objectives
    )
    assert first.blessed and all(o.skipped for o in first.objectives)


def test_regression_model(models: dict[str, Path], tmp_path: Path) -> None:
    table = _validation(models, "reg_validation")
    y = np.asarray(table.column("label"), dtype=np.float64)
    p = _predict(models["reg"], table)
    rmse = float(np.sqrt(mean_squared_error(y, p)))
    passing = evaluate_model(
        models["reg"],
        models["reg_validation"],
        tmp_path / "pass",
        objectives={"max": {"rmse": rmse + 0.01}},
        slice_feature="flag",
    )
    assert passing.blessed
    assert passing.metrics["rmse"] == pytest.approx(rmse)
    assert passing.metrics["mae"] == pytest.approx(float(np.mean(np.abs(y - p))))
    assert passing.confusion_matrix is None and passing.roc is None
    assert {s.value for s in passing.slices} == {"True", "False"}
    evaluation = json.loads((tmp_path / "pass" / EVALUATION_FILE).read_text())
    assert evaluation["roc"] is None and evaluation["task"] == "regression"
    failing = evaluate_model(
        models["reg"],
        models["reg_validation"],
        tmp_path / "fail",
        objectives={"max": {"rmse": rmse - 0.01}},
    )
    assert not failing.blessed
    assert failing.reasons[0].startswith("rmse ")


def _no_outputs(folder: Path) -> None:
    assert not (folder / BLESSING_FILE).exists()
    assert not (folder / EVALUATION_FILE).exists()


def test_label_missing_in_validation(models: dict[str, Path], tmp_path: Path) -> None:
    table = _validation(models).drop(["label"])
    bad = write_split(table, tmp_path / "nolabel")
    out = tmp_path / "out"
    out.mkdir()
    (out / BLESSING_FILE).write_text('{"blessed": true}')  # stale result from an earlier run
    with pytest.raises(DataError) as info:
        evaluate_model(models["good"], bad, out)
    message = str(info.value)
    assert "label column 'label'" in message and str(bad / "data.parquet") in message
    assert "id, x1, x2, color, flag" in message
    _no_outputs(out)


def test_one_class_only(models: dict[str, Path], tmp_path: Path) -> None:
    table = _validation(models)
    ones = table.filter(pa.compute.equal(table.column("label"), 1))
    bad = write_split(ones, tmp_path / "ones")
    with pytest.raises(DataError, match="only class 1 in all .* rows") as info:
        evaluate_model(models["good"], bad, tmp_path / "out")
    assert "'label'" in str(info.value)
    _no_outputs(tmp_path / "out")


def test_unknown_metric_in_objectives(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        evaluate_model(
            models["good"], models["validation"], tmp_path, objectives={"min": {"aucc": 0.8}}
        )
    assert info.value.field == "objectives.min.aucc"
    assert "known metrics: auc" in str(info.value)
    with pytest.raises(ConfigError) as info:
        evaluate_model(
            models["reg"], models["reg_validation"], tmp_path, objectives={"min": {"auc": 0.8}}
        )
    assert info.value.field == "objectives.min.auc"
    assert "rmse, mae, r2" in str(info.value)
    _no_outputs(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "field", "match"),
    [
        ({"threshold": 1.0}, "threshold", "strictly between 0 and 1"),
        ({"slice_feature": "colour"}, "slice_feature", "'colour' is not in .*columns are"),
        ({"slice_feature": "label"}, "slice_feature", "is the label"),
        ({"slice_top_n": 0}, "slice_top_n", ">= 1"),
        ({"slice_min_rows": True}, "slice_min_rows", "integer >= 1"),
    ],
)
def test_bad_parameters(
    models: dict[str, Path], tmp_path: Path, kwargs: dict[str, object], field: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        evaluate_model(models["good"], models["validation"], tmp_path, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    _no_outputs(tmp_path)


def test_bad_model_folders(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no feature_spec.json") as info:
        evaluate_model(tmp_path, models["validation"], tmp_path / "out")
    assert info.value.field == "model_dir"
    with pytest.raises(ConfigError, match="predicts 'label' \\(regression\\)") as info:
        evaluate_model(
            models["good"], models["validation"], tmp_path / "out", baseline_model_dir=models["reg"]
        )
    assert info.value.field == "baseline_model_dir"
    # a wrong production-model path is an error, never "no baseline" (that would skip the
    # champion/challenger check silently)
    with pytest.raises(ConfigError, match="is not a folder") as info:
        evaluate_model(
            models["good"],
            models["validation"],
            tmp_path / "out",
            baseline_model_dir=tmp_path / "no-such-model",
        )
    assert info.value.field == "baseline_model_dir"
    _no_outputs(tmp_path / "out")
