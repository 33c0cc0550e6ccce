"""Train a Keras 3 model on the training split, stopping early on the validation split.

The model takes RAW features (one input per feature column) and carries all preprocessing
(see :mod:`kfloop.model.features`). It is two nested Keras models:

- the *core* network: numeric float32 ``(None, 1)`` inputs (NaN = missing) and categorical
  int64 ``(None, 1)`` indices -> missing indicators + mean imputation + standardisation
  (:class:`~kfloop.model.features.NumericPreprocessing`), embeddings, MLP, output;
- the *full* model: numeric inputs as above and categorical ``tf.string`` ``(None, 1)``
  inputs -> ``StringLookup`` (index 0 = out of vocabulary/missing) -> the core.

The ONNX export (:mod:`kfloop.model.package`) converts only the core and puts ONNX-ML
``LabelEncoder`` nodes with the same vocabularies in front of it.

Output folder (written to a temporary sibling and renamed into place when complete):
``model.keras``, ``core.keras``, ``feature_spec.json``, ``reference_profile.json``,
``training.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
from pydantic import Field

import kfloop
from kfloop.core.arrowio import read_table
from kfloop.core.config import StrictModel, parse_config
from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import sha256_file
from kfloop.model.features import (
    FeatureSpec,
    _parquet_path,
    infer_feature_spec,
    label_values,
    table_to_inputs,
)
from kfloop.model.profile import compute_reference_profile

# TensorFlow/Keras are imported inside the functions that need them: parameters and data are
# checked first, so a bad input fails in a second instead of after a 10 s TensorFlow import.

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
CORE_FILE = "core.keras"
SPEC_FILE = "feature_spec.json"
PROFILE_FILE = "reference_profile.json"
TRAINING_FILE = "training.json"
MIN_TRAIN_ROWS = 20
MIN_VALIDATION_ROWS = 1
CLASS_WEIGHT_CHOICES = ("balanced", "none")


class Hyperparameters(StrictModel):
    """Model and optimiser settings. Unknown keys are errors (``hyperparameters.<key>``)."""

    hidden_units: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [64, 32], max_length=16
    )
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    embedding_dim: int = Field(default=8, ge=1, le=512)
    batch_size: int = Field(default=256, ge=1, le=1_000_000)
    epochs: int = Field(default=30, ge=1, le=10_000)
    l2: float = Field(default=0.0, ge=0.0)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_model` produced."""

    model_dir: str
    task: str
    spec: FeatureSpec
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    metrics: dict[str, dict[str, float | None]]
    rows: dict[str, int]
    class_weights: dict[str, float] | None
    seconds: float
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)


def _dense_block(x: Any, hp: Hyperparameters) -> Any:
    import keras

    reg = keras.regularizers.L2(hp.l2) if hp.l2 > 0 else None
    for i, units in enumerate(hp.hidden_units):
        x = keras.layers.Dense(units, activation="relu", kernel_regularizer=reg, name=f"dense_{i}")(
            x
        )
        if hp.dropout > 0:
            x = keras.layers.Dropout(hp.dropout, name=f"dropout_{i}")(x)
    return x


