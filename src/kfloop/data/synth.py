"""Seeded, schema-driven synthetic tables (the kfloop demo data set), vectorised with NumPy.

A :class:`SynthSpec` describes the columns: an ``id`` key, numeric features (normal, lognormal
or uniform, given by their mean and standard deviation, optionally clipped and rounded, with
missing values and outliers), categorical features (categories and weights), boolean features,
a timestamp column, exact duplicate rows, a binary label from a logistic rule over the features
with label noise, and optionally a regression target.

A :class:`DriftSpec` changes the data the same spec produces: it shifts a numeric feature's
mean by a number of standard deviations, changes a categorical mix, changes a boolean's rate,
or changes the label rule. Drift acts on the true values, so the label follows the shifted
features through the (possibly changed) rule: covariate shift and concept shift.

How the values come about, row by row:

1. True feature values are drawn, drift applied, clipped and rounded (``dtype="int64"``).
2. The label (and regression target) are computed from the true values, each numeric feature
   standardised with the spec's (undrifted) mean and std and clipped to +-5 std.
3. Observation faults are applied: outliers (``mean +- outlier_scale * std``, positive only for
   lognormal features), then missing values (nulls), independently per feature.
4. ``duplicate_rate`` of the rows are replaced by exact copies of other rows, **all columns
   included, ``id`` too**: the table keeps ``rows`` rows, de-duplicating on all columns
   removes exactly the copies, and ``id`` is unique again after that (but not before; some
   ids in ``0..rows-1`` are then absent).

Every column has its own random stream derived from ``(seed, column name)``, so adding a
column, changing one feature's rates or drifting one feature leaves the other columns'
values unchanged. Same spec, rows and seed give an identical table.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from kfloop.core.arrowio import PARQUET_SUFFIXES, write_parquet
from kfloop.core.config import StrictModel, parse_config
from kfloop.core.errors import ConfigError
from kfloop.core.objectstore import ObjectStore, is_s3_uri

MAX_ROWS = 200_000_000
Z_CLIP = 5.0


# -- the spec -------------------------------------------------------------------------------


class NumericFeature(StrictModel):
    """A numeric feature, described by the mean and std of its (undrifted) distribution."""

    name: str = Field(min_length=1)
    mean: float = 0.0
    std: float = Field(default=1.0, ge=0)
    distribution: Literal["normal", "lognormal", "uniform"] = "normal"
    dtype: Literal["float64", "int64"] = "float64"
    min: float | None = None
    max: float | None = None
    missing_rate: float = Field(default=0.0, ge=0, lt=1)
    outlier_rate: float = Field(default=0.0, ge=0, lt=1)
    outlier_scale: float = Field(default=8.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> NumericFeature:
        if self.distribution == "lognormal" and self.mean <= 0:
            raise ValueError(f"a lognormal feature needs mean > 0, got {self.mean}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class CategoricalFeature(StrictModel):
    """A categorical (string) feature: categories drawn with ``weights`` (default equal)."""

    name: str = Field(min_length=1)
    categories: list[str] = Field(min_length=1)
    weights: list[float] | None = None
    missing_rate: float = Field(default=0.0, ge=0, lt=1)

    @field_validator("categories")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        dupes = sorted({c for c in value if value.count(c) > 1})
        if dupes:
            raise ValueError(f"repeats {', '.join(map(repr, dupes))}; categories must be unique")
        return value

    @model_validator(mode="after")
    def _weights(self) -> CategoricalFeature:
        if self.weights is not None:
            check_weights(self.weights, self.categories)
        return self

    def probabilities(self, weights: list[float] | None = None) -> np.ndarray:
        """Normalised category probabilities (``weights`` overrides the spec's)."""
        chosen = weights if weights is not None else self.weights
        if chosen is None:
            return np.full(len(self.categories), 1.0 / len(self.categories))
        raw = np.asarray(chosen, dtype=np.float64)
        return raw / raw.sum()


class BooleanFeature(StrictModel):
    """A boolean feature, true with probability ``p_true``."""

    name: str = Field(min_length=1)
    p_true: float = Field(default=0.5, ge=0, le=1)
    missing_rate: float = Field(default=0.0, ge=0, lt=1)


class TimestampColumn(StrictModel):
    """A ``timestamp[us]`` column: every ``freq_seconds`` from ``start``, or sorted random
    times spread uniformly over ``spread_seconds`` after ``start``."""

    name: str = Field(default="event_time", min_length=1)
    start: datetime = datetime(2024, 1, 1)
    freq_seconds: float | None = Field(default=None, gt=0)
    spread_seconds: float = Field(default=365 * 86400.0, ge=0)


class LabelRule(StrictModel):
    """A binary label (int64 0/1): ``P(1) = sigmoid(intercept + sum of effects)``.

    Numeric weights act on standardised values ``(x - mean) / std`` (clipped to +-5), so a
    weight is the log-odds change per standard deviation. ``label_noise`` flips that share of
    the labels after drawing them.
    """

    name: str = Field(default="label", min_length=1)
    intercept: float = 0.0
    numeric_weights: dict[str, float] = {}
    categorical_effects: dict[str, dict[str, float]] = {}
    boolean_weights: dict[str, float] = {}
    label_noise: float = Field(default=0.0, ge=0, le=0.5)


class RegressionTarget(StrictModel):
    """A float64 target: ``intercept + sum of effects + Normal(0, noise_std)``."""

    name: str = Field(default="target", min_length=1)
    intercept: float = 0.0
    numeric_weights: dict[str, float] = {}
    categorical_effects: dict[str, dict[str, float]] = {}
    boolean_weights: dict[str, float] = {}
    noise_std: float = Field(default=1.0, ge=0)


class SynthSpec(StrictModel):
    """The whole synthetic table. ``rows``/``seed`` are defaults the caller may override."""

    rows: int = Field(default=10_000, ge=1, le=MAX_ROWS)
    seed: int = Field(default=0, ge=0)
    id_column: str = Field(default="id", min_length=1)
    numeric: list[NumericFeature] = []
    categorical: list[CategoricalFeature] = []
    boolean: list[BooleanFeature] = []
    timestamp: TimestampColumn | None = TimestampColumn()
    label: LabelRule | None = None
    regression: RegressionTarget | None = None
    duplicate_rate: float = Field(default=0.0, ge=0, le=0.5)

    @field_validator("timestamp", "label", "regression", mode="before")
    @classmethod
    def _false_is_none(cls, value: Any) -> Any:
        # KFP parameters cannot carry null: ``"timestamp": false`` leaves the column out.
        return None if value is False else value

    def feature_names(self) -> list[str]:
        """Numeric, categorical and boolean feature names, in column order."""
        return (
            [f.name for f in self.numeric]
            + [f.name for f in self.categorical]
            + [f.name for f in self.boolean]
        )


class LabelRuleChange(StrictModel):
    """Changes to the label rule: given values replace the spec's, per key."""

    intercept: float | None = None
    numeric_weights: dict[str, float] = {}
    categorical_effects: dict[str, dict[str, float]] = {}
    boolean_weights: dict[str, float] = {}
    label_noise: float | None = Field(default=None, ge=0, le=0.5)


class DriftSpec(StrictModel):
    """Drift applied to the data a :class:`SynthSpec` produces."""

    mean_shift_stds: dict[str, float] = {}
    category_weights: dict[str, list[float]] = {}
    boolean_p_true: dict[str, float] = {}
    label: LabelRuleChange | None = None

    def is_empty(self) -> bool:
        """True when the drift changes nothing."""
        return not (
            self.mean_shift_stds or self.category_weights or self.boolean_p_true or self.label
        )


def check_weights(weights: list[float], categories: list[str]) -> None:
    """Raise ValueError unless ``weights`` fit ``categories``."""
    if len(weights) != len(categories):
        raise ValueError(
            f"weights has {len(weights)} values but categories has {len(categories)}; "
            "give one weight per category"
        )
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")


# -- the demo data set ----------------------------------------------------------------------

COUNTRIES = ["DE", "FR", "ES", "IT", "NL", "PL", "SE", "UK"]
PLANS = ["basic", "standard", "premium", "family"]
CHANNELS = ["web", "app", "store", "phone", "partner"]


def default_spec() -> SynthSpec:
    """The kfloop demo data set: customer churn.

    Columns: ``id``; numeric ``age``, ``income``, ``balance``, ``tenure_months``,
    ``num_products``, ``credit_score``; categorical ``country`` (8), ``plan`` (4),
    ``channel`` (5); boolean ``is_active``; ``event_time``; ``label`` (churned, ~25 %).
    About 1-2 % missing values in ``age``, ``income`` and ``credit_score``, 0.5 % outliers in
    ``income``, ``balance`` and ``credit_score``, 0.5 % duplicate rows, 3 % label noise.
    """
    return SynthSpec(
        numeric=[
            NumericFeature(
                name="age", mean=42, std=13, dtype="int64", min=18, max=92, missing_rate=0.01
            ),
            NumericFeature(
                name="income",
                mean=52_000,
                std=24_000,
                distribution="lognormal",
                missing_rate=0.02,
                outlier_rate=0.005,
                outlier_scale=10,
            ),
            NumericFeature(
                name="balance",
                mean=11_000,
                std=9_000,
                distribution="lognormal",
                outlier_rate=0.005,
                outlier_scale=12,
            ),
            NumericFeature(
                name="tenure_months",
                mean=36,
                std=20,
                distribution="uniform",
                dtype="int64",
                min=0,
                max=72,
            ),
            NumericFeature(name="num_products", mean=2, std=1, dtype="int64", min=1, max=6),
            NumericFeature(
                name="credit_score",
                mean=650,
                std=90,
                dtype="int64",
                min=300,
                max=850,
                missing_rate=0.015,
                outlier_rate=0.005,
                outlier_scale=6,
            ),
        ],
        categorical=[
            CategoricalFeature(
                name="country",
                categories=COUNTRIES,
                weights=[0.24, 0.18, 0.13, 0.12, 0.08, 0.09, 0.05, 0.11],
            ),
            CategoricalFeature(name="plan", categories=PLANS, weights=[0.4, 0.3, 0.15, 0.15]),
            CategoricalFeature(
                name="channel", categories=CHANNELS, weights=[0.35, 0.3, 0.15, 0.12, 0.08]
            ),
        ],
        boolean=[BooleanFeature(name="is_active", p_true=0.6)],
        timestamp=TimestampColumn(name="event_time", start=datetime(2024, 1, 1)),
        label=LabelRule(
            name="label",
            intercept=-1.4,
            numeric_weights={
                "age": -0.6,
                "income": -0.35,
                "balance": -0.7,
                "tenure_months": -1.5,
                "num_products": 1.0,
                "credit_score": -0.55,
            },
            categorical_effects={
                "country": {"DE": -0.4, "ES": 0.5, "IT": 0.35, "SE": -0.5},
                "plan": {"basic": 1.1, "standard": 0.0, "premium": -1.25, "family": -0.55},
                "channel": {"app": -0.55, "partner": 1.0, "phone": 0.4},
            },
            boolean_weights={"is_active": -1.8},
            label_noise=0.03,
        ),
        duplicate_rate=0.005,
    )


# -- checks that span the spec --------------------------------------------------------------


def _check_effects(
    spec: SynthSpec,
    numeric_weights: Mapping[str, float],
    categorical_effects: Mapping[str, Mapping[str, float]],
    boolean_weights: Mapping[str, float],
    field: str,
) -> None:
    numeric = {f.name for f in spec.numeric}
    categorical = {f.name: f for f in spec.categorical}
    boolean = {f.name for f in spec.boolean}
    for name in numeric_weights:
        if name not in numeric:
            raise ConfigError(
                f"{field}.numeric_weights.{name}",
                f"no numeric feature {name!r} in the spec; numeric features: "
                f"{', '.join(sorted(numeric)) or '(none)'}",
            )
    for name, effects in categorical_effects.items():
        if name not in categorical:
            raise ConfigError(
                f"{field}.categorical_effects.{name}",
                f"no categorical feature {name!r} in the spec; categorical features: "
                f"{', '.join(sorted(categorical)) or '(none)'}",
            )
        for category in effects:
            if category not in categorical[name].categories:
                raise ConfigError(
                    f"{field}.categorical_effects.{name}.{category}",
                    f"{category!r} is not a category of {name!r}: "
                    f"{', '.join(categorical[name].categories)}",
                )
    for name in boolean_weights:
        if name not in boolean:
            raise ConfigError(
                f"{field}.boolean_weights.{name}",
                f"no boolean feature {name!r} in the spec; boolean features: "
                f"{', '.join(sorted(boolean)) or '(none)'}",
            )


def check_spec(spec: SynthSpec, field: str = "spec") -> None:
    """Check what one pydantic model cannot: unique column names, rule references.

    Raises:
        ConfigError: naming the dotted path of the bad key.
    """
    names = [spec.id_column, *spec.feature_names()]
    if spec.timestamp is not None:
        names.append(spec.timestamp.name)
    if spec.label is not None:
        names.append(spec.label.name)
    if spec.regression is not None:
        names.append(spec.regression.name)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            field, f"column name {', '.join(map(repr, dupes))} is used twice; names must be unique"
        )
    if spec.label is not None:
        rule = spec.label
        _check_effects(
            spec,
            rule.numeric_weights,
            rule.categorical_effects,
            rule.boolean_weights,
            f"{field}.label",
        )
    if spec.regression is not None:
        target = spec.regression
        _check_effects(
            spec,
            target.numeric_weights,
            target.categorical_effects,
            target.boolean_weights,
            f"{field}.regression",
        )


