"""Drift of logged traffic against the model's reference profile: PSI and Jensen-Shannon.

Pure numpy. The reference is the ``reference_profile.json`` that ``train_model`` writes (see
:mod:`kfloop.model.profile`): per numeric feature quantile bin ``edges`` and ``frequencies``,
per categorical feature the top-K ``frequencies`` plus ``"__other__"``, and the same bins for
the model's predictions. Live values are binned exactly the same way
(:func:`kfloop.model.profile.bin_frequencies` semantics: outer bins open-ended; a category not
in the reference counts as ``"__other__"``), over a sliding window of the last ``window``
rows.

Definitions (both over the non-missing values; missing values are reported apart as the
missing rate):

- **PSI** (population stability index) ``sum_i (a_i - e_i) * ln(a_i / e_i)`` with ``e`` the
  reference and ``a`` the window frequencies, each share clipped below at :data:`PSI_EPSILON`
  (``1e-4``) so that an empty bin gives a large but finite value. 0 for identical
  distributions; the usual reading is < 0.1 stable, 0.1-0.2 moderate, > 0.2 shifted.
- **Jensen-Shannon divergence**, base 2: ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with
  ``m = (p + q) / 2`` and ``log2``: symmetric, always finite (no smoothing), **bounded in
  [0, 1]** (1 for distributions with disjoint support). This is the divergence, not the
  distance (its square root).

A window with no non-missing value has no distribution: both measures are ``nan`` then
(Prometheus shows ``NaN``), never a made-up 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfloop.core.errors import DataError
from kfloop.model.profile import OTHER

PSI_EPSILON = 1e-4
"""Floor of a bin share in :func:`psi` (an empty bin would make the log infinite)."""
MISSING = -1
"""Bin index of a missing value in a window."""


def _as_distribution(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise DataError(f"{what}: empty distribution")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise DataError(f"{what}: shares must be finite and >= 0, got {arr.tolist()}")
    return arr


def psi(
    expected: Sequence[float] | np.ndarray,
    actual: Sequence[float] | np.ndarray,
    epsilon: float = PSI_EPSILON,
) -> float:
    """Population stability index of ``actual`` against ``expected`` (shares per bin).

    Both are renormalised to sum to 1 after clipping each share below at ``epsilon``.
    Returns ``nan`` when ``actual`` is all zeros (no observed value).

    Raises:
        DataError: different lengths, an empty or negative distribution.
    """
    e = _as_distribution(expected, "expected")
    a = _as_distribution(actual, "actual")
    if e.size != a.size:
        raise DataError(f"psi: expected has {e.size} bins, actual has {a.size}")
    if a.sum() <= 0 or e.sum() <= 0:
        return math.nan
    e = np.maximum(e / e.sum(), epsilon)
    a = np.maximum(a / a.sum(), epsilon)
    e /= e.sum()
    a /= a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def js_divergence(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two share vectors.

    Returns ``nan`` when either vector is all zeros.

    Raises:
        DataError: different lengths, an empty or negative distribution.
    """
    pa_ = _as_distribution(p, "p")
    qa = _as_distribution(q, "q")
    if pa_.size != qa.size:
        raise DataError(f"js_divergence: p has {pa_.size} bins, q has {qa.size}")
    if pa_.sum() <= 0 or qa.sum() <= 0:
        return math.nan
    pa_ = pa_ / pa_.sum()
    qa = qa / qa.sum()
    m = (pa_ + qa) / 2.0

    def kl(x: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / m[mask])))

    value = 0.5 * kl(pa_) + 0.5 * kl(qa)
    return min(max(value, 0.0), 1.0)


# -- binning like the reference profile ---------------------------------------------------


