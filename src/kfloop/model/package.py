"""Package a trained model as ONE ONNX file that takes raw features, check parity, publish.

Conversion: tf2onnx cannot convert Keras 3 ``StringLookup`` and ``from_keras`` is fragile on
Keras 3, so only the CORE network (numeric float32 and categorical int64 index inputs) is
converted, with ``tf2onnx.convert.from_function`` at the pinned opset :data:`OPSET`. Then
one ONNX-ML ``LabelEncoder`` per categorical feature (``keys_strings`` = vocabulary,
``values_int64s`` = 1..V, ``default_int64`` = 0: the same mapping as the Keras
``StringLookup``) is put in front of the core's index input, so the final graph's inputs are
the RAW features:

- numeric: ``tensor(float)`` shape ``[N, 1]``, NaN (or +/-inf) = missing;
- categorical: ``tensor(string)`` shape ``[N, 1]``, ``""`` = missing, unknown values allowed.

and its output ``prediction`` is ``tensor(float)`` ``[N, 1]`` (probability of class 1, or the
value in label units). ``onnx.checker.check_model(full_check=True)`` must pass.

Parity: ONNX Runtime (CPU) on the final graph with raw inputs against the full Keras model
(``model.keras``) on the test split's rows plus probe rows (every numeric missing, every
categorical missing, unseen category strings, infinities). A maximum absolute difference
above the tolerance raises :class:`ParityError` and nothing is written.

Output folder: ``model.onnx``, ``metadata.json`` (see :func:`package_onnx`) and
``MODEL_CARD.md``, written to a temporary sibling and renamed into place when complete.

Publishing (:func:`publish_model`) uploads that folder to
``s3://<models-bucket>/<model-name>/<version>/`` only for a blessed AND accepted model,
never over an existing version, with ``metadata.json`` uploaded last: a reader that sees
``metadata.json`` sees a complete version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

import kfloop
from kfloop.core.arrowio import read_table
from kfloop.core.errors import ConfigError, DataError, KfloopError, ObjectStoreError
from kfloop.core.objectstore import ObjectInfo, ObjectStore, S3Uri, sha256_file
from kfloop.model.features import FeatureSpec, _parquet_path, table_to_inputs

log = logging.getLogger(__name__)

OPSET = 17
"""ai.onnx opset of the packaged graph: tf2onnx 1.17 converts up to 18, onnx 1.17 and
ONNX Runtime 1.20 support it (IR version 8)."""
ML_OPSET = 3
"""ai.onnx.ml opset: ``LabelEncoder`` version 2 (string -> int64 with a default), which
ONNX Runtime 1.20 implements."""
ONNX_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
CARD_FILE = "MODEL_CARD.md"
PROFILE_FILE = "reference_profile.json"  # the drift monitor's reference, from train_model
STATISTICS_FILE = "stats.tfrecord"
"""Training-data TFDV statistics published next to model.onnx (optional): the reference the
next retraining run validates its fresh window against (``resolve_champion``)."""
OUTPUT_NAME = "prediction"
BATCH_DIM = "N"
METADATA_VERSION = 1
DEFAULT_TOLERANCE = 1e-5
DEFAULT_PARITY_ROWS = 10_000
UNSEEN_CATEGORY = "__kfloop_unseen_category__"
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ParityError(KfloopError):
    """The ONNX graph's predictions differ from the Keras model's by more than the tolerance."""


class VersionExistsError(ConfigError):
    """A model version is already published; versions are never overwritten."""

    def __init__(self, uri: str) -> None:
        super().__init__(
            "version",
            f"{uri} already holds a published model version; versions are never "
            "overwritten. Choose a new version (or leave it empty for a timestamp)",
        )
        self.uri = uri


@dataclass(frozen=True)
class ParityResult:
    """ONNX Runtime vs Keras on the same rows."""

    max_abs_diff: float
    rows: int
    tolerance: float
    passed: bool
    test_rows: int = 0
    probe_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return asdict(self)


@dataclass(frozen=True)
class ReleaseDecision:
    """Whether the packaged model is to be published, and why not when it is not."""

    blessed: bool
    accepted: bool
    publish: bool
    reasons: tuple[str, ...] = ()
    target_uri: str = ""

    def summary(self) -> str:
        """One line for logs and the model card."""
        if self.publish:
            return f"published to {self.target_uri}" if self.target_uri else "to be published"
        return "not published: " + "; ".join(self.reasons or ("no reason given",))


@dataclass(frozen=True)
class PackageResult:
    """What :func:`package_onnx` wrote."""

    output_dir: str
    onnx_path: str
    metadata: dict[str, Any]
    parity: ParityResult
    conversion_seconds: float
    onnx_sha256: str
    onnx_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)


# -- conversion and composition --------------------------------------------------------------


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a value everywhere in ``graph`` (node inputs/outputs, subgraphs, outputs)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_value(attr.g, old, new)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _rename_value(sub, old, new)
    for out in graph.output:
        if out.name == old:
            out.name = new


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {o.name for o in graph.output}
    names |= {t.name for t in graph.initializer} | {n.name for n in graph.node}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _unique(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name = f"{base}_{i}"
        i += 1
    taken.add(name)
    return name


def _set_shape(value: onnx.ValueInfoProto, elem_type: int) -> None:
    value.type.tensor_type.elem_type = elem_type
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    shape.dim.add().dim_param = BATCH_DIM
    shape.dim.add().dim_value = 1


def convert_core(core: Any, spec: FeatureSpec, opset: int = OPSET) -> onnx.ModelProto:
    """Convert the Keras core network with ``tf2onnx.convert.from_function``.

    Inputs are named as the features (numeric float32, categorical int64, ``[N, 1]``).
    """
    import tensorflow as tf
    import tf2onnx

    names = spec.names
    signature = [
        tf.TensorSpec((None, 1), tf.float32 if f.kind == "numeric" else tf.int64, name=f.name)
        for f in spec.features
    ]

    @tf.function(input_signature=signature)
    def serve(*args: Any) -> Any:
        return core(dict(zip(names, args, strict=True)), training=False)

    model_proto, _ = tf2onnx.convert.from_function(
        serve, input_signature=signature, opset=opset, output_path=None
    )
    got = [i.name for i in model_proto.graph.input]
    if got != names:
        raise KfloopError(f"tf2onnx named the core inputs {got}, expected {names}")
    if len(model_proto.graph.output) != 1:
        raise KfloopError(f"the core network has {len(model_proto.graph.output)} outputs, not 1")
    return model_proto


def compose_raw_input_model(
    core_model: onnx.ModelProto, spec: FeatureSpec, ml_opset: int = ML_OPSET
) -> onnx.ModelProto:
    """Put one ``LabelEncoder`` per categorical feature in front of the converted core.

    The returned graph takes raw features (float for numeric, string for categorical, both
    ``[N, 1]``) and outputs ``prediction`` ``[N, 1]``.
    """
    model = onnx.ModelProto()
    model.CopyFrom(core_model)
    graph = model.graph
    taken = _all_names(graph)
    old_output = graph.output[0].name
    if old_output != OUTPUT_NAME:
        if OUTPUT_NAME in taken:
            raise DataError(
                f"a feature or graph value is named {OUTPUT_NAME!r}, the name of the packaged "
                "model's output; rename that column (or exclude it) and retrain"
            )
        _rename_value(graph, old_output, OUTPUT_NAME)
        taken.add(OUTPUT_NAME)
    _set_shape(graph.output[0], TensorProto.FLOAT)

    encoders: list[onnx.NodeProto] = []
    inputs = {i.name: i for i in graph.input}
    for f in spec.features:
        value = inputs[f.name]
        if f.kind == "numeric":
            _set_shape(value, TensorProto.FLOAT)
            continue
        vocabulary = list(f.vocabulary or [])
        index_name = _unique(f"{f.name}__index", taken)
        _rename_value(graph, f.name, index_name)
        _set_shape(value, TensorProto.STRING)
        encoders.append(
            helper.make_node(
                "LabelEncoder",
                inputs=[f.name],
                outputs=[index_name],
                name=_unique(f"kfloop_label_encoder__{f.name}", taken),
                domain="ai.onnx.ml",
                keys_strings=vocabulary,
                values_int64s=list(range(1, len(vocabulary) + 1)),
                default_int64=0,
            )
        )
    nodes = encoders + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    # Stale intermediate shapes from tf2onnx are dropped; the checker re-infers them.
    del graph.value_info[:]

    opsets = {o.domain: o.version for o in model.opset_import}
    opsets["ai.onnx.ml"] = ml_opset
    del model.opset_import[:]
    for domain, version in sorted(opsets.items()):
        model.opset_import.append(helper.make_opsetid(domain, version))
    graph.name = "kfloop_model"
    model.producer_name = "kfloop"
    model.producer_version = kfloop.__version__
    model.doc_string = (
        f"kfloop {spec.task} model for label {spec.label!r}: raw features in "
        f"({', '.join(spec.names)}), {OUTPUT_NAME} out"
    )
    del model.metadata_props[:]
    for key, val in (
        ("kfloop.task", spec.task),
        ("kfloop.label", spec.label),
        ("kfloop.feature_spec", spec.to_json()),
    ):
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=val))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise KfloopError(f"the composed ONNX graph does not pass onnx.checker: {exc}") from None
    return model


# -- parity ----------------------------------------------------------------------------------


def probe_inputs(spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Edge-case rows every parity check includes.

    Row 0: every feature missing (NaN, ``""``). Row 1: unseen category strings, +inf.
    Row 2: first vocabulary value, -inf. Row 3: last vocabulary value, numeric at 10x the
    training mean plus 5 std.
    """
    out: dict[str, np.ndarray] = {}
    for f in spec.features:
        if f.kind == "numeric":
            mean, std = f.mean or 0.0, f.std or 1.0
            out[f.name] = np.array(
                [[np.nan], [np.inf], [-np.inf], [10 * mean + 5 * std]], dtype=np.float32
            )
        else:
            vocab = f.vocabulary or [""]
            out[f.name] = np.array([[""], [UNSEEN_CATEGORY], [vocab[0]], [vocab[-1]]], dtype=object)
    return out


