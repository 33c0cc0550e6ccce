"""Load a trained-model folder and predict on Arrow tables with the full Keras model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pyarrow as pa
import tensorflow as tf

import kfloop.model.layers  # noqa: F401  (registers the custom layers model.keras uses)
from kfloop.core.errors import DataError
from kfloop.model.features import FeatureSpec, table_to_inputs

MODEL_FILE = "model.keras"
CORE_FILE = "core.keras"
SPEC_FILE = "feature_spec.json"
TRAINING_FILE = "training.json"
PROFILE_FILE = "reference_profile.json"
PREDICT_BATCH = 4096


@dataclass
class TrainedModel:
    """The full Keras model (raw features in), its core network and its feature spec."""

    path: Path
    model: keras.Model
    spec: FeatureSpec
    training: dict[str, Any] = field(default_factory=dict)
    _core: keras.Model | None = None

    @property
    def core(self) -> keras.Model:
        """The core network (numeric float32 and categorical int64 index inputs)."""
        if self._core is None:
            self._core = _load_keras(self.path / CORE_FILE)
        return self._core

    def predict_inputs(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Predictions (n,) float64 for raw inputs as made by ``table_to_inputs``."""
        return predict_raw(self.model, inputs)

    def predict_table(self, table: pa.Table) -> np.ndarray:
        """Predictions (n,) for a table holding the feature columns (extra columns ignored).

        Binary classification: probability of class 1. Regression: value in label units.
        """
        if table.num_rows == 0:
            return np.zeros(0, dtype=np.float64)
        return self.predict_inputs(table_to_inputs(table, self.spec))


def predict_raw(
    model: keras.Model, inputs: dict[str, np.ndarray], batch_size: int = PREDICT_BATCH
) -> np.ndarray:
    """Predictions (n,) float64 of a Keras model on raw inputs (string arrays included).

    Keras cannot take numpy object (string) arrays directly, so the inputs go through a
    ``tf.data`` pipeline, which turns them into ``tf.string`` tensors.
    """
    n = len(next(iter(inputs.values()))) if inputs else 0
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    ds = tf.data.Dataset.from_tensor_slices(inputs).batch(batch_size)
    out = model.predict(ds, verbose=0)
    return np.asarray(out, dtype=np.float64).reshape(-1)


def _load_keras(path: Path) -> keras.Model:
    if not path.is_file():
        raise DataError(f"{path}: no such file; is {path.parent} a kfloop trained-model folder?")
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, TypeError) as exc:
        raise DataError(f"{path}: cannot load the Keras model: {exc}") from None


def load_trained_model(model_dir: str | os.PathLike[str]) -> TrainedModel:
    """Load ``model.keras`` and ``feature_spec.json`` (and ``training.json``) from a folder.

    Raises:
        DataError: naming the missing or unreadable file.
    """
    base = Path(model_dir)
    if not base.is_dir():
        raise DataError(f"{base}: not a folder; pass the trained-model folder from train_model")
    spec_file = base / SPEC_FILE
    if not spec_file.is_file():
        raise DataError(f"{spec_file}: no such file; is {base} a kfloop trained-model folder?")
    spec = FeatureSpec.from_json(spec_file)
    training: dict[str, Any] = {}
    if (base / TRAINING_FILE).is_file():
        training = json.loads((base / TRAINING_FILE).read_text(encoding="utf-8"))
    return TrainedModel(
        path=base, model=_load_keras(base / MODEL_FILE), spec=spec, training=training
    )
