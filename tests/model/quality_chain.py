"""The training pipeline's chain, run in-process with the library functions, and its baseline.

:func:`run_chain` runs what ``pipelines/training.py`` runs, step for step and with the
pipeline's own defaults (read from the compiled pipeline's component spec, so the two cannot
drift apart): CSV -> ``ingest_data`` -> ``clean_data`` (the pipeline's default clean config)
-> ``label_data`` (rules mode, existing label checked) -> ``split_to_artifacts`` (hash on the
key, the pipeline's ratios) -> ``tune_hyperparameters`` -> ``train_model`` with the best
hyperparameters -> ``package_onnx`` -> ``acceptance_test`` on the TEST split with the packaged
ONNX model. The components are thin wrappers over these functions; a kfp.local run of the
whole pipeline is tested elsewhere.

:func:`hgb_baseline` fits scikit-learn's HistGradientBoosting (default settings,
``random_state=0``) on the SAME rows and features and scores it on the SAME test split.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kfloop.data.clean import clean_data
from kfloop.data.ingest import ingest_data
from kfloop.data.label import label_data
from kfloop.data.split import split_artifact_parquet, split_to_artifacts
from kfloop.model.acceptance import acceptance_test
from kfloop.model.features import FeatureSpec
from kfloop.model.package import package_onnx
from kfloop.model.train import SPEC_FILE, train_model
from kfloop.model.tune import tune_hyperparameters

KEY = "id"
LABEL = "label"


def pipeline_defaults() -> dict[str, Any]:
    """The training pipeline's parameter defaults, from its compiled component spec."""
    from pipelines.training import training_pipeline

    return {
        name: spec.default
        for name, spec in training_pipeline.component_spec.inputs.items()
        if spec.default is not None
    }