def check_drift(drift: DriftSpec, spec: SynthSpec, field: str = "drift") -> None:
    """Check that ``drift`` names features (and categories) of ``spec``.

    Raises:
        ConfigError: naming the dotted path of the bad key.
    """
    numeric = {f.name for f in spec.numeric}
    categorical = {f.name: f for f in spec.categorical}
    boolean = {f.name for f in spec.boolean}
    for name, shift in drift.mean_shift_stds.items():
        if name not in numeric:
            raise ConfigError(
                f"{field}.mean_shift_stds.{name}",
                f"no numeric feature {name!r} to shift; numeric features: "
                f"{', '.join(sorted(numeric)) or '(none)'}",
            )
        if not math.isfinite(shift):
            raise ConfigError(f"{field}.mean_shift_stds.{name}", f"{shift} is not finite")
    for name, weights in drift.category_weights.items():
        if name not in categorical:
            raise ConfigError(
                f"{field}.category_weights.{name}",
                f"no categorical feature {name!r}; categorical features: "
                f"{', '.join(sorted(categorical)) or '(none)'}",
            )
        try:
            check_weights(weights, categorical[name].categories)
        except ValueError as exc:
            raise ConfigError(f"{field}.category_weights.{name}", str(exc)) from None
    for name, p_true in drift.boolean_p_true.items():
        if name not in boolean:
            raise ConfigError(
                f"{field}.boolean_p_true.{name}",
                f"no boolean feature {name!r}; boolean features: "
                f"{', '.join(sorted(boolean)) or '(none)'}",
            )
        if not 0 <= p_true <= 1:
            raise ConfigError(f"{field}.boolean_p_true.{name}", f"{p_true} is not in [0, 1]")
    if drift.label is not None:
        if spec.label is None:
            raise ConfigError(f"{field}.label", "the spec has no label rule to change")
        change = drift.label
        _check_effects(
            spec,
            change.numeric_weights,
            change.categorical_effects,
            change.boolean_weights,
            f"{field}.label",
        )


