"""Codified model objectives: thresholds a model's metrics must meet to be blessed.

An objectives config is a mapping with up to three keys, each a mapping of metric name to a
number::

    {
        "min": {"auc": 0.8, "accuracy": 0.7},       # metric >= threshold
        "max": {"log_loss": 0.6, "rmse": 50},       # metric <= threshold
        "max_regression": {"auc": 0.01},           # worsening vs the production model <= value
    }

``max_regression`` is the champion/challenger check: it compares the candidate's metric with
the CURRENT PRODUCTION model's metric on the same data. The worsening is ``baseline -
candidate`` for metrics where higher is better (``auc``, ``accuracy``, ``r2``, ...) and
``candidate - baseline`` for the others (``log_loss``, ``rmse``, ...); a negative worsening is
an improvement. Without a production model (first deployment) those objectives are reported
as skipped and count as passed.

Metric names must be ones computed for the model's task
(:func:`kfloop.model.metrics.known_metrics`), plus any extra names the caller measures (the
acceptance test adds ``latency_ms_p50``, ``latency_ms_p95`` and ``model_bytes``). An unknown
name raises :class:`~kfloop.core.errors.ConfigError` naming ``objectives.min.<name>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from kfloop.core.config import StrictModel, parse_config
from kfloop.core.errors import ConfigError
from kfloop.model.metrics import HIGHER_IS_BETTER, known_metrics

Threshold = Annotated[float, Field(strict=True)]
Op = Literal["min", "max", "max_regression"]
OPS: tuple[Op, ...] = ("min", "max", "max_regression")


class Objectives(StrictModel):
    """Objectives config (see the module docstring). Every key is optional."""

    min: dict[str, Threshold] = Field(default_factory=dict)
    max: dict[str, Threshold] = Field(default_factory=dict)
    max_regression: dict[str, Threshold] = Field(default_factory=dict)

    def items(self) -> list[tuple[Op, str, float]]:
        """``(op, metric, threshold)`` for every objective, in config order."""
        return [(op, name, value) for op in OPS for name, value in getattr(self, op).items()]

    def is_empty(self) -> bool:
        """True when no objective is set."""
        return not (self.min or self.max or self.max_regression)


def parse_objectives(
    value: Mapping[str, Any] | str | Objectives | None,
    task: str,
    *,
    field: str = "objectives",
    extra_metrics: Iterable[str] = (),
    allow_regression: bool = True,
) -> Objectives:
    """Validate an objectives config for a model of ``task``.

    Args:
        value: A mapping, a JSON string, an :class:`Objectives` or ``None`` (no objectives).
        task: ``binary_classification`` or ``regression``: decides the known metric names.
        field: Name of the parameter, used as the prefix of error paths.
        extra_metrics: Further metric names the caller measures (allowed in ``min``/``max``).
        allow_regression: False where no production baseline can exist (the acceptance test):
            then any ``max_regression`` entry is an error.

    Returns:
        The validated :class:`Objectives`.

    Raises:
        ConfigError: unknown key, non-number threshold, NaN/infinite threshold, negative
            ``max_regression``, or an unknown metric name (named ``<field>.<op>.<metric>``,
            with the known metrics listed).
    """
    objectives = parse_config(Objectives, value, field)
    task_metrics = known_metrics(task)
    extras = tuple(extra_metrics)
    for op, name, threshold in objectives.items():
        where = f"{field}.{op}.{name}"
        allowed = task_metrics + (extras if op != "max_regression" else ())
        if name not in allowed:
            raise ConfigError(
                where,
                f"unknown metric {name!r} for a {task} model; known metrics: {', '.join(allowed)}",
            )
        if not math.isfinite(threshold):
            raise ConfigError(where, f"threshold must be a finite number, got {threshold}")
        if op == "max_regression":
            if not allow_regression:
                raise ConfigError(
                    where,
                    "max_regression compares with the production model, which only "
                    "evaluate_model does; remove it from these objectives",
                )
            if threshold < 0:
                raise ConfigError(where, f"the allowed worsening must be >= 0, got {threshold}")
    return objectives


@dataclass(frozen=True)
class ObjectiveResult:
    """The outcome of one objective.

    ``value`` is the candidate's metric; for ``max_regression`` ``baseline`` is the production
    model's metric and ``regression`` the worsening (positive = worse). ``passed`` is false
    when the objective is missed or its metric could not be computed; ``skipped`` is true (and
    ``passed`` true) for ``max_regression`` without a production model. ``message`` says it in
    words.
    """

    metric: str
    op: Op
    threshold: float
    value: float | None
    passed: bool
    message: str
    baseline: float | None = None
    regression: float | None = None
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return asdict(self)


def format_value(value: float) -> str:
    """A metric value or threshold for messages: integers plainly, others to 6 digits."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def _check_one(
    op: Op,
    metric: str,
    threshold: float,
    value: float | None,
    baseline: Mapping[str, float | None] | None,
) -> ObjectiveResult:
    if value is None or not math.isfinite(value):
        return ObjectiveResult(
            metric, op, threshold, None, False, f"{metric} could not be computed ({op} objective)"
        )
    if op == "min":
        ok = value >= threshold
        msg = f"{metric} {format_value(value)} {'>=' if ok else '<'} min {format_value(threshold)}"
        return ObjectiveResult(metric, op, threshold, value, ok, msg)
    if op == "max":
        ok = value <= threshold
        msg = f"{metric} {format_value(value)} {'<=' if ok else '>'} max {format_value(threshold)}"
        return ObjectiveResult(metric, op, threshold, value, ok, msg)
    if baseline is None:
        return ObjectiveResult(
            metric,
            op,
            threshold,
            value,
            True,
            f"{metric}: no production model to compare with; max_regression skipped",
            skipped=True,
        )
    base = baseline.get(metric)
    if base is None or not math.isfinite(base):
        return ObjectiveResult(
            metric,
            op,
            threshold,
            value,
            False,
            f"{metric} of the production model could not be computed (max_regression)",
        )
    worse = base - value if metric in HIGHER_IS_BETTER else value - base
    ok = worse <= threshold
    msg = (
        f"{metric} {format_value(value)} vs production {format_value(base)}: worsening "
        f"{format_value(worse)} {'<=' if ok else '>'} max_regression {format_value(threshold)}"
    )
    return ObjectiveResult(metric, op, threshold, value, ok, msg, base, worse)


def evaluate_objectives(
    objectives: Objectives,
    metrics: Mapping[str, float | None],
    baseline: Mapping[str, float | None] | None = None,
) -> list[ObjectiveResult]:
    """Check every objective against ``metrics`` (and ``baseline`` for ``max_regression``).

    Args:
        objectives: Validated objectives (:func:`parse_objectives`).
        metrics: The candidate model's metrics.
        baseline: The production model's metrics on the same data, or ``None`` when there is
            no production model.

    Returns:
        One :class:`ObjectiveResult` per objective, in config order.
    """
    return [
        _check_one(op, name, threshold, metrics.get(name), baseline)
        for op, name, threshold in objectives.items()
    ]


def failure_reasons(results: Iterable[ObjectiveResult]) -> list[str]:
    """Human-readable reason for every failed objective."""
    return [r.message for r in results if not r.passed]
