"""Payload logging: the CloudEvents the KServe agent sends, emitted by the predictor itself.

On a cluster an InferenceService's ``logger:`` runs the KServe agent sidecar, which posts each
request and response to the logger URL as binary-mode CloudEvents (kserve ``pkg/logger``:
``worker.go`` and ``handler.go``). Locally the kfloop predictor emits the same events:

====================================  ===============================================
header                                value
====================================  ===============================================
``ce-specversion``                    ``1.0``
``ce-id``                             the request id, shared by request and response
``ce-type``                           ``org.kubeflow.serving.inference.request`` /
                                      ``org.kubeflow.serving.inference.response``
``ce-source``                         the predictor's URL (``--logger-source``)
``ce-time``                           RFC 3339 UTC time of the event
``ce-inferenceservicename``           ``--inference-service`` (default: the model name)
``ce-namespace``                      ``--namespace``
``ce-component``                      ``predictor``
``ce-endpoint``                       ``default`` (the agent's default/canary)
``ce-metadata``                       ``{}`` (JSON of logged request headers; none)
``content-type``                      ``application/json``
====================================  ===============================================

and the body is the v1 or v2 JSON body (v2 binary tensors are logged as JSON ``data``).

Never in the way of an inference: :meth:`PayloadEmitter.emit` only does ``put_nowait`` on a
bounded :class:`asyncio.Queue`; a full queue drops the event and counts it
(``kfloop_payload_events_dropped_total{reason="queue_full"}``). A background task posts the
events with ``httpx``; a failed post is logged (rate-limited) and counted
(``reason="send_failed"``), never retried in the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from prometheus_client import Counter, Gauge

from kfloop.core.errors import ConfigError

log = logging.getLogger(__name__)

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
SPEC_VERSION = "1.0"
DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_TIMEOUT_S = 5.0

EVENTS_SENT = Counter(
    "kfloop_payload_events_sent_total",
    "CloudEvents (request and response) posted to the payload logger with a 2xx answer.",
    ["type"],
)
EVENTS_DROPPED = Counter(
    "kfloop_payload_events_dropped_total",
    "CloudEvents not delivered to the payload logger: queue_full (dropped at enqueue, "
    "the inference went on) or send_failed (post failed or non-2xx).",
    ["reason"],
)
QUEUE_DEPTH = Gauge("kfloop_payload_events_queued", "CloudEvents waiting to be posted.")


@dataclass(frozen=True)
class EventIdentity:
    """The ``ce-*`` attributes that say where an event comes from."""

    inference_service: str
    namespace: str = "default"
    component: str = "predictor"
    endpoint: str = "default"
    source: str = "http://localhost:8080/"


def event_headers(
    identity: EventIdentity, event_id: str, event_type: str, now: datetime | None = None
) -> dict[str, str]:
    """Binary-mode CloudEvent headers, as the KServe agent sets them."""
    stamp = (now or datetime.now(UTC)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return {
        "ce-specversion": SPEC_VERSION,
        "ce-id": event_id,
        "ce-type": event_type,
        "ce-source": identity.source,
        "ce-time": stamp,
        "ce-inferenceservicename": identity.inference_service,
        "ce-namespace": identity.namespace,
        "ce-component": identity.component,
        "ce-endpoint": identity.endpoint,
        "ce-metadata": "{}",
        "content-type": "application/json",
    }


def _dumps(body: Any) -> bytes:
    # NaN (missing numeric values) becomes null, as in a v1 request.
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


class PayloadEmitter:
    """Queue and post request/response CloudEvents to ``url`` (empty: off).

    Args:
        url: The payload logger's URL (``--logger-url``); ``""`` switches logging off.
        identity: The ``ce-*`` attributes.
        queue_size: Most events waiting; beyond it events are dropped and counted.
        timeout: Seconds per post.
    """

    def __init__(
        self,
        url: str,
        identity: EventIdentity,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError("logger_url", f"{url!r} is not an http:// or https:// URL")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 2:
            raise ConfigError("logger_queue_size", f"must be an integer >= 2, got {queue_size!r}")
        self.url = url
        self.identity = identity
        self.queue_size = queue_size
        self.timeout = timeout
        self._queue: asyncio.Queue[tuple[str, str, bytes]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._last_error_log = 0.0
        self.sent = 0
        self.dropped = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def _ensure_started(self) -> asyncio.Queue[tuple[str, str, bytes]]:
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.queue_size)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._sender(), name="kfloop-payload-events"
            )
        return self._queue

    def emit(self, request_id: str | None, request_body: Any, response_body: Any) -> str | None:
        """Enqueue the request and the response event of one inference; never blocks.

        Returns the event id used (``request_id`` or a new UUID), or None when off. Must be
        called from the event loop. Both events are queued, or neither (counted as drops).
        """
        if not self.enabled:
            return None
        event_id = request_id or str(uuid.uuid4())
        try:
            queue = self._ensure_started()
            if queue.maxsize - queue.qsize() < 2:
                self.dropped += 2
                EVENTS_DROPPED.labels(reason="queue_full").inc(2)
                return event_id
            queue.put_nowait((REQUEST_TYPE, event_id, _dumps(request_body)))
            queue.put_nowait((RESPONSE_TYPE, event_id, _dumps(response_body)))
            QUEUE_DEPTH.set(queue.qsize())
        except (TypeError, orjson.JSONEncodeError) as exc:  # a body we cannot encode
            self.dropped += 2
            EVENTS_DROPPED.labels(reason="encode_failed").inc(2)
            log.warning("payload event %s not logged: cannot encode the body: %s", event_id, exc)
        return event_id

    async def _post(self, client: httpx.AsyncClient, kind: str, event_id: str, body: bytes) -> None:
        headers = event_headers(self.identity, event_id, kind)
        try:
            response = await client.post(self.url, content=body, headers=headers)
            ok = 200 <= response.status_code < 300
            reason = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        if ok:
            self.sent += 1
            EVENTS_SENT.labels(type=kind.rsplit(".", 1)[-1]).inc()
            return
        self.failed += 1
        EVENTS_DROPPED.labels(reason="send_failed").inc()
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log.warning("payload logger %s did not take event %s: %s", self.url, event_id, reason)

    async def _sender(self) -> None:
        assert self._queue is not None
        queue = self._queue
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            self._client = client
            while True:
                kind, event_id, body = await queue.get()
                try:
                    await self._post(client, kind, event_id, body)
                finally:
                    queue.task_done()
                    QUEUE_DEPTH.set(queue.qsize())

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the queue is empty (True) or ``timeout`` seconds pass (False)."""
        if self._queue is None:
            return True
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Flush for up to ``timeout`` seconds, then stop the sender task."""
        await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def v2_json_inputs(columns: Mapping[str, Any], rows: int) -> list[dict[str, Any]]:
    """v2 JSON ``inputs`` for logging decoded columns (numeric FP32, strings BYTES)."""
    out = []
    for name, column in columns.items():
        is_text = getattr(column, "dtype", None) is not None and column.dtype == object
        values = column.reshape(-1).tolist()
        out.append(
            {
                "name": name,
                "shape": [rows, 1],
                "datatype": "BYTES" if is_text else "FP32",
                "data": values,
            }
        )
    return out
