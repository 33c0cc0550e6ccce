"""The tune_hyperparameters component under kfp.local: trials report, metrics, best dict."""

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pytest
from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics

from components.tune_hyperparameters.component import tune_hyperparameters
from kfloop.core.arrowio import write_parquet
from kfloop.model.train import Hyperparameters

SPACE: dict[str, Any] = {
    "learning_rate": {"type": "float", "min": 1e-3, "max": 1e-2, "log": True},
    "hidden_units": {"type": "choice", "values": [[16, 8], [8]]},
    "batch_size": {"type": "choice", "values": [32, 64]},
}


def table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    amount = rng.normal(100.0, 20.0, rows)
    colour = rng.choice(["red", "green", "blue"], rows)
    logit = (amount - 100.0) / 10.0 + 1.5 * (colour == "red") - 0.5
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return pa.table(
        {"id": np.arange(rows, dtype=np.int64), "amount": amount, "colour": colour, "label": label}
    )


class TuneOutputs(NamedTuple):
    trials: Markdown
    metrics: Metrics
    best: dict


@dsl.pipeline(name="tune-hyperparameters-test")
def tune_pipeline(
    train_uri: str,
    validation_uri: str,
    search_space: dict,
    max_trials: int = 2,
    epochs_per_trial: int = 2,
) -> TuneOutputs:
    train = dsl.importer(artifact_uri=train_uri, artifact_class=Dataset, reimport=False)
    validation = dsl.importer(artifact_uri=validation_uri, artifact_class=Dataset, reimport=False)
    task = tune_hyperparameters(
        train=train.output,
        validation=validation.output,
        label="label",
        search_space=search_space,
        algorithm="random",
        max_trials=max_trials,
        epochs_per_trial=epochs_per_trial,
        exclude=["id"],
    )
    return TuneOutputs(task.outputs["trials"], task.outputs["metrics"], task.outputs["Output"])


def splits(folder: Path, train_rows: int) -> tuple[str, str]:
    write_parquet(table(train_rows, 1), folder / "train" / "data.parquet")
    write_parquet(table(80, 2), folder / "validation" / "data.parquet")
    return str(folder / "train"), str(folder / "validation")


def test_tune_component_reports_trials_and_returns_the_best(
    kfp_local: Path, tmp_path: Path
) -> None:
    train_uri, validation_uri = splits(tmp_path / "data", 300)

    run = tune_pipeline(train_uri=train_uri, validation_uri=validation_uri, search_space=SPACE)

    best = run.outputs["best"]
    assert isinstance(best, dict)
    assert Hyperparameters(**best).model_dump() == best
    assert best["hidden_units"] in ([16, 8], [8])
    assert best["batch_size"] in (32, 64)
    assert 1e-3 <= best["learning_rate"] <= 1e-2

    trials = run.outputs["trials"]
    report = Path(trials.path).read_text(encoding="utf-8")
    assert report.startswith("# Hyperparameter search")
    assert "| trial | hidden_units | learning_rate | batch_size | val_loss |" in report
    assert trials.metadata["trial_count"] == 2
    assert trials.metadata["completed_trials"] == 2
    assert trials.metadata["stopped_by"] == "max_trials"
    assert trials.metadata["best_hyperparameters"] == best
    assert f"| **{trials.metadata['best_trial_id']}** |" in report

    metrics = run.outputs["metrics"]
    assert metrics.metadata["trials"] == 2
    assert metrics.metadata["completed_trials"] == 2
    assert metrics.metadata["best_val_loss"] == pytest.approx(trials.metadata["best_score"])
    assert 0.0 < metrics.metadata["best_val_loss"] < 5.0


def test_tune_component_fails_on_too_few_rows(
    kfp_local: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    train_uri, validation_uri = splits(tmp_path / "data", 100)
    with pytest.raises(RuntimeError, match="FAILURE"):
        tune_pipeline(train_uri=train_uri, validation_uri=validation_uri, search_space=SPACE)
    logs = "".join(capfd.readouterr())
    assert "DataError" in logs
    assert "100 rows" in logs and "need >= 128" in logs
    assert str(Path(train_uri) / "data.parquet") in logs
    # No trials report or metrics were written as if complete.
    assert not [p for p in kfp_local.rglob("trials") if p.is_file()]
    assert not [p for p in kfp_local.rglob("metrics") if p.is_file()]