def drifted_label_rule(rule: LabelRule, change: LabelRuleChange | None) -> LabelRule:
    """``rule`` with the values ``change`` gives replacing the rule's, key by key."""
    if change is None:
        return rule
    effects = {k: dict(v) for k, v in rule.categorical_effects.items()}
    for name, new in change.categorical_effects.items():
        effects.setdefault(name, {}).update(new)
    return rule.model_copy(
        update={
            "intercept": rule.intercept if change.intercept is None else change.intercept,
            "numeric_weights": {**rule.numeric_weights, **change.numeric_weights},
            "categorical_effects": effects,
            "boolean_weights": {**rule.boolean_weights, **change.boolean_weights},
            "label_noise": rule.label_noise if change.label_noise is None else change.label_noise,
        }
    )


# -- generation -----------------------------------------------------------------------------


def _rng(seed: int, role: str, name: str = "") -> np.random.Generator:
    """An independent stream per (seed, role, column): stable across processes and versions."""
    return np.random.default_rng([seed, zlib.crc32(f"{role}:{name}".encode())])


def _true_numeric(feature: NumericFeature, n: int, seed: int, shift_stds: float) -> np.ndarray:
    rng = _rng(seed, "numeric", feature.name)
    mean, std = feature.mean, feature.std
    if feature.distribution == "normal":
        values = mean + std * rng.standard_normal(n)
    elif feature.distribution == "lognormal":
        sigma2 = math.log1p((std / mean) ** 2)
        mu = math.log(mean) - sigma2 / 2
        values = np.exp(mu + math.sqrt(sigma2) * rng.standard_normal(n))
    else:
        half_width = std * math.sqrt(3.0)
        values = rng.uniform(mean - half_width, mean + half_width, n)
    if shift_stds:
        values = values + shift_stds * std
    if feature.min is not None or feature.max is not None:
        values = np.clip(values, feature.min, feature.max)
    if feature.dtype == "int64":
        values = np.rint(values)
    return values