def build_model(
    spec: FeatureSpec,
    hyperparameters: Hyperparameters | Mapping[str, Any] | None = None,
    *,
    label_mean: float = 0.0,
    label_std: float = 1.0,
) -> tuple[Any, Any]:
    """Build the (uncompiled) full model and its core network (``keras.Model`` each).

    Args:
        spec: Feature spec (vocabularies and normalisation constants).
        hyperparameters: :class:`Hyperparameters` or a dict of its fields.
        label_mean: Regression only: the output is ``z * label_std + label_mean`` so the
            network learns a standardised target but predicts in label units.
        label_std: See ``label_mean``.

    Returns:
        ``(full_model, core_model)``; the full model calls the core as a layer, so they share
        weights.
    """
    import keras

    from kfloop.model.layers import CategoricalIndex, NumericPreprocessing

    hp = parse_config(Hyperparameters, hyperparameters, "hyperparameters")
    core_inputs: dict[str, Any] = {}
    parts: list[Any] = []
    numeric = spec.numeric
    for f in spec.features:
        dtype = "float32" if f.kind == "numeric" else "int64"
        core_inputs[f.name] = keras.Input(shape=(1,), name=f.name, dtype=dtype)
    if numeric:
        stacked = (
            keras.layers.Concatenate(name="numeric_stack")([core_inputs[f.name] for f in numeric])
            if len(numeric) > 1
            else core_inputs[numeric[0].name]
        )
        parts.append(
            NumericPreprocessing(
                [f.mean or 0.0 for f in numeric],
                [f.std or 1.0 for f in numeric],
                name="numeric_preprocessing",
            )(stacked)
        )
    for f in spec.categorical:
        size = len(f.vocabulary or [])
        index = CategoricalIndex(size, name=f"{f.name}__index")(core_inputs[f.name])
        dim = min(hp.embedding_dim, size + 1)
        emb = keras.layers.Embedding(size + 1, dim, name=f"{f.name}__embedding")(index)
        parts.append(keras.layers.Reshape((dim,), name=f"{f.name}__flat")(emb))
    x = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="features")(parts)
    x = _dense_block(x, hp)
    if spec.task == "binary_classification":
        out = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    else:
        z = keras.layers.Dense(1, name="standardised_value")(x)
        out = keras.layers.Rescaling(scale=label_std, offset=label_mean, name="value")(z)
    core = keras.Model(core_inputs, out, name="core")

    raw_inputs: dict[str, Any] = {}
    to_core: dict[str, Any] = {}
    for f in spec.features:
        if f.kind == "numeric":
            raw_inputs[f.name] = keras.Input(shape=(1,), name=f.name, dtype="float32")
            to_core[f.name] = raw_inputs[f.name]
        else:
            raw_inputs[f.name] = keras.Input(shape=(1,), name=f.name, dtype="string")
            to_core[f.name] = keras.layers.StringLookup(
                vocabulary=list(f.vocabulary or []),
                num_oov_indices=1,
                mask_token=None,
                output_mode="int",
                name=f"{f.name}__lookup",
            )(raw_inputs[f.name])
    full = keras.Model(raw_inputs, core(to_core), name="kfloop_model")
    return full, core


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _class_weights(y: np.ndarray, mode: str | None) -> dict[int, float] | None:
    if mode is None:
        return None
    counts = np.bincount(y.astype(np.int64), minlength=2)
    return {c: float(y.size / (2.0 * counts[c])) for c in (0, 1)}


