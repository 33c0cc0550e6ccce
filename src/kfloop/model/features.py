"""Feature engineering that lives inside the model: the feature spec and its Keras layers.

All preprocessing is part of the saved model; there is no second copy anywhere:

- numeric features (int, float, bool, decimal columns): a value that is missing (null in
  Arrow, NaN or +/-inf at serving time) gets a missing indicator of 1 and is replaced by the
  training mean; then it is standardised with the training mean and standard deviation. The
  constants are baked into :class:`kfloop.model.layers.NumericPreprocessing` inside the core
  network.
- categorical features (string columns): the vocabulary is the training split's top-K values
  by frequency (ties broken by value) with at least ``min_count`` occurrences; the empty
  string and null are never in the vocabulary. Value ``vocabulary[i]`` has index ``i + 1``;
  index 0 is for everything else (out of vocabulary, missing, empty). Inside the full Keras
  model a ``StringLookup`` maps strings to indices; in the ONNX graph a ``LabelEncoder`` with
  the same vocabulary does. :class:`kfloop.model.layers.CategoricalIndex` then maps any index
  outside ``0..V`` to 0 before the embedding.

Columns of other types (timestamps, dates, binary, nested) are not features; they are
listed in :attr:`FeatureSpec.ignored` with the reason. A feature whose values are all missing
in the training split is an error (:class:`~kfloop.core.errors.DataError` naming it): the model
could learn nothing from it and its statistics are undefined; exclude it explicitly.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfloop.core.errors import ConfigError, DataError

Task = Literal["binary_classification", "regression"]
Kind = Literal["numeric", "categorical"]
TASKS: tuple[str, ...] = ("binary_classification", "regression")
SPEC_VERSION = 1
POSITIVE_CLASS = 1
DEFAULT_MAX_VOCABULARY = 1000
# Names must work as Keras layer names, TF tensor names and ONNX input names.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_MAX_NAME = 128


def _parquet_path(path: str | os.PathLike[str]) -> Path:
    """The Parquet file of a split artifact (``<folder>/data.parquet``) or a ``.parquet`` path.

    Delegates to :func:`kfloop.data.split.split_artifact_parquet`.

    Raises:
        DataError: naming the path when it is neither.
    """
    from kfloop.data.split import split_artifact_parquet

    return Path(split_artifact_parquet(path))


@dataclass(frozen=True)
class FeatureInfo:
    """One model input: its name (the column), kind, source Arrow type and statistics.

    ``mean``/``std`` are set for numeric features (over non-missing training values; a
    constant feature gets ``std`` 1.0). ``vocabulary`` is set for categorical features:
    ``vocabulary[i]`` has index ``i + 1``; index 0 is out-of-vocabulary/missing.
    """

    name: str
    kind: Kind
    source_dtype: str
    mean: float | None = None
    std: float | None = None
    vocabulary: list[str] | None = None
    missing_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON (``vocabulary`` only for categorical features)."""
        data = asdict(self)
        if self.kind == "numeric":
            data.pop("vocabulary")
        else:
            data.pop("mean")
            data.pop("std")
        return data


@dataclass(frozen=True)
class FeatureSpec:
    """What the model takes and predicts; saved as ``feature_spec.json`` in the model folder."""

    label: str
    task: Task
    features: list[FeatureInfo]
    positive_class: int = POSITIVE_CLASS
    version: int = SPEC_VERSION
    ignored: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Feature names in model input order."""
        return [f.name for f in self.features]

    @property
    def numeric(self) -> list[FeatureInfo]:
        """Numeric features in input order."""
        return [f for f in self.features if f.kind == "numeric"]

    @property
    def categorical(self) -> list[FeatureInfo]:
        """Categorical features in input order."""
        return [f for f in self.features if f.kind == "categorical"]

    def feature(self, name: str) -> FeatureInfo:
        """The feature called ``name``."""
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {
            "label": self.label,
            "task": self.task,
            "features": [f.to_dict() for f in self.features],
            "positive_class": self.positive_class,
            "version": self.version,
            "ignored": dict(self.ignored),
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The spec as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False, ensure_ascii=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Rebuild a spec from :meth:`to_dict` output.

        Raises:
            DataError: naming the key that is missing or has a bad value.
        """
        try:
            version = int(data.get("version", SPEC_VERSION))
            if version != SPEC_VERSION:
                raise DataError(
                    f"feature spec version {version} is not supported (expected {SPEC_VERSION})"
                )
            task = str(data["task"])
            if task not in TASKS:
                raise DataError(f"feature spec task {task!r} is not one of {TASKS}")
            features = []
            for item in data["features"]:
                kind = item["kind"]
                if kind not in ("numeric", "categorical"):
                    raise DataError(f"feature {item.get('name')!r}: unknown kind {kind!r}")
                features.append(
                    FeatureInfo(
                        name=str(item["name"]),
                        kind=kind,
                        source_dtype=str(item.get("source_dtype", "")),
                        mean=None if item.get("mean") is None else float(item["mean"]),
                        std=None if item.get("std") is None else float(item["std"]),
                        vocabulary=(
                            None
                            if item.get("vocabulary") is None
                            else [str(v) for v in item["vocabulary"]]
                        ),
                        missing_rate=float(item.get("missing_rate", 0.0)),
                    )
                )
            return cls(
                label=str(data["label"]),
                task=task,  # type: ignore[arg-type]
                features=features,
                positive_class=int(data.get("positive_class", POSITIVE_CLASS)),
                version=version,
                ignored={str(k): str(v) for k, v in dict(data.get("ignored", {})).items()},
            )
        except KeyError as exc:
            raise DataError(f"feature spec: missing key {exc.args[0]!r}") from None

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike[str]) -> FeatureSpec:
        """Read a spec from JSON text or a ``feature_spec.json`` path."""
        raw = os.fspath(text_or_path)
        text = raw if raw.lstrip().startswith("{") else Path(raw).read_text(encoding="utf-8")
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise DataError(f"feature spec {raw[:80]!r}: not valid JSON: {exc}") from None


