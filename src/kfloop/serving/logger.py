"""The payload logger (``kfloop logger``): KServe CloudEvents in, Parquet and drift metrics out.

An ASGI app (Starlette, served by uvicorn). ``POST /`` takes one CloudEvent per call, as the
KServe agent sends them (binary or structured mode, see :mod:`kfloop.serving.events`); the
request and response of an inference are paired by id and decoded into rows, which are
buffered and written as Parquet to::

    <output>/<model>/<version>/date=YYYY-MM-DD/hour=HH/<uuid>.parquet

(``<output>`` defaults to ``s3://$KFLOOP_LOGS_BUCKET``; a local folder works too), by size
(``--flush-rows``) or age (``--flush-seconds``). Columns (the contract that
``kfloop.data.label`` feedback mode reads): ``request_id`` string, ``model_name`` string,
``model_version`` string, ``timestamp`` timestamp[us, UTC] (the request's ``ce-time``, else
its arrival), ``endpoint`` string (``ce-endpoint``), one column per feature of the reference
profile (numeric float64, categorical string; model input order), ``prediction`` float64.

Guarantees:

- **No accepted event is lost on a clean shutdown** (SIGTERM/SIGINT): uvicorn stops accepting,
  finishes the requests in flight, then the app writes every buffered row and every
  half-pair (a request whose response never came: prediction null; a response without its
  request: features null, counted as orphans) before the process exits.
- **Bounded memory**: rows buffered + rows being written + half-pairs never exceed
  ``--max-buffered-rows`` (plus one event); past it an event gets ``429`` (counted,
  ``Retry-After: 1``), it is not accepted. A crash loses at most that buffer, which the
  ``kfloop_logger_unflushed_rows`` gauge shows. A failed write is retried (the rows stay
  buffered, so the 429 limit holds) until it succeeds; on shutdown after
  ``SHUTDOWN_WRITE_ATTEMPTS`` attempts the rows are counted as dropped (``write_failed``).
- **Duplicates** (agent retries of the same id and type) are answered 200 and written once.
- A CloudEvent without an id, of an unknown type or with an undecodable payload is a 400;
  a body over ``--max-body-bytes`` is a 413; events during shutdown get 503.

Metrics on ``GET /metrics`` (every metric has ``model`` and ``version`` labels): events
received / rejected / dropped / rows written, write latency, orphans, the prediction
histogram, and, over a sliding window of the last ``--window-rows`` rows, updated every
``--drift-every-rows`` rows and at each flush: ``kfloop_feature_psi``,
``kfloop_feature_js_divergence`` (base 2, in [0, 1]), ``kfloop_feature_missing_rate`` per
feature, ``kfloop_prediction_psi`` / ``kfloop_prediction_js_divergence``, and
``kfloop_schema_violations_total{feature,reason}`` (``unknown_feature``, ``wrong_type``;
``prediction`` for the output).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kfloop.core.arrowio import write_parquet
from kfloop.core.errors import ConfigError, DataError, KfloopError, ObjectStoreError
from kfloop.core.objectstore import ObjectStore, S3Uri, is_s3_uri
from kfloop.core.settings import Settings
from kfloop.serving.drift import DriftMonitor
from kfloop.serving.events import (
    EventError,
    EventPairer,
    FeatureSchema,
    LogRow,
    Violation,
    parse_cloudevent,
)

log = logging.getLogger(__name__)

PROFILE_FILE = "reference_profile.json"
METADATA_FILE = "metadata.json"
LOG_COLUMNS = ("request_id", "model_name", "model_version", "timestamp", "endpoint")
PREDICTION = "prediction"
SHUTDOWN_WRITE_ATTEMPTS = 5
_US_PER_HOUR = 3_600_000_000


@dataclass(frozen=True)
class LoggerConfig:
    """Parameters of one logger (one model version).

    Args:
        model_name: Model name (Parquet path and ``model_name`` column, metric label).
        model_version: Model version (path, ``model_version`` column, metric label).
        output: Root of the logs: ``s3://bucket[/prefix]`` or a local folder.
        flush_rows: Write when this many rows are buffered.
        flush_seconds: Write rows that have waited this long.
        max_buffered_rows: Answer 429 above this many unwritten rows (buffer, writes in
            flight, half-pairs).
        window_rows: Rows in the drift sliding window.
        drift_every_rows: Recompute drift after this many new rows (and at each flush).
        hold_seconds: How long a request waits for its response (and the reverse) before
            it is written alone as an orphan.
        max_body_bytes: Largest accepted event body (413 above).
        dedupe_ids: Completed ids remembered to drop agent retries.
    """

    model_name: str
    model_version: str
    output: str
    flush_rows: int = 10_000
    flush_seconds: float = 60.0
    max_buffered_rows: int = 100_000
    window_rows: int = 10_000
    drift_every_rows: int = 1_000
    hold_seconds: float = 60.0
    max_body_bytes: int = 10 * 2**20
    dedupe_ids: int = 100_000

    def __post_init__(self) -> None:
        for name in ("model_name", "model_version", "output"):
            value = getattr(self, name)
            if not value or ("/" in value and name != "output"):
                raise ConfigError(name, f"{value!r}: give a non-empty name without '/'")
        positive = {
            "flush_rows": self.flush_rows,
            "flush_seconds": self.flush_seconds,
            "max_buffered_rows": self.max_buffered_rows,
            "window_rows": self.window_rows,
            "drift_every_rows": self.drift_every_rows,
            "hold_seconds": self.hold_seconds,
            "max_body_bytes": self.max_body_bytes,
            "dedupe_ids": self.dedupe_ids,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(name, f"{value!r} must be > 0")
        if self.flush_rows > self.max_buffered_rows:
            raise ConfigError(
                "flush_rows",
                f"{self.flush_rows} is above max_buffered_rows ({self.max_buffered_rows}): the "
                "logger would refuse events before it writes any; lower it",
            )


# -- reference profile ------------------------------------------------------------------------


def _read_text(uri: str, store: ObjectStore | None) -> str | None:
    """A local or s3:// file's text, or None when it does not exist."""
    if is_s3_uri(uri):
        if store is None:
            raise ConfigError("reference_profile", f"{uri}: an s3:// URI needs S3 settings")
        try:
            return store.get_bytes(uri).decode("utf-8")
        except FileNotFoundError:
            return None
    path = Path(uri)
    return path.read_text(encoding="utf-8") if path.is_file() else None


