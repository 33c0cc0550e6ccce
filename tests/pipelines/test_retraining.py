"""The retraining pipeline: compiled YAML, and full kfp.local runs against a real champion.

A champion (v1) is trained on in-distribution synthetic data, packaged as ONNX, published
with its training statistics and made the production version (the registry pointer). Then
``retraining_pipeline`` runs under kfp.local (every component a subprocess, SeaweedFS as S3)
on a window of LOGGED requests (the payload logger's schema) joined with ground truth:

* drifted window (the label rule changed): the challenger beats v1, is published with the
  window's statistics and becomes the production version;
* in-distribution window with a strict max_regression (no worse than v1 in AUC and log
  loss) and a one-epoch budget: the challenger loses, nothing is published, production stays
  v1, the reports say why.

kfp.local runs are slow here (~10 s TensorFlow import per task): data and budgets are tiny.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from kfloop.core.arrowio import write_parquet
from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from kfloop.data.synth import generate_table
from kfloop.deploy.registry import promote, read_production
from kfloop.pipelines.compile import compiled_path, stale

MODEL = "churn-rt"
WINDOW_START = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
WINDOW_END = datetime(2026, 11, 28, 4, 0, tzinfo=UTC)
# The churn rule flips: tenure, balance, age and activity now RAISE churn; v1 gets it wrong.
CONCEPT_DRIFT: dict[str, Any] = {
    "label": {
        "numeric_weights": {"tenure_months": 1.5, "balance": 0.8, "age": 0.6},
        "boolean_weights": {"is_active": 1.8},
    }
}
FAST_HP = {"hidden_units": [16], "dropout": 0.0, "learning_rate": 0.02, "batch_size": 64}


def test_retraining_compiles_and_is_current() -> None:
    assert not stale("retraining"), "pipelines/compiled/retraining.yaml is stale"
    spec = yaml.safe_load(compiled_path("retraining").read_text(encoding="utf-8"))
    tasks = spec["root"]["dag"]["tasks"]
    assert {
        "collect-window",
        "resolve-champion",
        "validate-data",
        "evaluate-model",
        "publish-model",
        "deploy-model",
    } <= set(tasks)
    # the champion is the evaluation baseline; the window's statistics are published
    evaluate = tasks["evaluate-model"]["inputs"]["artifacts"]
    assert evaluate["baseline_model"]["taskOutputArtifact"]["producerTask"] == "resolve-champion"
    publish = tasks["publish-model"]["inputs"]["artifacts"]
    assert publish["statistics"]["taskOutputArtifact"]["producerTask"] == "validate-data"
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in ("model_name", "drifted_version", "window_start", "window_end", "logs_uri"):
        assert name in params


# -- the champion --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def champion(
    tmp_path_factory: pytest.TempPathFactory, settings: Settings, store: ObjectStore
) -> dict[str, Any]:
    """v1: trained on in-distribution rows, published with statistics, in production."""
    from kfloop.data.validate import validate_table
    from kfloop.model.package import package_onnx, publish_model
    from kfloop.model.train import train_model

    root = tmp_path_factory.mktemp("champion")
    table = generate_table(rows=2400, seed=1)
    n = table.num_rows
    parts = {
        "train": table.slice(0, int(n * 0.7)),
        "validation": table.slice(int(n * 0.7), int(n * 0.15)),
        "test": table.slice(int(n * 0.85)),
    }
    for name, part in parts.items():
        (root / name).mkdir()
        pq.write_table(part, root / name / "data.parquet")
    train_model(
        root / "train",
        root / "validation",
        root / "trained",
        label="label",
        hyperparameters=FAST_HP,
        epochs=6,
        exclude=["id"],
    )
    package_onnx(root / "trained", root / "test", root / "package", model_name=MODEL)
    validate_table(str(root / "train"), str(root / "stats"), fail_on_anomalies=False)
    models_root = f"s3://{settings.models_bucket}"
    uri = publish_model(
        root / "package",
        models_root,
        MODEL,
        "v1",
        store,
        blessed=True,
        accepted=True,
        statistics_path=root / "stats" / "stats.tfrecord",
    )
    meta = json.loads((root / "package" / "metadata.json").read_text())
    features = [f["name"] for f in meta["feature_spec"]["features"]]
    kinds = {f["name"]: f["kind"] for f in meta["feature_spec"]["features"]}
    return {"uri": uri, "features": features, "kinds": kinds, "models_root": models_root}


def _logged(table: pa.Table, champion: dict[str, Any], prefix: str) -> tuple[pa.Table, pa.Table]:
    """``table`` as the payload logger writes it, and its ground truth.

    Logged numeric features are float64, categorical ones strings (the logger's schema).
    Every 8th request is logged at a time OUTSIDE the window (and has ground truth): the
    window must leave it out.
    """
    n = table.num_rows
    ids = [f"{prefix}-{i}" for i in range(n)]
    inside = [WINDOW_START + timedelta(seconds=int(s)) for s in np.linspace(60, 3500, n)]
    times = [WINDOW_START - timedelta(hours=2) if i % 8 == 7 else t for i, t in enumerate(inside)]
    cols: dict[str, pa.Array] = {
        "request_id": pa.array(ids, pa.string()),
        "model_name": pa.array([MODEL] * n, pa.string()),
        "model_version": pa.array(["v1"] * n, pa.string()),
        "timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        "endpoint": pa.array(["predict"] * n, pa.string()),
    }
    for name in champion["features"]:
        numeric = champion["kinds"][name] == "numeric"
        cols[name] = table[name].cast(pa.float64() if numeric else pa.string())
    cols["prediction"] = pa.array(np.full(n, 0.5))
    truth = pa.table({"request_id": ids, "label": table["label"]})
    return pa.table(cols), truth


@pytest.fixture
def kfp_local(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    from kfp import local

    from kfloop.pipelines.local_compat import allow_omitted_optional_inputs

    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    allow_omitted_optional_inputs()
    root = tmp_path / "pipeline-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    yield root


def _run(
    store: ObjectStore,
    settings: Settings,
    champion: dict[str, Any],
    tag: str,
    drift: dict[str, Any] | None,
    epochs_per_trial: int = 4,
    **params: Any,
) -> str:
    """Log a window for ``tag`` and run retraining_pipeline on it; returns its output."""
    from pipelines.retraining import retraining_pipeline

    rows = generate_table(rows=1600, seed=len(tag) + 5, drift=drift)
    logs, truth = _logged(rows, champion, tag)
    logs_uri = f"s3://{settings.logs_bucket}/{MODEL}/v1-{tag}/"
    write_parquet(logs, f"{logs_uri}2026-11-28T03.parquet", store)
    truth_uri = f"s3://{settings.data_bucket}/{MODEL}/ground-truth-{tag}.parquet"
    write_parquet(truth, truth_uri, store)
    task = retraining_pipeline(
        model_name=MODEL,
        drifted_version="v1",
        window_start=WINDOW_START.isoformat(),
        window_end=WINDOW_END.isoformat().replace("+00:00", "Z"),
        logs_uri=logs_uri,
        ground_truth_uri=truth_uri,
        version=f"v2-{tag}",
        max_trials=1,
        max_tuning_seconds=60,
        epochs_per_trial=epochs_per_trial,
        acceptance_objectives={"min": {"auc": 0.55}},
        max_latency_ms_p95=500.0,
        deploy_target="local",
        serving_url="",
        **params,
    )
    return str(task.output)


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.rglob(pattern))
    assert len(found) == 1, f"{pattern}: {found}"
    return found[0]


def test_drifted_window_challenger_wins_and_is_deployed(
    kfp_local: Path, settings: Settings, store: ObjectStore, champion: dict[str, Any]
) -> None:
    promote(store, champion["models_root"], MODEL, "v1", champion["uri"])
    out = _run(store, settings, champion, "win", CONCEPT_DRIFT)

    expected = f"s3://{settings.models_bucket}/{MODEL}/v2-win/"
    assert out == expected
    pointer = read_production(store, champion["models_root"], MODEL)
    assert pointer is not None and pointer.version == "v2-win"
    assert pointer.previous is not None and pointer.previous["version"] == "v1"
    # the challenger is published with the fresh window's statistics (the next reference)
    assert store.exists(f"{expected}stats.tfrecord")
    assert store.exists(f"{expected}model.onnx")

    blessing = json.loads(_one(kfp_local, "blessing.json").read_text())
    assert blessing["blessed"] is True
    assert blessing["baseline"]["kind"] == "onnx" and blessing["baseline"]["version"] == "v1"
    assert blessing["metrics"]["auc"] > blessing["baseline_metrics"]["auc"] + 0.1
    # the window left out the requests logged outside it: 1 in 8 of 1,600
    window = pq.read_table(_one(kfp_local, "window"))
    assert window.num_rows == 1400
    assert "id" in window.column_names and "request_id" not in window.column_names


def test_in_distribution_challenger_loses_and_nothing_is_deployed(
    kfp_local: Path, settings: Settings, store: ObjectStore, champion: dict[str, Any]
) -> None:
    promote(store, champion["models_root"], MODEL, "v1", champion["uri"], reason="reset")
    before = read_production(store, champion["models_root"], MODEL)
    out = _run(
        store,
        settings,
        champion,
        "lose",
        None,
        # strict: not worse than v1 in AUC nor log loss, and a budget of one epoch
        objectives={"max_regression": {"auc": 0.0, "log_loss": 0.0}},
        epochs_per_trial=1,
    )
    assert out == ""
    after = read_production(store, champion["models_root"], MODEL)
    assert after == before and after is not None and after.version == "v1"
    assert not list(store.list_objects(f"s3://{settings.models_bucket}/{MODEL}/v2-lose/"))

    blessing = json.loads(_one(kfp_local, "blessing.json").read_text())
    assert blessing["blessed"] is False
    assert blessing["baseline_metrics"]["auc"] is not None
    assert any("vs production" in r for r in blessing["reasons"])
    release = _one(kfp_local, "release").read_text()
    assert "Not published" in release and "not blessed" in release
    deploy_report = _one(kfp_local, "deploy-model/report").read_text()
    assert "no published version" in deploy_report