def _dataset(
    inputs: dict[str, np.ndarray],
    y: np.ndarray,
    weights: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
) -> Any:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((inputs, y.reshape(-1, 1), weights))
    if shuffle:
        ds = ds.shuffle(min(y.size, 100_000), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _epoch_logger() -> Any:
    """A Keras callback logging each epoch's metrics (one line per epoch)."""
    import keras

    def on_epoch_end(epoch: int, logs: Mapping[str, float] | None = None) -> None:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
        log.info("epoch %d: %s", epoch + 1, shown)

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def read_splits(
    train_path: str | os.PathLike[str], validation_path: str | os.PathLike[str], label: str
) -> tuple[pa.Table, pa.Table, Path, Path]:
    """Read the train and validation splits; both must hold ``label``.

    Returns:
        (train table, validation table, train Parquet path, validation Parquet path).

    Raises:
        ConfigError: naming ``label`` and the split that lacks it.
    """
    train_file = _parquet_path(train_path)
    val_file = _parquet_path(validation_path)
    train = read_table(train_file)
    val = read_table(val_file)
    for table, where in (
        (train, f"training split {train_file}"),
        (val, f"validation split {val_file}"),
    ):
        if label not in table.column_names:
            raise ConfigError(
                "label",
                f"column {label!r} is not in the {where}; its columns are: "
                f"{', '.join(table.column_names)}",
            )
    return train, val, train_file, val_file


def train_model(
    train_path: str | os.PathLike[str],
    validation_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    label: str,
    task: str | None = None,
    hyperparameters: Hyperparameters | Mapping[str, Any] | str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    class_weight: str | None = "balanced",
    early_stopping_patience: int = 5,
    exclude: Sequence[str] = (),
    max_vocabulary: int = 1000,
    min_count: int = 1,
) -> TrainResult:
    """Train on the training split with early stopping on the validation split.

    Args:
        train_path: Training split: a split artifact folder (with ``data.parquet``) or a
            ``.parquet`` file.
        validation_path: Validation split, same forms.
        output_dir: Model folder to create (must not exist or be empty).
        label: Label column.
        task: ``binary_classification`` or ``regression``; inferred from the label when
            None/empty.
        hyperparameters: :class:`Hyperparameters` fields; unknown keys are errors.
        epochs: Overrides ``hyperparameters.epochs`` when given.
        batch_size: Overrides ``hyperparameters.batch_size`` when given.
        seed: Random seed (weights, dropout, shuffling); TF op determinism is enabled.
        class_weight: ``"balanced"`` (weight ``n / (2 n_c)``, applied to the training and
            the validation loss) or ``"none"``/None. Ignored for regression.
        early_stopping_patience: Epochs without validation-loss improvement before stopping;
            the best epoch's weights are restored.
        exclude: Columns that are not features (ids, keys).
        max_vocabulary: Vocabulary cap per categorical feature (top-K by frequency).
        min_count: Minimum count for a category to enter the vocabulary.

    Returns:
        :class:`TrainResult`.

    Raises:
        ConfigError: bad parameter (named), label column missing (listing the columns),
            unknown hyperparameter (``hyperparameters.<key>``).
        DataError: too few rows, one class only, a feature missing in every training row.
    """
    started = time.monotonic()
    if not isinstance(label, str) or not label:
        raise ConfigError("label", "must name the label column, got an empty value")
    hp = parse_config(Hyperparameters, hyperparameters, "hyperparameters")
    overrides: dict[str, int] = {}
    if epochs is not None:
        overrides["epochs"] = _check_int("epochs", epochs, 1)
    if batch_size is not None:
        overrides["batch_size"] = _check_int("batch_size", batch_size, 1)
    if overrides:
        hp = hp.model_copy(update=overrides)
    _check_int("seed", seed, 0)
    _check_int("early_stopping_patience", early_stopping_patience, 1)
    mode = (class_weight or "none").strip().lower()
    if mode not in CLASS_WEIGHT_CHOICES:
        raise ConfigError(
            "class_weight",
            f"{class_weight!r} is not one of {', '.join(CLASS_WEIGHT_CHOICES)} (or empty)",
        )
    if isinstance(exclude, str):
        raise ConfigError("exclude", "must be a list of column names, got a string")
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("output_dir", f"{out} already exists and is not an empty folder")

    train, val, train_file, val_file = read_splits(train_path, validation_path, label)
    if train.num_rows < MIN_TRAIN_ROWS or val.num_rows < MIN_VALIDATION_ROWS:
        raise DataError(
            f"too few rows to train: training split {train_file} has {train.num_rows} rows "
            f"(need >= {MIN_TRAIN_ROWS}), validation split {val_file} has {val.num_rows} rows "
            f"(need >= {MIN_VALIDATION_ROWS})"
        )

    spec = infer_feature_spec(
        train,
        label,
        task or None,
        exclude,
        max_vocabulary=max_vocabulary,
        min_count=min_count,
        where=f"training split {train_file}",
    )
    y_train = label_values(train, label, spec.task, f"training split {train_file}")
    y_val = label_values(val, label, spec.task, f"validation split {val_file}")
    x_train = table_to_inputs(train, spec, f"training split {train_file}")
    x_val = table_to_inputs(val, spec, f"validation split {val_file}")

    weights_by_class: dict[int, float] | None = None
    label_mean, label_std = 0.0, 1.0
    if spec.task == "binary_classification":
        classes = np.unique(y_train)
        if classes.size < 2:
            raise DataError(
                f"label {label!r} has only class {int(classes[0])} in all {y_train.size} rows "
                f"of the training split {train_file}; binary classification needs both 0 and 1"
            )
        weights_by_class = _class_weights(y_train, None if mode == "none" else mode)
    else:
        label_mean = float(y_train.mean())
        label_std = float(y_train.std()) or 1.0

    def sample_weights(y: np.ndarray) -> np.ndarray:
        if weights_by_class is None:
            return np.ones(y.size, dtype=np.float32)
        return np.where(y > 0.5, weights_by_class[1], weights_by_class[0]).astype(np.float32)

    import keras
    import tensorflow as tf

    from kfloop.model.metrics import compute_metrics
    from kfloop.model.predict import predict_raw

    keras.utils.set_random_seed(seed)
    determinism = True
    try:
        tf.config.experimental.enable_op_determinism()
    except (RuntimeError, ValueError) as exc:  # pragma: no cover - depends on TF build
        determinism = False
        log.warning("could not enable TF op determinism: %s", exc)

    full, core = build_model(spec, hp, label_mean=label_mean, label_std=label_std)
    if spec.task == "binary_classification":
        loss: Any = keras.losses.BinaryCrossentropy(name="loss")
        metrics: list[Any] = [
            keras.metrics.AUC(name="auc"),
            keras.metrics.BinaryAccuracy(name="accuracy"),
        ]
    else:
        loss = keras.losses.MeanSquaredError(name="loss")
        metrics = [
            keras.metrics.MeanAbsoluteError(name="mae"),
            keras.metrics.RootMeanSquaredError(name="rmse"),
        ]
    full.compile(optimizer=keras.optimizers.Adam(hp.learning_rate), loss=loss, metrics=metrics)
    train_ds = _dataset(
        x_train, y_train, sample_weights(y_train), hp.batch_size, shuffle=True, seed=seed
    )
    val_ds = _dataset(x_val, y_val, sample_weights(y_val), hp.batch_size, shuffle=False, seed=seed)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=early_stopping_patience, restore_best_weights=True
    )
    log.info(
        "training %s on %d rows (%d validation), %d features, hyperparameters %s",
        spec.task,
        train.num_rows,
        val.num_rows,
        len(spec.features),
        hp.model_dump(),
    )
    fit_started = time.monotonic()
    history = full.fit(
        train_ds,
        validation_data=val_ds,
        epochs=hp.epochs,
        callbacks=[stopper, _epoch_logger()],
        shuffle=False,  # the dataset is shuffled (seeded) already
        verbose=0,
    ).history
    fit_seconds = time.monotonic() - fit_started
    val_losses = [float(v) for v in history["val_loss"]]
    best_index = int(np.nanargmin(val_losses))
    epochs_run = len(val_losses)

    p_train = predict_raw(full, x_train)
    p_val = predict_raw(full, x_val)
    final = {
        "train": compute_metrics(spec.task, y_train, p_train, allow_single_class=True),
        "validation": compute_metrics(spec.task, y_val, p_val, allow_single_class=True),
    }
    final["train"]["loss"] = _finite(history["loss"][best_index])
    final["validation"]["loss"] = val_losses[best_index]
    profile = compute_reference_profile(train, spec, p_train)
    class_weights = (
        {str(k): v for k, v in weights_by_class.items()} if weights_by_class is not None else None
    )
    fingerprints = {"train": sha256_file(train_file), "validation": sha256_file(val_file)}
    seconds = time.monotonic() - started
    training: dict[str, Any] = {
        "label": label,
        "task": spec.task,
        "hyperparameters": hp.model_dump(),
        "seed": seed,
        "deterministic_ops": determinism,
        "class_weight": mode if spec.task == "binary_classification" else "n/a (regression)",
        "class_weights": class_weights,
        "early_stopping": {"monitor": "val_loss", "patience": early_stopping_patience},
        "epochs_run": epochs_run,
        "best_epoch": best_index + 1,
        "best_val_loss": val_losses[best_index],
        "final_metrics": final,
        "history": {k: [_finite(v) for v in vals] for k, vals in history.items()},
        "rows": {"train": train.num_rows, "validation": val.num_rows},
        "features": {"numeric": len(spec.numeric), "categorical": len(spec.categorical)},
        "excluded": list(exclude),
        "ignored": dict(spec.ignored),
        "label_standardisation": (
            {"mean": label_mean, "std": label_std} if spec.task == "regression" else None
        ),
        "data": {
            "train": {"path": str(train_file), "sha256": fingerprints["train"]},
            "validation": {"path": str(val_file), "sha256": fingerprints["validation"]},
        },
        "seconds": {"fit": round(fit_seconds, 3), "total": round(seconds, 3)},
        "versions": {
            "kfloop": kfloop.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "pyarrow": pa.__version__,
        },
    }
    _write_model_dir(out, full, core, spec, profile, training)
    log.info(
        "trained %s: %d epochs, best epoch %d, val_loss %.5f, %.1fs; wrote %s",
        spec.task,
        epochs_run,
        best_index + 1,
        val_losses[best_index],
        seconds,
        out,
    )
    return TrainResult(
        model_dir=str(out),
        task=spec.task,
        spec=spec,
        epochs_run=epochs_run,
        best_epoch=best_index + 1,
        best_val_loss=val_losses[best_index],
        metrics=final,
        rows={"train": train.num_rows, "validation": val.num_rows},
        class_weights=class_weights,
        seconds=seconds,
        hyperparameters=hp.model_dump(),
        fingerprints=fingerprints,
    )


def _write_model_dir(
    out: Path,
    full: Any,
    core: Any,
    spec: FeatureSpec,
    profile: dict[str, Any],
    training: dict[str, Any],
) -> None:
    """Write everything into a temporary sibling folder, then rename it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        full.save(tmp / MODEL_FILE)
        core.save(tmp / CORE_FILE)
        spec.to_json(tmp / SPEC_FILE)
        (tmp / PROFILE_FILE).write_text(json.dumps(profile, indent=2) + "\n", encoding="utf-8")
        (tmp / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # checked empty on entry
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
