"""evaluate_model with the production model as a PACKAGED ONNX folder (champion/challenger).

The champion is what ``publish_model`` published and ``resolve_champion`` downloads:
``model.onnx`` + ``metadata.json``, scored with ONNX Runtime on the raw validation columns.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from kfloop.core.errors import ConfigError
from kfloop.deploy.champion import NO_CHAMPION_FILE
from kfloop.model.evaluate import BLESSING_FILE, evaluate_model, evaluation_markdown
from kfloop.model.features import FeatureSpec, table_to_inputs
from kfloop.model.package import onnx_predict
from tests.model.evaluation_data import shared_model, shared_onnx, shared_splits

OBJECTIVES = {"max_regression": {"auc": 0.0}}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "validation": shared_splits(tmp_path_factory)["validation"],
        "good": shared_model(tmp_path_factory, "good"),
        "weak": shared_model(tmp_path_factory, "weak"),
        "good_onnx": shared_onnx(tmp_path_factory),
    }


def _onnx_auc(package: Path, validation: Path) -> float:
    """AUC of the packaged model, computed here independently of evaluate.py."""
    table = pq.read_table(validation / "data.parquet")
    meta = json.loads((package / "metadata.json").read_text())
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    pred = onnx_predict(session, table_to_inputs(table, spec))
    return float(roc_auc_score(np.asarray(table.column("label")), pred))


def test_weak_challenger_loses_to_onnx_champion(models: dict[str, Path], tmp_path: Path) -> None:
    result = evaluate_model(
        models["weak"],
        models["validation"],
        tmp_path / "out",
        objectives=OBJECTIVES,
        baseline_model_dir=models["good_onnx"],
    )
    champion_auc = _onnx_auc(models["good_onnx"], models["validation"])
    assert not result.blessed
    assert result.baseline is not None and result.baseline["kind"] == "onnx"
    assert result.baseline_metrics is not None
    assert result.baseline_metrics["auc"] == pytest.approx(champion_auc, abs=1e-6)
    assert result.metrics["auc"] is not None and result.metrics["auc"] < champion_auc
    blessing = json.loads((tmp_path / "out" / BLESSING_FILE).read_text())
    assert blessing["baseline"]["kind"] == "onnx"
    assert blessing["baseline_metrics"]["auc"] == pytest.approx(champion_auc, abs=1e-6)
    assert "vs production" in blessing["reasons"][0]
    assert "Compared with the production model" in evaluation_markdown(result)


def test_onnx_champion_matches_its_keras_source(models: dict[str, Path], tmp_path: Path) -> None:
    """The good model as ONNX and as Keras score the same (parity): no regression either way."""
    as_onnx = evaluate_model(
        models["good"],
        models["validation"],
        tmp_path / "onnx",
        objectives=OBJECTIVES,
        baseline_model_dir=models["good_onnx"],
    )
    assert as_onnx.baseline_metrics is not None
    assert as_onnx.baseline_metrics["auc"] == pytest.approx(as_onnx.metrics["auc"], abs=1e-4)
    # the good challenger against a weak Keras champion still wins (keras kind recorded)
    better = evaluate_model(
        models["good"],
        models["validation"],
        tmp_path / "keras",
        objectives=OBJECTIVES,
        baseline_model_dir=models["weak"],
    )
    assert better.blessed and better.baseline is not None and better.baseline["kind"] == "keras"


def test_no_champion_marker_means_no_baseline(models: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "champion"
    marker.mkdir()
    (marker / NO_CHAMPION_FILE).write_text('{"champion": false}')
    result = evaluate_model(
        models["weak"],
        models["validation"],
        tmp_path / "out",
        objectives=OBJECTIVES,
        baseline_model_dir=marker,
    )
    assert result.blessed and result.baseline is None and result.baseline_metrics is None
    assert all(o.skipped for o in result.objectives)
    assert "max_regression objectives skipped" in evaluation_markdown(result)


def test_broken_onnx_champions_are_errors(models: dict[str, Path], tmp_path: Path) -> None:
    no_onnx = tmp_path / "no-onnx"
    no_onnx.mkdir()
    shutil.copy(models["good_onnx"] / "metadata.json", no_onnx / "metadata.json")
    bad_meta = tmp_path / "bad-meta"
    bad_meta.mkdir()
    shutil.copy(models["good_onnx"] / "model.onnx", bad_meta / "model.onnx")
    (bad_meta / "metadata.json").write_text('{"format_version": 1}')
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, words in (
        (no_onnx, "no model.onnx"),
        (bad_meta, "not a kfloop package"),
        (
            empty,
            "neither a trained-model folder",
        ),
    ):
        with pytest.raises(ConfigError) as info:
            evaluate_model(
                models["good"],
                models["validation"],
                tmp_path / "out",
                objectives=OBJECTIVES,
                baseline_model_dir=folder,
            )
        assert info.value.field == "baseline_model_dir"
        assert words in str(info.value)
        assert not (tmp_path / "out" / BLESSING_FILE).exists()