def _observed_numeric(feature: NumericFeature, true: np.ndarray, n: int, seed: int) -> pa.Array:
    values = true
    if feature.outlier_rate > 0:
        rng = _rng(seed, "outlier", feature.name)
        hit = rng.random(n) < feature.outlier_rate
        count = int(hit.sum())
        if feature.distribution == "lognormal":
            sign = np.ones(count)
        else:
            sign = np.where(rng.random(count) < 0.5, -1.0, 1.0)
        magnitude = feature.outlier_scale * feature.std * (1.0 + 0.5 * rng.random(count))
        values = values.copy()
        values[hit] = feature.mean + sign * magnitude
        if feature.dtype == "int64":
            values[hit] = np.rint(values[hit])
    mask = None
    if feature.missing_rate > 0:
        mask = _rng(seed, "missing", feature.name).random(n) < feature.missing_rate
    if feature.dtype == "int64":
        return pa.array(values.astype(np.int64), type=pa.int64(), mask=mask)
    return pa.array(values, type=pa.float64(), mask=mask)


def _standardised(feature: NumericFeature, true: np.ndarray) -> np.ndarray:
    if feature.std == 0:
        return np.zeros_like(true)
    return np.clip((true - feature.mean) / feature.std, -Z_CLIP, Z_CLIP)


