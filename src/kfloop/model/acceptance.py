"""The final acceptance test: the model as it will be served, on the held-back TEST split.

The TEST split is read here and nowhere earlier (training uses train/validation, evaluation
and tuning the validation split), so these figures are the unbiased estimate the release
decision rests on.

What is tested (see :func:`acceptance_test`):

* **quality**: the task's metrics (:mod:`kfloop.model.metrics`) on the test split, checked
  against an objectives config in the same format as :mod:`kfloop.model.objectives`
  (``min``/``max``; ``max_regression`` is not allowed here, evaluation does champion/challenger);
* **latency**: single-row requests, one after another, after a warm-up; p50/p95 in
  milliseconds of the model call alone (the inputs are prepared beforehand), objective
  ``max.latency_ms_p95``;
* **size**: bytes of the served file, objective ``max.model_bytes``.

Which artifact is tested: the PACKAGED model when there is one. If ``onnx_dir`` is given (a
folder holding ``model.onnx`` and ``metadata.json``, as :mod:`kfloop.model.package` writes),
predictions, latency and size all come from ``model.onnx`` run by ONNX Runtime on RAW inputs
built straight from the Arrow columns, as a client sends them (strings for categorical
features, which the graph's ``LabelEncoder`` nodes index; no TensorFlow involved). Otherwise
they come from the Keras model in the trained-model folder (``model.keras``: predictions via
:func:`kfloop.model.predict.load_trained_model`, latency of a direct single-row call, size of
``model.keras``); ``source`` in the result says which.

A failed acceptance test is a result (``passed: false`` in ``acceptance.json``), not an
exception; publishing steps downstream read it and skip. Exceptions are raised only for
inputs that cannot be tested, and then no ``acceptance.json``/report is left behind.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from kfloop.core.errors import ConfigError, DataError
from kfloop.model.evaluate import (
    ModelInfo,
    check_predictions,
    clean_metrics,
    load_labelled_table,
    objectives_markdown,
    read_model_info,
    write_json_atomic,
)
from kfloop.model.metrics import check_threshold, compute_metrics, confusion_matrix
from kfloop.model.objectives import (
    ObjectiveResult,
    Objectives,
    evaluate_objectives,
    failure_reasons,
    parse_objectives,
)

ONNX_FILE = "model.onnx"
ONNX_METADATA_FILE = "metadata.json"
ONNX_OUTPUT = "prediction"
KERAS_FILE = "model.keras"
ACCEPTANCE_FILE = "acceptance.json"
REPORT_FILE = "acceptance.md"
LATENCY_METRICS: tuple[str, ...] = ("latency_ms_p50", "latency_ms_p95", "model_bytes")
DEFAULT_MAX_LATENCY_MS_P95 = 50.0
DEFAULT_MAX_MODEL_BYTES = 50_000_000
DEFAULT_LATENCY_SAMPLES = 200
DEFAULT_WARMUP = 20
MAX_LATENCY_SAMPLES = 100_000


@dataclass(frozen=True)
class LatencyStats:
    """Single-request latency in milliseconds over ``samples`` timed requests."""

    p50: float
    p95: float
    mean: float
    max: float
    samples: int
    warmup: int

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return asdict(self)


def measure_latency(
    request: Callable[[int], object], samples: int, warmup: int = DEFAULT_WARMUP
) -> LatencyStats:
    """Time ``request(i)`` for ``i`` in ``range(samples)`` after ``warmup`` untimed calls.

    Requests run one after another (no concurrency): this is the latency one client sees.

    Raises:
        ConfigError: ``samples`` < 1 or ``warmup`` < 0.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError("latency_samples", f"must be an integer >= 1, got {samples!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError("warmup", f"must be an integer >= 0, got {warmup!r}")
    for i in range(warmup):
        request(i)
    times = np.empty(samples, dtype=np.float64)
    for i in range(samples):
        start = time.perf_counter()
        request(i)
        times[i] = (time.perf_counter() - start) * 1000.0
    return LatencyStats(
        p50=float(np.percentile(times, 50)),
        p95=float(np.percentile(times, 95)),
        mean=float(times.mean()),
        max=float(times.max()),
        samples=samples,
        warmup=warmup,
    )


# -- the two ways to run the model ---------------------------------------------------------


@dataclass(frozen=True)
class _Runner:
    """Batch predictions, a single-row request function for latency, and the served file."""

    source: str
    artifact: Path
    predictions: NDArray[np.float64]
    single_row: Callable[[int], object]


def check_onnx_dir(onnx_dir: str | os.PathLike[str]) -> Path:
    """The ``model.onnx`` path of a packaged-model folder (which must hold ``metadata.json``).

    Raises:
        ConfigError: naming ``onnx_dir`` when the folder or a file is missing.
    """
    folder = Path(onnx_dir)
    if not folder.is_dir():
        raise ConfigError("onnx_dir", f"{folder} is not a folder; pass package_onnx's output")
    missing = [n for n in (ONNX_FILE, ONNX_METADATA_FILE) if not (folder / n).is_file()]
    if missing:
        raise ConfigError(
            "onnx_dir",
            f"{folder} has no {' or '.join(missing)}; pass the folder package_onnx wrote "
            f"(holding {ONNX_FILE} and {ONNX_METADATA_FILE})",
        )
    return folder / ONNX_FILE


_ONNX_NUMERIC: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
}


