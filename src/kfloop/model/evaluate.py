"""Evaluate a trained model on the validation split and decide its blessing.

:func:`evaluate_model` scores the VALIDATION split with the trained model (the Keras model in
the trained-model folder, through :func:`kfloop.model.predict.load_trained_model`), computes
the task's metrics (:mod:`kfloop.model.metrics`), metrics per slice of one feature, and checks
the codified objectives (:mod:`kfloop.model.objectives`). When the current production model is
given (``baseline_model_dir``), it is scored on the same rows and ``max_regression`` objectives
compare the two (champion/challenger). The baseline is one of:

* a trained-model folder (``feature_spec.json`` + ``model.keras``), predicted with Keras;
* a packaged model folder (``model.onnx`` + ``metadata.json``, what ``package_onnx`` writes and
  ``publish_model`` publishes: the production model as it serves), predicted with ONNX Runtime
  on the raw feature columns;
* a "no champion" folder (holding :data:`kfloop.deploy.champion.NO_CHAMPION_FILE`, what
  ``resolve_champion`` writes when nothing is deployed yet): no baseline, as if omitted.

It writes two files to ``output_dir``:

* ``evaluation.json``: metrics, slices, confusion matrix and ROC curve (classification),
  objectives, baseline metrics;
* ``blessing.json``: ``{"blessed", "reasons", "metrics", "baseline_metrics", "objectives"}``.

A blessing is written whether or not the model is blessed: a model that misses its objectives
is a result, not an error (``blessed: false``; later steps skip publishing). Errors are raised
only for inputs that cannot be evaluated (missing label, one class only, unknown metric, ...),
and then neither file is left behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from kfloop.core.arrowio import read_table
from kfloop.core.errors import ConfigError, DataError
from kfloop.model.metrics import (
    TASKS,
    RocCurve,
    SliceMetrics,
    check_threshold,
    compute_metrics,
    confusion_matrix,
    roc_curve_points,
    slice_metrics,
)
from kfloop.model.objectives import (
    ObjectiveResult,
    Objectives,
    evaluate_objectives,
    failure_reasons,
    format_value,
    parse_objectives,
)

SPEC_FILE = "feature_spec.json"
BLESSING_FILE = "blessing.json"
EVALUATION_FILE = "evaluation.json"
ONNX_FILE = "model.onnx"  # = kfloop.model.package.ONNX_FILE (not imported: it loads onnx)
PACKAGE_METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class ModelInfo:
    """What evaluation needs from a trained-model folder's ``feature_spec.json``."""

    model_dir: Path
    label: str
    task: str
    features: tuple[str, ...]
    kind: str = "keras"
    version: str = ""


