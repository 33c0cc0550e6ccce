"""train_model on small real tables: the model folder, learning, determinism, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_diabetes

from kfloop.core.errors import ConfigError, DataError
from kfloop.model.features import FeatureSpec, table_to_inputs
from kfloop.model.predict import load_trained_model, predict_raw
from kfloop.model.train import TrainResult, train_model
from tests.model.model_data import FAST_HP, leftovers, make_splits, make_table, write_split

CONTRACT_FILES = {
    "model.keras",
    "core.keras",
    "feature_spec.json",
    "reference_profile.json",
    "training.json",
}


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_splits(tmp_path_factory.mktemp("splits"))


@pytest.fixture(scope="module")
def trained(splits: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("models") / "model"
    return train_model(
        splits["train"],
        splits["validation"],
        out,
        label="label",
        hyperparameters=FAST_HP,
        epochs=8,
        exclude=["id"],
    )


def test_model_folder_follows_the_contract(trained: TrainResult) -> None:
    folder = Path(trained.model_dir)
    assert {p.name for p in folder.iterdir()} == CONTRACT_FILES
    assert leftovers(folder.parent) == []

    spec = json.loads((folder / "feature_spec.json").read_text())
    assert spec["label"] == "label" and spec["task"] == "binary_classification"
    assert spec["positive_class"] == 1 and spec["version"] == 1
    assert [f["name"] for f in spec["features"]] == ["x1", "x2", "color", "city", "flag"]
    assert "event_time" in spec["ignored"]

    training = json.loads((folder / "training.json").read_text())
    assert training["hyperparameters"]["hidden_units"] == [16]
    assert training["hyperparameters"]["epochs"] == 8
    assert training["seed"] == 0
    assert training["rows"] == {"train": 800, "validation": 300}
    assert 1 <= training["best_epoch"] <= training["epochs_run"] <= 8
    assert len(training["history"]["val_loss"]) == training["epochs_run"]
    assert training["best_val_loss"] == pytest.approx(min(training["history"]["val_loss"]))
    assert set(training["final_metrics"]) == {"train", "validation"}
    assert training["versions"]["tensorflow"].startswith("2.16")
    assert len(training["data"]["train"]["sha256"]) == 64
    assert training["excluded"] == ["id"]

    profile = json.loads((folder / "reference_profile.json").read_text())
    assert profile["rows"] == 800
    assert set(profile["numeric"]) == {"x1", "x2", "flag"}
    assert set(profile["categorical"]) == {"color", "city"}
    assert sum(profile["prediction"]["frequencies"]) == pytest.approx(1.0)


def test_trained_model_learns_the_rule(trained: TrainResult, splits: dict[str, Path]) -> None:
    assert trained.metrics["validation"]["auc"] is not None
    assert trained.metrics["validation"]["auc"] > 0.8
    model = load_trained_model(trained.model_dir)
    test = pq.read_table(splits["test"] / "data.parquet")
    preds = model.predict_table(test)
    assert preds.shape == (test.num_rows,)
    assert np.all((preds >= 0) & (preds <= 1))
    labels = test.column("label").to_numpy()
    assert preds[labels == 1].mean() > preds[labels == 0].mean() + 0.2


def test_full_model_on_strings_equals_core_on_vocabulary_indices(trained: TrainResult) -> None:
    """StringLookup inside the model maps vocabulary[i] to i + 1 and anything else to 0."""
    model = load_trained_model(trained.model_dir)
    spec = model.spec
    table = make_table(64, seed=9)
    raw = table_to_inputs(table, spec)
    raw["color"][:4, 0] = ["", "never-seen", "RED", "red"]  # missing, unseen, case, known
    raw["x1"][:3, 0] = [np.nan, np.inf, -np.inf]
    indexed: dict[str, Any] = {}
    for f in spec.features:
        if f.kind == "numeric":
            indexed[f.name] = raw[f.name]
        else:
            lookup = {v: i + 1 for i, v in enumerate(f.vocabulary or [])}
            indexed[f.name] = np.array(
                [[lookup.get(v, 0)] for v in raw[f.name].ravel()], dtype=np.int64
            )
    full = model.predict_inputs(raw)
    core = predict_raw(model.core, indexed)
    np.testing.assert_allclose(full, core, atol=1e-6)
    assert np.all(np.isfinite(full))


def test_balanced_class_weights_recorded(tmp_path: Path) -> None:
    table = make_table(600, seed=3)
    labels = table.column("label").to_numpy()
    # Make it imbalanced: drop most positives.
    keep = (labels == 0) | (np.arange(600) % 4 == 0)
    train = write_split(table.filter(pa.array(keep)), tmp_path / "train")
    val = write_split(make_table(100, seed=4), tmp_path / "val")
    result = train_model(
        train, val, tmp_path / "m", label="label", hyperparameters=FAST_HP, epochs=1
    )
    y = table.filter(pa.array(keep)).column("label").to_numpy()
    n, n1 = y.size, int(y.sum())
    assert result.class_weights == pytest.approx({"0": n / (2 * (n - n1)), "1": n / (2 * n1)})


def test_same_seed_same_model(tmp_path: Path) -> None:
    splits = make_splits(tmp_path / "s", sizes=(200, 60, 10))
    preds = []
    for name in ("a", "b"):
        result = train_model(
            splits["train"],
            splits["validation"],
            tmp_path / name,
            label="label",
            hyperparameters={**FAST_HP, "dropout": 0.2},
            epochs=3,
            seed=7,
        )
        preds.append(load_trained_model(result.model_dir).predict_table(make_table(50, 5)))
    np.testing.assert_array_equal(preds[0], preds[1])


def test_early_stopping_restores_best_weights(tmp_path: Path) -> None:
    """Validation labels inverted: validation loss rises as the model learns."""
    train = write_split(make_table(400, seed=0), tmp_path / "train")
    val_table = make_table(200, seed=1)
    inverted = pc.subtract(pa.scalar(1, pa.int64()), val_table.column("label"))
    val_table = val_table.set_column(val_table.schema.get_field_index("label"), "label", inverted)
    val = write_split(val_table, tmp_path / "val")
    result = train_model(
        train,
        val,
        tmp_path / "m",
        label="label",
        hyperparameters={**FAST_HP, "batch_size": 512},
        epochs=30,
        early_stopping_patience=2,
        class_weight="none",
    )
    assert result.class_weights is None  # class_weight="none"
    assert result.epochs_run < 30
    assert result.epochs_run == result.best_epoch + 2
    # The saved weights are the best epoch's: recompute the validation loss (one batch).
    model = load_trained_model(result.model_dir)
    p = np.clip(model.predict_table(val_table), 1e-7, 1 - 1e-7)
    y = val_table.column("label").to_numpy()
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert loss == pytest.approx(result.best_val_loss, rel=1e-4)


def test_regression_on_diabetes_predicts_in_label_units(tmp_path: Path) -> None:
    data = load_diabetes()
    table = pa.table(
        {
            **{name: data.data[:, i] for i, name in enumerate(data.feature_names)},
            "target": data.target,
        }
    )
    train = write_split(table.slice(0, 340), tmp_path / "train")
    val = write_split(table.slice(340), tmp_path / "val")
    result = train_model(
        train,
        val,
        tmp_path / "m",
        label="target",
        hyperparameters={"hidden_units": [16], "learning_rate": 0.01, "batch_size": 32},
        epochs=40,
    )
    assert result.task == "regression"
    assert result.class_weights is None
    spec = FeatureSpec.from_json(Path(result.model_dir) / "feature_spec.json")
    assert spec.task == "regression"
    preds = load_trained_model(result.model_dir).predict_table(table.slice(340))
    y = data.target[340:]
    assert 50 < preds.mean() < 250  # label units, not standardised
    assert result.metrics["validation"]["rmse"] < 0.9 * y.std()  # beats the mean


# -- bad inputs --------------------------------------------------------------------------------


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert leftovers(out.parent) == []


def test_missing_label_names_it_and_lists_columns(splits: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m"
    with pytest.raises(ConfigError) as info:
        train_model(splits["train"], splits["validation"], out, label="target", epochs=1)
    assert info.value.field == "label"
    assert "'target'" in str(info.value)
    assert "id, x1, x2, color, city, flag, event_time, label" in str(info.value)
    _nothing_written(out)


def test_single_class_label_is_a_data_error(tmp_path: Path) -> None:
    table = make_table(100)
    zeros = pa.array(np.zeros(100, dtype=np.int64))
    table = table.set_column(table.schema.get_field_index("label"), "label", zeros)
    train = write_split(table, tmp_path / "train")
    val = write_split(make_table(30, 1), tmp_path / "val")
    out = tmp_path / "m"
    with pytest.raises(DataError) as info:
        train_model(train, val, out, label="label", epochs=1)
    assert "only class 0" in str(info.value) and "100 rows" in str(info.value)
    _nothing_written(out)


def test_too_few_training_rows_states_the_counts(tmp_path: Path) -> None:
    train = write_split(make_table(12), tmp_path / "train")
    val = write_split(make_table(30, 1), tmp_path / "val")
    out = tmp_path / "m"
    with pytest.raises(DataError) as info:
        train_model(train, val, out, label="label", epochs=1)
    assert "has 12 rows (need >= 20)" in str(info.value)
    _nothing_written(out)


def test_empty_validation_split_states_the_counts(tmp_path: Path) -> None:
    train = write_split(make_table(100), tmp_path / "train")
    val = write_split(make_table(10).slice(0, 0), tmp_path / "val")
    out = tmp_path / "m"
    with pytest.raises(DataError) as info:
        train_model(train, val, out, label="label", epochs=1)
    assert "validation split" in str(info.value) and "has 0 rows" in str(info.value)
    _nothing_written(out)


def test_all_null_feature_is_named(tmp_path: Path) -> None:
    table = make_table(100).append_column("broken", pa.nulls(100, pa.float64()))
    train = write_split(table, tmp_path / "train")
    val = write_split(make_table(30, 1), tmp_path / "val")
    out = tmp_path / "m"
    with pytest.raises(DataError) as info:
        train_model(train, val, out, label="label", epochs=1)
    assert "'broken'" in str(info.value) and "exclude" in str(info.value)
    _nothing_written(out)


def test_unknown_hyperparameter_is_named(splits: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m"
    with pytest.raises(ConfigError) as info:
        train_model(
            splits["train"],
            splits["validation"],
            out,
            label="label",
            hyperparameters={"hidden_units": [8], "learning_rat": 0.1},
        )
    assert info.value.field == "hyperparameters.learning_rat"
    _nothing_written(out)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"hyperparameters": {"dropout": 1.5}}, "hyperparameters.dropout"),
        ({"hyperparameters": {"hidden_units": [8, 0]}}, "hyperparameters.hidden_units.1"),
        ({"class_weight": "auto"}, "class_weight"),
        ({"seed": -1}, "seed"),
        ({"epochs": 0}, "epochs"),
        ({"task": "ranking"}, "task"),
        ({"exclude": ["nope"]}, "exclude"),
    ],
)
def test_bad_parameters_are_named(
    splits: dict[str, Path], tmp_path: Path, kwargs: dict[str, Any], field: str
) -> None:
    out = tmp_path / "m"
    with pytest.raises(ConfigError) as info:
        train_model(splits["train"], splits["validation"], out, label="label", **kwargs)
    assert info.value.field == field
    _nothing_written(out)


def test_missing_split_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        train_model(tmp_path / "nowhere", tmp_path / "nowhere", tmp_path / "m", label="label")


def test_existing_output_folder_is_refused(splits: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError) as info:
        train_model(splits["train"], splits["validation"], out, label="label", epochs=1)
    assert info.value.field == "output_dir"
    assert (out / "keep.txt").read_text() == "x"