def _linear(
    intercept: float,
    numeric_weights: Mapping[str, float],
    categorical_effects: Mapping[str, Mapping[str, float]],
    boolean_weights: Mapping[str, float],
    spec: SynthSpec,
    z: Mapping[str, np.ndarray],
    codes: Mapping[str, np.ndarray],
    flags: Mapping[str, np.ndarray],
    n: int,
) -> np.ndarray:
    score = np.full(n, intercept, dtype=np.float64)
    for name, weight in numeric_weights.items():
        score += weight * z[name]
    categories = {f.name: f.categories for f in spec.categorical}
    for name, effects in categorical_effects.items():
        table = np.array([effects.get(c, 0.0) for c in categories[name]], dtype=np.float64)
        score += table[codes[name]]
    for name, weight in boolean_weights.items():
        score += weight * flags[name]
    return score


def _timestamps(column: TimestampColumn, n: int, seed: int) -> pa.Array:
    start = column.start
    if start.tzinfo is not None:
        start = start.astimezone(UTC).replace(tzinfo=None)
    start_us = int((start - datetime(1970, 1, 1)).total_seconds() * 1_000_000)
    if column.freq_seconds is not None:
        offsets = np.arange(n, dtype=np.float64) * column.freq_seconds
    else:
        offsets = np.sort(_rng(seed, "timestamp", column.name).uniform(0, column.spread_seconds, n))
    micros = start_us + np.rint(offsets * 1_000_000).astype(np.int64)
    return pa.array(micros, type=pa.timestamp("us"))