def _column_numpy(column: pa.ChunkedArray | pa.Array) -> NDArray[Any]:
    """A column as numpy (nulls of floats -> NaN), for pyarrow 10 and newer."""
    if isinstance(column, pa.ChunkedArray):
        return np.asarray(column.to_numpy())
    return np.asarray(column.to_numpy(zero_copy_only=False))


def onnx_feed(session: Any, table: pa.Table, where: str) -> dict[str, NDArray[Any]]:
    """ONNX Runtime inputs built straight from an Arrow table, as a client would send them.

    Numeric inputs (``tensor(float)``/``tensor(double)``) take numeric or bool columns, null
    -> NaN; string inputs (``tensor(string)``) take string columns, null -> ``""``. Shape
    ``(n, 1)`` (or ``(n,)`` for rank-1 inputs). No TensorFlow involved.

    Raises:
        DataError: naming the column when it is missing or of an incompatible type.
    """
    import pyarrow.compute as pc

    feed: dict[str, NDArray[Any]] = {}
    for node in session.get_inputs():
        if node.name not in table.column_names:
            raise DataError(
                f"{where}: column {node.name!r}, an input of the ONNX model, is missing; "
                f"columns are: {', '.join(table.column_names)}"
            )
        column = table.column(node.name)
        typ = column.type
        if pa.types.is_dictionary(typ):
            column = pc.cast(column, typ.value_type)
            typ = typ.value_type
        if node.type == "tensor(string)":
            if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
                raise DataError(f"{where}: column {node.name!r} must be a string column, got {typ}")
            values = np.asarray(_column_numpy(pc.fill_null(column, "")), dtype=object)
        elif node.type in _ONNX_NUMERIC:
            if not (
                pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)
            ):
                raise DataError(f"{where}: column {node.name!r} must be numeric, got {typ}")
            as_float = _column_numpy(pc.cast(column, pa.float64()))
            values = np.asarray(as_float, dtype=np.float64).astype(_ONNX_NUMERIC[node.type])
        else:
            raise DataError(f"ONNX input {node.name!r} has unsupported type {node.type}")
        rank = len(node.shape) if node.shape is not None else 2
        feed[node.name] = values.reshape(-1) if rank == 1 else values.reshape(-1, 1)
    return feed