def _concat_inputs(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    return {k: np.concatenate([a[k], b[k]], axis=0) for k in a}


def onnx_predict(session: Any, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Run an ONNX Runtime session on raw inputs; predictions (n,) float64."""
    feed: dict[str, np.ndarray] = {}
    for node in session.get_inputs():
        value = np.asarray(inputs[node.name])
        if node.type == "tensor(string)":
            feed[node.name] = value.astype(object).reshape(-1, 1)
        else:
            feed[node.name] = value.astype(np.float32).reshape(-1, 1)
    out = session.run([OUTPUT_NAME], feed)[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def check_parity(
    onnx_bytes: bytes,
    keras_predict: Any,
    inputs: Mapping[str, np.ndarray],
    tolerance: float,
    *,
    test_rows: int,
) -> ParityResult:
    """Compare ONNX Runtime (CPU) on ``onnx_bytes`` with ``keras_predict(inputs)``.

    Raises:
        ParityError: naming the largest difference, its row and the tolerance.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    got = onnx_predict(session, inputs)
    want = np.asarray(keras_predict(dict(inputs)), dtype=np.float64).reshape(-1)
    rows = int(want.size)
    if got.shape != want.shape:
        raise ParityError(f"ONNX returned {got.size} predictions for {rows} rows")
    bad = np.flatnonzero(~np.isfinite(got) | ~np.isfinite(want))
    if bad.size:
        i = int(bad[0])
        raise ParityError(
            f"non-finite prediction at parity row {i}: ONNX {got[i]!r}, Keras {want[i]!r} "
            f"({bad.size} such row(s)); the model is not packaged"
        )
    diff = np.abs(got - want)
    # Relative above 1: float32 carries ~7 significant digits, so a regression output in the
    # thousands cannot agree to 1e-5 absolute; probabilities (<= 1) are compared absolutely.
    scaled = diff / np.maximum(1.0, np.abs(want))
    worst = int(np.argmax(scaled)) if rows else 0
    max_diff = float(diff.max()) if rows else 0.0
    result = ParityResult(
        max_abs_diff=max_diff,
        rows=rows,
        tolerance=tolerance,
        passed=(float(scaled[worst]) if rows else 0.0) <= tolerance,
        test_rows=test_rows,
        probe_rows=rows - test_rows,
    )
    if not result.passed:
        where = f"test row {worst}" if worst < test_rows else f"probe row {worst - test_rows}"
        raise ParityError(
            f"ONNX and Keras predictions differ by {diff[worst]:.3g} at {where} (ONNX "
            f"{got[worst]:.8g}, Keras {want[worst]:.8g}), above parity_tolerance={tolerance:g} "
            f"(relative to |Keras| when above 1) over {rows} rows; the model is not packaged"
        )
    return result


# -- metadata and model card -----------------------------------------------------------------


def _versions() -> dict[str, str]:
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "kfloop": kfloop.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _type_name(elem_type: int) -> str:
    return (
        f"tensor({helper.tensor_dtype_to_string(elem_type).removeprefix('TensorProto.').lower()})"
    )


def _signature(model: onnx.ModelProto, spec: FeatureSpec) -> tuple[list[Any], list[Any]]:
    def shape(v: onnx.ValueInfoProto) -> list[int | str]:
        return [
            d.dim_param if d.HasField("dim_param") else int(d.dim_value)
            for d in v.type.tensor_type.shape.dim
        ]

    inputs = []
    for value in model.graph.input:
        f = spec.feature(value.name)
        inputs.append(
            {
                "name": value.name,
                "onnx_type": _type_name(value.type.tensor_type.elem_type),
                "shape": shape(value),
                "kind": f.kind,
                "source_dtype": f.source_dtype,
                "missing_value": "NaN" if f.kind == "numeric" else "",
            }
        )
    outputs = [
        {
            "name": value.name,
            "onnx_type": _type_name(value.type.tensor_type.elem_type),
            "shape": shape(value),
            "meaning": (
                "probability of class 1"
                if spec.task == "binary_classification"
                else f"predicted {spec.label} (label units)"
            ),
        }
        for value in model.graph.output
    ]
    return inputs, outputs


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def _flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(_flat_metrics(value, f"{name}."))
        else:
            rows.append((name, value))
    return rows


def render_model_card(metadata: Mapping[str, Any], release: ReleaseDecision | None) -> str:
    """The model card (Markdown) of a packaged model."""
    spec = metadata["feature_spec"]
    task = spec["task"]
    parity = metadata["parity"]
    name = metadata.get("model_name") or "model"
    lines = [
        f"# Model card: {name}" + (f" {metadata['version']}" if metadata.get("version") else ""),
        "",
        "## Intended use",
        "",
        (
            f"Predicts the probability that `{spec['label']}` is 1 (binary classification) "
            "for one row of the features below."
            if task == "binary_classification"
            else f"Predicts `{spec['label']}` (regression, label units) for one row of the "
            "features below."
        ),
        "Served as one ONNX graph (`model.onnx`) that takes the RAW feature values: "
        "numeric as float32 `[N, 1]` (NaN for missing), categorical as string `[N, 1]` "
        '(`""` for missing). Use it on rows drawn from the same population as the training '
        "data; it is not meant for decisions about individuals without human review.",
        "",
        "## Task",
        "",
        f"- task: `{task}`; label: `{spec['label']}`"
        + (f"; positive class: `{spec.get('positive_class', 1)}`" if task != "regression" else ""),
        f"- output: `{metadata['outputs'][0]['name']}` {metadata['outputs'][0]['onnx_type']} "
        f"{metadata['outputs'][0]['shape']}: {metadata['outputs'][0]['meaning']}",
        "",
        "## Features",
        "",
        "| name | kind | ONNX type | source type | preprocessing in the model |",
        "|---|---|---|---|---|",
    ]
    for item, f in zip(metadata["inputs"], spec["features"], strict=True):
        if f["kind"] == "numeric":
            how = (
                f"missing -> indicator + mean {_fmt(f['mean'])}; "
                f"standardised (std {_fmt(f['std'])})"
            )
        else:
            how = f"vocabulary of {len(f['vocabulary'])} (top by frequency); unknown/missing -> 0"
        lines.append(
            f"| `{f['name']}` | {f['kind']} | {item['onnx_type']} | {f['source_dtype']} | {how} |"
        )
    if spec.get("ignored"):
        lines += [
            "",
            "Columns not used: " + ", ".join(f"`{k}` ({v})" for k, v in spec["ignored"].items()),
        ]
    lines += ["", "## Training data", ""]
    for key, value in sorted(metadata.get("fingerprints", {}).items()):
        lines.append(f"- {key}: `{value}`")
    training = metadata.get("training", {})
    if training.get("rows"):
        lines.append("- rows: " + ", ".join(f"{k} {v}" for k, v in training["rows"].items()))
    lines += ["", "## Metrics", ""]
    metric_rows = _flat_metrics(metadata.get("metrics", {}))
    training_rows = _flat_metrics(
        {"validation": training.get("final_metrics", {}).get("validation", {})}, "training: "
    )
    if metric_rows or training_rows:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metric_rows + training_rows]
    else:
        lines.append("No metrics were passed to packaging.")
    lines += [
        "",
        "## ONNX/Keras parity",
        "",
        f"ONNX Runtime (CPU) on `model.onnx` vs the Keras model on {parity['rows']} rows "
        f"({parity['test_rows']} test rows + {parity['probe_rows']} probe rows with missing, "
        f"infinite and unseen values): max |diff| = {parity['max_abs_diff']:.3g} "
        f"(tolerance {parity['tolerance']:g}): {'PASS' if parity['passed'] else 'FAIL'}.",
        "",
        f"Opsets: {', '.join(f'{k} {v}' for k, v in metadata['opset'].items())}. "
        + "Versions: "
        + ", ".join(f"{k} {v}" for k, v in metadata["versions"].items())
        + ".",
        "",
        "## Release",
        "",
        release.summary() if release else "Not decided at packaging time.",
    ]
    if release and not release.publish:
        lines += [f"- {r}" for r in release.reasons]
    lineage = metadata.get("lineage") or {}
    if lineage:
        lines += ["", "## Lineage", ""]
        lines += [f"- {k}: `{v}`" for k, v in sorted(lineage.items())]
    lines += [
        "",
        "## Limitations",
        "",
        "- Categories not seen in training (or beyond the vocabulary cap) all share one "
        "out-of-vocabulary embedding; their predictions are less reliable.",
        "- Missing numeric values are imputed with the training mean (with an indicator); a "
        "much higher missing rate than in training shifts predictions.",
        "- Values far outside the training range are extrapolated by the network without "
        "warning; watch the drift monitor (reference profile of the training split).",
        "- Metrics hold for data like the evaluation data; they say nothing about other "
        "populations or time periods.",
    ]
    return "\n".join(lines) + "\n"


# -- packaging -------------------------------------------------------------------------------


def _check_tolerance(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError("parity_tolerance", f"must be a number >= 0 (e.g. 1e-5), got {value!r}")
    if not math.isfinite(float(value)):
        raise ConfigError("parity_tolerance", f"must be finite, got {value!r}")
    return float(value)


def _plain(value: Any, field_name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(field_name, f"must be a mapping, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(field_name, f"must hold JSON values only: {exc}") from None


def package_onnx(
    model_dir: str | os.PathLike[str],
    test_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any] | None = None,
    fingerprints: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
    parity_tolerance: float = DEFAULT_TOLERANCE,
    parity_rows: int = DEFAULT_PARITY_ROWS,
    model_name: str = "",
    version: str = "",
    release: ReleaseDecision | None = None,
) -> PackageResult:
    """Convert a trained-model folder to one raw-input ONNX graph, check parity, write it out.

    Args:
        model_dir: Trained-model folder (from :func:`kfloop.model.train.train_model`).
        test_path: Test split (folder with ``data.parquet`` or a ``.parquet`` file): parity
            rows (the first ``parity_rows``) and its SHA-256 fingerprint.
        output_dir: Folder to create with ``model.onnx``, ``metadata.json``, ``MODEL_CARD.md``.
        metrics: Evaluation/acceptance metrics to record (JSON values).
        fingerprints: Data fingerprints to record; the train/validation Parquet SHA-256 from
            ``training.json`` and the test Parquet's are added unless given.
        lineage: Pipeline run id, source data URI, parent model, ... (JSON values).
        parity_tolerance: Largest allowed |ONNX - Keras| over the parity rows.
        parity_rows: How many test rows the parity check uses (plus the probe rows).
        model_name: Recorded in the metadata and the model card.
        version: Recorded in the metadata and the model card.
        release: The publishing decision, stated in the model card.

    Returns:
        :class:`PackageResult`. ``metadata.json`` holds: ``inputs`` (name, ``onnx_type``,
        ``shape``, kind, source dtype, missing value per input), ``outputs``, ``feature_spec``,
        ``metrics``, ``training`` (rows, final metrics, hyperparameters, seed),
        ``fingerprints``, ``lineage``, ``parity`` (``max_abs_diff``, ``rows``, ``tolerance``,
        ...), ``opset``, ``versions``, ``release``, ``sha256``/``bytes`` of ``model.onnx``,
        ``model_name``, ``version``, ``created_at``.

    Raises:
        ParityError: ONNX and Keras differ by more than the tolerance (nothing written).
        ConfigError: a bad parameter (named).
        DataError: unreadable model folder or test split.
    """
    tolerance = _check_tolerance(parity_tolerance)
    if isinstance(parity_rows, bool) or not isinstance(parity_rows, int) or parity_rows < 1:
        raise ConfigError("parity_rows", f"must be an integer >= 1, got {parity_rows!r}")
    metrics_d = _plain(metrics, "metrics")
    fingerprints_d = _plain(fingerprints, "fingerprints")
    lineage_d = _plain(lineage, "lineage")
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("output_dir", f"{out} already exists and is not an empty folder")

    from kfloop.model.predict import load_trained_model

    trained = load_trained_model(model_dir)
    spec = trained.spec
    test_file = _parquet_path(test_path)
    table = read_table(test_file)
    if table.num_rows > parity_rows:
        table = table.slice(0, parity_rows)
    test_inputs = table_to_inputs(table, spec, f"test split {test_file}")
    parity_inputs = _concat_inputs(test_inputs, probe_inputs(spec))

    started = time.monotonic()
    core_onnx = convert_core(trained.core, spec)
    model = compose_raw_input_model(core_onnx, spec)
    conversion_seconds = time.monotonic() - started
    onnx_bytes = model.SerializeToString()
    parity = check_parity(
        onnx_bytes, trained.predict_inputs, parity_inputs, tolerance, test_rows=table.num_rows
    )
    log.info(
        "parity: max |ONNX - Keras| = %.3g over %d rows (tolerance %g); conversion %.2fs",
        parity.max_abs_diff,
        parity.rows,
        tolerance,
        conversion_seconds,
    )

    training = trained.training
    data = training.get("data", {})
    prints = {
        f"{split}_parquet_sha256": info["sha256"]
        for split, info in data.items()
        if isinstance(info, Mapping) and "sha256" in info
    }
    prints["test_parquet_sha256"] = sha256_file(test_file)
    prints.update(fingerprints_d)
    inputs_sig, outputs_sig = _signature(model, spec)
    onnx_sha = hashlib.sha256(onnx_bytes).hexdigest()
    metadata: dict[str, Any] = {
        "format_version": METADATA_VERSION,
        "model_name": model_name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": spec.task,
        "label": spec.label,
        "file": ONNX_FILE,
        "sha256": onnx_sha,
        "bytes": len(onnx_bytes),
        "inputs": inputs_sig,
        "outputs": outputs_sig,
        "feature_spec": spec.to_dict(),
        "metrics": metrics_d,
        "training": {
            "rows": training.get("rows", {}),
            "final_metrics": training.get("final_metrics", {}),
            "best_epoch": training.get("best_epoch"),
            "hyperparameters": training.get("hyperparameters", {}),
            "seed": training.get("seed"),
        },
        "fingerprints": prints,
        "lineage": lineage_d,
        "parity": parity.to_dict(),
        "opset": {"ai.onnx": OPSET, "ai.onnx.ml": ML_OPSET},
        "versions": _versions(),
        "release": asdict(release) if release else None,
    }
    card = render_model_card(metadata, release)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        (tmp / ONNX_FILE).write_bytes(onnx_bytes)
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
        profile = Path(model_dir) / PROFILE_FILE
        if profile.is_file():  # the logger's drift reference travels with the served model
            shutil.copyfile(profile, tmp / PROFILE_FILE)
        (tmp / METADATA_FILE).write_text(
            json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        if out.exists():
            out.rmdir()  # checked empty on entry
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PackageResult(
        output_dir=str(out),
        onnx_path=str(out / ONNX_FILE),
        metadata=metadata,
        parity=parity,
        conversion_seconds=conversion_seconds,
        onnx_sha256=onnx_sha,
        onnx_bytes=len(onnx_bytes),
    )


# -- release gate and publishing -------------------------------------------------------------


def _read_gate_file(path: str | os.PathLike[str], key: str, what: str) -> tuple[bool, list[str]]:
    p = Path(path)
    if p.is_dir():
        preferred = p / f"{what}.json"
        candidates = [preferred] if preferred.is_file() else sorted(p.glob("*.json"))
        if len(candidates) != 1:
            raise DataError(
                f"{p}: expected one {what} JSON file (e.g. {what}.json) in the folder, found "
                f"{[c.name for c in candidates] or 'none'}"
            )
        p = candidates[0]
    if not p.is_file():
        raise DataError(f"{p}: no such {what} file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: the {what} is not valid JSON: {exc}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get(key), bool):
        raise DataError(f"{p}: the {what} must be a JSON object with a boolean {key!r}")
    reasons = data.get("reasons") or []
    return bool(data[key]), [str(r) for r in reasons] if isinstance(reasons, list) else []


def decide_release(
    blessing_path: str | os.PathLike[str] | None,
    acceptance_path: str | os.PathLike[str] | None,
    *,
    publish: bool = True,
    target_uri: str = "",
) -> ReleaseDecision:
    """Read the blessing (``{"blessed": bool, "reasons": [...]}``) and acceptance
    (``{"passed": bool, ...}``) files; publish only when both say yes and ``publish`` is on.

    A path may be the JSON file or a folder holding ``blessing.json``/``acceptance.json``.
    A missing input (None) means "not blessed"/"not accepted". With ``publish=False`` the
    first reason says so, and missing inputs are not listed as reasons (a later release step,
    e.g. the ``publish_model`` component, reads them).
    """
    reasons: list[str] = []
    if not publish:
        reasons.append("publishing is switched off here (publish=False); a later step decides")
    blessed = accepted = False
    if blessing_path is None:
        if publish:
            reasons.append("no blessing: the evaluation step's blessing input is missing")
    else:
        blessed, why = _read_gate_file(blessing_path, "blessed", "blessing")
        if not blessed:
            reasons.append("not blessed by evaluation" + (": " + "; ".join(why) if why else ""))
    if acceptance_path is None:
        if publish:
            reasons.append("no acceptance: the acceptance test's input is missing")
    else:
        accepted, why = _read_gate_file(acceptance_path, "passed", "acceptance")
        if not accepted:
            reasons.append("acceptance test failed" + (": " + "; ".join(why) if why else ""))
    go = blessed and accepted and publish
    return ReleaseDecision(
        blessed=blessed,
        accepted=accepted,
        publish=go,
        reasons=tuple(reasons),
        target_uri=target_uri if go else "",
    )


def default_version(now: datetime | None = None) -> str:
    """A sortable version from the UTC time: ``20261127-233512``."""
    return (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")


def check_release_names(model_name: str, version: str) -> None:
    """Check a model name and version can be path parts of a models-bucket URI.

    Raises:
        ConfigError: naming ``model_name`` or ``version``.
    """
    if not isinstance(model_name, str) or not _SLUG_RE.match(model_name):
        raise ConfigError(
            "model_name",
            f"{model_name!r} must be 1-128 lowercase letters, digits, '.', '_', '-' "
            "(starting with a letter or digit)",
        )
    if not isinstance(version, str) or not _VERSION_RE.match(version) or ".." in version:
        raise ConfigError(
            "version",
            f"{version!r} must be 1-128 letters, digits, '.', '_', '-' (starting with a "
            "letter or digit)",
        )


TRITON_FOLDER = "triton"


def triton_model_path(model_name: str) -> str:
    """``triton/<model_name>/1/model.onnx``: where a published version keeps its ONNX file in
    the layout of a Triton model repository (version folder ``1``; Triton's ONNX backend
    configures the model from the file itself)."""
    return f"{TRITON_FOLDER}/{model_name}/1/{ONNX_FILE}"


def version_uri(models_uri_root: str, model_name: str, version: str) -> str:
    """``s3://<bucket>[/<prefix>]/<model-name>/<version>/``, validating each part.

    Raises:
        ConfigError: naming ``models_uri_root``, ``model_name`` or ``version``.
    """
    root = S3Uri.parse(models_uri_root, "models_uri_root")
    check_release_names(model_name, version)
    return str(root.join(model_name, version)) + "/"


def publish_model(
    package_dir: str | os.PathLike[str],
    models_uri_root: str,
    model_name: str,
    version: str,
    store: ObjectStore,
    *,
    blessed: bool,
    accepted: bool,
    statistics_path: str | os.PathLike[str] | None = None,
) -> str:
    """Upload a packaged-model folder to ``<models_uri_root>/<model_name>/<version>/``.

    With ``statistics_path`` (the TFDV statistics of the training data, ``validate_data``'s
    ``statistics`` output: a file, or a folder holding ``stats.tfrecord``), they are uploaded
    too, as :data:`STATISTICS_FILE`, for the next retraining run's drift check.

    Only a model that is both ``blessed`` and ``accepted`` is uploaded; otherwise nothing is
    uploaded, the reason is logged and ``""`` is returned. An existing version is never
    overwritten. ``metadata.json`` is uploaded LAST, so a reader that sees it sees a complete
    version; if an upload fails, the objects already uploaded are removed.

    Returns:
        The version URI (ending in ``/``), or ``""`` when not published.

    Raises:
        VersionExistsError: the version already has objects (naming its URI).
        ConfigError: bad URI, name or version; the folder lacks model.onnx or metadata.json;
            ``statistics_path`` names no file (field ``statistics``).
        ObjectStoreError: the upload failed.
    """
    target = version_uri(models_uri_root, model_name, version)
    folder = Path(package_dir)
    missing = [n for n in (ONNX_FILE, METADATA_FILE) if not (folder / n).is_file()]
    if missing:
        raise ConfigError(
            "package_dir",
            f"{folder} has no {' or '.join(missing)}; pass the folder package_onnx wrote",
        )
    statistics: Path | None = None
    if statistics_path is not None and os.fspath(statistics_path) != "":
        statistics = Path(statistics_path)
        if statistics.is_dir():
            statistics = statistics / STATISTICS_FILE
        if not statistics.is_file() or statistics.stat().st_size == 0:
            raise ConfigError(
                "statistics",
                f"{statistics_path}: no statistics file (validate_data's statistics output, "
                f"or a folder holding {STATISTICS_FILE})",
            )
    if not (blessed and accepted):
        why = [w for w, ok in (("not blessed", blessed), ("not accepted", accepted)) if not ok]
        log.warning("not publishing %s to %s: model is %s", folder, target, " and ".join(why))
        return ""
    prefix = S3Uri.parse(target)
    existing = next(iter(store.list_objects(prefix)), None)
    if existing is not None:
        raise VersionExistsError(target)
    files = sorted(
        (
            p
            for p in folder.rglob("*")
            if p.is_file()
            and p.name != METADATA_FILE
            and not (statistics is not None and p.relative_to(folder).as_posix() == STATISTICS_FILE)
        ),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    uploads = [(p, p.relative_to(folder).as_posix()) for p in files]
    # The same ONNX file in the layout of a Triton model repository, so KServe's Triton runtime
    # serves the version from <version>/triton/ (kfloop.deploy.kserve.triton_repository_uri).
    uploads.append((folder / ONNX_FILE, triton_model_path(model_name)))
    if statistics is not None:
        uploads.append((statistics, STATISTICS_FILE))
    uploads.append((folder / METADATA_FILE, METADATA_FILE))
    uploaded: list[ObjectInfo] = []
    try:
        store.ensure_bucket(prefix.bucket)
        for path, rel in uploads:
            content_type = (
                "application/json"
                if rel.endswith(".json")
                else ("text/markdown" if rel.endswith(".md") else "application/octet-stream")
            )
            uploaded.append(
                store.put_file(
                    path, prefix.join(rel), content_type=content_type, create_bucket=False
                )
            )
    except ObjectStoreError:
        for info in reversed(uploaded):
            try:
                store.delete(info.uri)
            except ObjectStoreError as exc:
                log.error("could not remove %s after a failed publish: %s", info.uri, exc)
        raise
    log.info("published %s (%d files) to %s", folder, len(uploads), target)
    return target
