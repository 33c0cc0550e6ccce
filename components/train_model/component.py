"""KFP component ``train_model``: train/validation splits in, a trained-model folder out.

The ``model`` artifact's ``.path`` is a FOLDER (see :mod:`kfloop.model.train`)::

    model.keras              full Keras model: RAW features in (strings for categoricals)
    core.keras               the core network (categorical indices in), what ONNX converts
    feature_spec.json        features, vocabularies, normalisation constants, task, label
    reference_profile.json   training-split profile for the drift monitor
    training.json            hyperparameters, epochs, history, metrics, seed, class weights

Artifact metadata: ``task``, ``label``, ``features``, ``epochs_run``, ``best_epoch``,
``best_val_loss``, ``train_rows``, ``validation_rows``, ``train_sha256``, ``framework``.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_model(
    train: Input[Dataset],
    validation: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    label: str,
    task: str = "",
    hyperparameters: dict = {},  # noqa: B006 (KFP needs a literal default)
    seed: int = 0,
    class_weight: str = "balanced",
    exclude: list = [],  # noqa: B006 (KFP needs a literal default)
    early_stopping_patience: int = 5,
) -> float:
    """Train a Keras model (preprocessing inside) with early stopping on the validation split.

    Args:
        train: Training split (split_dataset output folder with data.parquet, or a Parquet
            file). Vocabularies and normalisation constants come from it.
        validation: Validation split; early stopping watches its loss and the best epoch's
            weights are kept.
        model: The trained-model folder: model.keras (raw features in), core.keras,
            feature_spec.json, reference_profile.json, training.json.
        metrics: Final metrics of the kept weights on both splits (train_*, validation_*),
            plus best_epoch and epochs_run.
        label: Label column (bool/0-1 int for binary classification, numeric for regression).
        task: binary_classification or regression; empty infers it from the label type.
        hyperparameters: hidden_units (list of ints), dropout, learning_rate, embedding_dim,
            batch_size, epochs, l2. Unknown keys fail the step.
        seed: Random seed for weights, dropout and shuffling (TF op determinism is on).
        class_weight: balanced (weight n/(2*n_class), for imbalanced labels) or none.
            Ignored for regression.
        exclude: Columns that are not features (ids, keys, leakage columns).
        early_stopping_patience: Epochs without validation-loss improvement before stopping.

    Returns:
        The best validation loss (class-weighted for classification).
    """
    import logging
    import math

    from kfloop.model.train import train_model as train_op  # inside: KFP ships only this

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = train_op(
        train.path,
        validation.path,
        model.path,
        label=label,
        task=task or None,
        hyperparameters=dict(hyperparameters),
        seed=seed,
        class_weight=class_weight,
        early_stopping_patience=early_stopping_patience,
        exclude=list(exclude),
    )
    for split, values in result.metrics.items():
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                metrics.log_metric(f"{split}_{name}", float(value))
    metrics.log_metric("best_epoch", result.best_epoch)
    metrics.log_metric("epochs_run", result.epochs_run)
    model.metadata.update(
        {
            "framework": "keras",
            "task": result.task,
            "label": label,
            "features": result.spec.names,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "train_rows": result.rows["train"],
            "validation_rows": result.rows["validation"],
            "train_sha256": result.fingerprints.get("train", ""),
        }
    )
    return float(result.best_val_loss)
