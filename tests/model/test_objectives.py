"""Objectives config: validation and pass/fail both ways, including champion/challenger."""

from __future__ import annotations

import pytest

from kfloop.core.errors import ConfigError
from kfloop.model.objectives import (
    Objectives,
    evaluate_objectives,
    failure_reasons,
    parse_objectives,
)

CLS = "binary_classification"


def test_parse_accepts_dict_json_and_empty() -> None:
    cfg = {"min": {"auc": 0.8, "accuracy": 0.7}, "max": {"log_loss": 0.6}}
    parsed = parse_objectives(cfg, CLS)
    assert parsed.items() == [
        ("min", "auc", 0.8),
        ("min", "accuracy", 0.7),
        ("max", "log_loss", 0.6),
    ]
    assert parse_objectives('{"max": {"rmse": 50}}', "regression").max == {"rmse": 50.0}
    assert parse_objectives(None, CLS).is_empty()
    assert parse_objectives({}, CLS).is_empty()
    assert parse_objectives(parsed, CLS) is parsed


def test_unknown_metric_names_the_path_and_lists_known_metrics() -> None:
    with pytest.raises(ConfigError) as info:
        parse_objectives({"min": {"auc": 0.8, "aucc": 0.7}}, CLS)
    assert info.value.field == "objectives.min.aucc"
    assert "'aucc'" in str(info.value)
    assert "known metrics: auc, pr_auc, accuracy" in str(info.value)
    # a classification metric on a regression model is unknown too
    with pytest.raises(ConfigError) as info:
        parse_objectives({"max": {"log_loss": 0.5}}, "regression")
    assert info.value.field == "objectives.max.log_loss"
    assert "rmse, mae, r2" in str(info.value)


@pytest.mark.parametrize(
    ("cfg", "field", "match"),
    [
        ({"minimum": {"auc": 0.8}}, "objectives.minimum", "unknown key"),
        ({"min": {"auc": "0.8"}}, "objectives.min.auc", "valid number"),
        ({"min": {"auc": True}}, "objectives.min.auc", "valid number"),
        ({"min": {"auc": float("nan")}}, "objectives.min.auc", "finite"),
        ({"max_regression": {"auc": -0.1}}, "objectives.max_regression.auc", ">= 0"),
        ({"min": ["auc"]}, "objectives.min", "dictionary"),
    ],
)
def test_bad_configs_name_the_field(cfg: dict[str, object], field: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_objectives(cfg, CLS)
    assert info.value.field == field


def test_extra_metrics_and_no_regression_mode() -> None:
    parsed = parse_objectives(
        {"max": {"latency_ms_p50": 5}}, CLS, extra_metrics=("latency_ms_p50",)
    )
    assert parsed.max == {"latency_ms_p50": 5.0}
    with pytest.raises(ConfigError) as info:
        parse_objectives({"max_regression": {"auc": 0.01}}, CLS, allow_regression=False)
    assert info.value.field == "objectives.max_regression.auc"
    # extra metrics have no production baseline: not allowed in max_regression
    with pytest.raises(ConfigError, match="unknown metric 'latency_ms_p50'"):
        parse_objectives(
            {"max_regression": {"latency_ms_p50": 1}}, CLS, extra_metrics=("latency_ms_p50",)
        )


def test_min_and_max_pass_and_fail() -> None:
    obj = parse_objectives({"min": {"auc": 0.8}, "max": {"log_loss": 0.6}}, CLS)
    good = evaluate_objectives(obj, {"auc": 0.85, "log_loss": 0.4})
    assert [(r.metric, r.op, r.passed) for r in good] == [
        ("auc", "min", True),
        ("log_loss", "max", True),
    ]
    assert failure_reasons(good) == []
    bad = evaluate_objectives(obj, {"auc": 0.75, "log_loss": 0.7})
    assert [r.passed for r in bad] == [False, False]
    assert failure_reasons(bad) == ["auc 0.75 < min 0.8", "log_loss 0.7 > max 0.6"]
    assert bad[0].value == 0.75 and bad[0].threshold == 0.8
    # the boundary passes
    edge = evaluate_objectives(obj, {"auc": 0.8, "log_loss": 0.6})
    assert all(r.passed for r in edge)


def test_missing_metric_value_fails() -> None:
    obj = parse_objectives({"min": {"r2": 0.5}}, "regression")
    (res,) = evaluate_objectives(obj, {"rmse": 1.0, "r2": None})
    assert not res.passed and res.value is None
    assert "r2 could not be computed" in res.message


def test_max_regression_champion_challenger() -> None:
    obj = parse_objectives({"max_regression": {"auc": 0.01, "log_loss": 0.05}}, CLS)
    # no production model: skipped, passed
    first = evaluate_objectives(obj, {"auc": 0.7, "log_loss": 0.9})
    assert all(r.passed and r.skipped for r in first)
    # candidate slightly worse on auc (0.005 <= 0.01) and better on log_loss: passes
    ok = evaluate_objectives(obj, {"auc": 0.845, "log_loss": 0.30}, {"auc": 0.85, "log_loss": 0.35})
    assert all(r.passed for r in ok)
    assert ok[0].regression == pytest.approx(0.005) and ok[0].baseline == 0.85
    assert ok[1].regression == pytest.approx(-0.05)
    # auc drops by 0.03 and log_loss rises by 0.1: both fail
    bad = evaluate_objectives(obj, {"auc": 0.82, "log_loss": 0.45}, {"auc": 0.85, "log_loss": 0.35})
    assert [r.passed for r in bad] == [False, False]
    assert bad[0].regression == pytest.approx(0.03)
    assert bad[1].regression == pytest.approx(0.10)
    reasons = failure_reasons(bad)
    assert "auc 0.82 vs production 0.85" in reasons[0] and "> max_regression 0.01" in reasons[0]


def test_objectives_model_is_strict_and_frozen() -> None:
    obj = Objectives(min={"auc": 0.5})
    with pytest.raises(Exception, match="frozen"):
        obj.min = {}  # type: ignore[misc]