def write_frame_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write a pandas frame as a user's CSV file: an ``id`` key column first, then the rest.

    Column names are made model-input safe (``mean radius`` -> ``mean_radius``): kfloop
    refuses feature names with spaces and asks the user to rename them.
    """
    out = frame.copy()
    out.columns = [str(c).strip().replace(" ", "_") for c in out.columns]
    out.insert(0, KEY, np.arange(len(out), dtype=np.int64))
    pacsv.write_csv(pa.Table.from_pandas(out, preserve_index=False), path)
    return path


def write_table_csv(table: pa.Table, path: Path) -> Path:
    """Write an Arrow table (the synthetic demo data) as CSV."""
    pacsv.write_csv(table, path)
    return path


@dataclass(frozen=True)
class ChainResult:
    """What the chain produced, with the figures the quality tests compare."""

    task: str
    splits: dict[str, Path]
    rows: dict[str, int]
    model_dir: Path
    onnx_dir: Path
    spec: FeatureSpec
    best_hyperparameters: dict[str, Any]
    tune_trials: int
    epochs_run: int
    best_epoch: int
    acceptance_source: str
    test_metrics: dict[str, float | None]
    seconds: dict[str, float] = field(default_factory=dict)


def run_chain(
    csv_path: Path,
    work: Path,
    *,
    label: str = LABEL,
    key_column: str = KEY,
    overrides: dict[str, Any] | None = None,
) -> ChainResult:
    """Run the training pipeline's chain on ``csv_path`` with the library functions.

    Args:
        csv_path: The user's CSV file.
        work: An empty folder for every intermediate artifact.
        label: Label column.
        key_column: Unique key for the hash split (excluded from the features).
        overrides: Pipeline parameters to override (same names as ``training_pipeline``'s).
    """
    p = pipeline_defaults()
    p.update(overrides or {})
    clock: dict[str, float] = {}

    def timed(step: str, started: float) -> None:
        clock[step] = round(time.monotonic() - started, 2)

    t = time.monotonic()
    ingest_data(str(csv_path), work / "ingested.parquet", file_format=p["file_format"])
    timed("ingest", t)
    t = time.monotonic()
    clean_data(str(work / "ingested.parquet"), str(work / "cleaned.parquet"), p["clean_config"])
    timed("clean", t)
    t = time.monotonic()
    label_data(
        str(work / "labeled.parquet"),
        "rules",
        {"label_column": label},
        dataset_path=str(work / "cleaned.parquet"),
    )
    timed("label", t)
    t = time.monotonic()
    splits = {name: work / "split" / name for name in ("train", "validation", "test")}
    split = split_to_artifacts(
        str(work / "labeled.parquet"),
        {name: str(path) for name, path in splits.items()},
        ratios=(p["train_ratio"], p["validation_ratio"], p["test_ratio"]),
        method="hash",
        key_column=key_column,
        seed=p["seed"],
    )
    timed("split", t)
    t = time.monotonic()
    tuned = tune_hyperparameters(
        splits["train"],
        splits["validation"],
        work / "tune",
        label=label,
        algorithm=p["tune_algorithm"],
        max_trials=p["max_trials"],
        max_seconds=p["max_tuning_seconds"],
        epochs_per_trial=p["epochs_per_trial"],
        seed=p["seed"],
        exclude=[key_column],
    )
    timed("tune", t)
    t = time.monotonic()
    trained = train_model(
        splits["train"],
        splits["validation"],
        work / "model",
        label=label,
        hyperparameters=tuned.best_hyperparameters,
        exclude=[key_column],
        seed=p["seed"],
    )
    timed("train", t)
    t = time.monotonic()
    package_onnx(
        work / "model",
        splits["test"],
        work / "onnx",
        model_name=p["model_name"],
        version="quality-test",
    )
    timed("package", t)
    t = time.monotonic()
    accepted = acceptance_test(
        work / "model",
        splits["test"],
        work / "acceptance",
        onnx_dir=work / "onnx",
        objectives=p["acceptance_objectives"],
        max_latency_ms_p95=p["max_latency_ms_p95"],
    )
    timed("acceptance", t)
    return ChainResult(
        task=trained.task,
        splits=splits,
        rows={name: out.rows for name, out in split.splits.items()},
        model_dir=work / "model",
        onnx_dir=work / "onnx",
        spec=FeatureSpec.from_json(work / "model" / SPEC_FILE),
        best_hyperparameters=tuned.best_hyperparameters,
        tune_trials=tuned.trial_count,
        epochs_run=trained.epochs_run,
        best_epoch=trained.best_epoch,
        acceptance_source=accepted.source,
        test_metrics=dict(accepted.metrics),
        seconds=clock,
    )


# -- the baseline ----------------------------------------------------------------------------


def _frame(path: Path, spec: FeatureSpec, categories: dict[str, list[str]]) -> pd.DataFrame:
    """The model's features of a split as a pandas frame HistGradientBoosting takes.

    Numeric (and bool) features as float64 with NaN for missing; categorical features as
    pandas ``category`` with the TRAINING categories fixed (unseen or missing -> NaN).
    """
    table = pq.read_table(split_artifact_parquet(path))
    out: dict[str, Any] = {}
    for f in spec.features:
        column = table.column(f.name)
        if f.kind == "numeric":
            out[f.name] = pd.to_numeric(
                pd.Series(column.to_pandas(), dtype="object"), errors="coerce"
            ).astype("float64")
        else:
            values = pd.Series(column.to_pandas(), dtype="object")
            out[f.name] = pd.Categorical(values, categories=categories[f.name])
    return pd.DataFrame(out)


def _label(path: Path, label: str) -> np.ndarray:
    table = pq.read_table(split_artifact_parquet(path), columns=[label])
    return np.asarray(table.column(label).to_numpy(), dtype=np.float64)


@dataclass(frozen=True)
class BaselineResult:
    """HistGradientBoosting's test figure and what it was fitted on."""

    metric: str
    value: float
    fit_rows: int
    test_rows: int
    features: int


def hgb_baseline(chain: ChainResult, label: str = LABEL) -> BaselineResult:
    """HistGradientBoosting (defaults, ``random_state=0``) on the chain's own splits.

    It is fitted on train + validation: every row the kfloop chain learns from (train) or
    steers by (validation: tuning and early stopping), and scored on the same test split as
    the acceptance test. It sees exactly the kfloop model's features (``feature_spec.json``:
    the key and columns kfloop ignores, such as timestamps, are left out), categoricals as
    pandas ``category`` dtype through ``categorical_features="from_dtype"``.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import mean_squared_error, roc_auc_score

    spec = chain.spec
    fit_tables = [
        pq.read_table(split_artifact_parquet(chain.splits[s])) for s in ("train", "validation")
    ]
    categories: dict[str, list[str]] = {}
    for f in spec.categorical:
        seen: set[str] = set()
        for table in fit_tables:
            seen.update(v for v in table.column(f.name).to_pylist() if v is not None)
        categories[f.name] = sorted(seen)
    x_fit = pd.concat(
        [_frame(chain.splits[s], spec, categories) for s in ("train", "validation")],
        ignore_index=True,
    )
    y_fit = np.concatenate([_label(chain.splits[s], label) for s in ("train", "validation")])
    x_test = _frame(chain.splits["test"], spec, categories)
    y_test = _label(chain.splits["test"], label)
    if chain.task == "binary_classification":
        clf = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
        clf.fit(x_fit, y_fit.astype(np.int64))
        value = float(roc_auc_score(y_test.astype(np.int64), clf.predict_proba(x_test)[:, 1]))
        metric = "auc"
    else:
        reg = HistGradientBoostingRegressor(categorical_features="from_dtype", random_state=0)
        reg.fit(x_fit, y_fit)
        value = math.sqrt(float(mean_squared_error(y_test, reg.predict(x_test))))
        metric = "rmse"
    return BaselineResult(
        metric=metric,
        value=value,
        fit_rows=len(x_fit),
        test_rows=len(x_test),
        features=x_fit.shape[1],
    )
