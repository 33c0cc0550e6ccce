"""Model quality metrics: pure functions over label and prediction arrays (scikit-learn).

Binary classification metrics take the true labels (0/1) and the predicted probability of
class 1; regression metrics take the true and predicted values. Nothing here reads files or
knows about KFP: :mod:`kfloop.model.evaluate` and :mod:`kfloop.model.acceptance` call these on
model predictions.

Metric names are the keys of the dictionaries returned here and the names that objectives
(:mod:`kfloop.model.objectives`) may use:

* binary classification: ``auc`` (ROC AUC), ``pr_auc`` (average precision), ``accuracy``,
  ``precision``, ``recall``, ``f1`` (these four at a decision threshold), ``log_loss``,
  ``positive_rate`` (share of predictions at or above the threshold);
* regression: ``rmse``, ``mae``, ``r2``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn import metrics as skm

from kfloop.core.errors import ConfigError, DataError

Task = Literal["binary_classification", "regression"]
TASKS: tuple[str, ...] = ("binary_classification", "regression")

CLASSIFICATION_METRICS: tuple[str, ...] = (
    "auc",
    "pr_auc",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "log_loss",
    "positive_rate",
)
REGRESSION_METRICS: tuple[str, ...] = ("rmse", "mae", "r2")

# Metrics where a larger value is better; every other metric is better when smaller.
# ``positive_rate`` has no "better" direction; it counts as higher-is-better only for the
# ``max_regression`` arithmetic (a drop is the regression).
HIGHER_IS_BETTER: frozenset[str] = frozenset(
    {"auc", "pr_auc", "accuracy", "precision", "recall", "f1", "positive_rate", "r2"}
)

MAX_ROC_POINTS = 200
OTHER_SLICE = "__other__"
MISSING_SLICE = "__missing__"


def known_metrics(task: str) -> tuple[str, ...]:
    """Metric names computed for ``task`` (``binary_classification`` or ``regression``)."""
    if task == "binary_classification":
        return CLASSIFICATION_METRICS
    if task == "regression":
        return REGRESSION_METRICS
    raise ConfigError("task", f"unknown task {task!r}; use one of {', '.join(TASKS)}")


def check_threshold(threshold: float, field_name: str = "threshold") -> float:
    """Return ``threshold`` as a float if it lies strictly between 0 and 1.

    Raises:
        ConfigError: naming ``field_name`` otherwise.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ConfigError(field_name, f"must be a number in (0, 1), got {threshold!r}")
    value = float(threshold)
    if not (0.0 < value < 1.0):
        raise ConfigError(
            field_name, f"must lie strictly between 0 and 1 (a probability cut), got {value}"
        )
    return value


def _as_vector(values: ArrayLike, name: str) -> NDArray[np.float64]:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: values are not numeric: {exc}") from None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{name}: expected a 1-D array (or shape (n, 1)), got shape {arr.shape}")
    return arr


