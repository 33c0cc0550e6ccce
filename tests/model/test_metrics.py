"""Metrics against hand computations on tiny examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kfloop.core.errors import ConfigError, DataError
from kfloop.model.metrics import (
    CLASSIFICATION_METRICS,
    MISSING_SLICE,
    OTHER_SLICE,
    REGRESSION_METRICS,
    check_threshold,
    classification_metrics,
    compute_metrics,
    confusion_matrix,
    known_metrics,
    regression_metrics,
    roc_curve_points,
    slice_metrics,
)

# Tiny example, worked by hand (threshold 0.5):
#   row    0    1    2    3    4    5
#   y      0    0    1    1    1    0
#   score .1   .6   .7   .4   .9   .3
#   pred   0    1    1    0    1    0   -> TN=2 (rows 0,5) FP=1 (row 1) FN=1 (row 3) TP=2 (2,4)
# AUC: of the 9 (positive, negative) pairs, the positive scores higher in 8 -> 8/9.
Y = [0, 0, 1, 1, 1, 0]
S = [0.1, 0.6, 0.7, 0.4, 0.9, 0.3]


def test_known_metrics_per_task() -> None:
    assert "auc" in known_metrics("binary_classification")
    assert known_metrics("regression") == ("rmse", "mae", "r2")
    with pytest.raises(ConfigError, match="task.*'ranking'"):
        known_metrics("ranking")


def test_hand_computed_confusion_matrix_and_scores() -> None:
    assert confusion_matrix(Y, S, 0.5) == [[2, 1], [1, 2]]
    m = classification_metrics(Y, S, 0.5)
    assert set(m) == set(CLASSIFICATION_METRICS)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(8 / 9)
    assert m["positive_rate"] == pytest.approx(3 / 6)
    p_true = [0.9, 0.4, 0.7, 0.4, 0.9, 0.7]  # probability given to the true class, per row
    assert m["log_loss"] == pytest.approx(-sum(math.log(p) for p in p_true) / 6)


def test_threshold_moves_the_decision() -> None:
    # at 0.35 row 3 (score .4, y=1) becomes a true positive; a score equal to the cut is positive
    assert confusion_matrix(Y, S, 0.35) == [[2, 1], [0, 3]]
    assert confusion_matrix([0, 1], [0.5, 0.5], 0.5) == [[0, 1], [0, 1]]
    assert classification_metrics(Y, S, 0.35)["recall"] == pytest.approx(1.0)


def test_perfect_and_inverted_predictions() -> None:
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    perfect = classification_metrics(y, y.astype(float) * 0.98 + 0.01)
    assert perfect["auc"] == 1.0
    assert perfect["pr_auc"] == 1.0
    assert perfect["accuracy"] == 1.0
    assert perfect["f1"] == 1.0
    assert perfect["log_loss"] == pytest.approx(-math.log(0.99))
    inverted = classification_metrics(y, 1.0 - y.astype(float))
    assert inverted["auc"] == 0.0
    assert inverted["accuracy"] == 0.0


def test_labels_as_bool_and_column_vectors_are_accepted() -> None:
    y = np.array([[False], [True], [True], [False]])
    s = np.array([[0.2], [0.8], [0.6], [0.1]])
    assert classification_metrics(y, s)["auc"] == 1.0


def test_one_class_only_is_a_data_error_unless_allowed() -> None:
    with pytest.raises(DataError, match="all 3 rows have class 1"):
        classification_metrics([1, 1, 1], [0.2, 0.8, 0.9])
    m = classification_metrics([1, 1, 1], [0.2, 0.8, 0.9], allow_single_class=True)
    assert m["auc"] is None and m["pr_auc"] is None
    assert m["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("y", "s", "match"),
    [
        ([0, 2, 1], [0.1, 0.2, 0.3], "labels 0/1; row 1 has 2.0"),
        ([0, 1, 1], [0.1, 1.2, 0.3], r"\[0, 1\]; row 1 has 1.2"),
        ([0, 1, 1], [0.1, float("nan"), 0.3], "NaN or infinite.*row 1"),
        ([0, 1], [0.1, 0.2, 0.3], r"labels \(2 rows\).*\(3 rows\) differ"),
        ([], [], "no rows"),
    ],
)
def test_bad_classification_inputs(y: list[float], s: list[float], match: str) -> None:
    with pytest.raises(DataError, match=match):
        classification_metrics(y, s)


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.5, -0.1, True, "0.5"])
def test_threshold_must_be_a_probability_cut(bad: object) -> None:
    with pytest.raises(ConfigError, match="^threshold:"):
        check_threshold(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="^threshold:"):
        classification_metrics(Y, S, bad)  # type: ignore[arg-type]


def test_regression_metrics_hand_computed() -> None:
    # errors 0,0,0,1: MSE 1/4 -> RMSE 0.5; MAE 0.25; SS_tot = 2.25+.25+.25+2.25 = 5 -> R2 0.8
    m = regression_metrics([1, 2, 3, 4], [1, 2, 3, 5])
    assert set(m) == set(REGRESSION_METRICS)
    assert m["rmse"] == pytest.approx(0.5)
    assert m["mae"] == pytest.approx(0.25)
    assert m["r2"] == pytest.approx(0.8)
    assert compute_metrics("regression", [1, 2, 3, 4], [1, 2, 3, 5]) == m
    constant = regression_metrics([3, 3, 3], [3, 4, 2])
    assert constant["r2"] is None
    assert constant["mae"] == pytest.approx(2 / 3)


def test_roc_curve_small_is_exact_and_finite() -> None:
    roc = roc_curve_points(Y, S)
    assert (roc.fpr[0], roc.tpr[0]) == (0.0, 0.0)
    assert (roc.fpr[-1], roc.tpr[-1]) == (1.0, 1.0)
    assert all(math.isfinite(t) for t in roc.thresholds)
    assert roc.thresholds[0] == 1.0
    assert np.trapz(roc.tpr, roc.fpr) == pytest.approx(8 / 9)
    # a score of exactly 1.0: the "nothing positive" threshold must be above it
    top = roc_curve_points([0, 1, 1], [0.2, 1.0, 0.7])
    assert top.thresholds[0] > 1.0 and math.isfinite(top.thresholds[0])


def test_roc_curve_is_downsampled_for_kfp() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 5000)
    s = np.clip(y * 0.3 + rng.random(5000) * 0.7, 0, 1)
    roc = roc_curve_points(y, s)
    assert len(roc.fpr) == len(roc.tpr) == len(roc.thresholds) <= 200
    assert (roc.fpr[0], roc.tpr[0], roc.fpr[-1], roc.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(roc.fpr) >= 0) and np.all(np.diff(roc.tpr) >= 0)
    full_auc = classification_metrics(y, s)["auc"]
    assert np.trapz(roc.tpr, roc.fpr) == pytest.approx(full_auc, abs=0.01)
    with pytest.raises(ConfigError, match="max_points"):
        roc_curve_points(y, s, max_points=1)


def test_slices_top_values_other_and_missing() -> None:
    y = [0, 1, 0, 1, 1, 0, 1, 0, 1, 0]
    s = [0.2, 0.9, 0.6, 0.7, 0.3, 0.1, 0.8, 0.4, 0.6, 0.7]
    v = ["a", "a", "a", "a", "b", "b", "c", None, None, "a"]
    slices = slice_metrics("binary_classification", y, s, v, feature="color", top_n=1, min_rows=3)
    assert [(x.value, x.rows, x.small) for x in slices] == [
        ("a", 5, False),
        (OTHER_SLICE, 3, False),
        (MISSING_SLICE, 2, True),
    ]
    a = slices[0]
    assert a.feature == "color"
    # rows of "a": y 0,1,0,1,0 s .2,.9,.6,.7,.7 -> pred 0,1,1,1,1: TP 2, FP 2, TN 1
    assert a.metrics["accuracy"] == pytest.approx(3 / 5)
    assert a.metrics["precision"] == pytest.approx(2 / 4)
    # positives .9,.7 vs negatives .2,.6,.7: 5 wins and one tie (.7 = .7, half) of 6 pairs
    assert a.metrics["auc"] == pytest.approx(5.5 / 6)
    assert slices[1].members == ["b", "c"]
    # the "missing" slice: y 0,1 -> both classes, AUC defined (.6 > .4)
    assert slices[2].metrics["auc"] == 1.0
    single = slice_metrics("binary_classification", y, s, ["x"] * 9 + ["y"], feature="f")
    assert single[1].value == "y" and single[1].metrics["auc"] is None
    assert "one class only" in single[1].note and single[1].small


def test_slices_regression_and_bad_arguments() -> None:
    slices = slice_metrics(
        "regression", [1, 2, 3, 4], [1, 2, 3, 5], [1, 1, 2, 2], feature="n", min_rows=1
    )
    assert [(x.value, x.metrics["mae"]) for x in slices] == [("1", 0.0), ("2", 0.5)]
    with pytest.raises(DataError, match="slice feature 'n': 3 values for 4 labels"):
        slice_metrics("regression", [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3], feature="n")
    with pytest.raises(ConfigError, match="top_n"):
        slice_metrics("regression", [1, 2], [1, 2], [1, 2], feature="n", top_n=0)
