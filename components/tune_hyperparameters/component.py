"""KFP component ``tune_hyperparameters``: a bounded keras-tuner search over a declared space.

Outputs a Markdown trials table and Metrics, and returns the best hyperparameters as a dict
that the pipeline passes to ``train_model``'s ``hyperparameters`` parameter. Every trial
builds the model with ``kfloop.model.train.build_model``, the function ``train_model`` uses.
The logic is :func:`kfloop.model.tune.tune_hyperparameters`; see its module for how the
trial and time budgets bound the search. The cluster-scale alternative is a Katib
``Experiment`` (:func:`kfloop.model.katib.katib_experiment`).

``trials`` artifact metadata: ``algorithm``, ``objective``, ``direction``, ``best_trial_id``,
``best_score``, ``trial_count``, ``completed_trials``, ``stopped_by``, ``task``,
``best_hyperparameters``.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def tune_hyperparameters(
    train: Input[Dataset],
    validation: Input[Dataset],
    trials: Output[Markdown],
    metrics: Output[Metrics],
    label: str,
    task: str = "",
    search_space: dict = {},  # noqa: B006 (KFP needs a literal default)
    algorithm: str = "random",
    max_trials: int = 10,
    max_seconds: int = 600,
    epochs_per_trial: int = 10,
    seed: int = 0,
    objective: str = "val_loss",
    exclude: list = [],  # noqa: B006 (KFP needs a literal default)
) -> dict:
    """Search model hyperparameters with keras-tuner, bounded by a trial count and wall time.

    Args:
        train: Training split (split_dataset output folder with data.parquet, or a Parquet
            file). Needs at least twice the largest batch size of the search in rows.
        validation: Validation split; trials are scored on it (at their best epoch).
        trials: Markdown report: the settings and one row per trial (trial id, the searched
            hyperparameters, score, status, epochs, seconds), best first.
        metrics: best_<objective> (e.g. best_val_loss), trials (launched), completed_trials,
            search_seconds.
        label: Label column (bool/0-1 int for binary classification, numeric for regression).
        task: binary_classification or regression; empty infers it from the label type.
        search_space: Per hyperparameter, how to search it, e.g. {"learning_rate": {"type":
            "float", "min": 0.0001, "max": 0.01, "log": true}, "dropout": {"type": "float",
            "min": 0, "max": 0.5}, "hidden_units": {"type": "choice", "values": [[64, 32],
            [32]]}, "embedding_dim": {"type": "int", "min": 4, "max": 16}, "batch_size":
            {"type": "choice", "values": [32, 64]}}. Searchable: hidden_units, dropout,
            learning_rate, embedding_dim, batch_size, l2; the others keep train_model's
            defaults. Empty uses a default space.
        algorithm: random (RandomSearch), hyperband (Hyperband, max_epochs =
            epochs_per_trial) or bayesian (BayesianOptimization).
        max_trials: Most trials to launch (>= 1).
        max_seconds: Wall-time budget in seconds: no trial starts after it, and a running
            trial stops at the end of the epoch in which it runs out.
        epochs_per_trial: Training epochs per trial (Hyperband: the most for one model).
        seed: Seed of the search algorithm, weights, dropout and shuffling.
        objective: val_loss (minimised) or val_auc (maximised; binary classification only).
        exclude: Columns that are not features (ids, keys), as passed to train_model.

    Returns:
        The best hyperparameters: every train_model hyperparameter (hidden_units, dropout,
        learning_rate, embedding_dim, batch_size, epochs, l2), searched ones set to the best
        trial's values; pass it to train_model's hyperparameters.
    """
    import logging
    import math
    import tempfile
    from pathlib import Path

    from kfloop.model.tune import TABLE_FILE
    from kfloop.model.tune import tune_hyperparameters as tune  # inside: KFP ships only this

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="kfloop-tune-out-") as tmp:
        result = tune(
            train.path,
            validation.path,
            Path(tmp) / "search",
            label=label,
            task=task or None,
            search_space=dict(search_space),
            algorithm=algorithm,
            max_trials=max_trials,
            max_seconds=max_seconds,
            epochs_per_trial=epochs_per_trial,
            seed=seed,
            objective=objective or None,
            exclude=list(exclude),
        )
        report = (Path(result.output_dir) / TABLE_FILE).read_text(encoding="utf-8")
    Path(trials.path).parent.mkdir(parents=True, exist_ok=True)
    with open(trials.path, "w", encoding="utf-8") as handle:
        handle.write(report)
    trials.metadata.update(
        {
            "algorithm": result.algorithm,
            "objective": result.objective,
            "direction": result.direction,
            "best_trial_id": result.best_trial_id,
            "best_score": result.best_score,
            "trial_count": result.trial_count,
            "completed_trials": result.completed,
            "stopped_by": result.stopped_by,
            "task": result.task,
            "best_hyperparameters": result.best_hyperparameters,
        }
    )
    if math.isfinite(result.best_score):
        metrics.log_metric(f"best_{result.objective}", float(result.best_score))
    metrics.log_metric("trials", result.trial_count)
    metrics.log_metric("completed_trials", result.completed)
    metrics.log_metric("search_seconds", round(result.seconds, 3))
    return dict(result.best_hyperparameters)