def _pair(
    y_true: ArrayLike, y_pred: ArrayLike, pred_name: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    t = _as_vector(y_true, "labels")
    p = _as_vector(y_pred, pred_name)
    if t.shape[0] != p.shape[0]:
        raise DataError(f"labels ({t.shape[0]} rows) and {pred_name} ({p.shape[0]} rows) differ")
    if t.shape[0] == 0:
        raise DataError("no rows to compute metrics on")
    for arr, name in ((t, "labels"), (p, pred_name)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise DataError(
                f"{name}: {bad.size} value(s) are NaN or infinite (first at row {int(bad[0])})"
            )
    return t, p


def _binary(
    y_true: ArrayLike, y_score: ArrayLike, *, need_both_classes: bool = True
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    t, p = _pair(y_true, y_score, "predicted probabilities")
    bad = np.flatnonzero((t != 0.0) & (t != 1.0))
    if bad.size:
        raise DataError(
            f"labels: binary classification needs labels 0/1; row {int(bad[0])} has "
            f"{t[bad[0]]!r} ({bad.size} such row(s))"
        )
    out = np.flatnonzero((p < 0.0) | (p > 1.0))
    if out.size:
        raise DataError(
            f"predicted probabilities: must lie in [0, 1]; row {int(out[0])} has {p[out[0]]!r}"
        )
    labels = t.astype(np.int64)
    if need_both_classes and np.unique(labels).size < 2:
        only = int(labels[0])
        raise DataError(
            f"labels: all {labels.size} rows have class {only}; AUC and the other binary "
            "metrics need both classes 0 and 1 in the evaluated data"
        )
    return labels, p


def confusion_matrix(
    y_true: ArrayLike, y_score: ArrayLike, threshold: float = 0.5
) -> list[list[int]]:
    """Binary confusion matrix at ``threshold``: rows are actual 0/1, columns predicted 0/1.

    A score at or above ``threshold`` predicts class 1. ``[[tn, fp], [fn, tp]]``.
    """
    cut = check_threshold(threshold)
    labels, scores = _binary(y_true, y_score, need_both_classes=False)
    matrix = skm.confusion_matrix(labels, (scores >= cut).astype(np.int64), labels=[0, 1])
    return [[int(v) for v in row] for row in matrix]


def classification_metrics(
    y_true: ArrayLike,
    y_score: ArrayLike,
    threshold: float = 0.5,
    *,
    allow_single_class: bool = False,
) -> dict[str, float | None]:
    """Binary classification metrics of predicted probabilities ``y_score`` against 0/1 labels.

    Args:
        y_true: True labels, 0 or 1.
        y_score: Predicted probability of class 1, in [0, 1].
        threshold: A score at or above this predicts class 1 (accuracy, precision, recall, f1,
            positive_rate).
        allow_single_class: When all labels are one class, return ``None`` for the metrics
            that are undefined then (``auc``, ``pr_auc``) instead of raising (used for slices).

    Returns:
        ``{name: value}`` for every name in :data:`CLASSIFICATION_METRICS`.

    Raises:
        DataError: labels not 0/1, probabilities outside [0, 1], NaN, length mismatch, or one
            class only (unless ``allow_single_class``).
    """
    cut = check_threshold(threshold)
    labels, scores = _binary(y_true, y_score, need_both_classes=not allow_single_class)
    predicted = (scores >= cut).astype(np.int64)
    both = np.unique(labels).size == 2
    return {
        "auc": float(skm.roc_auc_score(labels, scores)) if both else None,
        "pr_auc": float(skm.average_precision_score(labels, scores)) if both else None,
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "log_loss": float(skm.log_loss(labels, scores, labels=[0, 1])),
        "positive_rate": float(predicted.mean()),
    }


def regression_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float | None]:
    """Regression metrics: ``rmse``, ``mae`` and ``r2`` (``None`` when the labels are constant).

    Raises:
        DataError: NaN/infinite values or length mismatch.
    """
    t, p = _pair(y_true, y_pred, "predictions")
    r2: float | None = None
    if t.size >= 2 and float(np.var(t)) > 0.0:
        r2 = float(skm.r2_score(t, p))
    return {
        "rmse": float(math.sqrt(skm.mean_squared_error(t, p))),
        "mae": float(skm.mean_absolute_error(t, p)),
        "r2": r2,
    }


def compute_metrics(
    task: str,
    y_true: ArrayLike,
    y_pred: ArrayLike,
    threshold: float = 0.5,
    *,
    allow_single_class: bool = False,
) -> dict[str, float | None]:
    """:func:`classification_metrics` or :func:`regression_metrics` by ``task``."""
    known_metrics(task)
    if task == "binary_classification":
        return classification_metrics(
            y_true, y_pred, threshold, allow_single_class=allow_single_class
        )
    return regression_metrics(y_true, y_pred)


@dataclass(frozen=True)
class RocCurve:
    """ROC curve points, ordered by decreasing threshold (``fpr``/``tpr`` increasing)."""

    fpr: list[float]
    tpr: list[float]
    thresholds: list[float]

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists for JSON."""
        return asdict(self)


def _downsample_indices(n: int, max_points: int) -> NDArray[np.int64]:
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


def roc_curve_points(
    y_true: ArrayLike, y_score: ArrayLike, max_points: int = MAX_ROC_POINTS
) -> RocCurve:
    """ROC curve (``sklearn.metrics.roc_curve``), downsampled to at most ``max_points`` points.

    The first and last points, (0, 0) and (1, 1), are always kept. sklearn's first threshold
    is ``inf`` (nothing predicted positive); JSON and KFP need finite numbers, so it is
    replaced by 1.0, or by the next float above the highest score when a score equals 1.0.

    Raises:
        ConfigError: ``max_points`` below 2.
        DataError: as :func:`classification_metrics`, including one class only.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
        raise ConfigError("max_points", f"must be an integer >= 2, got {max_points!r}")
    labels, scores = _binary(y_true, y_score)
    fpr, tpr, thr = skm.roc_curve(labels, scores, drop_intermediate=True)
    top = float(scores.max())
    finite_top = 1.0 if top < 1.0 else float(np.nextafter(top, np.inf))
    thr = np.where(np.isfinite(thr), thr, finite_top)
    keep = _downsample_indices(fpr.size, max_points)
    return RocCurve(
        fpr=[float(v) for v in fpr[keep]],
        tpr=[float(v) for v in tpr[keep]],
        thresholds=[float(v) for v in thr[keep]],
    )


@dataclass(frozen=True)
class SliceMetrics:
    """Metrics of the rows whose slice feature has one value (or the rest, or missing).

    ``small`` is true when the slice has fewer than the requested minimum of rows: its
    metrics are reported but are not reliable. Metrics undefined on the slice are ``None``
    (for example AUC when the slice holds one class only); ``note`` says why.
    """

    feature: str
    value: str
    rows: int
    small: bool
    metrics: dict[str, float | None]
    note: str = ""
    members: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return asdict(self)


def _slice_key(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def slice_metrics(
    task: str,
    y_true: ArrayLike,
    y_pred: ArrayLike,
    slice_values: Sequence[object],
    *,
    feature: str,
    top_n: int = 10,
    min_rows: int = 30,
    threshold: float = 0.5,
) -> list[SliceMetrics]:
    """Metrics per value of a (categorical) feature.

    The ``top_n`` most frequent values (ties broken by value, for a stable order) each get a
    slice; all other non-missing values together form the ``__other__`` slice (its
    ``members`` list the values folded in, up to 50), and missing values (``None``/NaN) form
    ``__missing__``. Slices with fewer than ``min_rows`` rows are reported with
    ``small=True``. Values are compared as strings, so an integer or boolean feature works too.

    Args:
        task: ``binary_classification`` or ``regression``.
        y_true: True labels/values.
        y_pred: Predicted probabilities (classification) or values (regression).
        slice_values: The feature's value per row (same length as ``y_true``).
        feature: The feature name (reported in each slice).
        top_n: How many of the most frequent values get their own slice (>= 1).
        min_rows: Slices smaller than this are flagged ``small`` (>= 1).
        threshold: Decision threshold for classification.

    Returns:
        Slices in order: the top values by decreasing count, then ``__other__``, then
        ``__missing__`` (each only when it has rows).

    Raises:
        ConfigError: ``top_n`` or ``min_rows`` below 1, bad ``threshold``, unknown ``task``.
        DataError: length mismatch or bad labels/predictions.
    """
    known_metrics(task)
    for name, value in (("top_n", top_n), ("min_rows", min_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(name, f"must be an integer >= 1, got {value!r}")
    t, p = _pair(y_true, y_pred, "predictions")
    keys = [_slice_key(v) for v in slice_values]
    if len(keys) != t.size:
        raise DataError(
            f"slice feature {feature!r}: {len(keys)} values for {t.size} labels; lengths differ"
        )
    counts = Counter(k for k in keys if k is not None)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    top = [k for k, _ in ranked[:top_n]]
    rest = [k for k, _ in ranked[top_n:]]
    key_arr = np.array(["" if k is None else k for k in keys], dtype=object)
    missing = np.array([k is None for k in keys], dtype=bool)
    groups: list[tuple[str, NDArray[np.bool_], list[str]]] = [
        (k, (key_arr == k) & ~missing, []) for k in top
    ]
    if rest:
        in_rest = np.isin(key_arr, np.array(rest, dtype=object)) & ~missing
        groups.append((OTHER_SLICE, in_rest, rest[:50]))
    if missing.any():
        groups.append((MISSING_SLICE, missing, []))
    out: list[SliceMetrics] = []
    for slice_value, mask, members in groups:
        rows = int(mask.sum())
        values = compute_metrics(task, t[mask], p[mask], threshold, allow_single_class=True)
        undefined = sorted(k for k, v in values.items() if v is None)
        note = ""
        if undefined:
            note = f"undefined on this slice ({', '.join(undefined)}): "
            note += "one class only" if task == "binary_classification" else "constant labels"
        out.append(
            SliceMetrics(
                feature=feature,
                value=slice_value,
                rows=rows,
                small=rows < min_rows,
                metrics=values,
                note=note,
                members=members,
            )
        )
    return out