def load_reference(
    uri: str, store: ObjectStore | None = None
) -> tuple[dict[str, Any], list[str] | None]:
    """Load ``reference_profile.json`` (a file, or a model folder holding it) and the model's
    input order from ``metadata.json`` beside it when there is one.

    Raises:
        ConfigError: no profile at ``uri`` (named).
        DataError: the profile or metadata is not valid JSON of the expected shape.
    """
    base = uri.rstrip("/")
    if base.endswith(".json"):
        profile_uri = base
        folder = base.rsplit("/", 1)[0] if "/" in base else "."
    else:
        profile_uri, folder = f"{base}/{PROFILE_FILE}", base
    text = _read_text(profile_uri, store)
    if text is None:
        raise ConfigError(
            "reference_profile",
            f"{profile_uri}: no such file; give the model folder (it holds {PROFILE_FILE}, "
            "written by train_model and published with the model) or the file itself",
        )
    try:
        profile = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{profile_uri}: not JSON: {exc}") from None
    if not isinstance(profile, dict) or "numeric" not in profile:
        raise DataError(f"{profile_uri}: not a kfloop reference profile (no 'numeric' section)")
    order: list[str] | None = None
    meta_text = _read_text(f"{folder}/{METADATA_FILE}", store)
    if meta_text is not None:
        try:
            inputs = json.loads(meta_text).get("inputs") or []
            order = [str(i["name"]) for i in inputs] or None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{folder}/{METADATA_FILE}: cannot read 'inputs': {exc}") from None
    return profile, order