def _onnx_runner(onnx_path: Path, info: ModelInfo, table: pa.Table, samples: int) -> _Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise DataError(f"{onnx_path}: ONNX Runtime cannot load the model: {exc}") from None
    inputs = sorted(i.name for i in session.get_inputs())
    if inputs != sorted(info.features):
        raise ConfigError(
            "onnx_dir",
            f"{onnx_path} takes inputs {inputs} but the trained model's features are "
            f"{sorted(info.features)}; pass the ONNX package of this model",
        )
    feed = onnx_feed(session, table, "test split")
    names = [o.name for o in session.get_outputs()]
    output = ONNX_OUTPUT if ONNX_OUTPUT in names else names[0]
    predictions = check_predictions(
        np.asarray(session.run([output], feed)[0]), table.num_rows, str(onnx_path)
    )
    rows = table.num_rows
    singles = [{k: v[i : i + 1] for k, v in feed.items()} for i in range(min(rows, samples))]

    def single_row(i: int) -> object:
        return session.run([output], singles[i % len(singles)])

    return _Runner("onnx", onnx_path, predictions, single_row)


def _keras_runner(info: ModelInfo, table: pa.Table, samples: int) -> _Runner:
    import tensorflow as tf

    from kfloop.model.features import table_to_inputs
    from kfloop.model.predict import load_trained_model

    trained = load_trained_model(info.model_dir)
    predictions = check_predictions(
        trained.predict_table(table), table.num_rows, str(info.model_dir)
    )
    keras_model = trained.model
    inputs = table_to_inputs(table, trained.spec, "test split")
    rows = table.num_rows
    singles = [
        {
            k: tf.constant(v[i : i + 1].astype(str) if v.dtype == object else v[i : i + 1])
            for k, v in inputs.items()
        }
        for i in range(min(rows, samples))
    ]

    def single_row(i: int) -> object:
        return keras_model(singles[i % len(singles)], training=False)

    return _Runner("keras", info.model_dir / KERAS_FILE, predictions, single_row)


# -- the test -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AcceptanceResult:
    """Outcome of :func:`acceptance_test` (also in ``acceptance.json``).

    Attributes:
        passed: True when every objective passed.
        reasons: One human-readable line per failed objective.
        source: ``onnx`` (the packaged ``model.onnx`` was tested) or ``keras``.
        artifact: The file tested (``model.onnx`` or ``model.keras``).
        task: ``binary_classification`` or ``regression``.
        rows: Test rows.
        threshold: Decision threshold for classification metrics.
        metrics: Task metrics on the test split.
        confusion_matrix: ``[[tn, fp], [fn, tp]]`` (classification) or ``None``.
        latency: Single-row latency statistics.
        model_bytes: Size of ``artifact``.
        objectives: Result per objective (metrics, ``latency_ms_p95``, ``model_bytes``).
        acceptance_path: Path of ``acceptance.json``.
        report_path: Path of the Markdown report.
    """

    passed: bool
    reasons: tuple[str, ...]
    source: str
    artifact: str
    task: str
    rows: int
    threshold: float
    metrics: dict[str, float | None]
    confusion_matrix: list[list[int]] | None
    latency: LatencyStats
    model_bytes: int
    objectives: tuple[ObjectiveResult, ...]
    acceptance_path: Path
    report_path: Path

    def to_dict(self) -> dict[str, Any]:
        """The content of ``acceptance.json``."""
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "metrics": self.metrics,
            "latency_ms": {"p50": self.latency.p50, "p95": self.latency.p95},
            "model_bytes": self.model_bytes,
            "source": self.source,
            "artifact": self.artifact,
            "task": self.task,
            "rows": self.rows,
            "threshold": self.threshold,
            "confusion_matrix": self.confusion_matrix,
            "latency": self.latency.to_dict(),
            "objectives": [o.to_dict() for o in self.objectives],
        }


