"""The reference profile: what the training split looked like, for the drift monitor.

Computed with numpy from the TRAINING split and the model's predictions on it, written as
``reference_profile.json`` in the trained-model folder. Layout (``version`` 1)::

    {
      "version": 1, "rows": 5000, "task": "binary_classification", "label": "label",
      "numeric": {"<name>": {"edges": [...], "frequencies": [...], "missing_rate": 0.01,
                             "mean": 3.2, "std": 1.1, "count": 4950}},
      "categorical": {"<name>": {"frequencies": {"a": 0.4, ..., "__other__": 0.1},
                                 "missing_rate": 0.02, "count": 4900, "distinct": 73}},
      "prediction": {"edges": [...], "frequencies": [...], "mean": 0.31, "std": 0.2,
                     "count": 5000},
      "label_distribution": {"positive_rate": 0.3}   (regression: edges, frequencies, ...)
    }

Binning (numeric features and predictions): ``edges`` are the 0, 10, ..., 100 % quantiles of
the non-missing values, duplicates removed, so there are ``len(edges) - 1`` bins (at most
10); a feature with at most 10 distinct values (a bool, a small count) gets one bin per value
instead (inner edges at the midpoints). The outer bins are open-ended: a value below
``edges[1]`` falls in bin 0 and a value at or above ``edges[-2]`` in the last bin; inner bins
are ``[edges[i], edges[i+1])``. Use :func:`bin_frequencies` to bin new values the same way.
Frequencies are shares of the non-missing values (they sum to 1); ``missing_rate`` is the
share of all rows that are missing (null, NaN, inf; ``""`` for categoricals).

Categorical frequencies: the ``top_k`` (50) most frequent values by count (ties by value),
plus ``"__other__"`` for the rest (present only when there is a rest).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from kfloop.model.features import FeatureSpec, numeric_values, string_values

PROFILE_VERSION = 1
DEFAULT_BINS = 10
DEFAULT_TOP_K = 50
OTHER = "__other__"


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> list[float]:
    """Bin edges of the finite ``values`` (``[]`` when there are none).

    Up to ``bins`` distinct values (booleans, small counts): one bin per value, the inner
    edges at the midpoints between consecutive values. Otherwise the 0, 1/bins, ..., 100 %
    quantiles, duplicates removed.
    """
    finite = values[np.isfinite(values)].astype(np.float64)
    if finite.size == 0:
        return []
    distinct = np.unique(finite)
    if distinct.size == 1:
        return [float(distinct[0]), float(distinct[0])]
    if distinct.size <= bins:
        mids = (distinct[:-1] + distinct[1:]) / 2.0
        return [float(distinct[0]), *(float(m) for m in mids), float(distinct[-1])]
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
    return [float(e) for e in edges]


def bin_frequencies(values: np.ndarray, edges: list[float]) -> list[float]:
    """Shares of finite ``values`` per bin of ``edges`` (outer bins open-ended).

    Returns a list of ``len(edges) - 1`` shares summing to 1 (all zeros when no value is
    finite).
    """
    if len(edges) < 2:
        return []
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    n_bins = len(edges) - 1
    if finite.size == 0:
        return [0.0] * n_bins
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    index = np.searchsorted(inner, finite, side="right")
    counts = np.bincount(index, minlength=n_bins)[:n_bins]
    return [float(c) / finite.size for c in counts]


def _numeric_profile(values: np.ndarray, bins: int) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    n = values.size
    edges = quantile_edges(finite, bins)
    return {
        "edges": edges,
        "frequencies": bin_frequencies(finite, edges),
        "missing_rate": float(1.0 - finite.size / n) if n else 0.0,
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "count": int(finite.size),
    }


def _categorical_profile(values: np.ndarray, top_k: int) -> dict[str, Any]:
    counts = Counter(v for v in values.tolist() if v)
    present = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    frequencies = {str(k): c / present for k, c in ranked[:top_k]} if present else {}
    rest = sum(c for _, c in ranked[top_k:])
    if rest:
        frequencies[OTHER] = rest / present
    n = values.size
    return {
        "frequencies": frequencies,
        "missing_rate": float(1.0 - present / n) if n else 0.0,
        "count": int(present),
        "distinct": len(counts),
    }


def compute_reference_profile(
    table: pa.Table,
    spec: FeatureSpec,
    predictions: np.ndarray,
    *,
    bins: int = DEFAULT_BINS,
    top_k: int = DEFAULT_TOP_K,
) -> dict[str, Any]:
    """Reference profile of the training ``table`` and the model's ``predictions`` on it.

    Args:
        table: The training split (features and label).
        spec: The model's feature spec.
        predictions: Model outputs on ``table``, shape (n,) or (n, 1).
        bins: Quantile bins per numeric feature and for predictions.
        top_k: Categories listed per categorical feature (the rest is ``__other__``).
    """
    preds = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if preds.size != table.num_rows:
        raise ValueError(f"{preds.size} predictions for {table.num_rows} rows")
    numeric: dict[str, Any] = {}
    categorical: dict[str, Any] = {}
    for f in spec.features:
        column = table.column(f.name)
        if f.kind == "numeric":
            numeric[f.name] = _numeric_profile(numeric_values(column), bins)
        else:
            categorical[f.name] = _categorical_profile(string_values(column), top_k)
    pred_profile = _numeric_profile(preds, bins)
    pred_profile.pop("missing_rate")
    label_profile: dict[str, Any] = {}
    if spec.label in table.column_names:
        y = numeric_values(table.column(spec.label))
        y = y[np.isfinite(y)]
        if spec.task == "binary_classification":
            label_profile = {"positive_rate": float(y.mean()) if y.size else None}
        else:
            label_profile = _numeric_profile(y, bins)
            label_profile.pop("missing_rate")
    return {
        "version": PROFILE_VERSION,
        "rows": int(table.num_rows),
        "task": spec.task,
        "label": spec.label,
        "binning": "quantile edges; outer bins open-ended; frequencies over non-missing values",
        "numeric": numeric,
        "categorical": categorical,
        "prediction": pred_profile,
        "label_distribution": label_profile,
    }
