"""Drift math (PSI, Jensen-Shannon) against hand-computed values, and the sliding window."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from kfloop.core.errors import DataError
from kfloop.data.synth import generate_table
from kfloop.model.features import infer_feature_spec, numeric_values, string_values
from kfloop.model.profile import OTHER, bin_frequencies, compute_reference_profile
from kfloop.serving.drift import (
    MISSING,
    PSI_EPSILON,
    BinWindow,
    CategoryCoder,
    DriftMonitor,
    js_divergence,
    numeric_bins,
    psi,
)

# -- PSI -------------------------------------------------------------------------------------------


def test_psi_of_identical_distributions_is_zero() -> None:
    assert psi([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.0, abs=1e-12)


def test_psi_known_small_example() -> None:
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5) = 0.25 ln 2 + 0.25 ln 1.5
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(0.274653, abs=1e-6)


def test_psi_normalises_counts() -> None:
    assert psi([50, 50], [25, 75]) == pytest.approx(psi([0.5, 0.5], [0.25, 0.75]))


def test_psi_empty_bin_is_large_but_finite() -> None:
    value = psi([0.5, 0.5], [1.0, 0.0])
    assert math.isfinite(value)
    assert value > 2.0
    e, a = np.array([0.5, 0.5]), np.maximum(np.array([1.0, 0.0]), PSI_EPSILON)
    a /= a.sum()
    assert value == pytest.approx(float(np.sum((a - e) * np.log(a / e))))


def test_psi_no_observation_is_nan() -> None:
    assert math.isnan(psi([0.5, 0.5], [0.0, 0.0]))


@pytest.mark.parametrize(
    ("e", "a", "match"),
    [([0.5, 0.5], [1.0], "bins"), ([], [], "empty"), ([0.5, -0.5], [0.5, 0.5], ">= 0")],
)
def test_psi_bad_input_names_the_problem(e: list[float], a: list[float], match: str) -> None:
    with pytest.raises(DataError, match=match):
        psi(e, a)


# -- Jensen-Shannon --------------------------------------------------------------------------------


def test_js_identical_is_zero_and_disjoint_is_one() -> None:
    assert js_divergence([0.2, 0.8], [0.2, 0.8]) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)


def test_js_known_example_base_2() -> None:
    # p = [1, 0], q = [.5, .5], m = [.75, .25]
    kl_p = math.log2(1 / 0.75)
    kl_q = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    assert js_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(0.5 * (kl_p + kl_q))
    assert 0.5 * (kl_p + kl_q) == pytest.approx(0.311278, abs=1e-6)


def test_js_is_symmetric_and_bounded() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        p, q = rng.random(8) * (rng.random(8) > 0.3), rng.random(8)
        if p.sum() == 0:
            continue
        value = js_divergence(p, q)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(js_divergence(q, p))


# -- binning like the reference profile ------------------------------------------------------------


def test_numeric_bins_agree_with_profile_binning() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=1000)
    values[::17] = np.nan
    edges = [-3.0, -1.0, 0.0, 1.0, 3.0]
    codes = numeric_bins(values, edges)
    assert (codes[np.isnan(values)] == MISSING).all()
    counts = np.bincount(codes[codes >= 0], minlength=4)
    assert (counts / counts.sum()).tolist() == pytest.approx(bin_frequencies(values, edges))
    # outer bins are open-ended
    assert numeric_bins(np.array([-100.0, 100.0, np.inf]), edges).tolist() == [0, 3, MISSING]


def test_category_coder_maps_unknown_to_other_and_blank_to_missing() -> None:
    coder = CategoryCoder({"a": 0.5, "b": 0.3, OTHER: 0.2})
    assert coder.names == ["a", "b", OTHER]
    assert coder.codes(["a", "b", "zzz", None, ""]).tolist() == [0, 1, 2, MISSING, MISSING]
    assert coder.codes(["b", ["a"], 3, None]).tolist() == [1, 2, 2, MISSING]  # not strings: other
    no_other = CategoryCoder({"a": 1.0})
    assert no_other.expected.tolist() == [1.0, 0.0]


def test_bin_window_keeps_only_the_last_rows() -> None:
    w = BinWindow([0.5, 0.5], size=4)
    w.add(np.array([0, 0, 0]))
    assert w.rows == 3
    assert w.frequencies().tolist() == [1.0, 0.0]
    w.add(np.array([1, 1, 1]))  # wraps: window is [0, 1, 1, 1]
    assert w.rows == 4
    assert w.frequencies().tolist() == [0.25, 0.75]
    assert w.value().psi == pytest.approx(psi([0.5, 0.5], [0.25, 0.75]))
    w.add(np.array([MISSING, 1, 1, 1, 1, MISSING]))  # longer than the window
    value = w.value()
    assert value.missing_rate == pytest.approx(0.25)
    assert w.frequencies().tolist() == [0.0, 1.0]


def test_empty_window_is_nan_not_zero() -> None:
    value = BinWindow([0.5, 0.5], size=4).value()
    assert math.isnan(value.psi) and math.isnan(value.js) and value.rows == 0


# -- the monitor on kfloop's synthetic data and real reference profile -----------------------------


@pytest.fixture(scope="module")
def synth_profile() -> dict:
    table = generate_table(rows=5000, seed=11)
    spec = infer_feature_spec(table, "label", exclude=["id", "event_time"])
    z = np.nan_to_num(numeric_values(table["credit_score"]), nan=650.0)
    return compute_reference_profile(table, spec, 1 / (1 + np.exp(-(z - 650) / 60)))


def _feed(monitor: DriftMonitor, table: pa.Table) -> None:
    columns: dict[str, Any] = {}
    for name in monitor.features:
        column = table[name]
        columns[name] = (
            string_values(column).tolist() if name in monitor.coders else numeric_values(column)
        )
    monitor.add_columns(columns, [0.5] * table.num_rows)


def test_monitor_in_distribution_is_stable_and_shift_is_detected(synth_profile: dict) -> None:
    monitor = DriftMonitor(synth_profile, window=2000)
    _feed(monitor, generate_table(rows=2000, seed=99))
    stable = monitor.feature_drift()
    assert set(stable) == set(synth_profile["numeric"]) | set(synth_profile["categorical"])
    for name, value in stable.items():
        assert value.psi < 0.1, (name, value)
        assert 0.0 <= value.js < 0.05
    assert stable["income"].missing_rate > 0  # the demo data has missing incomes

    drifted = generate_table(rows=2000, seed=98, drift={"mean_shift_stds": {"credit_score": 2.0}})
    _feed(monitor, drifted)  # replaces the whole window
    shifted = monitor.feature_drift()
    assert shifted["credit_score"].psi > 0.2
    assert shifted["credit_score"].js > stable["credit_score"].js
    assert shifted["age"].psi < 0.1  # other features untouched


def test_monitor_rejects_a_profile_without_sections() -> None:
    with pytest.raises(DataError, match="numeric"):
        DriftMonitor({"version": 1}, window=10)
    bad = {"numeric": {"x": {"edges": [0, 1, 2], "frequencies": [1.0]}}, "categorical": {}}
    with pytest.raises(DataError, match="'x'"):
        DriftMonitor(bad, window=10)