# -- inference of the spec -------------------------------------------------------------------


def _is_numeric(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_decimal(t)
    )


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_string(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        return np.asarray(column.to_numpy())
    return np.asarray(column.to_numpy(zero_copy_only=False))


def numeric_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric/bool column as float64 with NaN for null."""
    return _to_numpy(pc.cast(column, pa.float64())).astype(np.float64).reshape(-1)


def string_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A string column as an object array of ``str`` with ``""`` for null."""
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    return np.asarray(_to_numpy(pc.fill_null(column, "")), dtype=object).reshape(-1)


def _check_name(name: str, what: str) -> None:
    if not _NAME_RE.match(name) or len(name) > _MAX_NAME:
        raise DataError(
            f"{what} {name!r}: column names used as model inputs must be 1-{_MAX_NAME} "
            "characters of letters, digits, '_', '.', '-' (not starting with '.' or '-'); "
            "rename the column or exclude it"
        )


def infer_task(column: pa.ChunkedArray, label: str) -> Task:
    """Task from the label type: bool, or int with 2 distinct values -> binary classification;
    float, or int with more than 2 distinct values -> regression.

    Raises:
        DataError: a label type that fits neither task (string, timestamp, ...).
    """
    t = column.type
    if pa.types.is_boolean(t):
        return "binary_classification"
    if pa.types.is_integer(t):
        distinct = pc.unique(column.drop_null())
        return "binary_classification" if len(distinct) <= 2 else "regression"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "regression"
    raise DataError(
        f"label column {label!r} has type {t}; binary classification needs bool or 0/1 "
        "integers and regression a numeric column. Convert it first (e.g. with label_data)"
    )


def label_values(table: pa.Table, spec_label: str, task: str, where: str = "table") -> np.ndarray:
    """The label column as float32 (n,), checked for the task.

    Raises:
        ConfigError: the label column is missing (naming ``label`` and listing the columns).
        DataError: null labels, or non-0/1 labels for binary classification (naming the row).
    """
    if spec_label not in table.column_names:
        raise ConfigError(
            "label",
            f"column {spec_label!r} is not in {where}; its columns are: "
            f"{', '.join(table.column_names)}",
        )
    column = table.column(spec_label)
    if not _is_numeric(column.type):
        raise DataError(
            f"{where}: label column {spec_label!r} has type {column.type}; it must be numeric "
            "or bool"
        )
    y = numeric_values(column)
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise DataError(
            f"{where}: label column {spec_label!r} has {bad.size} missing or non-finite "
            f"value(s), first at row {int(bad[0])}; drop or label those rows first"
        )
    if task == "binary_classification":
        wrong = np.flatnonzero((y != 0.0) & (y != 1.0))
        if wrong.size:
            raise DataError(
                f"{where}: label column {spec_label!r} must be 0/1 (or bool) for binary "
                f"classification; row {int(wrong[0])} has {y[wrong[0]]!r} "
                f"({wrong.size} such row(s))"
            )
    return y.astype(np.float32)


def build_vocabulary(
    values: Iterable[str], max_size: int = DEFAULT_MAX_VOCABULARY, min_count: int = 1
) -> list[str]:
    """Top ``max_size`` non-empty values by frequency (ties by value), each >= ``min_count``."""
    counts = Counter(v for v in values if v)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [value for value, count in ranked[:max_size] if count >= min_count]


def infer_feature_spec(
    table: pa.Table,
    label: str,
    task: str | None = None,
    exclude: Sequence[str] = (),
    *,
    max_vocabulary: int = DEFAULT_MAX_VOCABULARY,
    min_count: int = 1,
    where: str = "training table",
) -> FeatureSpec:
    """Infer the feature spec (and the normalisation constants) from the TRAINING table.

    Args:
        table: The training split.
        label: Label column.
        task: ``binary_classification`` or ``regression``; inferred from the label type when
            None or empty (see :func:`infer_task`).
        exclude: Columns that are not features (ids, keys, leakage). Unknown names are errors.
        max_vocabulary: Vocabulary size cap per categorical feature (top-K by frequency).
        min_count: Minimum occurrences for a value to enter a vocabulary.
        where: How messages name the table.

    Raises:
        ConfigError: label or an excluded column not in the table, bad task/K/min_count.
        DataError: a feature that is missing in every row, no usable feature, a bad column name.
    """
    if label not in table.column_names:
        raise ConfigError(
            "label",
            f"column {label!r} is not in the {where}; its columns are: "
            f"{', '.join(table.column_names)}",
        )
    unknown = [c for c in exclude if c not in table.column_names]
    if unknown:
        raise ConfigError(
            "exclude",
            f"{', '.join(repr(c) for c in unknown)} not in the {where}; its columns are: "
            f"{', '.join(table.column_names)}",
        )
    if (
        isinstance(max_vocabulary, bool)
        or not isinstance(max_vocabulary, int)
        or max_vocabulary < 1
    ):
        raise ConfigError("max_vocabulary", f"must be an integer >= 1, got {max_vocabulary!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ConfigError("min_count", f"must be an integer >= 1, got {min_count!r}")
    if task:
        if task not in TASKS:
            raise ConfigError("task", f"{task!r} is not one of {', '.join(TASKS)}")
        resolved: Task = task  # type: ignore[assignment]
    else:
        resolved = infer_task(table.column(label), label)

    n = table.num_rows
    features: list[FeatureInfo] = []
    ignored: dict[str, str] = {}
    all_missing: list[str] = []
    for fld in table.schema:
        name = fld.name
        if name == label or name in exclude:
            continue
        column = table.column(name)
        if _is_numeric(fld.type):
            _check_name(name, "feature")
            values = numeric_values(column)
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                all_missing.append(name)
                continue
            mean = float(finite.mean())
            std = float(finite.std())
            if not math.isfinite(std) or std < 1e-12:
                std = 1.0
            features.append(
                FeatureInfo(
                    name=name,
                    kind="numeric",
                    source_dtype=str(fld.type),
                    mean=mean,
                    std=std,
                    missing_rate=float(1.0 - finite.size / n) if n else 0.0,
                )
            )
        elif _is_string(fld.type):
            _check_name(name, "feature")
            strings = string_values(column)
            vocabulary = build_vocabulary(strings, max_vocabulary, min_count)
            present = int(np.count_nonzero(strings != ""))
            if present == 0:
                all_missing.append(name)
                continue
            if not vocabulary:
                raise DataError(
                    f"feature {name!r}: no value occurs at least min_count={min_count} times "
                    f"in the {where}; lower min_count or exclude the feature"
                )
            features.append(
                FeatureInfo(
                    name=name,
                    kind="categorical",
                    source_dtype=str(fld.type),
                    vocabulary=vocabulary,
                    missing_rate=float(1.0 - present / n) if n else 0.0,
                )
            )
        else:
            ignored[name] = f"type {fld.type} is not a supported feature type (numeric or string)"
    if all_missing:
        raise DataError(
            f"feature(s) {', '.join(repr(c) for c in all_missing)} are missing (null/NaN/empty) "
            f"in all {n} rows of the {where}; the model cannot learn from them. Fix the data or "
            "pass them in `exclude`"
        )
    if not features:
        raise DataError(
            f"the {where} has no usable feature column besides label {label!r} "
            f"(columns: {', '.join(table.column_names)}; ignored: {ignored or 'none'})"
        )
    return FeatureSpec(label=label, task=resolved, features=features, ignored=ignored)


def table_to_inputs(table: pa.Table, spec: FeatureSpec, where: str = "table") -> dict[str, Any]:
    """Raw model inputs from a table: ``{feature: array (n, 1)}``.

    Numeric features are float32 with NaN for missing; categorical features are object
    arrays of ``str`` with ``""`` for missing. Extra columns are ignored.

    Raises:
        DataError: a feature column is missing or has an incompatible type (naming it).
    """
    missing = [f.name for f in spec.features if f.name not in table.column_names]
    if missing:
        raise DataError(
            f"{where}: feature column(s) {', '.join(repr(m) for m in missing)} are missing; "
            f"the model needs {', '.join(spec.names)}"
        )
    inputs: dict[str, Any] = {}
    for f in spec.features:
        column = table.column(f.name)
        if f.kind == "numeric":
            if not _is_numeric(column.type):
                raise DataError(
                    f"{where}: feature {f.name!r} must be numeric (trained on {f.source_dtype}), "
                    f"got {column.type}"
                )
            inputs[f.name] = numeric_values(column).astype(np.float32).reshape(-1, 1)
        else:
            if not _is_string(column.type):
                raise DataError(
                    f"{where}: feature {f.name!r} must be a string column (trained on "
                    f"{f.source_dtype}), got {column.type}"
                )
            inputs[f.name] = string_values(column).reshape(-1, 1)
    return inputs