def _check_rows_seed(rows: Any, seed: Any) -> None:
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows < 1:
        raise ConfigError("rows", f"{rows!r} must be a positive integer (number of rows)")
    if rows > MAX_ROWS:
        raise ConfigError(
            "rows", f"{rows} is above the limit of {MAX_ROWS}; generate several tables instead"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError("seed", f"{seed!r} must be a non-negative integer")


def resolve_spec(spec: SynthSpec | Mapping[str, Any] | str | None) -> SynthSpec:
    """A validated spec: ``None`` or ``{}`` gives :func:`default_spec`; a dict is a whole spec.

    Raises:
        ConfigError: naming ``spec.<dotted path>`` of the bad key.
    """
    if spec is None or (isinstance(spec, Mapping | str) and not spec):
        resolved = default_spec()
    else:
        resolved = parse_config(SynthSpec, spec, "spec")
    check_spec(resolved, "spec")
    return resolved


def resolve_drift(drift: DriftSpec | Mapping[str, Any] | str | None, spec: SynthSpec) -> DriftSpec:
    """A validated drift for ``spec`` (``None`` or ``{}``: no drift).

    Raises:
        ConfigError: naming ``drift.<dotted path>`` of the bad key.
    """
    resolved = parse_config(DriftSpec, drift, "drift")
    check_drift(resolved, spec, "drift")
    return resolved


def generate_table(
    rows: int | None = None,
    seed: int | None = None,
    spec: SynthSpec | Mapping[str, Any] | None = None,
    drift: DriftSpec | Mapping[str, Any] | None = None,
) -> pa.Table:
    """Generate the table in memory.

    Args:
        rows: number of rows (default ``spec.rows``).
        seed: random seed (default ``spec.seed``).
        spec: a :class:`SynthSpec` or its dict; ``None``/``{}`` is :func:`default_spec`.
        drift: a :class:`DriftSpec` or its dict; ``None``/``{}`` is no drift.

    Returns:
        The table: id, numeric, categorical, boolean, timestamp, label, target columns.

    Raises:
        ConfigError: a bad ``rows``, ``seed``, ``spec.<path>`` or ``drift.<path>``.
    """
    the_spec = resolve_spec(spec)
    the_drift = resolve_drift(drift, the_spec)
    n = the_spec.rows if rows is None else rows
    s = the_spec.seed if seed is None else seed
    _check_rows_seed(n, s)
    n, s = int(n), int(s)

    columns: dict[str, pa.Array] = {the_spec.id_column: pa.array(np.arange(n, dtype=np.int64))}
    z: dict[str, np.ndarray] = {}
    codes: dict[str, np.ndarray] = {}
    flags: dict[str, np.ndarray] = {}
    for feature in the_spec.numeric:
        true = _true_numeric(feature, n, s, the_drift.mean_shift_stds.get(feature.name, 0.0))
        z[feature.name] = _standardised(feature, true)
        columns[feature.name] = _observed_numeric(feature, true, n, s)
    for cat in the_spec.categorical:
        probs = cat.probabilities(the_drift.category_weights.get(cat.name))
        cdf = np.cumsum(probs)
        cdf /= cdf[-1]
        draws = _rng(s, "categorical", cat.name).random(n)
        code = np.minimum(np.searchsorted(cdf, draws, side="right"), len(probs) - 1)
        codes[cat.name] = code
        mask = None
        if cat.missing_rate > 0:
            mask = _rng(s, "missing", cat.name).random(n) < cat.missing_rate
        indices = pa.array(code.astype(np.int32), mask=mask)
        columns[cat.name] = pc.take(pa.array(cat.categories, type=pa.string()), indices)
    for flag in the_spec.boolean:
        p_true = the_drift.boolean_p_true.get(flag.name, flag.p_true)
        values = _rng(s, "boolean", flag.name).random(n) < p_true
        flags[flag.name] = values
        mask = None
        if flag.missing_rate > 0:
            mask = _rng(s, "missing", flag.name).random(n) < flag.missing_rate
        columns[flag.name] = pa.array(values, type=pa.bool_(), mask=mask)
    if the_spec.timestamp is not None:
        columns[the_spec.timestamp.name] = _timestamps(the_spec.timestamp, n, s)
    if the_spec.label is not None:
        rule = drifted_label_rule(the_spec.label, the_drift.label)
        logit = _linear(
            rule.intercept,
            rule.numeric_weights,
            rule.categorical_effects,
            rule.boolean_weights,
            the_spec,
            z,
            codes,
            flags,
            n,
        )
        rng = _rng(s, "label", rule.name)
        label = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
        if rule.label_noise > 0:
            label ^= rng.random(n) < rule.label_noise
        columns[rule.name] = pa.array(label.astype(np.int64))
    if the_spec.regression is not None:
        target = the_spec.regression
        value = _linear(
            target.intercept,
            target.numeric_weights,
            target.categorical_effects,
            target.boolean_weights,
            the_spec,
            z,
            codes,
            flags,
            n,
        )
        value += target.noise_std * _rng(s, "regression", target.name).standard_normal(n)
        columns[target.name] = pa.array(value)
    table = pa.table(columns)
    duplicates = round(n * the_spec.duplicate_rate)
    if duplicates > 0 and n > 1:
        duplicates = min(duplicates, n - 1)
        rng = _rng(s, "duplicates")
        replaced = rng.choice(n, size=duplicates, replace=False)
        keep = np.ones(n, dtype=bool)
        keep[replaced] = False
        originals = np.flatnonzero(keep)
        order = np.arange(n)
        order[replaced] = originals[rng.integers(0, len(originals), duplicates)]
        table = table.take(pa.array(order))
    return table


# -- the operation --------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthResult:
    """What :func:`generate_synthetic_data` wrote.

    Attributes:
        rows: rows written.
        columns: columns written.
        sha256: SHA-256 of the Parquet file.
        bytes: size of the Parquet file.
        uri: where it is (local path or ``s3://`` URI).
        seed: the seed used.
        positive_rate: share of label 1 (None without a label rule).
        duplicate_rows: rows that are exact copies of other rows.
        drifted: whether a drift was applied.
        column_names: the columns, in order.
    """

    rows: int
    columns: int
    sha256: str
    bytes: int
    uri: str
    seed: int
    positive_rate: float | None
    duplicate_rows: int
    drifted: bool
    column_names: tuple[str, ...]

    def as_metadata(self) -> dict[str, Any]:
        """Plain values for ``artifact.metadata``."""
        meta = asdict(self)
        meta["column_names"] = list(self.column_names)
        return meta


def generate_synthetic_data(
    output_path: str | os.PathLike[str],
    rows: int,
    seed: int,
    spec: SynthSpec | Mapping[str, Any] | None = None,
    drift: DriftSpec | Mapping[str, Any] | None = None,
    store: ObjectStore | None = None,
) -> SynthResult:
    """Generate a synthetic table and write it as Parquet (zstd).

    Args:
        output_path: a local file path (written as Parquet whatever its suffix, e.g. a KFP
            artifact path) or an ``s3://`` URI ending in ``.parquet``.
        rows: number of rows (overrides ``spec.rows``).
        seed: random seed (overrides ``spec.seed``).
        spec: a :class:`SynthSpec` or its dict; ``None``/``{}`` is :func:`default_spec`.
        drift: a :class:`DriftSpec` or its dict; ``None``/``{}`` is no drift.
        store: object store for an ``s3://`` output; from the environment if omitted.

    Returns:
        Size, checksum and summary of the written table.

    Raises:
        ConfigError: a bad ``rows``, ``seed``, ``output_path``, ``spec.<path>`` or
            ``drift.<path>``.
    """
    _check_rows_seed(rows, seed)
    output = os.fspath(output_path)
    if not output:
        raise ConfigError("output_path", "is empty")
    if is_s3_uri(output) and not output.lower().endswith(PARQUET_SUFFIXES):
        raise ConfigError("output_path", f"{output!r}: an s3:// output must end in .parquet")
    if not is_s3_uri(output) and Path(output).is_dir():
        raise ConfigError("output_path", f"{output!r} is a folder; give a file path")
    the_spec = resolve_spec(spec)
    the_drift = resolve_drift(drift, the_spec)
    table = generate_table(rows, seed, the_spec, the_drift)

    if is_s3_uri(output) or output.lower().endswith(PARQUET_SUFFIXES):
        info = write_parquet(table, output, store)
    else:
        # write_parquet wants a .parquet name: write one beside the target, then rename.
        final = Path(output)
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            info = write_parquet(table, scratch / "data.parquet")
            (scratch / "data.parquet").replace(final)
            info = replace(info, uri=str(final))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    positive_rate = None
    if the_spec.label is not None:
        label = table.column(the_spec.label.name)
        positive_rate = float(pc.mean(label).as_py() or 0.0)
    duplicates = round(int(rows) * the_spec.duplicate_rate) if int(rows) > 1 else 0
    return SynthResult(
        rows=info.rows,
        columns=info.columns,
        sha256=info.sha256,
        bytes=info.bytes,
        uri=info.uri,
        seed=int(seed),
        positive_rate=positive_rate,
        duplicate_rows=min(duplicates, max(int(rows) - 1, 0)),
        drifted=not the_drift.is_empty(),
        column_names=tuple(table.column_names),
    )
