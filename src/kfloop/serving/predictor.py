"""The kfloop predictor: a ``kserve.Model`` running ONNX Runtime on a packaged model.

The model folder is what ``package_onnx`` writes and ``publish_model`` uploads (``model.onnx``
+ ``metadata.json``), laid out as KServe's storage initializer gives it to a predictor: the
files directly in the folder. ``--model-uri`` is that folder or an ``s3://`` prefix, downloaded
with :class:`kfloop.core.objectstore.ObjectStore` and :meth:`Settings.from_env` (the
``S3_ENDPOINT``/``AWS_*`` variables KServe uses).

Protocols (all served by one ``kserve.ModelServer`` process):

- KServe v1 ``POST /v1/models/<name>:predict`` ``{"instances": rows}``; a row is an object of
  named features or a list in signature order. Answer ``{"predictions": [p, ...]}``.
- Open Inference Protocol v2 REST ``POST /v2/models/<name>/infer``: one tensor per feature,
  ``FP32`` numeric / ``BYTES`` categorical, shape ``[N]`` or ``[N, 1]``; the binary tensor
  extension (``Inference-Header-Content-Length``) in and out. Output ``prediction`` ``FP32``
  ``[N, 1]``.
- v2 gRPC ``ModelInfer`` (``--grpc-port``; 0 switches gRPC off), raw contents included.
- The v2 repository extension, ``POST /v2/repository/models/<name>/load`` (body optional:
  ``{"parameters": {"uri": "s3://<models>/<model>/<version>/"}}``) and ``.../unload``: a hot
  swap of the served version with no failed request (:class:`HotSwapRepository`).

``kfloop serve`` binds REST and gRPC to ``--host`` (default ``127.0.0.1``; images pass
``0.0.0.0``) through :class:`KfloopModelServer`, which also puts the raw ASGI front of
:mod:`kfloop.serving.fastpath` before KServe's FastAPI app: plain v2 inference (JSON and
binary tensors) is answered there, byte for byte as KServe would, without FastAPI, pydantic
and KServe's request objects; everything else falls through to KServe. The repository
load/unload endpoints (REST and gRPC) need ``Authorization: Bearer <token>``
(``KFLOOP_SERVING_ADMIN_TOKEN`` or ``--admin-token-file``): 401 without it; with no token
configured they are refused (403) unless ``--allow-unauthenticated-admin``. On SIGTERM the
servers stop taking requests and answer those in flight, then the queued payload events are
posted for at most ``--logger-drain-seconds`` before the process exits. uvicorn's access log
is off unless ``--access-log``.

Every input is checked against the signature (:mod:`kfloop.serving.signature`): a bad request
is KServe's ``InvalidInput`` (HTTP 400, gRPC ``INVALID_ARGUMENT``) naming the input; a body
above ``--max-body-bytes`` is HTTP 413 (gRPC ``RESOURCE_EXHAUSTED``). Concurrent requests are
merged by :class:`kfloop.serving.batcher.DynamicBatcher`. Each answered inference enqueues
request/response CloudEvents (:mod:`kfloop.serving.payload_events`) when ``--logger-url`` is
set. Prometheus metrics (``kfloop_predictor_*``) join KServe's on ``/metrics``; readiness and
liveness are KServe's (``/v2/health/ready``, ``/v2/health/live``, ``/v1/models/<name>``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, MutableMapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import kserve
import numpy as np
import onnxruntime as ort
import orjson
import pyarrow as pa
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import InferenceError, InvalidInput
from kserve.model_repository import ModelRepository
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.protocol.rest.server import RESTServer
from prometheus_client import Counter, Histogram

from kfloop.core.errors import ConfigError, DataError, KfloopError
from kfloop.core.objectstore import ObjectStore, S3Uri, is_s3_uri
from kfloop.core.settings import Settings
from kfloop.serving.batcher import DEFAULT_INLINE_MAX_ROWS, DynamicBatcher
from kfloop.serving.cpus import cpu_budget, fit_arrow_pool, pool_threads
from kfloop.serving.fastpath import ADMIN_TOKEN_ENV, AdminGuard, PredictorFront
from kfloop.serving.heap import freeze_startup_heap
from kfloop.serving.payload_events import (
    DEFAULT_BATCH_EVENTS,
    DEFAULT_LINGER_S,
    DEFAULT_PIPELINE_EVENTS,
    DEFAULT_SENDERS,
    FORMATS,
    ROWS_BODY_ROWS,
    BinaryBody,
    EventIdentity,
    PayloadEmitter,
    check_counts,
    check_linger,
    v2_json_inputs,
)
from kfloop.serving.signature import (
    DEFAULT_MAX_ROWS,
    Signature,
    SignatureError,
    TensorHeader,
    check_v2_headers,
    decode_binary,
    v1_columns,
    v2_column,
)

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
DEFAULT_HTTP_PORT = 8080
DEFAULT_GRPC_PORT = 8081
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_WAIT_MS = 0.0
"""No timed wait by default (Triton's ``max_queue_delay_microseconds`` default, too): requests
that arrive while a batch runs still form the next batch (about 4 per call at 8 connections),
and a timed wait is rounded up to uvloop's 1 ms timer tick. Measured on the benchmark's
batch-1 load: 3,117 req/s at p50 2.6 ms with 1 ms, 5,578 req/s at p50 1.4 ms with 0."""
DEFAULT_DRAIN_S = 10.0
DEFAULT_HOST = "127.0.0.1"
MODEL_URI_ENV = "KFLOOP_MODEL_URI"

REQUESTS = Counter(
    "kfloop_predictor_requests_total",
    "Inference requests by protocol (v1, v2, grpc) and outcome (ok, invalid, error).",
    ["model", "protocol", "status"],
)
LATENCY = Histogram(
    "kfloop_predictor_request_seconds",
    "Time in the predictor per request: validation, batching wait, ONNX Runtime, response.",
    ["model", "protocol"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
REQUEST_ROWS = Histogram(
    "kfloop_predictor_request_rows",
    "Rows per inference request.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
BATCH_ROWS = Histogram(
    "kfloop_predictor_batch_rows",
    "Rows per ONNX Runtime call after dynamic batching.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
BATCH_REQUESTS = Histogram(
    "kfloop_predictor_batch_requests",
    "Requests merged into one ONNX Runtime call.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
ORT_SECONDS = Histogram(
    "kfloop_predictor_onnxruntime_seconds",
    "Time of one ONNX Runtime call (one merged batch).",
    ["model"],
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
)
REPOSITORY_LOADS = Counter(
    "kfloop_predictor_repository_loads_total",
    "Model repository operations by outcome: ok (a version swapped in), failed, unloaded.",
    ["model", "outcome"],
)


class ModelLoadError(KfloopError):
    """The model folder or URI cannot be served (names the file or URI)."""


@dataclass(frozen=True)
class ServeOptions:
    """Predictor limits and payload-logging settings."""

    max_rows_per_request: int = DEFAULT_MAX_ROWS
    max_batch_rows: int = 1024
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allow_inf: bool = False
    logger_url: str = ""
    logger_queue_size: int = 10_000
    inference_service: str = ""
    namespace: str = "default"
    component: str = "predictor"
    endpoint: str = "default"
    logger_source: str = ""
    logger_senders: int = DEFAULT_SENDERS
    logger_drain_seconds: float = DEFAULT_DRAIN_S
    logger_batch_events: int = DEFAULT_BATCH_EVENTS
    logger_pipeline_events: int = DEFAULT_PIPELINE_EVENTS
    logger_linger_seconds: float = DEFAULT_LINGER_S
    logger_format: str = "cloudevents"
    inline_max_rows: int = DEFAULT_INLINE_MAX_ROWS
    intra_op_threads: int = 0

    def check(self) -> None:
        """Raise :class:`ConfigError` naming a bad option."""
        for name in ("max_rows_per_request", "max_batch_rows", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be an integer >= 1, got {value!r}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ConfigError("max_wait_ms", f"must be in [0, 1000], got {self.max_wait_ms!r}")
        if self.intra_op_threads < 0:
            raise ConfigError("intra_op_threads", f"must be >= 0, got {self.intra_op_threads}")
        check_counts(self.logger_senders, self.logger_batch_events, self.logger_pipeline_events)
        check_linger(self.logger_linger_seconds)
        if self.logger_format not in FORMATS:
            raise ConfigError(
                "logger_format", f"must be one of {', '.join(FORMATS)}, got {self.logger_format!r}"
            )
        if not 0 <= self.logger_drain_seconds <= 3600:
            raise ConfigError(
                "logger_drain_seconds", f"must be in [0, 3600], got {self.logger_drain_seconds}"
            )
        if self.inline_max_rows < 0:
            raise ConfigError("inline_max_rows", f"must be >= 0, got {self.inline_max_rows}")


# -- loading ---------------------------------------------------------------------------------------


def fetch_model(
    uri: str, workdir: Path, settings: Settings | None = None, *, what: str = "--model-uri"
) -> Path:
    """The local folder holding ``model.onnx`` and ``metadata.json`` for ``uri``.

    A local path is used as is; an ``s3://`` prefix is downloaded into ``workdir``. ``what``
    says where the URI came from in error messages (the option, or a repository load).

    Raises:
        ModelLoadError: the folder or prefix does not hold a packaged model.
        ConfigError: S3 settings missing or invalid (naming the variable).
        ObjectStoreError: the store refused the credentials (naming the variables) or is down.
    """
    if is_s3_uri(uri):
        prefix = S3Uri.parse(uri, "model_uri")
        store = ObjectStore(settings or Settings.from_env())
        target = workdir / "model"
        target.mkdir(parents=True, exist_ok=True)
        key = prefix.key.rstrip("/")
        for name in (ONNX_FILE, METADATA_FILE):
            obj = S3Uri(prefix.bucket, f"{key}/{name}" if key else name)
            if not store.exists(obj):
                raise ModelLoadError(
                    f"{what} {uri}: no {name} at {obj}; point it at a published model "
                    "version (s3://<models-bucket>/<model>/<version>/)"
                )
        store.get_dir(S3Uri(prefix.bucket, key), target)
        return target
    folder = Path(uri).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(
            f"{what} {uri}: no such folder; give the folder package_onnx wrote (with "
            f"{ONNX_FILE} and {METADATA_FILE}) or an s3:// URI"
        )
    missing = [n for n in (ONNX_FILE, METADATA_FILE) if not (folder / n).is_file()]
    if missing:
        raise ModelLoadError(f"{what} {uri}: the folder has no {' or '.join(missing)}")
    return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- the model -------------------------------------------------------------------------------------


def _request_id(headers: MutableMapping[str, str] | None, body_id: str | None) -> str:
    if headers:
        for key in ("ce-id", "x-request-id"):
            value = headers.get(key)
            if value:
                return str(value)
    return body_id or str(uuid.uuid4())


class OnnxPredictor(kserve.Model):
    """Serve one packaged kfloop model with ONNX Runtime."""

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        options: ServeOptions | None = None,
        *,
        emitter: PayloadEmitter | None = None,
    ):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.options = options or ServeOptions()
        self.options.check()
        self.metadata: dict[str, Any] = {}
        self.signature: Signature | None = None
        self.session: ort.InferenceSession | None = None
        self.batcher: DynamicBatcher | None = None
        self.source_uri = ""  # where the files came from (set by HotSwapRepository.build)
        self.download_dir: Path | None = None
        identity = EventIdentity(
            inference_service=self.options.inference_service or name,
            namespace=self.options.namespace,
            component=self.options.component,
            endpoint=self.options.endpoint,
            source=self.options.logger_source or f"http://localhost:{DEFAULT_HTTP_PORT}/",
        )
        # A hot-swapped version takes over its predecessor's emitter (queue and sender).
        self.emitter = emitter or PayloadEmitter(
            self.options.logger_url,
            identity,
            queue_size=self.options.logger_queue_size,
            senders=self.options.logger_senders,
            batch_max_events=self.options.logger_batch_events,
            pipeline_events=self.options.logger_pipeline_events,
            linger=self.options.logger_linger_seconds,
            payload_format=self.options.logger_format,
        )

    # kserve hooks ----------------------------------------------------------------------------

    def load(self) -> bool:
        """Read metadata, check the ONNX file against it, open the ONNX Runtime session, warm up.

        The warm-up runs one all-missing row through the session, so a graph that loads but
        cannot run fails here (before it serves anything) and the first request pays no
        first-run cost.

        Raises:
            ModelLoadError: naming the file and what is wrong with it.
        """
        onnx_path = self.model_dir / ONNX_FILE
        meta_path = self.model_dir / METADATA_FILE
        try:
            self.metadata = json.loads(meta_path.read_text(encoding="utf-8"))
            signature = Signature.from_metadata(self.metadata, str(meta_path))
        except (OSError, json.JSONDecodeError, DataError) as exc:
            raise ModelLoadError(f"{meta_path}: cannot read the model metadata: {exc}") from None
        if not onnx_path.is_file():
            raise ModelLoadError(f"{onnx_path}: no such file")
        want = self.metadata.get("sha256")
        if want and _sha256(onnx_path) != want:
            raise ModelLoadError(
                f"{onnx_path}: SHA-256 does not match metadata.json's 'sha256'; the folder "
                "mixes files of different model versions"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Small batches run on the event loop: idle ONNX Runtime threads must not spin on the
        # CPUs the loop needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        threads = intra_op_threads(self.options.intra_op_threads)
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(
                str(onnx_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own pybind error types
            raise ModelLoadError(f"{onnx_path}: ONNX Runtime cannot load it: {exc}") from None
        graph = {i.name: i.type for i in session.get_inputs()}
        for spec in signature.inputs:
            if graph.get(spec.name) != spec.onnx_type:
                raise ModelLoadError(
                    f"{meta_path}: input {spec.name!r} is {spec.onnx_type} in the metadata but "
                    f"{graph.get(spec.name, 'absent')} in {onnx_path.name}"
                )
        if set(graph) != set(signature.names):
            raise ModelLoadError(
                f"{onnx_path}: graph inputs {sorted(graph)} differ from the metadata's "
                f"{sorted(signature.names)}"
            )
        warm = {
            spec.name: (
                np.full((1, 1), np.nan, dtype=np.float32)
                if spec.onnx_type == "tensor(float)"
                else np.array([[""]], dtype=object)
            )
            for spec in signature.inputs
        }
        try:
            session.run([signature.output], warm)
        except Exception as exc:  # ORT's own error types
            raise ModelLoadError(
                f"{onnx_path}: the warm-up run (one all-missing row) failed: {exc}"
            ) from None
        self.signature = signature
        self.session = session
        self.batcher = DynamicBatcher(
            self._run,
            max_batch_rows=self.options.max_batch_rows,
            max_wait_ms=self.options.max_wait_ms,
            inline_max_rows=self.options.inline_max_rows,
            on_batch=self._on_batch,
        )
        self.ready = True
        log.info(
            "loaded %s (%s %s, %d inputs) from %s",
            self.name,
            self.metadata.get("model_name", "?"),
            self.metadata.get("version", "?"),
            len(signature.inputs),
            self.model_dir,
        )
        return True

    def get_input_types(self) -> list[dict[str, Any]]:
        if self.signature is None:
            return []
        return [
            {"name": i.name, "datatype": i.datatype, "shape": [-1, 1]}
            for i in self.signature.inputs
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        if self.signature is None:
            return []
        return [{"name": self.signature.output, "datatype": "FP32", "shape": [-1, 1]}]

    # inference -------------------------------------------------------------------------------

    def _run(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        assert self.session is not None and self.signature is not None
        out = self.session.run([self.signature.output], columns)[0]
        return np.asarray(out, dtype=np.float32).reshape(-1, 1)

    def _on_batch(self, rows: int, requests: int, seconds: float) -> None:
        BATCH_ROWS.labels(self.name).observe(rows)
        BATCH_REQUESTS.labels(self.name).observe(requests)
        ORT_SECONDS.labels(self.name).observe(seconds)

    def _v2_columns(self, request: InferRequest) -> tuple[dict[str, np.ndarray], int]:
        assert self.signature is not None
        headers = [
            TensorHeader(i.name, str(i.datatype).upper(), list(i.shape)) for i in request.inputs
        ]
        rows = check_v2_headers(self.signature, headers, max_rows=self.options.max_rows_per_request)
        columns: dict[str, np.ndarray] = {}
        for infer_input in request.inputs:
            spec = self.signature.input(infer_input.name)
            assert spec is not None
            try:
                values = infer_input.as_numpy()
            except (ValueError, TypeError, InvalidInput) as exc:
                raise SignatureError(
                    infer_input.name,
                    f"data does not fit datatype {infer_input.datatype} and shape "
                    f"{list(infer_input.shape)}: {str(exc)[:160]}",
                ) from None
            columns[spec.name] = v2_column(spec, values, rows, allow_inf=self.options.allow_inf)
        # ONNX Runtime takes the inputs by name; keep the signature's order for logging.
        return {name: columns[name] for name in self.signature.names}, rows

    def _emit_v2(
        self,
        request_id: str,
        columns: dict[str, np.ndarray],
        rows: int,
        predictions: np.ndarray,
        request_body: bytes | BinaryBody | None = None,
        response_body: bytes | None = None,
        split: Mapping[str, pa.Array] | None = None,
    ) -> None:
        """Queue the request/response CloudEvents of one v2 inference (when logging is on).

        ``request_body``: the body as it arrived (JSON bytes, or a binary-tensor
        :class:`BinaryBody`), logged as is (what the KServe agent does); else the request
        is logged as v2 JSON rebuilt from the decoded columns. ``response_body``: the JSON
        answer's bytes, logged as is too; else the sender rebuilds the response. (With
        batches of up to 1,024 rows run on the event loop, logging the answer's bytes saves
        the predictor the second serialisation; when the runs went to a thread it had
        measured slower, 434 against 501 req/s at 1,024 rows.) ``split``: the Arrow arrays
        that :func:`decode_binary` gave for large binary ``BYTES`` tensors, by input name; an
        Arrow rows post carries them in place of the model's object arrays.
        """
        if not self.emitter.enabled:
            return
        if self.emitter.rows_format and (
            request_body is None or rows < ROWS_BODY_ROWS or isinstance(request_body, BinaryBody)
        ):
            if split:  # the logger takes Arrow's split of a binary BYTES tensor as it is
                columns = {name: split.get(name, column) for name, column in columns.items()}
            self.emitter.emit_rows(request_id, columns, predictions)
            return
        assert self.signature is not None
        # Bodies built and serialised by the emitter's senders, off the request path.
        output_name = self.signature.output
        self.emitter.emit(
            request_id,
            request_body
            if request_body is not None
            else lambda: {"id": request_id, "inputs": v2_json_inputs(columns, rows)},
            response_body
            if response_body is not None
            else lambda: {
                "id": request_id,
                "model_name": self.name,
                "outputs": [
                    {
                        "name": output_name,
                        "shape": [rows, 1],
                        "datatype": "FP32",
                        "data": predictions.reshape(-1).tolist(),
                    }
                ],
            },
        )

    # the raw ASGI fast path (kfloop.serving.fastpath) ---------------------------------------------

    @property
    def fast_numeric_inputs(self) -> frozenset[str]:
        """The numeric inputs (their JSON data may come as a float64 array)."""
        signature = self.signature
        return frozenset() if signature is None else signature.numeric_names

    def fast_version_ok(self, version: str | None) -> bool:
        """Whether the fast path may answer ``/versions/<version>/infer`` (the served one)."""
        return version is None or version == str(self.metadata.get("version", ""))

    async def fast_infer(
        self,
        inputs: list[dict[str, Any]],
        request_id: str,
        model_version: str | None = None,
        binary_output: bool = False,
        requested_output: str | None = None,
        request_body: bytes | BinaryBody | None = None,
    ) -> tuple[int, bytes, int | None]:
        """A plain v2 request (``inputs`` as parsed, with ``data`` or binary ``raw``) ->
        (HTTP status, answer, length of the JSON header when the answer is binary).
        ``request_body``: the request's body (JSON, or :class:`BinaryBody`), logged as it
        arrived (payload events).

        Same checks, batching, metrics and payload events as :meth:`predict`, and the same
        body KServe would answer: 200 with the response (JSON, or the JSON header and the
        raw FP32 predictions when ``binary_output``), 400 naming the input, 500 when ONNX
        Runtime fails.
        """
        signature, batcher = self.signature, self.batcher
        if signature is None or batcher is None:
            return 503, orjson.dumps({"error": f"Model with name {self.name} is not ready."}), None
        started = time.perf_counter()
        try:
            headers = [TensorHeader(i["name"], i["datatype"].upper(), i["shape"]) for i in inputs]
            rows = check_v2_headers(signature, headers, max_rows=self.options.max_rows_per_request)
            decoded: dict[str, np.ndarray] = {}
            split: dict[str, pa.Array] = {}  # large binary BYTES tensors, as Arrow split them
            for item in inputs:
                spec = signature.input(item["name"])
                assert spec is not None
                raw = item.get("raw")
                data = item["data"] if raw is None else decode_binary(spec.name, spec.datatype, raw)
                if isinstance(data, pa.Array):
                    split[spec.name] = data
                decoded[spec.name] = v2_column(spec, data, rows, allow_inf=self.options.allow_inf)
        except SignatureError as exc:
            REQUESTS.labels(self.name, "v2", "invalid").inc()
            return 400, orjson.dumps({"error": str(exc)}), None
        columns = {name: decoded[name] for name in signature.names}
        REQUEST_ROWS.labels(self.name).observe(rows)
        try:
            predictions = await batcher.predict(columns)
        except Exception as exc:  # ONNX Runtime's own error types
            REQUESTS.labels(self.name, "v2", "error").inc()
            log.error("ONNX Runtime failed on a batch holding a %d-row request: %s", rows, exc)
            return 500, orjson.dumps({"error": f"ONNX Runtime failed: {exc}"}), None
        json_length: int | None = None
        if requested_output is not None and requested_output != signature.output:
            # KServe's answer (after running the model) to an output the model does not have.
            message = f"Unexpected inference output '{requested_output}' for model '{self.name}'"
            return 400, orjson.dumps({"error": message}), None
        if binary_output:
            # KServe's InferResponse.to_rest for binary outputs: its key order, raw float32.
            raw_out = np.ascontiguousarray(predictions, dtype="<f4").tobytes()
            header = orjson.dumps(
                {
                    "id": request_id,
                    "model_name": self.name,
                    "model_version": model_version,
                    "outputs": [
                        {
                            "name": signature.output,
                            "shape": [rows, 1],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": len(raw_out)},
                        }
                    ],
                }
            )
            json_length = len(header)
            answer = header + raw_out
        else:
            answer = self._json_answer(request_id, model_version, rows, predictions)
        self._emit_v2(
            request_id,
            columns,
            rows,
            predictions,
            request_body,
            answer if json_length is None else None,
            split,
        )
        REQUESTS.labels(self.name, "v2", "ok").inc()
        LATENCY.labels(self.name, "v2").observe(time.perf_counter() - started)
        return 200, answer, json_length

    def _json_answer(
        self, request_id: str, model_version: str | None, rows: int, predictions: np.ndarray
    ) -> bytes:
        assert self.signature is not None
        return orjson.dumps(
            {
                "model_name": self.name,
                "model_version": model_version,
                "id": request_id,
                "parameters": None,
                "outputs": [
                    {
                        "name": self.signature.output,
                        "shape": [rows, 1],
                        "datatype": "FP32",
                        "parameters": None,
                        "data": predictions.reshape(-1).tolist(),
                    }
                ],
            }
        )

    async def predict(
        self,
        payload: Any,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        if self.signature is None or self.batcher is None:
            raise InferenceError(f"model {self.name} is not loaded")
        started = time.perf_counter()
        protocol = "v1"
        try:
            if isinstance(payload, InferRequest):
                protocol = "grpc" if payload.from_grpc else "v2"
                columns, rows = self._v2_columns(payload)
            elif isinstance(payload, dict):
                columns = v1_columns(
                    self.signature,
                    payload,
                    max_rows=self.options.max_rows_per_request,
                    allow_inf=self.options.allow_inf,
                )
                rows = next(iter(columns.values())).shape[0]
            elif isinstance(payload, bytes | str):
                raise SignatureError(
                    "",
                    "the body is not JSON: send it with content-type application/json "
                    '({"instances": [...]})',
                )
            else:
                raise SignatureError("", f"unsupported request body {type(payload).__name__}")
        except SignatureError as exc:
            REQUESTS.labels(self.name, protocol, "invalid").inc()
            raise InvalidInput(str(exc)) from None
        REQUEST_ROWS.labels(self.name).observe(rows)
        try:
            predictions = await self.batcher.predict(columns)
        except Exception as exc:  # ONNX Runtime's own error types; the caller gets a 500
            REQUESTS.labels(self.name, protocol, "error").inc()
            log.error("ONNX Runtime failed on a batch holding a %d-row request: %s", rows, exc)
            raise InferenceError(f"ONNX Runtime failed: {exc}") from None

        if isinstance(payload, InferRequest):
            request_id = _request_id(headers, payload.id)
            output = InferOutput(name=self.signature.output, shape=[rows, 1], datatype="FP32")
            if payload.from_grpc:
                # kserve's to_grpc cannot take an ndarray when the request had raw contents.
                output.set_data_from_numpy(predictions, binary_data=True)
            else:
                output.data = predictions
            response: dict[str, Any] | InferResponse = InferResponse(
                response_id=request_id,
                model_name=self.name,
                infer_outputs=[output],
                use_binary_outputs=payload.use_binary_outputs,
                requested_outputs=payload.request_outputs,
            )
            self._emit_v2(request_id, columns, rows, predictions)
        else:
            response = {"predictions": predictions.reshape(-1).tolist()}
            if self.emitter.rows_format:
                self.emitter.emit_rows(_request_id(headers, None), columns, predictions)
            elif self.emitter.enabled:
                self.emitter.emit(_request_id(headers, None), payload, response)
        REQUESTS.labels(self.name, protocol, "ok").inc()
        LATENCY.labels(self.name, protocol).observe(time.perf_counter() - started)
        return response


# -- the model repository: load / unload / hot swap ----------------------------------------------


class HotSwapRepository(ModelRepository):
    """KServe's model repository with loads that swap versions without failing a request.

    The Open Inference Protocol repository extension drives it:
    ``POST /v2/repository/models/<name>/load`` and ``.../unload`` (REST; gRPC
    ``RepositoryModelLoad``/``Unload`` reach the same methods through KServe).

    ``load(name, uri)`` takes the URI from, first to last: the request
    (``{"parameters": {"uri": "s3://<models>/<model>/<version>/"}}``, REST only), the URI that
    ``name`` was last loaded from, the server's ``--model-uri`` (``KFLOOP_MODEL_URI``). A load
    without a URI so re-fetches the same URI (a moved "latest" prefix). The new
    :class:`OnnxPredictor` is built COMPLETELY off the event loop (download, checks, ONNX
    Runtime session, warm-up run) while the old one keeps serving; only then is the registry
    entry replaced, one assignment on the event loop. A request that already holds the old
    model finishes on the old session (its batcher drains and stops by itself); every request
    that looks the model up afterwards gets the new one. A failed load changes nothing: the old
    version keeps serving. Loads are serialised. ``unload(name)`` removes the model: inference
    on it is then 404 until a new load.
    """

    def __init__(
        self,
        options: ServeOptions,
        *,
        default_uri: str = "",
        settings: Settings | None = None,
        workdir: Path | None = None,
    ) -> None:
        super().__init__()
        self.options = options
        self.default_uri = default_uri
        self.settings = settings
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="kfloop-serve-"))
        self.uris: dict[str, str] = {}
        self._downloads: dict[str, Path] = {}
        self._emitters: dict[str, PayloadEmitter] = {}
        self._lock: asyncio.Lock | None = None
        self._count = 0

    def build(self, name: str, uri: str, *, what: str = "--model-uri") -> OnnxPredictor:
        """Fetch ``uri`` and return a loaded, warmed-up model (blocking; not yet served).

        An empty ``name`` takes ``model_name`` from the model's metadata.json ("model" if none).

        Raises:
            KfloopError: ModelLoadError, ConfigError or ObjectStoreError, naming the URI,
                file or variable.
        """
        self._count += 1
        target = self.workdir / f"load-{self._count}"
        target.mkdir(parents=True, exist_ok=True)
        try:
            folder = fetch_model(uri, target, self.settings, what=what)
            name = name or _metadata_model_name(folder)
            model = OnnxPredictor(name, folder, self.options, emitter=self._emitters.get(name))
            model.load()
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        model.model_dir = folder
        if not folder.is_relative_to(target):  # a local folder: nothing was downloaded
            shutil.rmtree(target, ignore_errors=True)
            target = folder
        model.source_uri = uri
        model.download_dir = target
        return model

    def install(self, name: str, model: OnnxPredictor) -> None:
        """Serve ``model`` as ``name`` (the atomic swap), then drop the old version's files."""
        self._emitters.setdefault(name, model.emitter)
        old_download = self._downloads.get(name)
        self.update(model, name)
        self.uris[name] = model.source_uri
        download = model.download_dir
        if download is not None and download.is_relative_to(self.workdir):
            self._downloads[name] = download
        else:
            self._downloads.pop(name, None)
        if old_download is not None and old_download != download:
            # The old session is in memory; its files are no longer needed.
            shutil.rmtree(old_download, ignore_errors=True)
        REPOSITORY_LOADS.labels(name, "ok").inc()
        log.info(
            "serving %s: %s %s from %s",
            name,
            model.metadata.get("model_name", "?"),
            model.metadata.get("version", "?"),
            self.uris[name],
        )

    async def load(self, name: str, uri: str | None = None) -> bool:
        """Load ``uri`` (see the class doc for the default) and swap it in as ``name``.

        Raises:
            ModelLoadError: no URI known for ``name``, or the URI does not hold a usable model
                (names the URI or file). ConfigError / ObjectStoreError: S3 settings or store.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            source = uri or self.uris.get(name) or self.default_uri
            if not source:
                raise ModelLoadError(
                    f'load {name}: no URI: send {{"parameters": {{"uri": "s3://..."}}}} '
                    "or start the server with --model-uri"
                )
            try:
                model = await asyncio.to_thread(self.build, name, source, what="load uri")
            except KfloopError:
                REPOSITORY_LOADS.labels(name, "failed").inc()
                raise
            self.install(name, model)
        return True

    def emitters(self) -> list[PayloadEmitter]:
        """The payload emitters of every name ever served (one per name, shared by versions)."""
        return list(self._emitters.values())

    def unload(self, name: str) -> None:
        """Stop serving ``name`` (KeyError if it is not served); its last URI is remembered."""
        super().unload(name)
        download = self._downloads.pop(name, None)
        if download is not None:
            shutil.rmtree(download, ignore_errors=True)
        REPOSITORY_LOADS.labels(name, "unloaded").inc()


def _metadata_model_name(folder: Path) -> str:
    try:
        name = json.loads((folder / METADATA_FILE).read_text("utf-8")).get("model_name")
    except (OSError, json.JSONDecodeError, AttributeError):
        name = ""
    return str(name or "model")


def _load_uri_from_body(body: bytes) -> str | None:
    """``parameters.uri`` of a repository load body (None when absent); DataError if malformed."""
    if not body.strip():
        return None
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError("the load request body is not JSON") from None
    if not isinstance(payload, dict):
        raise DataError("the load request body must be a JSON object")
    parameters = payload.get("parameters")
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise DataError("parameters: must be an object")
    uri = parameters.get("uri")
    if uri is None:
        return None
    if not isinstance(uri, str) or not uri.strip():
        raise DataError(f"parameters.uri: must be a non-empty string, got {uri!r}")
    return uri.strip()


def add_repository_routes(app: Any, repository: HotSwapRepository) -> None:
    """REST ``/v2/repository/models/{name}/load`` taking ``parameters.uri``; 400 on failure.

    Registered before KServe's own routes, so it takes precedence over KServe's load (which
    has no body). A failed load is a 400 whose ``error`` names the URI or file, as Triton's
    repository extension answers; the previously served version keeps serving.
    """

    async def load(request: Request) -> JSONResponse:
        name = request.path_params["model_name"]
        try:
            uri = _load_uri_from_body(await request.body())
            await repository.load(name, uri)
        except KfloopError as exc:
            return JSONResponse(status_code=400, content={"error": f"load {name}: {exc}"})
        return JSONResponse(content={"name": name, "load": True})

    app.add_api_route("/v2/repository/models/{model_name}/load", load, methods=["POST"])


# -- HTTP limits -----------------------------------------------------------------------------------

ASGIApp = Callable[..., Awaitable[None]]


class RequestGuardMiddleware:
    """Body size limit, and the v2 rule that a body without a binary header is JSON.

    - A body above ``max_bytes`` is refused: 413 when Content-Length says so, else a 400
      (``InvalidInput``) as soon as the streamed bytes pass the limit.
    - A v2 ``/infer`` body with no ``Inference-Header-Content-Length`` is JSON whatever its
      content type (tritonclient sends none); KServe would take it for binary otherwise.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if (
            scope.get("method") == "POST"
            and str(scope.get("path", "")).endswith("/infer")
            and b"inference-header-content-length" not in headers
            and headers.get(b"content-type", b"").split(b";")[0].strip() != b"application/json"
        ):
            raw = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*raw, (b"content-type", b"application/json")]}
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse(
                status_code=413,
                content={
                    "error": f"the request body has {int(length)} bytes, above the limit of "
                    f"{self.max_bytes} (--max-body-bytes); send fewer rows per request or "
                    "use the binary tensor extension"
                },
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise InvalidInput(
                        f"the request body exceeds the limit of {self.max_bytes} bytes "
                        "(--max-body-bytes)"
                    )
            return message

        await self.app(scope, limited_receive, send)


async def _validation_error_handler(_: Any, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a malformed v2 body, as KServe's 400 with the field named."""
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        problems.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return JSONResponse(
        status_code=400, content={"error": "invalid inference request: " + "; ".join(problems)}
    )


# -- the model server: bind address, admin guard, fast path, drain on SIGTERM --------------------

_REPOSITORY_RPCS = (
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
)


class AdminInterceptor(grpc.aio.ServerInterceptor):
    """gRPC ``RepositoryModelLoad``/``Unload`` under the same :class:`AdminGuard` as REST:
    ``UNAUTHENTICATED`` (no/wrong ``authorization: Bearer`` metadata) or ``PERMISSION_DENIED``
    (no token configured)."""

    def __init__(self, guard: AdminGuard) -> None:
        self.guard = guard

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if details.method in _REPOSITORY_RPCS:
            refusal = self.guard.allows_metadata(details.invocation_metadata)
            if refusal is not None:
                status, message = refusal
                code = (
                    grpc.StatusCode.UNAUTHENTICATED
                    if status == 401
                    else grpc.StatusCode.PERMISSION_DENIED
                )

                async def deny(request: Any, context: Any) -> Any:
                    await context.abort(code, message)

                return grpc.unary_unary_rpc_method_handler(deny)
        return await continuation(details)


class _RepositoryServicer(InferenceServicer):
    """KServe's gRPC servicer with working ``RepositoryModelLoad``/``Unload``.

    KServe 0.21's versions index the ``None`` its repository extension returns (a load or
    unload that worked fails with ``UNKNOWN``); these call :class:`HotSwapRepository`
    directly: a failed load is ``INVALID_ARGUMENT`` naming the URI or file (the old version
    keeps serving), an unknown name to unload is ``NOT_FOUND``.
    """

    def __init__(self, *args: Any, repository: HotSwapRepository, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._repository = repository

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        try:
            await self._repository.load(request.model_name)
        except KfloopError as exc:
            message = f"load {request.model_name}: {exc}"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        return pb.RepositoryModelLoadResponse(model_name=request.model_name, isLoaded=True)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        try:
            self._repository.unload(request.model_name)
        except KeyError:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"model {request.model_name} is not served"
            )
        return pb.RepositoryModelUnloadResponse(model_name=request.model_name, isUnloaded=True)


class _BoundGRPCServer(GRPCServer):
    """KServe's gRPC server on ``host`` (KServe binds ``[::]``), with the admin interceptor."""

    def __init__(
        self,
        *args: Any,
        host: str,
        guard: AdminGuard,
        repository: HotSwapRepository,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._host = host
        self._guard = guard
        self._repository = repository

    async def start(self, max_workers: int) -> None:
        # KServe 0.21's GRPCServer.start, with the listen address and one more interceptor.
        servicer = _RepositoryServicer(
            self._data_plane, self._model_repository_extension, repository=self._repository
        )
        self._server = grpc.aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(
                AdminInterceptor(self._guard),
                LoggingInterceptor(),
                ExceptionToStatusInterceptor(),
            ),
            options=[
                ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                (
                    "grpc.max_receive_message_length",
                    self._kwargs.get("grpc_max_receive_message_length"),
                ),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._server.add_insecure_port(f"{host}:{self._port}")
        log.info("gRPC listening on %s:%d", host, self._port)
        await self._server.start()
        await self._server.wait_for_termination()


def intra_op_threads(setting: int) -> int:
    """ONNX Runtime's intra-op threads for ``--intra-op-threads`` (0: auto); 0 leaves its
    default. Auto is the CPUs the pod may use (:func:`~kfloop.serving.cpus.cpu_budget`) when
    its CPU limit or affinity gives it fewer than the node has: ONNX Runtime would size its
    pool to the node. ``ORT_INTRA_OP_NUM_THREADS`` in the environment, which ONNX Runtime
    reads itself, is left to it."""
    if setting > 0 or os.environ.get("ORT_INTRA_OP_NUM_THREADS"):
        return setting
    budget = cpu_budget()
    threads = pool_threads(0, budget, os.cpu_count())
    if threads:
        log.info(
            "ONNX Runtime: %d intra-op threads (%s; the node has %s)",
            threads,
            budget.describe(),
            os.cpu_count(),
        )
    return threads


def run_event_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run ``main`` on uvloop when ``event_loop`` is ``auto`` or ``uvloop`` and it is installed
    (uvicorn's own choice for ``loop="auto"``), else on asyncio's loop.

    KServe names the option but then serves inside ``asyncio.run``, so its ``auto`` never
    reached uvloop. On uvloop a batch-1 request costs the predictor less CPU (measured in
    ``make bench``).
    """
    if event_loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise ConfigError("event_loop", "uvloop is not installed") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


class KfloopModelServer(kserve.ModelServer):
    """``kserve.ModelServer`` (single process) with what KServe 0.21 has no option for.

    - ``host``: REST and gRPC listen there (KServe binds every interface): ``127.0.0.1`` for a
      local run, ``0.0.0.0`` in a pod.
    - ``access_log``: uvicorn's line per request, off by default (every inference is in the
      payload log and the metrics; at thousands of requests/s the lines cost CPU).
    - uvicorn runs :class:`~kfloop.serving.fastpath.PredictorFront` around KServe's FastAPI
      app (the v2 JSON fast path, the repository admin guard); gRPC gets the same guard.
    - After SIGTERM, once REST and gRPC stopped and answered their in-flight requests, the
      payload events still queued are posted (for at most ``drain_seconds``), then the
      process exits.
    """

    def __init__(
        self,
        *,
        host: str,
        admin: AdminGuard,
        options: ServeOptions,
        emitters: Callable[[], list[PayloadEmitter]],
        access_log: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # kfloop's own lines (start-up, loads, drain) through KServe's configured handler.
        kfloop_log = logging.getLogger("kfloop")
        if not kfloop_log.handlers and logging.getLogger("kserve").handlers:
            kfloop_log.handlers = list(logging.getLogger("kserve").handlers)
            kfloop_log.setLevel(logging.INFO)
            kfloop_log.propagate = False
        self.host = host
        self.access_log = access_log
        self.admin = admin
        self.options = options
        self.emitters = emitters
        self.undelivered = 0

    def start(self, models: list[Any]) -> None:
        # KServe 0.21's ModelServer.start for workers=1, with the host, the front and the guard.
        from kserve import model_server

        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )
        config = self._rest_server.config
        config.host = self.host
        if not self.access_log:  # what uvicorn.Config(access_log=False) does
            access = logging.getLogger("uvicorn.access")
            access.handlers = []
            access.propagate = False
        config.app = PredictorFront(
            model_server.app,
            self.registered_models.get_model,
            self.admin,
            max_body_bytes=self.options.max_body_bytes,
        )
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            self._grpc_server = _BoundGRPCServer(
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs=vars(model_server.args),
                grace_period=self.grace_period,
                host=self.host,
                guard=self.admin,
                repository=self.registered_models,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        log.info(
            "REST on %s:%d%s; repository load/unload: %s",
            self.host,
            self.http_port,
            f", gRPC on port {self.grpc_port}" if self.enable_grpc else "",
            self.admin.mode,
        )
        run_event_loop(self._serve(), self.event_loop)

    async def _serve(self) -> None:
        await asyncio.gather(*self.servers)
        await self.drain()

    async def drain(self) -> int:
        """Post the queued payload events (at most ``logger_drain_seconds``); returns how many
        were left undelivered (also logged and counted)."""
        emitters = [e for e in self.emitters() if e.enabled]
        if not emitters:
            return 0
        pending = sum(e.pending for e in emitters)
        timeout = self.options.logger_drain_seconds
        started = time.monotonic()
        left = await asyncio.gather(*(e.close(timeout) for e in emitters))
        self.undelivered = sum(left)
        elapsed = time.monotonic() - started
        if self.undelivered:
            log.warning(
                "shutdown: %d of %d queued payload events not delivered to the logger within "
                "%.1f s (--logger-drain-seconds)",
                self.undelivered,
                pending,
                timeout,
            )
        else:
            log.info("shutdown: %d queued payload events delivered in %.2f s", pending, elapsed)
        return self.undelivered


# -- entry point -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kfloop serve",
        description="Serve a packaged kfloop model (ONNX) with KServe v1/v2 REST and v2 gRPC.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    default_uri = os.environ.get(MODEL_URI_ENV, "")
    parser.add_argument(
        "--model-uri",
        default=default_uri or None,
        required=not default_uri,
        help=f"model folder or s3:// URI (default: ${MODEL_URI_ENV}); a repository load "
        "without a URI reloads it",
    )
    parser.add_argument("--model-name", default="", help="endpoint name (default: metadata)")
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address REST and gRPC listen on: loopback for a local run, 0.0.0.0 in a pod",
    )
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT, help="0: no gRPC")
    parser.add_argument("--logger-url", default="", help="payload logger URL; empty: off")
    parser.add_argument("--logger-queue-size", type=int, default=10_000)
    parser.add_argument(
        "--logger-senders",
        type=int,
        default=DEFAULT_SENDERS,
        help="most posts to the payload logger on their way at once (one connection each); "
        "CloudEvents go on more than one only while a whole post is queued behind one on its way",
    )
    parser.add_argument(
        "--logger-drain-seconds",
        type=float,
        default=DEFAULT_DRAIN_S,
        help="after SIGTERM, longest wait to post the payload events still queued",
    )
    parser.add_argument(
        "--logger-batch-events",
        type=int,
        default=DEFAULT_BATCH_EVENTS,
        help="most payload events per post; above 1, queued events go as one CloudEvents batch "
        "(kfloop's logger only; default 1: one event per post, as the KServe agent does)",
    )
    parser.add_argument(
        "--logger-pipeline-events",
        type=int,
        default=DEFAULT_PIPELINE_EVENTS,
        help="events posted one per request (--logger-batch-events 1) go pipelined on each "
        "sender's HTTP/1.1 connection, up to this many in flight at once (default "
        f"{DEFAULT_PIPELINE_EVENTS}; 1: one post at a time, as the KServe agent posts)",
    )
    parser.add_argument(
        "--logger-linger-seconds",
        type=float,
        default=DEFAULT_LINGER_S,
        help="longest wait for more payload events before a post that is not full goes, when "
        f"no other post is on its way (default {DEFAULT_LINGER_S}; 0: post what is queued at once)",
    )
    parser.add_argument(
        "--logger-format",
        choices=FORMATS,
        default="cloudevents",
        help="cloudevents: each request and response as the KServe agent logs them (JSON "
        "CloudEvents; default); arrow: the inputs the model saw and its predictions as Arrow "
        "rows posts of up to --logger-batch-events / 2 inferences (kfloop's logger only; "
        f"no JSON for the logger to parse again); JSON v2 inferences of {ROWS_BODY_ROWS} "
        "rows or more still go as their request and response events",
    )
    parser.add_argument("--logger-source", default="", help="ce-source (default: own URL)")
    parser.add_argument("--inference-service", default="", help="ce-inferenceservicename")
    parser.add_argument("--namespace", default="default", help="ce-namespace")
    parser.add_argument("--max-batch-rows", type=int, default=1024)
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=DEFAULT_MAX_WAIT_MS,
        help="dynamic batching: longest wait for more requests to join a batch when several "
        "are queued (0: no timed wait, requests arriving while a batch runs form the next one; "
        "on uvloop a wait is at least 1 ms)",
    )
    parser.add_argument("--max-rows-per-request", type=int, default=DEFAULT_MAX_ROWS)
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--allow-inf", action="store_true", help="accept +/-Inf as missing")
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads; 0: auto (the CPUs the pod's CPU limit and affinity "
        "allow, else ONNX Runtime's default)",
    )
    parser.add_argument(
        "--inline-max-rows",
        type=int,
        default=DEFAULT_INLINE_MAX_ROWS,
        help="a merged batch up to this many rows runs on the event loop, a bigger one in a "
        "thread; 0: always a thread",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log one line per HTTP request (uvicorn)"
    )
    parser.add_argument(
        "--admin-token-file",
        default=None,
        help="file holding the bearer token for the repository load/unload endpoints "
        f"(default: ${ADMIN_TOKEN_ENV}); without one they are refused",
    )
    parser.add_argument(
        "--allow-unauthenticated-admin",
        action="store_true",
        help="with no admin token, let anyone call load/unload (loopback-only local runs)",
    )
    return parser


def serve_main(argv: list[str] | None = None) -> int:
    """``kfloop serve``: load the model, then run the KServe model server until stopped.

    Returns a process exit code: 0 after a clean stop, 1 when the model cannot be loaded or
    an option is wrong (the message, on stderr, names the URI, file or variable), 2 on usage.
    """
    args = build_parser().parse_args(argv)
    options = ServeOptions(
        max_rows_per_request=args.max_rows_per_request,
        max_batch_rows=args.max_batch_rows,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_bytes,
        allow_inf=args.allow_inf,
        logger_url=args.logger_url,
        logger_queue_size=args.logger_queue_size,
        inference_service=args.inference_service,
        namespace=args.namespace,
        logger_source=args.logger_source or f"http://localhost:{args.http_port}/",
        logger_senders=args.logger_senders,
        logger_drain_seconds=args.logger_drain_seconds,
        logger_batch_events=args.logger_batch_events,
        logger_pipeline_events=args.logger_pipeline_events,
        logger_linger_seconds=args.logger_linger_seconds,
        logger_format=args.logger_format,
        inline_max_rows=args.inline_max_rows,
        intra_op_threads=args.intra_op_threads,
    )
    fit_arrow_pool(cpu_budget())  # binary BYTES tensors and Arrow rows posts use pyarrow
    workdir = Path(tempfile.mkdtemp(prefix="kfloop-serve-"))
    repository = HotSwapRepository(options, default_uri=args.model_uri, workdir=workdir)
    try:
        options.check()
        admin = AdminGuard.configure(
            args.admin_token_file, allow_unauthenticated=args.allow_unauthenticated_admin
        )
        model = repository.build(args.model_name, args.model_uri)
        repository.install(model.name, model)
    except KfloopError as exc:
        print(f"kfloop serve: {exc}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return 1

    from kserve import model_server

    # Body limits: REST by middleware, gRPC by the server's receive limit.
    model_server.args.grpc_max_receive_message_length = options.max_body_bytes
    model_server.app.add_middleware(RequestGuardMiddleware, max_bytes=options.max_body_bytes)
    model_server.app.add_exception_handler(RequestValidationError, _validation_error_handler)
    add_repository_routes(model_server.app, repository)
    server = KfloopModelServer(
        host=args.host,
        admin=admin,
        options=options,
        emitters=repository.emitters,
        access_log=args.access_log,
        registered_models=repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port or DEFAULT_GRPC_PORT,
        enable_grpc=args.grpc_port > 0,
        workers=1,
        enable_latency_logging=False,
    )
    freeze_startup_heap()
    try:
        server.start([model])
    except OSError as exc:  # the address is taken or not on this machine
        print(f"kfloop serve: cannot listen on {args.host}: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
