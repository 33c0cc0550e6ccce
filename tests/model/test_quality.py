"""Model quality: the training pipeline's model against scikit-learn's HistGradientBoosting.

The issue's targets, on the SAME held-back test split and the SAME features:

* synthetic demo data (``generate_table(rows=20000, seed=0)``) and scikit-learn's bundled
  breast-cancer data: the kfloop model's test AUC is at most 0.01 below
  ``HistGradientBoostingClassifier``'s;
* scikit-learn's bundled diabetes data (regression): the kfloop model's test RMSE is at most
  10 % above ``HistGradientBoostingRegressor``'s.

The kfloop model may be better. Each data set is written to CSV (with an ``id`` key) and goes
through the training pipeline's chain with the library functions and the pipeline's own
defaults (:mod:`tests.model.quality_chain`): ingest, clean, label, hash split 0.7/0.15/0.15,
tune (random search, 4 trials of 8 epochs), train with the best hyperparameters, package as
ONNX, acceptance test on the test split with the PACKAGED ONNX model; the kfloop figure is
the acceptance test's. The baseline (default settings, ``random_state=0``) is fitted on
train + validation - every row the kfloop chain learns from or steers by - and sees exactly
the kfloop model's features. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes

from kfloop.data.synth import generate_table
from tests.model.quality_chain import (
    KEY,
    LABEL,
    BaselineResult,
    ChainResult,
    hgb_baseline,
    run_chain,
    write_frame_csv,
    write_table_csv,
)

pytestmark = pytest.mark.slow

MAX_AUC_SHORTFALL = 0.01
MAX_RMSE_EXCESS = 0.10


def _report(case: str, chain: ChainResult, base: BaselineResult, seconds: float) -> str:
    ours = chain.test_metrics[base.metric]
    line = (
        f"[quality] {case}: kfloop (ONNX) test {base.metric} = {ours:.4f}, "
        f"HistGradientBoosting = {base.value:.4f} (fitted on {base.fit_rows} train+validation "
        f"rows, {base.features} features; test rows {base.test_rows}); "
        f"kfloop best hyperparameters {chain.best_hyperparameters}, {chain.tune_trials} trials, "
        f"epochs run {chain.epochs_run} (best {chain.best_epoch}); steps {chain.seconds}; "
        f"{seconds:.1f} s"
    )
    print(line)
    return line


def _run(
    case: str, csv: Path, tmp_path: Path, overrides: dict[str, Any] | None = None
) -> tuple[ChainResult, BaselineResult]:
    started = time.monotonic()
    work = tmp_path / "chain"
    work.mkdir()
    chain = run_chain(csv, work, overrides=overrides)
    base = hgb_baseline(chain)
    _report(case, chain, base, time.monotonic() - started)

    # The figure compared is the packaged model's, on the whole test split, from the same
    # features the baseline sees.
    assert chain.acceptance_source == "onnx"
    assert sum(chain.rows.values()) == base.fit_rows + base.test_rows
    assert base.test_rows == chain.rows["test"]
    assert base.features == len(chain.spec.features)
    assert KEY not in chain.spec.names and LABEL not in chain.spec.names
    ours = chain.test_metrics[base.metric]
    assert ours is not None and math.isfinite(ours), chain.test_metrics
    return chain, base


def _assert_auc(case: str, chain: ChainResult, base: BaselineResult) -> None:
    assert chain.task == "binary_classification"
    ours = chain.test_metrics["auc"]
    assert ours is not None
    assert ours >= base.value - MAX_AUC_SHORTFALL, (
        f"{case}: kfloop test AUC {ours:.4f} is more than {MAX_AUC_SHORTFALL} below "
        f"HistGradientBoostingClassifier's {base.value:.4f} on the same test split "
        f"({base.test_rows} rows)"
    )


def test_demo_data_auc_within_0_01_of_hist_gradient_boosting(tmp_path: Path) -> None:
    csv = write_table_csv(generate_table(rows=20_000, seed=0), tmp_path / "customers.csv")
    chain, base = _run("synthetic demo data", csv, tmp_path)
    # The baseline is a real one: the demo label is learnable, well above chance.
    assert base.value > 0.8
    # The timestamp is not a feature of either model; every other column is.
    assert "event_time" in chain.spec.ignored
    assert len(chain.spec.features) == 10
    _assert_auc("synthetic demo data", chain, base)


def test_breast_cancer_auc_within_0_01_of_hist_gradient_boosting(tmp_path: Path) -> None:
    data = load_breast_cancer(as_frame=True)
    frame = data.data.copy()
    frame[LABEL] = data.target.astype(np.int64)
    csv = write_frame_csv(frame, tmp_path / "breast_cancer.csv")
    chain, base = _run("breast cancer", csv, tmp_path)
    assert chain.rows["train"] + chain.rows["validation"] + chain.rows["test"] == len(frame)
    assert len(chain.spec.features) == data.data.shape[1]
    assert base.value > 0.9
    _assert_auc("breast cancer", chain, base)


def test_diabetes_rmse_within_10_percent_of_hist_gradient_boosting(tmp_path: Path) -> None:
    data = load_diabetes(as_frame=True, scaled=False)
    frame: pd.DataFrame = data.data.copy()
    frame[LABEL] = data.target.astype(np.float64)
    csv = write_frame_csv(frame, tmp_path / "diabetes.csv")
    # The pipeline's default acceptance objective is a minimum AUC, which a regression model
    # does not have: a regression run sets its own objectives (none here: the figure is what
    # this test compares).
    chain, base = _run("diabetes", csv, tmp_path, overrides={"acceptance_objectives": {}})
    assert chain.task == "regression"
    assert chain.rows["train"] + chain.rows["validation"] + chain.rows["test"] == len(frame)
    ours = chain.test_metrics["rmse"]
    assert ours is not None
    # The baseline is a real one: better than predicting the mean (the target's std is ~77).
    assert base.value < float(np.std(data.target))
    assert ours <= base.value * (1.0 + MAX_RMSE_EXCESS), (
        f"diabetes: kfloop test RMSE {ours:.3f} is more than {MAX_RMSE_EXCESS:.0%} above "
        f"HistGradientBoostingRegressor's {base.value:.3f} on the same test split "
        f"({base.test_rows} rows)"
    )