def read_package_info(package_dir: Path, field: str) -> ModelInfo:
    """Read label, task and feature names of a packaged model from its ``metadata.json``.

    Raises:
        ConfigError: naming ``field`` when ``model.onnx`` is missing or the metadata is not
            a kfloop package's.
    """
    meta_path = package_dir / PACKAGE_METADATA_FILE
    if not (package_dir / ONNX_FILE).is_file():
        raise ConfigError(
            field,
            f"{package_dir} has {PACKAGE_METADATA_FILE} but no {ONNX_FILE}; pass the "
            "folder package_onnx wrote (or publish_model published)",
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        spec = meta["feature_spec"]
        label = str(spec["label"])
        task = str(spec["task"])
        features = tuple(str(f["name"]) for f in spec["features"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(
            field, f"{meta_path} is not a kfloop package metadata file: {exc!r}"
        ) from None
    if task not in TASKS:
        raise ConfigError(field, f"{meta_path}: unknown task {task!r}; expected one of {TASKS}")
    from kfloop.deploy.champion import CHAMPION_FILE

    version = str(meta.get("version") or "")
    champion = package_dir / CHAMPION_FILE  # resolve_champion's record of the pointer
    if champion.is_file():
        try:
            version = str(json.loads(champion.read_text(encoding="utf-8"))["version"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            pass  # the published metadata's version stands
    return ModelInfo(package_dir, label, task, features, "onnx", version)


def is_no_baseline(path: str | os.PathLike[str] | None) -> bool:
    """True for ``None``, ``""`` or a folder holding the "no champion" marker of
    ``resolve_champion`` (:data:`kfloop.deploy.champion.NO_CHAMPION_FILE`)."""
    from kfloop.deploy.champion import NO_CHAMPION_FILE

    if path is None or os.fspath(path) == "":
        return True
    folder = Path(path)
    return folder.is_dir() and (folder / NO_CHAMPION_FILE).is_file()


def read_baseline_info(baseline_dir: str | os.PathLike[str], field: str) -> ModelInfo:
    """A baseline (production) model: a packaged ONNX folder or a trained-model folder."""
    folder = Path(baseline_dir)
    if (
        folder.is_dir()
        and (folder / PACKAGE_METADATA_FILE).is_file()
        and not (folder / SPEC_FILE).is_file()
    ):
        return read_package_info(folder, field)
    if folder.is_dir() and not (folder / SPEC_FILE).is_file():
        raise ConfigError(
            field,
            f"{folder} is neither a trained-model folder ({SPEC_FILE}) nor a packaged model "
            f"({ONNX_FILE} + {PACKAGE_METADATA_FILE})",
        )
    return read_model_info(folder, field)


def read_model_info(model_dir: str | os.PathLike[str], field: str = "model_dir") -> ModelInfo:
    """Read label, task and feature names from ``<model_dir>/feature_spec.json``.

    Raises:
        ConfigError: naming ``field`` when the folder or the spec is missing or unreadable.
    """
    folder = Path(model_dir)
    spec_path = folder / SPEC_FILE
    if not folder.is_dir():
        raise ConfigError(field, f"{folder} is not a folder; pass the folder train_model wrote")
    if not spec_path.is_file():
        raise ConfigError(
            field, f"{folder} has no {SPEC_FILE}; pass the trained-model folder train_model wrote"
        )
    try:
        spec = json.loads(spec_path.read_text())
        label = str(spec["label"])
        task = str(spec["task"])
        features = tuple(str(f["name"]) for f in spec["features"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(field, f"{spec_path} is not a valid feature spec: {exc!r}") from None
    if task not in TASKS:
        raise ConfigError(field, f"{spec_path}: unknown task {task!r}; expected one of {TASKS}")
    return ModelInfo(folder, label, task, features)


def _parquet_path(path: str | os.PathLike[str]) -> str:
    """The Parquet file of a split: a split-artifact folder holding ``data.parquet``, a local
    ``.parquet`` file (see :func:`kfloop.data.split.split_artifact_parquet`), or an ``s3://``
    Parquet URI (read through the object store).
    """
    from kfloop.data.split import split_artifact_parquet

    text = os.fspath(path)
    if text.startswith("s3://"):
        return text
    return split_artifact_parquet(text)


def load_labelled_table(
    path: str | os.PathLike[str], label: str, task: str
) -> tuple[pa.Table, NDArray[np.float64], str]:
    """Read a split and its label column, checked for the model's task.

    Returns:
        ``(table, labels, parquet_path)``; labels as float64 (0.0/1.0 for classification).

    Raises:
        DataError: naming the file and column: label missing, nulls in the label, non-numeric
            label, labels other than 0/1, or one class only (classification).
    """
    source = _parquet_path(path)
    table = read_table(source)
    if table.num_rows == 0:
        raise DataError(f"{source}: the table has no rows")
    if label not in table.column_names:
        raise DataError(
            f"{source}: label column {label!r} (from the model's {SPEC_FILE}) is missing; "
            f"columns are: {', '.join(table.column_names)}"
        )
    column = table.column(label)
    if column.null_count:
        first = int(np.flatnonzero(np.asarray(pc.is_null(column)))[0])
        raise DataError(
            f"{source}: label column {label!r} has {column.null_count} null value(s) "
            f"(first at row {first}); drop or label those rows before evaluation"
        )
    typ = column.type
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)):
        raise DataError(f"{source}: label column {label!r} has type {typ}; expected numeric/bool")
    labels = np.asarray(column.cast(pa.float64()), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(labels))
    if bad.size:
        raise DataError(f"{source}: label column {label!r} row {int(bad[0])} is NaN/infinite")
    if task == "binary_classification":
        wrong = np.flatnonzero((labels != 0.0) & (labels != 1.0))
        if wrong.size:
            raise DataError(
                f"{source}: label column {label!r} row {int(wrong[0])} has "
                f"{labels[wrong[0]]!r}; a binary classifier needs labels 0/1"
            )
        classes = np.unique(labels)
        if classes.size < 2:
            raise DataError(
                f"{source}: label column {label!r} holds only class {int(classes[0])} in all "
                f"{labels.size} rows; evaluation needs both classes 0 and 1 (AUC is undefined "
                "otherwise); re-split with stratification or use more data"
            )
    return table, labels, source


def predict_with_trained_model(model_dir: str | os.PathLike[str], table: pa.Table) -> NDArray[Any]:
    """Predictions (n,) of the Keras model in a trained-model folder for a raw table.

    Raises:
        DataError: when the model returns a wrong number of predictions or NaN/inf values.
    """
    from kfloop.model.predict import load_trained_model  # TensorFlow: import only when used

    predictions = np.asarray(
        load_trained_model(model_dir).predict_table(table), dtype=np.float64
    ).reshape(-1)
    return check_predictions(predictions, table.num_rows, str(model_dir))


def predict_with_package(package_dir: str | os.PathLike[str], table: pa.Table) -> NDArray[Any]:
    """Predictions (n,) of a packaged model (``model.onnx`` + ``metadata.json``) for a raw
    table, with ONNX Runtime on CPU: the production model exactly as it serves.

    Raises:
        DataError: a feature column is missing, or the predictions are unusable.
    """
    import onnxruntime as ort

    from kfloop.model.features import FeatureSpec, table_to_inputs
    from kfloop.model.package import onnx_predict

    folder = Path(package_dir)
    meta = json.loads((folder / PACKAGE_METADATA_FILE).read_text(encoding="utf-8"))
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    inputs = table_to_inputs(table, spec, f"validation rows for the production model {folder}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"]
    )
    return check_predictions(onnx_predict(session, inputs), table.num_rows, str(folder))


def check_predictions(predictions: NDArray[Any], rows: int, source: str) -> NDArray[np.float64]:
    """Flatten predictions and check their count and finiteness.

    Raises:
        DataError: naming ``source`` on a row-count mismatch or non-finite values.
    """
    flat = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if flat.size != rows:
        raise DataError(f"{source}: model returned {flat.size} predictions for {rows} rows")
    bad = np.flatnonzero(~np.isfinite(flat))
    if bad.size:
        raise DataError(
            f"{source}: model returned {bad.size} NaN/infinite prediction(s) (first for row "
            f"{int(bad[0])})"
        )
    return flat


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON (strict: no NaN) to a temporary file in the same folder, then rename."""
    text = json.dumps(payload, indent=2, sort_keys=False, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text + "\n")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def clean_metrics(values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Metrics with NaN/inf replaced by ``None`` (JSON has no NaN)."""
    return {
        k: (float(v) if v is not None and math.isfinite(v) else None) for k, v in values.items()
    }


@dataclass(frozen=True)
class EvaluationResult:
    """Outcome of :func:`evaluate_model` (also written to ``evaluation.json``/``blessing.json``).

    Attributes:
        blessed: True when every objective passed (or none is configured).
        reasons: One human-readable line per failed objective.
        task: ``binary_classification`` or ``regression``.
        label: Label column.
        rows: Validation rows evaluated.
        threshold: Decision threshold used for classification metrics.
        metrics: The candidate model's metrics.
        baseline_metrics: The production model's metrics on the same rows, or ``None``.
        objectives: Result per objective.
        slices: Metrics per slice of ``slice_feature`` (empty when none was chosen).
        slice_feature: The feature sliced on, or ``None``.
        confusion_matrix: ``[[tn, fp], [fn, tp]]`` (classification) or ``None``.
        roc: ROC curve points (classification, <= 200 points) or ``None``.
        blessing_path: Path of ``blessing.json``.
        evaluation_path: Path of ``evaluation.json``.
        baseline: ``{"kind": "onnx"|"keras", "path", "version"}`` of the production model
            compared against, or ``None`` (no production model).
    """

    blessed: bool
    reasons: tuple[str, ...]
    task: str
    label: str
    rows: int
    threshold: float
    metrics: dict[str, float | None]
    baseline_metrics: dict[str, float | None] | None
    objectives: tuple[ObjectiveResult, ...]
    slices: tuple[SliceMetrics, ...]
    slice_feature: str | None
    confusion_matrix: list[list[int]] | None
    roc: RocCurve | None
    blessing_path: Path
    evaluation_path: Path
    baseline: dict[str, str] | None = None

    def blessing(self) -> dict[str, Any]:
        """The content of ``blessing.json``."""
        return {
            "blessed": self.blessed,
            "reasons": list(self.reasons),
            "metrics": self.metrics,
            "baseline_metrics": self.baseline_metrics,
            "baseline": self.baseline,
            "objectives": [o.to_dict() for o in self.objectives],
        }

    def evaluation(self) -> dict[str, Any]:
        """The content of ``evaluation.json``."""
        return {
            "task": self.task,
            "label": self.label,
            "rows": self.rows,
            "threshold": self.threshold,
            "blessed": self.blessed,
            "metrics": self.metrics,
            "baseline_metrics": self.baseline_metrics,
            "baseline": self.baseline,
            "objectives": [o.to_dict() for o in self.objectives],
            "slice_feature": self.slice_feature,
            "slices": [s.to_dict() for s in self.slices],
            "confusion_matrix": self.confusion_matrix,
            "roc": self.roc.to_dict() if self.roc is not None else None,
        }


def _check_slice_feature(
    slice_feature: str | None, table: pa.Table, label: str, source: str
) -> str | None:
    if slice_feature is None or slice_feature == "":
        return None
    if not isinstance(slice_feature, str):
        raise ConfigError("slice_feature", f"must be a column name, got {slice_feature!r}")
    if slice_feature == label:
        raise ConfigError("slice_feature", f"{slice_feature!r} is the label; slice on a feature")
    if slice_feature not in table.column_names:
        raise ConfigError(
            "slice_feature",
            f"column {slice_feature!r} is not in {source}; columns are: "
            f"{', '.join(table.column_names)}",
        )
    return slice_feature


def evaluate_model(
    model_dir: str | os.PathLike[str],
    validation_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    objectives: Mapping[str, Any] | str | Objectives | None = None,
    slice_feature: str | None = None,
    baseline_model_dir: str | os.PathLike[str] | None = None,
    threshold: float = 0.5,
    slice_top_n: int = 10,
    slice_min_rows: int = 30,
) -> EvaluationResult:
    """Evaluate a trained model on the validation split and write its blessing.

    Args:
        model_dir: Trained-model folder (``model.keras``, ``feature_spec.json``, ...).
        validation_path: The VALIDATION split: a split folder holding ``data.parquet`` or a
            Parquet path (local or ``s3://``). It must hold the label column named in the
            model's ``feature_spec.json``.
        output_dir: Folder to write ``evaluation.json`` and ``blessing.json`` into (created).
            Earlier copies of these two files there are removed first.
        objectives: Objectives config (:mod:`kfloop.model.objectives`); ``None``/empty blesses
            any model that can be evaluated.
        slice_feature: Column to compute metrics per value of (top ``slice_top_n`` values +
            ``__other__`` + ``__missing__``); ``None`` or ``""`` for no slicing.
        baseline_model_dir: The current production model: a packaged folder (``model.onnx``
            + ``metadata.json``, predicted with ONNX Runtime), a trained-model folder, or
            ``None``/``""``/a ``resolve_champion`` "no champion" folder for none. It is scored
            on the same rows; ``max_regression`` objectives compare against it (and are
            reported as skipped without one).
        threshold: Decision threshold for accuracy/precision/recall/f1 and the confusion
            matrix (classification), strictly between 0 and 1.
        slice_top_n: Values of ``slice_feature`` that get their own slice.
        slice_min_rows: Slices with fewer rows are reported with ``small: true``.

    Returns:
        The :class:`EvaluationResult`; ``blessed`` false is a normal outcome.

    Raises:
        ConfigError: bad ``threshold``, ``objectives`` (unknown metric: named
            ``objectives.<op>.<metric>``), ``slice_feature``, ``model_dir`` or
            ``baseline_model_dir`` (for example a baseline with another label or task).
        DataError: validation data unusable: label missing, nulls or non-0/1 labels, one class
            only, or the model's predictions are unusable.
    """
    cut = check_threshold(threshold)
    for name, value in (("slice_top_n", slice_top_n), ("slice_min_rows", slice_min_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(name, f"must be an integer >= 1, got {value!r}")
    info = read_model_info(model_dir, "model_dir")
    parsed = parse_objectives(objectives, info.task, field="objectives")
    baseline_info: ModelInfo | None = None
    if not is_no_baseline(baseline_model_dir):
        assert baseline_model_dir is not None
        baseline_info = read_baseline_info(baseline_model_dir, "baseline_model_dir")
        if (baseline_info.task, baseline_info.label) != (info.task, info.label):
            raise ConfigError(
                "baseline_model_dir",
                f"the production model predicts {baseline_info.label!r} "
                f"({baseline_info.task}) but the candidate predicts {info.label!r} "
                f"({info.task}); they cannot be compared",
            )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    blessing_path = out / BLESSING_FILE
    evaluation_path = out / EVALUATION_FILE
    for stale in (blessing_path, evaluation_path):
        stale.unlink(missing_ok=True)

    table, labels, source = load_labelled_table(validation_path, info.label, info.task)
    feature = _check_slice_feature(slice_feature, table, info.label, source)

    predictions = predict_with_trained_model(info.model_dir, table)
    metrics = clean_metrics(compute_metrics(info.task, labels, predictions, cut))
    baseline_metrics: dict[str, float | None] | None = None
    baseline: dict[str, str] | None = None
    if baseline_info is not None:
        base_pred = (
            predict_with_package(baseline_info.model_dir, table)
            if baseline_info.kind == "onnx"
            else predict_with_trained_model(baseline_info.model_dir, table)
        )
        baseline = {
            "kind": baseline_info.kind,
            "path": str(baseline_info.model_dir),
            "version": baseline_info.version,
        }
        baseline_metrics = clean_metrics(compute_metrics(info.task, labels, base_pred, cut))

    slices: list[SliceMetrics] = []
    if feature is not None:
        slices = slice_metrics(
            info.task,
            labels,
            predictions,
            table.column(feature).to_pylist(),
            feature=feature,
            top_n=slice_top_n,
            min_rows=slice_min_rows,
            threshold=cut,
        )
        slices = [
            SliceMetrics(
                s.feature, s.value, s.rows, s.small, clean_metrics(s.metrics), s.note, s.members
            )
            for s in slices
        ]
    matrix: list[list[int]] | None = None
    roc: RocCurve | None = None
    if info.task == "binary_classification":
        matrix = confusion_matrix(labels, predictions, cut)
        roc = roc_curve_points(labels, predictions)

    results = evaluate_objectives(parsed, metrics, baseline_metrics)
    reasons = failure_reasons(results)
    result = EvaluationResult(
        blessed=not reasons,
        reasons=tuple(reasons),
        task=info.task,
        label=info.label,
        rows=table.num_rows,
        threshold=cut,
        metrics=metrics,
        baseline_metrics=baseline_metrics,
        objectives=tuple(results),
        slices=tuple(slices),
        slice_feature=feature,
        confusion_matrix=matrix,
        roc=roc,
        blessing_path=blessing_path,
        evaluation_path=evaluation_path,
        baseline=baseline,
    )
    try:
        write_json_atomic(evaluation_path, result.evaluation())
        write_json_atomic(blessing_path, result.blessing())  # last: its presence = complete
    except BaseException:
        for path in (blessing_path, evaluation_path):
            path.unlink(missing_ok=True)
        raise
    return result


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def objectives_markdown(results: tuple[ObjectiveResult, ...] | list[ObjectiveResult]) -> str:
    """A Markdown table of objective results (or a line saying there are none)."""
    if not results:
        return "_No objectives configured._\n"
    lines = ["| objective | metric | threshold | value | result |", "|---|---|---|---|---|"]
    for r in results:
        status = "skipped" if r.skipped else ("pass" if r.passed else "**FAIL**")
        value = "n/a" if r.value is None else format_value(r.value)
        if r.baseline is not None:
            value += f" (production {format_value(r.baseline)})"
        lines.append(f"| {r.op} | {r.metric} | {format_value(r.threshold)} | {value} | {status} |")
    return "\n".join(lines) + "\n"


def evaluation_markdown(result: EvaluationResult) -> str:
    """A Markdown report of an evaluation (for the KFP UI)."""
    verdict = "BLESSED" if result.blessed else "NOT BLESSED"
    parts = [
        f"# Model evaluation: {verdict}\n",
        f"Task `{result.task}`, label `{result.label}`, {result.rows} validation rows"
        + (f", threshold {result.threshold:g}" if result.task != "regression" else "")
        + ".\n",
    ]
    if result.reasons:
        parts.append("## Why not blessed\n")
        parts.extend(f"- {reason}" for reason in result.reasons)
        parts.append("")
    parts.append("## Metrics\n")
    if result.baseline is not None:
        version = result.baseline.get("version") or "unversioned"
        parts.append(
            f"Compared with the production model `{version}` ({result.baseline['kind']}) on "
            "the same rows.\n"
        )
    elif any(o.op == "max_regression" for o in result.objectives):
        parts.append("No production model to compare with: max_regression objectives skipped.\n")
    header = "| metric | candidate |" + (" production |" if result.baseline_metrics else "")
    parts.append(header)
    parts.append("|---|---|" + ("---|" if result.baseline_metrics else ""))
    for name, value in result.metrics.items():
        row = f"| {name} | {_num(value)} |"
        if result.baseline_metrics is not None:
            row += f" {_num(result.baseline_metrics.get(name))} |"
        parts.append(row)
    parts.append("\n## Objectives\n")
    parts.append(objectives_markdown(result.objectives))
    if result.confusion_matrix is not None:
        (tn, fp), (fn, tp) = result.confusion_matrix
        parts.append("## Confusion matrix (rows: actual, columns: predicted)\n")
        parts.append("| | pred 0 | pred 1 |\n|---|---|---|")
        parts.append(f"| actual 0 | {tn} | {fp} |\n| actual 1 | {fn} | {tp} |\n")
    if result.slices:
        main = "auc" if result.task == "binary_classification" else "rmse"
        parts.append(f"## Slices by `{result.slice_feature}`\n")
        parts.append(f"| value | rows | {main} | note |\n|---|---|---|---|")
        for s in result.slices:
            note = "; ".join(n for n in ("small slice" if s.small else "", s.note) if n)
            parts.append(f"| {s.value} | {s.rows} | {_num(s.metrics.get(main))} | {note} |")
        parts.append("")
    return "\n".join(parts)
