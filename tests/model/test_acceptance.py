"""acceptance_test on a tiny real model, packaged as ONNX and as the Keras fallback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from kfloop.core.errors import ConfigError, DataError
from kfloop.model.acceptance import (
    ACCEPTANCE_FILE,
    REPORT_FILE,
    acceptance_test,
    measure_latency,
    onnx_feed,
    read_acceptance,
)
from kfloop.model.evaluate import evaluate_model
from kfloop.model.package import decide_release
from kfloop.model.predict import load_trained_model
from tests.model.evaluation_data import shared_model, shared_onnx, shared_splits, write_split


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shared classification splits, the good model and its ONNX package."""
    return {
        **shared_splits(tmp_path_factory),
        "model": shared_model(tmp_path_factory, "good"),
        "onnx": shared_onnx(tmp_path_factory),
    }


def _test_table(packaged: dict[str, Path]) -> pa.Table:
    return pq.read_table(packaged["test"] / "data.parquet")


def _onnx_predictions(onnx_path: Path, table: pa.Table) -> np.ndarray:
    """ONNX Runtime on raw inputs built here, independently of kfloop's input code."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = {}
    for node in session.get_inputs():
        column = table.column(node.name)
        if node.type == "tensor(string)":
            values = [v if v is not None else "" for v in column.to_pylist()]
            feed[node.name] = np.array(values, dtype=object).reshape(-1, 1)
        else:
            values = [np.nan if v is None else float(v) for v in column.to_pylist()]
            feed[node.name] = np.array(values, dtype=np.float32).reshape(-1, 1)
    return np.asarray(session.run(["prediction"], feed)[0], dtype=np.float64).reshape(-1)


def test_onnx_model_passes_with_metrics_from_onnx_runtime(
    packaged: dict[str, Path], tmp_path: Path
) -> None:
    result = acceptance_test(
        packaged["model"],
        packaged["test"],
        tmp_path,
        onnx_dir=packaged["onnx"],
        objectives={"min": {"auc": 0.7, "accuracy": 0.6}, "max": {"log_loss": 0.7}},
        latency_samples=50,
    )
    table = _test_table(packaged)
    y = np.asarray(table.column("label"))
    p = _onnx_predictions(packaged["onnx"] / "model.onnx", table)
    assert result.passed and result.reasons == ()
    assert result.source == "onnx"
    assert result.metrics["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert result.metrics["log_loss"] == pytest.approx(log_loss(y, p), abs=1e-9)
    assert result.metrics["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
    # the packaged model agrees with the Keras model it came from
    keras_p = load_trained_model(packaged["model"]).predict_table(table)
    assert result.metrics["auc"] == pytest.approx(roc_auc_score(y, keras_p), abs=1e-4)

    saved = json.loads((tmp_path / ACCEPTANCE_FILE).read_text())
    assert saved == read_acceptance(tmp_path)
    assert saved["passed"] is True and saved["reasons"] == []
    assert saved["model_bytes"] == (packaged["onnx"] / "model.onnx").stat().st_size
    assert set(saved["latency_ms"]) == {"p50", "p95"}
    assert 0 < saved["latency_ms"]["p50"] <= saved["latency_ms"]["p95"]
    assert saved["latency"]["samples"] == 50
    assert saved["metrics"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert [(o["op"], o["metric"]) for o in saved["objectives"]] == [
        ("min", "auc"),
        ("min", "accuracy"),
        ("max", "log_loss"),
        ("max", "latency_ms_p95"),
        ("max", "model_bytes"),
    ]
    tn, fp = saved["confusion_matrix"][0]
    fn, tp = saved["confusion_matrix"][1]
    assert (tp, fn) == (int(np.sum((y == 1) & (p >= 0.5))), int(np.sum((y == 1) & (p < 0.5))))
    assert tn + fp + fn + tp == table.num_rows
    report = (tmp_path / REPORT_FILE).read_text()
    assert "# Acceptance test: PASSED" in report and "**onnx**" in report


def test_keras_fallback_without_onnx(packaged: dict[str, Path], tmp_path: Path) -> None:
    result = acceptance_test(packaged["model"], packaged["test"], tmp_path, latency_samples=20)
    table = _test_table(packaged)
    y = np.asarray(table.column("label"))
    p = load_trained_model(packaged["model"]).predict_table(table)
    assert result.source == "keras"
    assert result.metrics["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert result.model_bytes == (packaged["model"] / "model.keras").stat().st_size
    assert result.latency.samples == 20 and result.latency.p50 > 0


def test_failed_objectives_are_a_result_not_an_error(
    packaged: dict[str, Path], tmp_path: Path
) -> None:
    result = acceptance_test(
        packaged["model"],
        packaged["test"],
        tmp_path,
        onnx_dir=packaged["onnx"],
        objectives={"min": {"auc": 0.999}},
        max_latency_ms_p95=1e-6,  # one nanosecond: no real call is that fast
        max_model_bytes=1000,
        latency_samples=10,
    )
    assert not result.passed
    saved = json.loads((tmp_path / ACCEPTANCE_FILE).read_text())
    assert saved["passed"] is False
    reasons = saved["reasons"]
    assert len(reasons) == 3
    assert reasons[0].startswith("auc 0.") and reasons[0].endswith("< min 0.999")
    assert reasons[1].startswith("latency_ms_p95 ") and reasons[1].endswith("> max 1e-06")
    size = (packaged["onnx"] / "model.onnx").stat().st_size
    assert reasons[2] == f"model_bytes {size} > max 1000"
    assert "# Acceptance test: FAILED" in (tmp_path / REPORT_FILE).read_text()
    assert not decide_release(None, tmp_path).publish


def test_release_gate_reads_blessing_and_acceptance(
    packaged: dict[str, Path], tmp_path: Path
) -> None:
    """package.decide_release understands the files evaluate_model and acceptance_test write."""
    evaluate_model(packaged["model"], packaged["validation"], tmp_path / "eval")
    acceptance_test(
        packaged["model"],
        packaged["test"],
        tmp_path / "acc",
        onnx_dir=packaged["onnx"],
        latency_samples=5,
    )
    decision = decide_release(tmp_path / "eval", tmp_path / "acc")
    assert decision.blessed and decision.accepted and decision.publish


def test_measure_latency_counts_requests() -> None:
    calls: list[int] = []
    stats = measure_latency(calls.append, samples=30, warmup=5)
    assert calls == list(range(5)) + list(range(30))
    assert stats.samples == 30 and stats.warmup == 5
    assert 0 <= stats.p50 <= stats.p95 <= stats.max
    with pytest.raises(ConfigError, match="latency_samples"):
        measure_latency(calls.append, samples=0)


def _no_outputs(folder: Path) -> None:
    assert not (folder / ACCEPTANCE_FILE).exists()
    assert not (folder / REPORT_FILE).exists()


def test_onnx_folder_without_metadata(packaged: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(packaged["onnx"] / "model.onnx", bare / "model.onnx")
    with pytest.raises(ConfigError, match="has no metadata.json") as info:
        acceptance_test(packaged["model"], packaged["test"], tmp_path / "out", onnx_dir=bare)
    assert info.value.field == "onnx_dir"
    _no_outputs(tmp_path / "out")


@pytest.mark.parametrize(
    ("kwargs", "field", "match"),
    [
        ({"objectives": {"min": {"aucc": 0.8}}}, "objectives.min.aucc", "known metrics: auc"),
        (
            {"objectives": {"max_regression": {"auc": 0.01}}},
            "objectives.max_regression.auc",
            "only evaluate_model",
        ),
        (
            {"objectives": {"max": {"latency_ms_p95": 10}}},
            "objectives.max.latency_ms_p95",
            "set it in one place",
        ),
        ({"latency_samples": 0}, "latency_samples", "1..100000"),
        ({"max_model_bytes": 0}, "max_model_bytes", ">= 1"),
        ({"max_latency_ms_p95": -1.0}, "max_latency_ms_p95", "> 0"),
        ({"threshold": 0.0}, "threshold", "strictly between"),
    ],
)
def test_bad_parameters(
    packaged: dict[str, Path], tmp_path: Path, kwargs: dict[str, object], field: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        acceptance_test(packaged["model"], packaged["test"], tmp_path, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    _no_outputs(tmp_path)


def test_latency_objective_can_move_into_objectives(
    packaged: dict[str, Path], tmp_path: Path
) -> None:
    result = acceptance_test(
        packaged["model"],
        packaged["test"],
        tmp_path,
        onnx_dir=packaged["onnx"],
        objectives={"max": {"latency_ms_p95": 1000, "latency_ms_p50": 1000}},
        max_latency_ms_p95=None,
        max_model_bytes=None,
        latency_samples=5,
    )
    assert result.passed
    assert [o.metric for o in result.objectives] == ["latency_ms_p95", "latency_ms_p50"]


def test_label_missing_in_test_split(packaged: dict[str, Path], tmp_path: Path) -> None:
    bad = write_split(_test_table(packaged).drop(["label"]), tmp_path / "nolabel")
    with pytest.raises(DataError) as info:
        acceptance_test(packaged["model"], bad, tmp_path / "out", onnx_dir=packaged["onnx"])
    assert "label column 'label'" in str(info.value)
    assert str(bad / "data.parquet") in str(info.value)
    _no_outputs(tmp_path / "out")


def test_one_class_only_in_test_split(packaged: dict[str, Path], tmp_path: Path) -> None:
    table = _test_table(packaged)
    zeros = write_split(table.filter(pc.equal(table.column("label"), 0)), tmp_path / "zeros")
    with pytest.raises(DataError, match="'label' holds only class 0"):
        acceptance_test(packaged["model"], zeros, tmp_path / "out", onnx_dir=packaged["onnx"])
    _no_outputs(tmp_path / "out")


def test_onnx_feed_names_bad_columns(packaged: dict[str, Path]) -> None:
    session = ort.InferenceSession(
        str(packaged["onnx"] / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    table = _test_table(packaged).slice(0, 5)
    feed = onnx_feed(session, table, "test split")
    assert feed["color"].dtype == object and feed["color"].shape == (5, 1)
    assert feed["x1"].dtype == np.float32 and feed["flag"].dtype == np.float32
    with pytest.raises(DataError, match="test split: column 'color', an input of the ONNX"):
        onnx_feed(session, table.drop(["color"]), "test split")
    as_int = table.set_column(table.schema.get_field_index("color"), "color", table.column("id"))
    with pytest.raises(DataError, match="column 'color' must be a string column, got int64"):
        onnx_feed(session, as_int, "test split")


def test_regression_model_with_keras(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    model = shared_model(tmp_path_factory, "reg")
    test = shared_splits(tmp_path_factory, "reg")["test"]
    table = pq.read_table(test / "data.parquet")
    y = np.asarray(table.column("label"), dtype=np.float64)
    p = load_trained_model(model).predict_table(table)
    result = acceptance_test(
        model, test, tmp_path, objectives={"max": {"rmse": 1000.0}}, latency_samples=5
    )
    assert result.passed and result.confusion_matrix is None
    assert result.metrics["rmse"] == pytest.approx(float(np.sqrt(np.mean((y - p) ** 2))))
    assert json.loads((tmp_path / ACCEPTANCE_FILE).read_text())["task"] == "regression"