def _acceptance_objectives(
    objectives: Mapping[str, Any] | str | Objectives | None,
    task: str,
    max_latency_ms_p95: float | None,
    max_model_bytes: int | None,
) -> Objectives:
    parsed = parse_objectives(
        objectives,
        task,
        field="objectives",
        extra_metrics=LATENCY_METRICS,
        allow_regression=False,
    )
    limits: dict[str, float] = {}
    if max_latency_ms_p95 is not None:
        if (
            isinstance(max_latency_ms_p95, bool)
            or not isinstance(max_latency_ms_p95, int | float)
            or not math.isfinite(max_latency_ms_p95)
            or max_latency_ms_p95 <= 0
        ):
            raise ConfigError(
                "max_latency_ms_p95", f"must be a number > 0 (ms), got {max_latency_ms_p95!r}"
            )
        limits["latency_ms_p95"] = float(max_latency_ms_p95)
    if max_model_bytes is not None:
        if isinstance(max_model_bytes, bool) or not isinstance(max_model_bytes, int):
            raise ConfigError("max_model_bytes", f"must be an integer, got {max_model_bytes!r}")
        if max_model_bytes < 1:
            raise ConfigError("max_model_bytes", f"must be >= 1, got {max_model_bytes}")
        limits["model_bytes"] = float(max_model_bytes)
    for name in limits:
        if name in parsed.max:
            raise ConfigError(
                f"objectives.max.{name}",
                f"also set by the max_{name} parameter; set it in one place only",
            )
    return parsed.model_copy(update={"max": {**parsed.max, **limits}})