# -- metrics ------------------------------------------------------------------------------------


class LoggerMetrics:
    """The logger's Prometheus metrics, in their own registry."""

    def __init__(self, model: str, version: str, prediction_buckets: Sequence[float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        mv = ("model", "version")
        self.labels = {"model": model, "version": version}
        self.received = Counter(
            "kfloop_logger_events_received",
            "CloudEvents accepted, by type (request/response); duplicates included",
            [*mv, "type"],
            registry=r,
        )
        self.rejected = Counter(
            "kfloop_logger_events_rejected",
            "CloudEvents refused (not accepted), by reason: overload (429), no_id, bad_event, "
            "unknown_type, bad_payload (400), too_large (413), shutting_down (503)",
            [*mv, "reason"],
            registry=r,
        )
        self.dropped = Counter(
            "kfloop_logger_events_dropped",
            "Accepted events not written as rows of their own, by reason: duplicate (agent "
            "retry), late (the other half came after its pair was written as an orphan), "
            "write_failed (rows, given up at shutdown)",
            [*mv, "reason"],
            registry=r,
        )
        self.written = Counter(
            "kfloop_logger_rows_written", "Rows written to Parquet", mv, registry=r
        )
        self.files = Counter("kfloop_logger_files_written", "Parquet files written", mv, registry=r)
        self.write_errors = Counter(
            "kfloop_logger_write_errors", "Failed Parquet writes (retried)", mv, registry=r
        )
        self.write_seconds = Histogram(
            "kfloop_logger_write_seconds",
            "Time to write one Parquet file to the store",
            mv,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.orphans = Counter(
            "kfloop_logger_orphans",
            "Half-pairs written alone after the hold time or at shutdown, by kind "
            "(request: no response came; response: no request came)",
            [*mv, "kind"],
            registry=r,
        )
        self.unflushed = Gauge(
            "kfloop_logger_unflushed_rows",
            "Rows accepted but not yet in the store (buffer, writes in flight, half-pairs): "
            "what a crash would lose",
            mv,
            registry=r,
        )
        self.pending = Gauge(
            "kfloop_logger_pending_events",
            "Half-pairs waiting for their other half",
            mv,
            registry=r,
        )
        self.violations = Counter(
            "kfloop_schema_violations",
            "Values that do not fit the model's features, by feature and reason "
            "(unknown_feature, wrong_type; feature 'prediction' for the model output)",
            [*mv, "feature", "reason"],
            registry=r,
        )
        buckets = sorted({float(b) for b in prediction_buckets if math.isfinite(b)})
        self.prediction = Histogram(
            "kfloop_prediction",
            "Logged predictions (buckets: the reference profile's prediction bin edges)",
            mv,
            buckets=buckets or Histogram.DEFAULT_BUCKETS,
            registry=r,
        )
        feat = (*mv, "feature")
        self.psi = Gauge(
            "kfloop_feature_psi",
            "Population stability index of the feature over the sliding window vs the "
            "reference profile (NaN: no value in the window)",
            feat,
            registry=r,
        )
        self.js = Gauge(
            "kfloop_feature_js_divergence",
            "Jensen-Shannon divergence (base 2, 0..1) of the feature over the sliding window "
            "vs the reference profile",
            feat,
            registry=r,
        )
        self.missing = Gauge(
            "kfloop_feature_missing_rate",
            "Share of missing values of the feature in the sliding window",
            feat,
            registry=r,
        )
        self.prediction_psi = Gauge(
            "kfloop_prediction_psi",
            "PSI of the predictions over the sliding window vs the reference predictions",
            mv,
            registry=r,
        )
        self.prediction_js = Gauge(
            "kfloop_prediction_js_divergence",
            "Jensen-Shannon divergence (base 2) of the predictions vs the reference",
            mv,
            registry=r,
        )
        self.window_rows = Gauge(
            "kfloop_drift_window_rows", "Rows in the drift sliding window", mv, registry=r
        )
        lb = self.labels
        # bound children for the hot path
        self.received_request = self.received.labels(**lb, type="request")
        self.received_response = self.received.labels(**lb, type="response")
        self.written_c = self.written.labels(**lb)
        self.prediction_h = self.prediction.labels(**lb)

    def reject(self, reason: str) -> None:
        self.rejected.labels(**self.labels, reason=reason).inc()

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped.labels(**self.labels, reason=reason).inc(n)

    def violation(self, items: Sequence[Violation]) -> None:
        for feature, reason in items:
            self.violations.labels(**self.labels, feature=feature, reason=reason).inc()


# -- the service --------------------------------------------------------------------------------


class _Reject(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)


class PayloadLogger:
    """Pairs events into rows, buffers them, writes Parquet, publishes drift.

    Use :meth:`handle` per event from the event loop; :meth:`start` and :meth:`close` (the
    ASGI lifespan does both) run the timer and the single writer task.
    """

    def __init__(
        self,
        config: LoggerConfig,
        profile: Mapping[str, Any],
        order: Sequence[str] | None = None,
        store: ObjectStore | None = None,
    ) -> None:
        self.config = config
        self.schema = FeatureSchema.from_profile(profile, order)
        clash = [n for n in self.schema.names if n in (*LOG_COLUMNS, PREDICTION)]
        if clash:
            raise DataError(
                f"features {clash} have the names of logging columns {[*LOG_COLUMNS, PREDICTION]}"
            )
        if is_s3_uri(config.output) and store is None:
            raise ConfigError("output", f"{config.output}: an s3:// output needs S3 settings")
        self.store = store
        self.drift = DriftMonitor(profile, config.window_rows)
        pred_edges = (profile.get("prediction") or {}).get("edges") or []
        self.metrics = LoggerMetrics(config.model_name, config.model_version, pred_edges)
        self.pairer = EventPairer(self.schema, config.hold_seconds, config.dedupe_ids)
        self._buffer: list[LogRow] = []
        self._buffer_since = time.monotonic()
        self._drift_rows: list[LogRow] = []
        self._queue: asyncio.Queue[list[LogRow]] | None = None
        self._inflight_rows = 0
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._arrow_schema = self._make_schema()

    # -- accounting --

    @property
    def unflushed_rows(self) -> int:
        """Rows a crash would lose now."""
        return len(self._buffer) + self._inflight_rows + self.pairer.pending_rows

    def _update_gauges(self) -> None:
        lb = self.metrics.labels
        self.metrics.unflushed.labels(**lb).set(self.unflushed_rows)
        self.metrics.pending.labels(**lb).set(self.pairer.pending_events)

    # -- events --

    def handle(self, headers: Mapping[str, str], body: bytes) -> tuple[int, str]:
        """Take one HTTP-delivered CloudEvent; returns (HTTP status, message)."""
        m = self.metrics
        try:
            if self._closing:
                raise _Reject(503, "shutting_down", "the logger is shutting down; retry")
            if self.unflushed_rows >= self.config.max_buffered_rows:
                raise _Reject(
                    429,
                    "overload",
                    f"{self.unflushed_rows} rows not yet written (limit "
                    f"{self.config.max_buffered_rows}); retry later",
                )
            event = parse_cloudevent(headers, body)
            result = self.pairer.add(event, time.monotonic(), time.time())
        except _Reject as exc:
            m.reject(exc.reason)
            return exc.status, str(exc)
        except EventError as exc:
            m.reject(exc.reason)
            return exc.status, str(exc)
        (m.received_request if event.kind == "request" else m.received_response).inc()
        if result.violations:
            m.violation(result.violations)
        if result.status in ("duplicate", "late"):
            m.drop(result.status)
        elif result.rows:
            self._add_rows(result.rows)
        return 200, result.status

    def _add_rows(self, rows: list[LogRow]) -> None:
        if not self._buffer:
            self._buffer_since = time.monotonic()
        self._buffer.extend(rows)
        self._drift_rows.extend(rows)
        if len(self._drift_rows) >= self.config.drift_every_rows:
            self.update_drift()
        if len(self._buffer) >= self.config.flush_rows:
            self.flush()

    def expire_orphans(self, everything: bool = False) -> int:
        """Write out half-pairs past their hold time (all with ``everything``)."""
        orphans = self.pairer.expire(time.monotonic(), everything=everything)
        lb = self.metrics.labels
        if orphans.requests:
            self.metrics.orphans.labels(**lb, kind="request").inc(orphans.requests)
        if orphans.responses:
            self.metrics.orphans.labels(**lb, kind="response").inc(orphans.responses)
        if orphans.rows:
            self._add_rows(orphans.rows)
        return orphans.requests + orphans.responses

    # -- drift --

    def update_drift(self) -> None:
        """Add the rows since the last update to the window and publish drift gauges."""
        rows, self._drift_rows = self._drift_rows, []
        m, lb = self.metrics, self.metrics.labels
        if rows:
            names = self.schema.names
            with_features = [r.features for r in rows if r.features is not None]
            columns = {
                name: [f[i] for f in with_features]
                for i, name in enumerate(names)
                if name in self.drift.windows
            }
            preds = [r.prediction for r in rows]
            self.drift.add_columns(columns, preds)
            observe = m.prediction_h.observe
            for p in preds:
                if p is not None and math.isfinite(p):
                    observe(p)
        for name, value in self.drift.feature_drift().items():
            m.psi.labels(**lb, feature=name).set(value.psi)
            m.js.labels(**lb, feature=name).set(value.js)
            m.missing.labels(**lb, feature=name).set(value.missing_rate)
        pred = self.drift.prediction_drift()
        m.prediction_psi.labels(**lb).set(pred.psi)
        m.prediction_js.labels(**lb).set(pred.js)
        m.window_rows.labels(**lb).set(pred.rows)

    # -- writing --

    def _make_schema(self) -> pa.Schema:
        fields = [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("model_name", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("timestamp", pa.timestamp("us", tz="UTC")),
            pa.field("endpoint", pa.string()),
        ]
        for name in self.schema.names:
            kind = self.schema.kinds[name]
            fields.append(pa.field(name, pa.float64() if kind == "numeric" else pa.string()))
        fields.append(pa.field(PREDICTION, pa.float64()))
        return pa.schema(fields)

    def to_table(self, rows: Sequence[LogRow]) -> pa.Table:
        """The Parquet contract's table of ``rows``."""
        n = len(rows)
        cfg = self.config
        arrays: list[pa.Array] = [
            pa.array([r.request_id for r in rows], pa.string()),
            pa.array([cfg.model_name] * n, pa.string()),
            pa.array([cfg.model_version] * n, pa.string()),
            pa.array([r.timestamp_us for r in rows], pa.timestamp("us", tz="UTC")),
            pa.array([r.endpoint for r in rows], pa.string()),
        ]
        for i, name in enumerate(self.schema.names):
            typ = pa.float64() if self.schema.kinds[name] == "numeric" else pa.string()
            values = [None if r.features is None else r.features[i] for r in rows]
            arrays.append(pa.array(values, typ))
        arrays.append(pa.array([r.prediction for r in rows], pa.float64()))
        return pa.Table.from_arrays(arrays, schema=self._arrow_schema)

    def partition_uri(self, hour_us: int) -> str:
        """Where a file of the hour starting at ``hour_us`` (epoch microseconds) goes."""
        t = datetime.fromtimestamp(hour_us / 1_000_000, tz=UTC)
        cfg = self.config
        return (
            f"{cfg.output.rstrip('/')}/{cfg.model_name}/{cfg.model_version}/"
            f"date={t:%Y-%m-%d}/hour={t:%H}/{uuid.uuid4().hex}.parquet"
        )

    def flush(self) -> None:
        """Hand the buffer to the writer (one batch per date/hour partition)."""
        if self._drift_rows:
            self.update_drift()
        rows, self._buffer = self._buffer, []
        if not rows:
            return
        if self._queue is None:
            raise RuntimeError("PayloadLogger.start() was not called")
        hours = np.fromiter((r.timestamp_us for r in rows), dtype=np.int64, count=len(rows))
        hours //= _US_PER_HOUR
        if hours.min() == hours.max():
            batches = [rows]
        else:
            batches = [
                [rows[i] for i in np.flatnonzero(hours == h)] for h in np.unique(hours).tolist()
            ]
        for batch in batches:
            self._inflight_rows += len(batch)
            self._queue.put_nowait(batch)
        self._update_gauges()

    def write_batch(self, rows: Sequence[LogRow]) -> str:
        """Write one partition's rows as one Parquet file (blocking); returns its URI."""
        table = self.to_table(rows)
        uri = self.partition_uri((rows[0].timestamp_us // _US_PER_HOUR) * _US_PER_HOUR)
        started = time.perf_counter()
        write_parquet(table, uri, self.store)
        lb = self.metrics.labels
        self.metrics.write_seconds.labels(**lb).observe(time.perf_counter() - started)
        self.metrics.files.labels(**lb).inc()
        self.metrics.written_c.inc(len(rows))
        return uri

    async def _writer(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._queue.get()
            attempt = 0
            while True:
                attempt += 1
                try:
                    await asyncio.to_thread(self.write_batch, batch)
                    break
                except (KfloopError, OSError, pa.ArrowException) as exc:
                    self.metrics.write_errors.labels(**self.metrics.labels).inc()
                    if self._closing and attempt >= SHUTDOWN_WRITE_ATTEMPTS:
                        log.error(
                            "giving up writing %d rows after %d attempts at shutdown: %s",
                            len(batch),
                            attempt,
                            exc,
                        )
                        self.metrics.drop("write_failed", len(batch))
                        break
                    delay = min(30.0, 0.5 * 2 ** min(attempt, 6))
                    log.warning(
                        "writing %d rows failed (%s); retry %d in %.1fs",
                        len(batch),
                        exc,
                        attempt,
                        delay,
                    )
                    await asyncio.sleep(delay if not self._closing else 0.5)
            self._inflight_rows -= len(batch)
            self._update_gauges()
            self._queue.task_done()

    async def _ticker(self) -> None:
        period = max(0.05, min(1.0, self.config.flush_seconds / 4, self.config.hold_seconds / 4))
        while True:
            await asyncio.sleep(period)
            self.expire_orphans()
            if self._buffer and time.monotonic() - self._buffer_since >= self.config.flush_seconds:
                self.flush()
            elif self._drift_rows:
                self.update_drift()
            self._update_gauges()

    async def start(self) -> None:
        """Start the writer and the timer (call from the running event loop)."""
        self._queue = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._writer(), name="kfloop-logger-writer"),
            asyncio.create_task(self._ticker(), name="kfloop-logger-ticker"),
        ]
        self.update_drift()
        self._update_gauges()

    async def close(self) -> None:
        """Refuse new events, write every half-pair and buffered row, stop the tasks."""
        self._closing = True
        ticker = self._tasks[1] if len(self._tasks) > 1 else None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        orphans = self.expire_orphans(everything=True)
        self.flush()
        if self._queue is not None:
            await self._queue.join()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._update_gauges()
        log.info(
            "logger closed: %d half-pairs written as orphans, %d rows unflushed",
            orphans,
            self.unflushed_rows,
        )


# -- ASGI app -----------------------------------------------------------------------------------


def create_app(service: PayloadLogger) -> Starlette:
    """The ASGI app: ``POST /`` events, ``GET /metrics``, ``/healthz``, ``/readyz``."""
    limit = service.config.max_body_bytes

    async def events(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            service.metrics.reject("too_large")
            return JSONResponse(
                {"error": f"body of {length} bytes is over the limit of {limit}"}, 413
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                service.metrics.reject("too_large")
                return JSONResponse({"error": f"body is over the limit of {limit} bytes"}, 413)
            chunks.append(chunk)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        status, message = service.handle(request.headers, body)
        if status == 200:
            return Response(status_code=200)
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        return JSONResponse({"error": message}, status, headers=headers)

    async def metrics(request: Request) -> Response:
        service._update_gauges()
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        if service._closing:
            return JSONResponse({"status": "shutting down"}, 503)
        return JSONResponse({"status": "ready"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.close()

    return Starlette(
        routes=[
            Route("/", events, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


# -- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``kfloop logger`` arguments."""
    d = LoggerConfig("m", "v", "o")
    p = argparse.ArgumentParser(
        prog="kfloop logger",
        description="Receive KServe payload-logging CloudEvents, write Parquet, publish drift.",
    )
    p.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    p.add_argument(
        "--reference-profile",
        required=True,
        help="the model folder (local or s3://) holding reference_profile.json, or the file",
    )
    p.add_argument("--model-name", required=True, help="model name (Parquet path, metrics)")
    p.add_argument("--model-version", required=True, help="model version")
    p.add_argument(
        "--output",
        default=None,
        help="logs root: s3://bucket[/prefix] or a local folder (default s3://$KFLOOP_LOGS_BUCKET)",
    )
    p.add_argument("--flush-rows", type=int, default=d.flush_rows)
    p.add_argument("--flush-seconds", type=float, default=d.flush_seconds)
    p.add_argument("--max-buffered-rows", type=int, default=d.max_buffered_rows)
    p.add_argument("--window-rows", type=int, default=d.window_rows)
    p.add_argument("--drift-every-rows", type=int, default=d.drift_every_rows)
    p.add_argument("--hold-seconds", type=float, default=d.hold_seconds)
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def logger_main(argv: list[str] | None = None) -> int:
    """``kfloop logger``: run the payload logger until SIGTERM/SIGINT. Returns the exit code."""
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    try:
        needs_s3 = args.output is None or is_s3_uri(args.output)
        needs_s3 = needs_s3 or is_s3_uri(args.reference_profile)
        store = ObjectStore(Settings.from_env()) if needs_s3 else None
        output = args.output
        if output is None:
            assert store is not None
            output = f"s3://{store.settings.logs_bucket}"
        config = LoggerConfig(
            model_name=args.model_name,
            model_version=args.model_version,
            output=output,
            flush_rows=args.flush_rows,
            flush_seconds=args.flush_seconds,
            max_buffered_rows=args.max_buffered_rows,
            window_rows=args.window_rows,
            drift_every_rows=args.drift_every_rows,
            hold_seconds=args.hold_seconds,
            max_body_bytes=args.max_body_bytes,
        )
        profile, order = load_reference(args.reference_profile, store)
        service = PayloadLogger(config, profile, order, store)
        if store is not None and is_s3_uri(output):
            store.ensure_bucket(S3Uri.parse(output, "output").bucket)
    except (KfloopError, ObjectStoreError) as exc:
        log.error("%s", exc)
        return 2
    log.info(
        "payload logger for %s/%s: %d features, writing to %s",
        config.model_name,
        config.model_version,
        len(service.schema.names),
        config.output,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=30,
        )
    )
    # uvicorn re-raises a captured SIGTERM/SIGINT after its graceful shutdown, with the handlers
    # that were installed before it started; a no-op handler makes that a clean exit (code 0)
    # once every row is written, instead of death by signal.
    stops: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stops.append(signum))
    server.run()
    if not server.started:
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(logger_main())
