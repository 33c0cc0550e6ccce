"""tune_hyperparameters on small real tables: each algorithm, the budgets, the outputs, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from kfloop.core.arrowio import write_parquet
from kfloop.core.errors import ConfigError, DataError
from kfloop.model.search_space import Choice, parse_search_space
from kfloop.model.train import Hyperparameters, train_model
from kfloop.model.tune import (
    BEST_FILE,
    TABLE_FILE,
    TRIALS_FILE,
    TuneResult,
    tune_hyperparameters,
)

# Small batches keep the row requirement (2 x the largest batch) low for small tables.
SPACE: dict[str, Any] = {
    "learning_rate": {"type": "float", "min": 1e-3, "max": 1e-2, "log": True},
    "dropout": {"type": "float", "min": 0.0, "max": 0.3},
    "hidden_units": {"type": "choice", "values": [[16, 8], [8]]},
    "embedding_dim": {"type": "int", "min": 2, "max": 4},
    "batch_size": {"type": "choice", "values": [32, 64]},
}


def classification_table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    amount = rng.normal(100.0, 20.0, rows)
    amount[rng.random(rows) < 0.1] = np.nan
    colour = rng.choice(["red", "green", "blue"], rows)
    logit = (np.nan_to_num(amount, nan=100.0) - 100.0) / 10.0 + 1.5 * (colour == "red") - 0.5
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return pa.table(
        {
            "id": np.arange(rows, dtype=np.int64),
            "amount": pa.array(amount, from_pandas=True),
            "colour": colour,
            "active": rng.random(rows) < 0.5,
            "event_time": pa.array(
                np.datetime64("2025-01-01", "us") + np.arange(rows).astype("timedelta64[m]")
            ),
            "label": label,
        }
    )


def regression_table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    size = rng.choice(["s", "m", "l"], rows)
    y = 3.0 * x + (size == "l") * 2.0 + rng.normal(0, 0.3, rows) + 50.0
    return pa.table({"id": np.arange(rows, dtype=np.int64), "x": x, "size": size, "price": y})


def write_splits(folder: Path, train: pa.Table, validation: pa.Table) -> tuple[Path, Path]:
    """Split-artifact-shaped folders (data.parquet inside), as split_dataset writes them."""
    write_parquet(train, folder / "train" / "data.parquet")
    write_parquet(validation, folder / "validation" / "data.parquet")
    return folder / "train", folder / "validation"


@pytest.fixture
def splits(tmp_path: Path) -> tuple[Path, Path]:
    return write_splits(
        tmp_path / "data", classification_table(300, 1), classification_table(100, 2)
    )


def nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "a partial output folder was left"


def check_outputs(result: TuneResult, out: Path, max_trials: int) -> dict[str, Any]:
    """The three files agree with the result and with each other."""
    assert Path(result.output_dir) == out
    assert sorted(p.name for p in out.iterdir()) == sorted([BEST_FILE, TRIALS_FILE, TABLE_FILE])
    best = json.loads((out / BEST_FILE).read_text())
    assert best == result.best_hyperparameters
    assert Hyperparameters(**best).model_dump() == best  # a dict train_model accepts
    trials = json.loads((out / TRIALS_FILE).read_text())
    assert 1 <= len(trials["trials"]) == result.trial_count <= max_trials
    assert trials["best_trial_id"] == result.best_trial_id
    scored = [t for t in trials["trials"] if t["score"] is not None]
    sign = 1 if result.direction == "min" else -1
    winner = min(scored, key=lambda t: sign * t["score"])
    assert winner["score"] == result.best_score
    assert winner["trial_id"] == result.best_trial_id
    for key, value in winner["values"].items():
        assert best[key] == value
    table = (out / TABLE_FILE).read_text()
    assert f"| {result.objective} | status | epochs | seconds |" in table
    for t in trials["trials"]:
        assert t["status"] in ("COMPLETED", "FAILED", "INVALID")
        assert t["seconds"] >= 0
        trial_cell = (
            f"**{t['trial_id']}**" if t["trial_id"] == result.best_trial_id else t["trial_id"]
        )
        assert f"| {trial_cell} |" in table
    return trials


def check_within_space(values: dict[str, Any], space: dict[str, Any]) -> None:
    parsed = parse_search_space(space).params()
    assert set(values) == set(parsed)
    for name, spec in parsed.items():
        if isinstance(spec, Choice):
            assert values[name] in spec.values, name
        else:
            assert spec.min <= values[name] <= spec.max, name


def test_random_search_on_auc_gives_hyperparameters_train_model_accepts(
    splits: tuple[Path, Path], tmp_path: Path
) -> None:
    train, validation = splits
    out = tmp_path / "search"

    result = tune_hyperparameters(
        train,
        validation,
        out,
        label="label",
        search_space=SPACE,
        algorithm="random",
        max_trials=2,
        epochs_per_trial=1,
        objective="val_auc",
        exclude=["id"],
    )

    assert result.task == "binary_classification"
    assert (result.objective, result.direction) == ("val_auc", "max")
    assert result.trial_count == 2 and result.completed == 2
    assert result.stopped_by == "max_trials"
    assert 0.0 <= result.best_score <= 1.0
    assert result.rows == {"train": 300, "validation": 100}
    trials = check_outputs(result, out, max_trials=2)
    for t in trials["trials"]:
        check_within_space(t["values"], SPACE)
        assert t["epochs"] == 1
    assert trials["search_space"] == parse_search_space(SPACE).to_dict()
    # Not searched: keeps the Hyperparameters default.
    assert result.best_hyperparameters["l2"] == Hyperparameters().l2
    assert result.best_hyperparameters["epochs"] == Hyperparameters().epochs

    # The best hyperparameters train the same model with train_model.
    trained = train_model(
        train,
        validation,
        tmp_path / "model",
        label="label",
        hyperparameters=result.best_hyperparameters,
        epochs=1,
        exclude=["id"],
    )
    assert trained.hyperparameters == {**result.best_hyperparameters, "epochs": 1}


def test_hyperband_on_a_regression_task(tmp_path: Path) -> None:
    train, validation = write_splits(
        tmp_path / "data", regression_table(200, 3), regression_table(60, 4)
    )
    out = tmp_path / "search"
    space = {"learning_rate": SPACE["learning_rate"], "batch_size": SPACE["batch_size"]}

    result = tune_hyperparameters(
        train,
        validation,
        out,
        label="price",
        search_space=space,
        algorithm="hyperband",
        max_trials=2,
        epochs_per_trial=2,
        seed=3,
        exclude=["id"],
    )

    assert result.task == "regression"
    assert (result.objective, result.direction) == ("val_loss", "min")
    assert result.algorithm == "hyperband"
    assert 1 <= result.trial_count <= 2
    assert math.isfinite(result.best_score) and result.best_score > 0
    trials = check_outputs(result, out, max_trials=2)
    for t in trials["trials"]:
        check_within_space(t["values"], space)
        # Hyperband decides the epochs of each trial, never more than epochs_per_trial.
        assert 1 <= t["epochs"] <= 2


def test_bayesian_optimization(splits: tuple[Path, Path], tmp_path: Path) -> None:
    train, validation = splits
    out = tmp_path / "search"

    result = tune_hyperparameters(
        train,
        validation,
        out,
        label="label",
        search_space=SPACE,
        algorithm="bayesian",
        max_trials=2,
        epochs_per_trial=1,
        seed=7,
        exclude=["id"],
    )

    assert result.algorithm == "bayesian"
    assert result.trial_count == 2 and result.stopped_by == "max_trials"
    trials = check_outputs(result, out, max_trials=2)
    for t in trials["trials"]:
        check_within_space(t["values"], SPACE)
    markdown = (out / TABLE_FILE).read_text()
    assert "algorithm: **bayesian**" in markdown
    assert "stopped by max_trials" in markdown


def test_time_budget_stops_the_search_after_the_running_epoch(
    splits: tuple[Path, Path], tmp_path: Path
) -> None:
    train, validation = splits
    out = tmp_path / "search"

    # One second is spent before the first epoch ends (loading, building, tracing), so the
    # first trial stops after that epoch and no second trial starts.
    result = tune_hyperparameters(
        train,
        validation,
        out,
        label="label",
        search_space=SPACE,
        algorithm="random",
        max_trials=5,
        max_seconds=1,
        epochs_per_trial=5,
        exclude=["id"],
    )

    assert result.stopped_by == "max_seconds"
    assert result.trial_count == 1
    (trial,) = result.trials
    assert trial.cut_by_budget
    assert trial.epochs == 1
    assert trial.status == "COMPLETED" and trial.score is not None
    trials = check_outputs(result, out, max_trials=5)
    assert trials["stopped_by"] == "max_seconds"
    assert "cut by time budget" in (out / TABLE_FILE).read_text()


# -- bad input -------------------------------------------------------------------------------


def test_too_few_training_rows_for_the_batch_sizes(tmp_path: Path) -> None:
    train, validation = write_splits(
        tmp_path / "data", classification_table(100, 1), classification_table(30, 2)
    )
    out = tmp_path / "search"
    with pytest.raises(DataError) as info:
        tune_hyperparameters(
            train, validation, out, label="label", search_space=SPACE, max_trials=1
        )
    message = str(info.value)
    assert "100 rows" in message and "need >= 128" in message and "64" in message
    assert str(train / "data.parquet") in message
    nothing_left(out)


def test_empty_validation_split(tmp_path: Path) -> None:
    table = classification_table(300, 1)
    train, validation = write_splits(tmp_path / "data", table, table.slice(0, 0))
    out = tmp_path / "search"
    with pytest.raises(DataError) as info:
        tune_hyperparameters(train, validation, out, label="label", search_space=SPACE)
    message = str(info.value)
    assert "0 rows" in message and str(validation / "data.parquet") in message
    nothing_left(out)


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"algorithm": "grid"}, "algorithm", "grid"),
        ({"max_trials": 0}, "max_trials", "0"),
        ({"max_seconds": 0}, "max_seconds", "0"),
        ({"epochs_per_trial": 0}, "epochs_per_trial", "0"),
        ({"objective": "accuracy"}, "objective", "accuracy"),
        ({"label": "nope"}, "label", "nope"),
        (
            {"search_space": {"momentum": {"type": "float", "min": 0, "max": 1}}},
            "search_space.momentum",
            "momentum",
        ),
        (
            {"search_space": {"dropout": {"type": "float", "min": 0.5, "max": 0.1}}},
            "search_space.dropout",
            "0.5",
        ),
    ],
)
def test_bad_parameters_are_config_errors(
    splits: tuple[Path, Path], tmp_path: Path, kwargs: dict[str, Any], field: str, words: str
) -> None:
    train, validation = splits
    out = tmp_path / "search"
    call: dict[str, Any] = {"label": "label", "search_space": SPACE, **kwargs}
    with pytest.raises(ConfigError) as info:
        tune_hyperparameters(train, validation, out, **call)
    assert info.value.field == field
    assert words in str(info.value)
    nothing_left(out)


def test_val_auc_on_regression_is_a_config_error(tmp_path: Path) -> None:
    train, validation = write_splits(
        tmp_path / "data", regression_table(200, 3), regression_table(60, 4)
    )
    out = tmp_path / "search"
    with pytest.raises(ConfigError) as info:
        tune_hyperparameters(
            train, validation, out, label="price", search_space=SPACE, objective="val_auc"
        )
    assert info.value.field == "objective" and "regression" in str(info.value)
    nothing_left(out)


def test_existing_output_is_not_overwritten(splits: tuple[Path, Path], tmp_path: Path) -> None:
    train, validation = splits
    out = tmp_path / "search"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError) as info:
        tune_hyperparameters(train, validation, out, label="label", search_space=SPACE)
    assert info.value.field == "output_dir" and str(out) in str(info.value)
    assert (out / "keep.txt").read_text() == "mine"
