"""Keras layers baked into the core network: the preprocessing constants live in the model.

Importing this module registers the layers (package ``kfloop``) so that ``model.keras`` and
``core.keras`` load with ``keras.saving.load_model``. The feature spec and the statistics
themselves are in :mod:`kfloop.model.features` (no TensorFlow needed there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="kfloop")
class NumericPreprocessing(keras.layers.Layer):
    """Missing indicators, mean imputation and standardisation for stacked numeric inputs.

    Input ``(batch, n)`` float32 (NaN/inf = missing). Output ``(batch, 2n)``: the ``n``
    standardised values, then the ``n`` missing indicators (1.0 = missing).
    """

    def __init__(self, means: Sequence[float], stds: Sequence[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(means) != len(stds):
            raise ValueError("means and stds differ in length")
        self.means = [float(m) for m in means]
        self.stds = [float(s) for s in stds]

    def call(self, inputs: Any) -> Any:
        """Impute, standardise, append indicators."""
        mean = ops.convert_to_tensor(np.asarray(self.means, dtype=np.float32))
        std = ops.convert_to_tensor(np.asarray(self.stds, dtype=np.float32))
        # Each `where` takes its condition straight from IsInf/IsNaN: tf2onnx then emits an
        # ONNX Where. For any other condition (e.g. LogicalOr(IsNaN, IsInf)) it emits
        # cond * a + (1 - cond) * b, which is NaN whenever a or b is NaN or inf.
        x = ops.where(ops.isinf(inputs), ops.full_like(inputs, np.nan), inputs)
        missing = ops.isnan(x)
        filled = ops.where(missing, ops.broadcast_to(mean, ops.shape(x)), x)
        scaled = (filled - mean) / std
        return ops.concatenate([scaled, ops.cast(missing, "float32")], axis=-1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """``(batch, 2n)``."""
        return (input_shape[0], 2 * len(self.means))

    def get_config(self) -> dict[str, Any]:
        """Constants go into the saved model."""
        config: dict[str, Any] = super().get_config()
        config.update({"means": self.means, "stds": self.stds})
        return config


@keras.saving.register_keras_serializable(package="kfloop")
class CategoricalIndex(keras.layers.Layer):
    """Maps indices outside ``0..vocabulary_size`` to 0 (out of vocabulary)."""

    def __init__(self, vocabulary_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocabulary_size = int(vocabulary_size)

    def call(self, inputs: Any) -> Any:
        """Keep valid indices, send the rest to 0."""
        valid = ops.logical_and(inputs >= 0, inputs <= self.vocabulary_size)
        return ops.where(valid, inputs, ops.zeros_like(inputs))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Unchanged."""
        return input_shape

    def get_config(self) -> dict[str, Any]:
        """Vocabulary size goes into the saved model."""
        config: dict[str, Any] = super().get_config()
        config.update({"vocabulary_size": self.vocabulary_size})
        return config