def acceptance_test(
    model_dir: str | os.PathLike[str],
    test_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    onnx_dir: str | os.PathLike[str] | None = None,
    objectives: Mapping[str, Any] | str | Objectives | None = None,
    max_latency_ms_p95: float | None = DEFAULT_MAX_LATENCY_MS_P95,
    max_model_bytes: int | None = DEFAULT_MAX_MODEL_BYTES,
    latency_samples: int = DEFAULT_LATENCY_SAMPLES,
    warmup: int = DEFAULT_WARMUP,
    threshold: float = 0.5,
) -> AcceptanceResult:
    """Run the final acceptance test on the held-back TEST split.

    Args:
        model_dir: Trained-model folder (its ``feature_spec.json`` names label, task and
            features; its ``model.keras`` is tested when no ``onnx_dir`` is given).
        test_path: The TEST split: a split folder holding ``data.parquet`` or a Parquet path.
        output_dir: Folder for ``acceptance.json`` and ``acceptance.md`` (created; earlier
            copies there are removed first).
        onnx_dir: Packaged-model folder (``model.onnx`` + ``metadata.json``), or ``None``/""
            to test the Keras model instead.
        objectives: ``min``/``max`` objectives on the task's metrics and on
            ``latency_ms_p50``, ``latency_ms_p95``, ``model_bytes`` (the last two only when
            the dedicated parameters below are None). ``max_regression`` is rejected.
        max_latency_ms_p95: Objective ``max.latency_ms_p95`` in milliseconds; None = none.
        max_model_bytes: Objective ``max.model_bytes``; None = none.
        latency_samples: Timed single-row requests (1..100000); rows of the test split are
            cycled through.
        warmup: Untimed requests before timing.
        threshold: Decision threshold for classification metrics, strictly in (0, 1).

    Returns:
        :class:`AcceptanceResult`; ``passed`` false is a normal outcome.

    Raises:
        ConfigError: bad parameters (named), unknown metric in ``objectives``
            (``objectives.<op>.<metric>``), ``onnx_dir`` without ``model.onnx``/``metadata.json``.
        DataError: test data unusable (label missing, nulls, one class only, ...) or the
            model's predictions are unusable.
    """
    cut = check_threshold(threshold)
    if (
        isinstance(latency_samples, bool)
        or not isinstance(latency_samples, int)
        or not 1 <= latency_samples <= MAX_LATENCY_SAMPLES
    ):
        raise ConfigError(
            "latency_samples",
            f"must be an integer in 1..{MAX_LATENCY_SAMPLES}, got {latency_samples!r}",
        )
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError("warmup", f"must be an integer >= 0, got {warmup!r}")
    info = read_model_info(model_dir, "model_dir")
    parsed = _acceptance_objectives(objectives, info.task, max_latency_ms_p95, max_model_bytes)
    onnx_path = (
        check_onnx_dir(onnx_dir) if onnx_dir is not None and os.fspath(onnx_dir) != "" else None
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    acceptance_path = out / ACCEPTANCE_FILE
    report_path = out / REPORT_FILE
    for stale in (acceptance_path, report_path):
        stale.unlink(missing_ok=True)

    table, labels, _source = load_labelled_table(test_path, info.label, info.task)
    runner = (
        _onnx_runner(onnx_path, info, table, latency_samples)
        if onnx_path is not None
        else _keras_runner(info, table, latency_samples)
    )
    metrics = clean_metrics(compute_metrics(info.task, labels, runner.predictions, cut))
    matrix = (
        confusion_matrix(labels, runner.predictions, cut)
        if info.task == "binary_classification"
        else None
    )
    latency = measure_latency(runner.single_row, latency_samples, warmup)
    model_bytes = runner.artifact.stat().st_size
    measured: dict[str, float | None] = {
        **metrics,
        "latency_ms_p50": latency.p50,
        "latency_ms_p95": latency.p95,
        "model_bytes": float(model_bytes),
    }
    results = evaluate_objectives(parsed, measured)
    reasons = failure_reasons(results)
    result = AcceptanceResult(
        passed=not reasons,
        reasons=tuple(reasons),
        source=runner.source,
        artifact=str(runner.artifact),
        task=info.task,
        rows=table.num_rows,
        threshold=cut,
        metrics=metrics,
        confusion_matrix=matrix,
        latency=latency,
        model_bytes=model_bytes,
        objectives=tuple(results),
        acceptance_path=acceptance_path,
        report_path=report_path,
    )
    try:
        report_path.write_text(acceptance_markdown(result), encoding="utf-8")
        write_json_atomic(acceptance_path, result.to_dict())  # last: its presence = complete
    except BaseException:
        for path in (acceptance_path, report_path):
            path.unlink(missing_ok=True)
        raise
    return result


def read_acceptance(output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``acceptance.json`` from a folder :func:`acceptance_test` wrote.

    Raises:
        DataError: when it is missing or not JSON.
    """
    path = Path(output_dir) / ACCEPTANCE_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no acceptance result; did acceptance_test run?") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from None
    return data


def acceptance_markdown(result: AcceptanceResult) -> str:
    """A Markdown report of an acceptance test (for the KFP UI)."""
    verdict = "PASSED" if result.passed else "FAILED"
    parts = [
        f"# Acceptance test: {verdict}\n",
        f"Tested the **{result.source}** model `{Path(result.artifact).name}` on "
        f"{result.rows} held-back test rows (task `{result.task}`).\n",
    ]
    if result.reasons:
        parts.append("## Why it failed\n")
        parts.extend(f"- {reason}" for reason in result.reasons)
        parts.append("")
    parts.append("## Test metrics\n")
    parts.append("| metric | value |\n|---|---|")
    for name, value in result.metrics.items():
        parts.append(f"| {name} | {'n/a' if value is None else f'{value:.4f}'} |")
    lat = result.latency
    parts.append(
        f"\n## Serving\n\n- single-row latency over {lat.samples} requests "
        f"(after {lat.warmup} warm-up): p50 {lat.p50:.3f} ms, p95 {lat.p95:.3f} ms, "
        f"max {lat.max:.3f} ms\n- model size: {result.model_bytes} bytes\n"
    )
    parts.append("## Objectives\n")
    parts.append(objectives_markdown(result.objectives))
    return "\n".join(parts)