def numeric_bins(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin index per value (``MISSING`` for null/NaN/inf), the profile's open-ended bins."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    out = np.full(x.shape, MISSING, dtype=np.int32)
    if len(edges) < 2:
        return out
    finite = np.isfinite(x)
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    out[finite] = np.searchsorted(inner, x[finite], side="right")
    return out


class CategoryCoder:
    """Maps category strings to the reference's bins: listed values, then ``__other__``."""

    def __init__(self, frequencies: Mapping[str, float]) -> None:
        self.names = [k for k in frequencies if k != OTHER] + [OTHER]
        self.expected = np.array(
            [float(frequencies.get(k, 0.0)) for k in self.names], dtype=np.float64
        )
        self._index = {k: i for i, k in enumerate(self.names[:-1])}
        self._other = len(self.names) - 1
        self._lookup: dict[Any, int] = {**self._index, None: MISSING, "": MISSING}
        self._values: pa.Array | None = None

    def codes(self, values: Sequence[Any] | pa.Array) -> np.ndarray:
        """Bin index per value; ``None`` and ``""`` are ``MISSING``."""
        if isinstance(values, pa.Array):  # looked up in Arrow (C++), not value by value
            if self._values is None:
                self._values = pa.array(self.names[:-1], pa.string())
            found = pc.fill_null(pc.index_in(values, value_set=self._values), self._other)
            codes = found.to_numpy(zero_copy_only=False).astype(np.int32)
            missing = pc.or_kleene(values.is_null(), pc.equal(values, ""))
            codes[missing.to_numpy(zero_copy_only=False)] = MISSING
            return codes
        try:  # dict.get mapped over the values: no Python frame per value
            return np.fromiter(
                map(self._lookup.get, values, itertools.repeat(self._other)),
                dtype=np.int32,
                count=len(values),
            )
        except TypeError:  # an unhashable value (a list): not a category, so other
            get, other = self._lookup.get, self._other
            return np.fromiter(
                (get(v, other) if isinstance(v, Hashable) else other for v in values),
                dtype=np.int32,
                count=len(values),
            )


# -- sliding window -------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftValue:
    """Drift of one feature (or the prediction) over the current window."""

    psi: float
    js: float
    missing_rate: float
    rows: int


class BinWindow:
    """The bin indices of the last ``size`` values (a ring buffer), against ``expected``."""

    def __init__(self, expected: Sequence[float] | np.ndarray, size: int) -> None:
        if size < 1:
            raise DataError(f"window size must be >= 1, got {size}")
        self.expected = np.asarray(expected, dtype=np.float64)
        self.size = size
        self._ring = np.full(size, MISSING, dtype=np.int32)
        self._pos = 0
        self._filled = 0

    def add(self, codes: np.ndarray) -> None:
        """Append bin indices (``MISSING`` for missing), dropping the oldest past ``size``."""
        codes = np.asarray(codes, dtype=np.int32).reshape(-1)
        if codes.size >= self.size:
            self._ring[:] = codes[-self.size :]
            self._pos = 0
            self._filled = self.size
            return
        end = self._pos + codes.size
        if end <= self.size:
            self._ring[self._pos : end] = codes
        else:
            first = self.size - self._pos
            self._ring[self._pos :] = codes[:first]
            self._ring[: end - self.size] = codes[first:]
        self._pos = end % self.size
        self._filled = min(self.size, self._filled + codes.size)

    @property
    def rows(self) -> int:
        """Values in the window (missing included)."""
        return self._filled

    def frequencies(self) -> np.ndarray:
        """Shares of the non-missing window values per bin (all zeros when none)."""
        window = self._ring[: self._filled] if self._filled < self.size else self._ring
        present = window[window >= 0]
        counts = np.bincount(present, minlength=self.expected.size)[: self.expected.size]
        total = counts.sum()
        return counts / total if total else counts.astype(np.float64)

    def value(self) -> DriftValue:
        """PSI, JS and missing rate of the window (``nan`` for an empty window)."""
        if self._filled == 0 or self.expected.size == 0:
            return DriftValue(math.nan, math.nan, math.nan, self._filled)
        window = self._ring[: self._filled] if self._filled < self.size else self._ring
        missing = float(np.count_nonzero(window < 0)) / self._filled
        actual = self.frequencies()
        if actual.sum() <= 0:
            return DriftValue(math.nan, math.nan, missing, self._filled)
        return DriftValue(
            psi(self.expected, actual), js_divergence(self.expected, actual), missing, self._filled
        )


class DriftMonitor:
    """Sliding-window drift of every profiled feature and of the prediction.

    Args:
        profile: The parsed ``reference_profile.json``.
        window: Rows per sliding window (the last ``window`` rows logged).

    Raises:
        DataError: a profile without ``numeric``/``categorical`` sections or with bad bins.
    """

    def __init__(self, profile: Mapping[str, Any], window: int) -> None:
        numeric = profile.get("numeric")
        categorical = profile.get("categorical")
        if not isinstance(numeric, Mapping) or not isinstance(categorical, Mapping):
            raise DataError(
                "reference profile: needs 'numeric' and 'categorical' sections (the "
                "reference_profile.json that train_model writes)"
            )
        self.window = window
        self.edges: dict[str, list[float]] = {}
        self.windows: dict[str, BinWindow] = {}
        self.coders: dict[str, CategoryCoder] = {}
        for name, item in numeric.items():
            edges = [float(e) for e in item.get("edges", [])]
            freqs = [float(f) for f in item.get("frequencies", [])]
            if edges and len(freqs) != len(edges) - 1:
                raise DataError(
                    f"reference profile: numeric feature {name!r} has {len(edges)} edges "
                    f"and {len(freqs)} frequencies; expected len(edges) - 1 frequencies"
                )
            self.edges[name] = edges
            self.windows[name] = BinWindow(freqs, window)
        for name, item in categorical.items():
            coder = CategoryCoder(item.get("frequencies", {}))
            self.coders[name] = coder
            self.windows[name] = BinWindow(coder.expected, window)
        pred = profile.get("prediction") or {}
        self.prediction_edges = [float(e) for e in pred.get("edges", [])]
        self.prediction_window = BinWindow([float(f) for f in pred.get("frequencies", [])], window)

    @property
    def features(self) -> list[str]:
        """Profiled feature names: numeric, then categorical (profile order)."""
        return list(self.windows)

    def add_numeric(self, name: str, values: np.ndarray | Sequence[float | None]) -> None:
        """Add values (``None``/NaN = missing) of numeric feature ``name`` to its window."""
        x = np.asarray(values, dtype=np.float64)
        self.windows[name].add(numeric_bins(x, self.edges[name]))

    def add_categorical(self, name: str, values: Sequence[Any] | pa.Array) -> None:
        """Add values (``None``/``""`` = missing; a list or an Arrow string array) of
        categorical feature ``name``."""
        self.windows[name].add(self.coders[name].codes(values))

    def add_predictions(self, values: np.ndarray | Sequence[float | None]) -> None:
        """Add predictions (``None``/NaN = missing) to the prediction window."""
        x = np.asarray(values, dtype=np.float64)
        self.prediction_window.add(numeric_bins(x, self.prediction_edges))

    def add_columns(
        self, columns: Mapping[str, Sequence[Any]], predictions: np.ndarray | Sequence[Any]
    ) -> None:
        """Add one batch: ``columns`` maps profiled feature names to equal-length values."""
        self.add_features(columns)
        self.add_predictions(predictions)

    def add_features(self, columns: Mapping[str, Any]) -> None:
        """Add feature values only (``columns`` as for :meth:`add_columns`)."""
        for name, values in columns.items():
            if name in self.coders:
                self.add_categorical(name, values)
            elif name in self.edges:
                self.add_numeric(name, values)

    def feature_drift(self) -> dict[str, DriftValue]:
        """Current drift per feature."""
        return {name: w.value() for name, w in self.windows.items()}

    def prediction_drift(self) -> DriftValue:
        """Current drift of the prediction distribution."""
        return self.prediction_window.value()
