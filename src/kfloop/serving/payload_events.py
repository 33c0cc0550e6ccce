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

and the body is the v1 or v2 JSON body. A v2 binary-tensor request (``Inference-Header-
Content-Length``) is logged as the bytes that arrived, as the agent logs it (:class:`BinaryBody`):
``content-type: application/octet-stream``, the ``inference-header-content-length`` header, and
``ce-metadata`` ``{"Inference-Header-Content-Length": ["<n>"]}`` (the agent's
``metadataHeaders`` form); in a batch, ``data_base64`` with the same ``metadata``.

Never in the way of an inference: :meth:`PayloadEmitter.emit` only does one ``put_nowait``
(the request and response of one inference, which share id and time) on a bounded
:class:`asyncio.Queue` (bodies are serialised later, by the senders, not on the request path;
a JSON request is logged as the bytes that arrived); a full queue drops both events and
counts them
(``kfloop_payload_events_dropped_total{reason="queue_full"}``). ``senders`` background tasks
(default 16, ``--logger-senders``) each keep one HTTP/1.1 keep-alive connection to the logger
(:class:`_Connection`: asyncio transport, answers parsed by ``httptools``, uvicorn's parser)
and post the events concurrently, the request head built from bytes prepared once (only
``ce-id``, ``ce-type`` and ``ce-time`` vary): about 30 us of CPU per post where aiohttp's
client took about 100 us. Each event is still its own post, but a sender takes the next
inference and whatever else is queued (up to ``pipeline_events``, ``--logger-pipeline-events``,
default 64, and ``BATCH_MAX_BYTES`` per write) and writes all their posts at once, reading
the answers as they come, in order (HTTP/1.1 pipelining, which every HTTP/1.1 server must
take; on a new connection the first post goes alone, the rest once an answer said
keep-alive): one write and a few reads per burst instead of a round trip per event. The posts
a connection left unanswered when it closed or broke go again on a new one (the logger writes
an id once, so one it took before the break is not written twice). 1 posts one event at a
time, as the agent's Go client does.

Posts that are not full linger (``linger``, ``--logger-linger-seconds``, default
:data:`DEFAULT_LINGER_S`): the sender that took an inference posts once a whole post (the
pipeline depth, or the batch size) is queued, or once the post before it is answered and the
linger since it took the inference is over. A quiet predictor's events reach the logger
that much later; a busy one's go in full posts at once.

A post answered 429 or 503 (the logger's buffer is full, or it restarts) is posted again, up to
``BATCH_RETRIES`` times, ``Retry-After``-like waits apart (the queue absorbs the meantime; past
it, events are dropped as ``queue_full``; the logger writes a re-posted id once, as it does for
the agent's retries); another failed post is logged (rate-limited) and counted
(``reason="send_failed"``), a body that cannot be encoded is counted as
``reason="encode_failed"``; nothing is retried in the request path.

Batched delivery (``batch_max_events`` > 1, ``--logger-batch-events``; off by default, when
the predictor posts exactly what the agent posts): each sender takes the next queued event and
whatever else is queued, up to ``batch_max_events`` events (whole inferences: both events of
each) and ``BATCH_MAX_BYTES`` of bodies, and posts them as one CloudEvents
batch (``Content-Type: application/cloudevents-batch+json``: a JSON array of structured-mode
events with the same attributes as the headers above, ``datacontenttype``
``application/json`` and the body as ``data``), which kfloop's logger takes on the same URL
(:mod:`kfloop.serving.logger`). One post carries the events queued while the previous one was
in flight, so batches grow with the load. A binary-tensor request of
:data:`BATCH_BINARY_ALONE_BYTES` or more goes as its own two events (pipelined after the
batch), as it arrived, instead of as base64 in the batch.
A batch answered 429 or 503 is posted again as a single event is; other failures count every
event of the batch as ``send_failed``. The KServe agent does not batch: a cluster's logger
still gets single events from it.

Arrow rows (``payload_format="arrow"``, ``--logger-format arrow``; kfloop's logger only): the
predictor hands :meth:`PayloadEmitter.emit_rows` the inputs the model saw and its predictions
(numpy arrays, no body to build), and one sender at a time gathers the queued inferences, up
to ``batch_max_events / 2`` of them and :data:`ROWS_MAX_PER_POST` rows, waiting the
linger for more when the post is not full, into one Arrow IPC record batch
(:mod:`kfloop.serving.rows`) posted as a binary-mode CloudEvent with a new id; retries and
drop counting as for a batch (each inference counts as its two events). The predictor queues
a v2 inference of :data:`ROWS_BODY_ROWS` rows or more with its bodies instead (:meth:`emit`):
those go as its two events, pipelined, whatever the format.

On shutdown the predictor calls :meth:`PayloadEmitter.close` after the HTTP and gRPC servers
stopped taking requests: every event queued before is posted, for at most the drain time
(``--logger-drain-seconds``); what is left then is counted as ``reason="shutdown"``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias, cast
from urllib.parse import urlsplit

import httptools
import orjson
from prometheus_client import Counter, Gauge

from kfloop.core.errors import ConfigError
from kfloop.serving.rows import (
    PREDICTION,
    ROWS_CONTENT_TYPE,
    ROWS_TYPE,
    RowsItem,
    column_of,
    rows_stream,
)

log = logging.getLogger(__name__)

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
SPEC_VERSION = "1.0"
DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_TIMEOUT_S = 5.0
# Connections to the logger, each with one post or pipelined burst in flight. One event per
# post, not pipelined, needed 16 on 2 shared cores at ~2,000 batch-1 req/s (4 senders dropped
# half the events, queue full). Pipelined, a sender waits while another's post is on its way
# unless a whole post is queued (_next): light load takes one connection's turn at a time (as
# cheap as one sender), and a backlog still spreads over a Service's logger pods.
DEFAULT_SENDERS = 16
MAX_SENDERS = 64
DEFAULT_BATCH_EVENTS = 1
DEFAULT_PIPELINE_EVENTS = 64
DEFAULT_LINGER_S = 0.02
"""How long a sender waits for more inferences before it posts a post that is not full, when no
other post is on its way (Kafka's ``linger.ms``). A predictor's logging cost is mostly per
post, not per event: logging batch-1 traffic into a logger that answered at once (so every
post went with what had queued) cost 1.17x the predictor's CPU per request of logging off,
against 1.10x into kfloop's logger, whose slower answers let posts grow. Batches of 64 events
into kfloop's logger, 8 pairs of 3 s against a logging-off server: 1.10x with no linger,
1.01x with 5 ms, 0.99x with 20 ms, 1.02x with 50 ms (throughput 0.90, 0.94, 0.97, 0.94 of
logging off). An Arrow rows post costs both sides a few dozen Arrow calls whatever its size,
so rows posts of one inference each would cost more than the JSON events."""
MAX_BATCH_EVENTS = 1000
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
BATCH_MAX_BYTES = 2**20
"""A batch stops growing once the next event would take it past this many bytes of data
(a single bigger event goes alone); well under the logger's ``--max-body-bytes`` (10 MiB)."""
BATCH_BINARY_ALONE_BYTES = 16 * 1024
"""With batches on, a binary-tensor request (:class:`BinaryBody`) of this many bytes or more
goes as its own two events, pipelined, not in a batch. In a JSON batch its bytes travel as
base64: a third more bytes, encoded by the predictor and decoded by the logger, where alone
they go as they came. JSON bodies stay in batches: they go in as they came. 1,024-row binary
requests, batches of 64 events, 3 rounds of 5 s beside a logging-off server (logs to a
folder): the predictor's CPU per request went from 1.07-1.13x of logging off's to
1.00-1.13x, the logger's (event loop) from about 1,060 to 900 us, and throughput with
logging on from 0.86-0.92 of logging off's to 0.87-0.96."""
BATCH_RETRIES = 10
BATCH_RETRY_WAIT_S = 0.25
"""Seconds before the first re-post of a batch answered 429/503 (doubled each time, at most
``BATCH_RETRY_MAX_WAIT_S``: about 15 s in all before the batch counts as ``send_failed``)."""
BATCH_RETRY_MAX_WAIT_S = 2.0
# close(): how many times a sender still running is cancelled, and how long each wait is.
STOP_TRIES = 5
STOP_WAIT_S = 1.0
FORMATS = ("cloudevents", "arrow")
ROWS_BODY_ROWS = 256
"""In the ``arrow`` format, a JSON inference of this many rows or more whose request body is
at hand goes as its two events, as in the ``cloudevents`` format, not as Arrow rows. Making
Arrow columns of its strings (and posting them) cost the predictor more than posting the body
it holds: at 1,024-row JSON requests (3 rounds of 5 s beside a logging-off server, logs in
SeaweedFS) its CPU per request was 1.29-1.38x that of logging off as rows, 1.08-1.16x as the
bodies, and throughput with logging on 0.73-0.76 of logging off's as rows, 0.79-0.83 as the
bodies. The predictor's event loop is what limits throughput; the logger decodes a large body
into Arrow columns at once (:mod:`kfloop.serving.events`), on another core.

A binary-tensor inference goes as rows at any size: from
:data:`~kfloop.serving.signature.BYTES_ARROW_ROWS` elements its string tensors are Arrow arrays
already, split for the model (:func:`~kfloop.serving.signature.bytes_column`), and go as they
are. At 1,024-row binary requests (same set-up, two runs of 3 rounds each) the logger's event
loop took 190-250 us of CPU per request, against 990-1,140 us for the bodies; the predictor's
CPU was 1.08-1.15x that of logging off, against 1.02-1.10x; throughput with logging on was
0.85-0.93 of logging off's (mean 0.886), against 0.83-0.93 (mean 0.859). The full benchmark
read a logging cost of 14.1 % for this case, against 18.7 % in its run before the change (on
a slower spell of the machine: the bare ASGI floor served 12 % less)."""
ROWS_MAX_PER_POST = 4_096
"""An Arrow rows post stops growing once it holds this many rows (a bigger inference goes
alone): about 250 KiB of the demo model, and a few milliseconds of encoding spread over the
event loop (at 16,384 rows, 1,024-row binary traffic had a p99 of 2.3x its p50)."""

ROWS_YIELD_S = 0.0002
"""Encoding a rows post lets requests in (``await asyncio.sleep(0)``) after each column once
this long has passed since it last did."""

EVENTS_SENT = Counter(
    "kfloop_payload_events_sent_total",
    "CloudEvents (request and response) posted to the payload logger with a 2xx answer.",
    ["type"],
)
EVENTS_DROPPED = Counter(
    "kfloop_payload_events_dropped_total",
    "CloudEvents not delivered to the payload logger: queue_full (dropped at enqueue, "
    "the inference went on), send_failed (post failed or non-2xx), encode_failed, or "
    "shutdown (still queued when the drain time after SIGTERM ran out).",
    ["reason"],
)
QUEUE_DEPTH = Gauge("kfloop_payload_events_queued", "CloudEvents waiting to be posted.")
# Read when scraped, not set on every emit (a gauge update per inference showed in profiles).
_EMITTERS: weakref.WeakSet[PayloadEmitter] = weakref.WeakSet()
QUEUE_DEPTH.set_function(lambda: float(sum(e.queued_events for e in list(_EMITTERS))))


@dataclass(frozen=True)
class BinaryBody:
    """A v2 binary-tensor-extension body to log as it arrived: the JSON header of
    ``header_length`` bytes, then the tensors' bytes."""

    raw: bytes
    header_length: int

    def metadata(self) -> bytes:
        """The ``ce-metadata`` value (JSON) that carries the header length, as the agent's."""
        return orjson.dumps({"Inference-Header-Content-Length": [str(self.header_length)]})


@dataclass(frozen=True)
class EventIdentity:
    """The ``ce-*`` attributes that say where an event comes from."""

    inference_service: str
    namespace: str = "default"
    component: str = "predictor"
    endpoint: str = "default"
    source: str = "http://localhost:8080/"


def _static_headers(identity: EventIdentity) -> dict[str, str]:
    """The headers that are the same for every event of ``identity``."""
    return {
        "ce-specversion": SPEC_VERSION,
        "ce-source": identity.source,
        "ce-inferenceservicename": identity.inference_service,
        "ce-namespace": identity.namespace,
        "ce-component": identity.component,
        "ce-endpoint": identity.endpoint,
        "ce-metadata": "{}",
        "content-type": "application/json",
    }


def _stamp(now: datetime) -> str:
    return now.isoformat(timespec="microseconds").replace("+00:00", "Z")


def event_headers(
    identity: EventIdentity, event_id: str, event_type: str, now: datetime | None = None
) -> dict[str, str]:
    """Binary-mode CloudEvent headers, as the KServe agent sets them."""
    headers = _static_headers(identity)
    headers["ce-id"] = event_id
    headers["ce-type"] = event_type
    headers["ce-time"] = _stamp(now or datetime.now(UTC))
    return headers


def _dumps(body: Any) -> bytes:
    # NaN (missing numeric values) becomes null, as in a v1 request.
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Message: TypeAlias = bytes | tuple[bytes, ...]
"""One whole HTTP request, in one piece or in pieces (its head, then its body as it was
given): written with ``writelines``, a body is not copied into a joined message (at 1,024
rows, a request's body is 146 KB)."""


_PIECEWISE_BYTES = 4096  # a smaller body is joined to its head: one piece costs less


def _with_body(head: bytes, body: bytes) -> Message:
    """A request of ``head`` and ``body``: in two pieces when the body is large."""
    return (head, body) if len(body) >= _PIECEWISE_BYTES else head + body


def _pieces(messages: Sequence[Message]) -> list[bytes]:
    return [p for m in messages for p in (m if isinstance(m, tuple) else (m,))]


def message_size(message: Message) -> int:
    """Bytes of one message."""
    return sum(map(len, message)) if isinstance(message, tuple) else len(message)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to the logger: :meth:`exchange` writes one or more
    requests at once (pipelined) and waits for their answers, which come in order."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.statuses: list[int] = []  # the answers so far of the current exchange
        self.expected = 0
        self.why = ""  # why the current exchange ended short
        self.closed = False
        self.keeps_alive = False  # an answer said so: requests may be pipelined

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; both have write/close.
        self.transport = cast(asyncio.Transport, transport)

    async def exchange(self, messages: Sequence[Message], timeout: float) -> list[int]:
        """Write ``messages`` (whole HTTP requests) in one go and return the statuses of the
        answers that came, in order: all of them, or fewer if the connection closed, failed
        or ``timeout`` seconds passed first (:attr:`why` says which; the connection is then
        closed)."""
        assert self.transport is not None
        self.statuses, self.expected, self.why = [], len(messages), ""
        if self.closed or self.transport.is_closing():  # closing, not yet told it is lost
            self.why = "the logger closed the connection"
            self.close()
            return self.statuses
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, self._end, "timed out")
        try:
            self.transport.writelines(_pieces(messages))
            await waiter
        except BaseException:
            self.close()
            raise
        finally:
            timer.cancel()
        if len(self.statuses) < len(messages):
            self.close()
        return self.statuses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.close()
            self._end(f"unreadable answer: {exc}")

    def on_message_complete(self) -> None:  # httptools callback
        self.statuses.append(int(self.parser.get_status_code()))
        self.keeps_alive = self.parser.should_keep_alive()
        if not self.keeps_alive:
            self.close()
        if len(self.statuses) >= self.expected:
            self._end("")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._end("the logger closed the connection")

    def _end(self, why: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.why = why
            self.waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Poster:
    """Posts to one URL over one reused :class:`_Connection` (re-opened when closed)."""

    def __init__(self, url: str, timeout: float, depth: int = 1) -> None:
        parts = urlsplit(url)
        self.depth = depth  # most requests in flight at once (HTTP/1.1 pipelining)
        self.host = parts.hostname or "localhost"
        self.https = parts.scheme == "https"
        self.port = parts.port or (443 if self.https else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self.head = f"POST {path} HTTP/1.1\r\nhost: {parts.netloc}\r\n".encode("ascii")
        self.timeout = timeout
        self._ssl = ssl.create_default_context() if self.https else None
        self._conn: _Connection | None = None

    async def post(self, head: bytes, body: bytes) -> int:
        """HTTP status of one post (``head``: the headers after the host, blank line
        included). Raises ConnectionError/OSError/TimeoutError when it got no answer."""
        statuses, why = await self.post_many([_with_body(self.head + head, body)])
        if not statuses[0]:
            raise ConnectionError(why)
        return statuses[0]

    async def post_many(self, messages: Sequence[Message]) -> tuple[list[int], str]:
        """The HTTP status of each of ``messages`` (whole requests, from
        :meth:`request_line` on), 0 for one that got no answer, and why not.

        They go pipelined on the one connection (HTTP/1.1, answers in order), up to
        ``depth`` at once, once an answer on it has said keep-alive; on a new connection the
        first goes alone. The messages a closed or failed connection left unanswered are
        posted again on a new one as long as the last connection answered any, and once more
        when a reused connection answered none (the server had closed it while idle): a
        message the logger may have taken before the connection broke can reach it twice (it
        writes an id once)."""
        statuses = [0] * len(messages)
        start, why, stale_retry = 0, "", True
        while start < len(messages):
            conn = self._conn
            fresh = conn is None or conn.closed
            if fresh:
                try:
                    conn = await self._connect()
                except (OSError, TimeoutError) as exc:
                    return statuses, f"{type(exc).__name__}: {exc or 'timed out'}"
            assert conn is not None
            end = min(len(messages), start + self.depth) if conn.keeps_alive else start + 1
            got = await conn.exchange(messages[start:end], self.timeout)
            statuses[start : start + len(got)] = got
            start += len(got)
            if start < end:  # the connection closed, failed or timed out
                why = conn.why
                if not got and (fresh or not stale_retry):
                    break
                stale_retry = stale_retry and bool(got)
        return statuses, why

    @property
    def request_line(self) -> bytes:
        """What every message to this URL starts with: the request line and ``host``."""
        return self.head

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the connection and drops
        # a cancel that comes as the connection is made, and a sender that missed close()'s
        # cancel kept posting and then waited on the queue forever (the process never exited).
        async with asyncio.timeout(self.timeout):
            _, conn = await loop.create_connection(
                _Connection,
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self.https else None,
            )
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# A queued inference: (ce-id, request body, response body, time.time() of the emit); a body is
# JSON bytes, a JSON-able value or a callable returning one. One item = two events.
_Item = tuple[str, Any, Any, float]


def check_counts(senders: Any, batch_max_events: Any, pipeline_events: Any) -> None:
    """Raise :class:`ConfigError` naming the first of the emitter's count options
    (``--logger-senders``, ``--logger-batch-events``, ``--logger-pipeline-events``) that is
    not an integer in its range."""
    for option, value, most in (
        ("logger_senders", senders, MAX_SENDERS),
        ("logger_batch_events", batch_max_events, MAX_BATCH_EVENTS),
        ("logger_pipeline_events", pipeline_events, MAX_BATCH_EVENTS),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise ConfigError(option, f"must be an integer in [1, {most}], got {value!r}")


def check_linger(linger: Any) -> None:
    """Raise :class:`ConfigError` unless ``linger`` is a number of seconds in [0, 10]."""
    if isinstance(linger, bool) or not isinstance(linger, int | float) or not 0 <= linger <= 10:
        raise ConfigError("logger_linger_seconds", f"must be in [0, 10] seconds, got {linger!r}")


class PayloadEmitter:
    """Queue and post request/response CloudEvents to ``url`` (empty: off).

    Args:
        url: The payload logger's URL (``--logger-url``); ``""`` switches logging off.
        identity: The ``ce-*`` attributes.
        queue_size: Most events waiting; beyond it events are dropped and counted.
        timeout: Seconds per post.
        senders: Concurrent sender tasks (and pooled connections) posting the events.
        batch_max_events: Most events per post; above 1, queued events go as CloudEvents
            batches (kfloop's logger only), 1 posts each event alone as the agent does.
        payload_format: ``cloudevents`` (the agent's JSON events), or ``arrow``: what
            :meth:`emit_rows` queues goes as Arrow rows posts (:mod:`kfloop.serving.rows`,
            kfloop's logger only) of up to ``batch_max_events / 2`` inferences.
        pipeline_events: Most events of single-event posts written at once on a connection.
        linger: Seconds a post that is not full waits for more (:data:`DEFAULT_LINGER_S`).
    """

    def __init__(
        self,
        url: str,
        identity: EventIdentity,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        timeout: float = DEFAULT_TIMEOUT_S,
        senders: int = DEFAULT_SENDERS,
        batch_max_events: int = DEFAULT_BATCH_EVENTS,
        payload_format: str = "cloudevents",
        pipeline_events: int = DEFAULT_PIPELINE_EVENTS,
        linger: float = DEFAULT_LINGER_S,
    ) -> None:
        if payload_format not in FORMATS:
            raise ConfigError(
                "logger_format", f"must be one of {', '.join(FORMATS)}, got {payload_format!r}"
            )
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError("logger_url", f"{url!r} is not an http:// or https:// URL")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 2:
            raise ConfigError("logger_queue_size", f"must be an integer >= 2, got {queue_size!r}")
        check_counts(senders, batch_max_events, pipeline_events)
        check_linger(linger)
        self.url = url
        self.linger = float(linger)
        self.identity = identity
        self.queue_size = queue_size
        self.timeout = timeout
        self.senders = senders
        self.batch_max_events = batch_max_events
        self.payload_format = payload_format
        # Whole inferences (both events) per pipelined write; 1 event: one post at a time.
        self.pipeline_items = max(1, pipeline_events // 2)
        self.pipeline_depth = pipeline_events
        self._collecting = asyncio.Lock()
        # Posts on their way (single events and batches), and the inferences that fill one:
        # see _next.
        self._in_flight = 0
        self._full_post = self.pipeline_items if batch_max_events == 1 else batch_max_events // 2
        self._turn = asyncio.Event()
        self._sender_ended = False
        self._headers = _static_headers(identity)
        structured = {
            "specversion": SPEC_VERSION,
            "source": identity.source,
            "inferenceservicename": identity.inference_service,
            "namespace": identity.namespace,
            "component": identity.component,
            "endpoint": identity.endpoint,
            "metadata": "{}",
            "datacontenttype": "application/json",
        }
        # A structured-mode event is these bytes, then the id, type, time and data members.
        self._structured_head = orjson.dumps(structured)[:-1] + b',"id":'
        self._static_head = "".join(f"{k}: {v}\r\n" for k, v in self._headers.items()).encode()
        # Binary bodies: the same head but the content type and metadata, set per event.
        self._binary_head = "".join(
            f"{k}: {v}\r\n"
            for k, v in self._headers.items()
            if k not in ("content-type", "ce-metadata")
        ).encode()
        binary = {k: v for k, v in structured.items() if k not in ("metadata", "datacontenttype")}
        binary["datacontenttype"] = "application/octet-stream"
        self._structured_binary_head = orjson.dumps(binary)[:-1] + b',"metadata":'
        self._queue: asyncio.Queue[_Item] | None = None
        _EMITTERS.add(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._posters: list[_Poster] = []
        self._last_error_log = 0.0
        self._pending = 0
        self._stamp_second = -1
        self._stamp_prefix = ""
        self._sent = {
            REQUEST_TYPE: EVENTS_SENT.labels(type="request"),
            RESPONSE_TYPE: EVENTS_SENT.labels(type="response"),
        }
        self._send_failed = EVENTS_DROPPED.labels(reason="send_failed")
        self.sent = 0
        self.dropped = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def _ensure_started(self) -> asyncio.Queue[_Item]:
        if self._queue is None:
            # Two events per item: the bound is on events, as configured.
            self._queue = asyncio.Queue(maxsize=self.queue_size // 2)
        if len(self._tasks) < self.senders or self._sender_ended:
            self._sender_ended = False
            loop = asyncio.get_running_loop()
            self._tasks = [t for t in self._tasks if not t.done()]
            while len(self._tasks) < self.senders:
                poster = _Poster(self.url, self.timeout, self.pipeline_depth)
                self._posters.append(poster)
                task = loop.create_task(
                    self._sender(poster), name=f"kfloop-payload-events-{len(self._tasks)}"
                )
                task.add_done_callback(self._sender_done)
                self._tasks.append(task)
        return self._queue

    @property
    def queued_events(self) -> int:
        """Events waiting to be posted (both events of each queued inference)."""
        return 0 if self._queue is None else 2 * self._queue.qsize()

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        self._sender_ended = True  # the next emit starts another (checked once, not per task)

    def emit(
        self,
        request_id: str | None,
        request_body: Any | Callable[[], Any],
        response_body: Any | Callable[[], Any],
    ) -> str | None:
        """Enqueue the request and the response event of one inference; never blocks.

        A body is JSON ``bytes`` sent as they are, a JSON-able value (numpy arrays allowed), or
        a callable returning one, called later by a sender (so building a big body costs the
        request nothing); the caller must not change a body after handing it over. Returns the
        event id used (``request_id`` or a new UUID), or None when off. Must be called from
        the event loop. Both events are queued, or neither (counted as drops).
        """
        if not self.enabled:
            return None
        event_id = request_id or str(uuid.uuid4())
        queue = self._ensure_started()
        if queue.full():
            self.dropped += 2
            EVENTS_DROPPED.labels(reason="queue_full").inc(2)
            return event_id
        queue.put_nowait((event_id, request_body, response_body, time.time()))
        self._pending += 2
        if queue.qsize() + 1 >= self._full_post:
            self._turn.set()  # a whole post is waiting: a sender takes it now (_next)
        return event_id

    @property
    def rows_format(self) -> bool:
        """Whether inferences go as Arrow rows posts (:meth:`emit_rows`)."""
        return self.payload_format == "arrow"

    def emit_rows(
        self, request_id: str | None, columns: Mapping[str, Any], predictions: Any
    ) -> str | None:
        """Enqueue one inference as the model saw it, for an Arrow rows post: ``columns``
        maps each model input (in the model's order) to its values (numpy arrays of one value
        per row: numbers, NaN missing, or str; or an Arrow string array, ``""`` missing),
        ``predictions`` one per row. Never blocks; the caller must not change the arrays
        after. Counted as two events (its request and its response) in the sent and dropped
        metrics. Returns the id, or None when off."""
        if not self.enabled:
            return None
        event_id = request_id or str(uuid.uuid4())
        item = RowsItem(event_id, columns, predictions, time.time())
        return self.emit(event_id, item, None)

    def _stamp(self, at: float) -> bytes:
        """RFC 3339 UTC time of ``at`` to the microsecond (the date part cached per second)."""
        second = int(at)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp_prefix}.{int((at - second) * 1e6):06d}Z".encode("ascii")

    def _encode(self, event_id: str, body: Any) -> bytes | None:
        if isinstance(body, bytes):  # already the JSON body (the request as it arrived)
            return body
        if isinstance(body, BinaryBody):
            return body.raw
        try:
            return _dumps(body() if callable(body) else body)
        except Exception as exc:  # a body we cannot build or encode: counted, never raised
            self.dropped += 1
            EVENTS_DROPPED.labels(reason="encode_failed").inc()
            log.warning("payload event %s not logged: cannot encode the body: %s", event_id, exc)
            return None

    def _message(
        self, line: bytes, kind: str, event_id: str, body: Any, at: float
    ) -> Message | None:
        """One event as a whole HTTP request, from ``line`` (the request line and host) on
        (None: its body cannot be encoded, counted)."""
        content = self._encode(event_id, body)
        if content is None:
            return None
        # A header value cannot hold control characters (a client-chosen id could).
        safe_id = _CONTROL.sub("_", event_id)
        if isinstance(body, BinaryBody):
            length = str(body.header_length).encode("ascii")
            static = b"".join(
                (
                    self._binary_head,
                    b"content-type: application/octet-stream\r\n",
                    b"inference-header-content-length: ",
                    length,
                    b"\r\nce-metadata: ",
                    body.metadata(),
                    b"\r\n",
                )
            )
        else:
            static = self._static_head
        head = (
            line,
            static,
            b"ce-id: ",
            safe_id.encode("utf-8"),
            b"\r\nce-type: ",
            kind.encode("ascii"),
            b"\r\nce-time: ",
            self._stamp(at),
            b"\r\ncontent-length: ",
            str(len(content)).encode("ascii"),
            b"\r\n\r\n",
        )
        return _with_body(b"".join(head), content)

    async def _post_events(self, poster: _Poster, items: Sequence[_Item]) -> None:
        """Post each event of ``items`` alone (as the agent does), pipelined on the sender's
        connection; the events answered 429 or 503 are posted again together, with the back-off
        of :meth:`_deliver`."""
        line = poster.request_line
        messages: list[Message] = []
        events: list[tuple[str, str]] = []  # (type, id) of each message
        for event_id, request_body, response_body, at in items:
            for kind, body in ((REQUEST_TYPE, request_body), (RESPONSE_TYPE, response_body)):
                try:
                    message = self._message(line, kind, event_id, body, at)
                except Exception:  # a bug must cost its event, counted, not the others
                    self._lost_to_bug(1)
                    continue
                if message is not None:
                    messages.append(message)
                    events.append((kind, event_id))
        sizes = [message_size(m) for m in messages]
        sent = {REQUEST_TYPE: 0, RESPONSE_TYPE: 0}
        pending = list(range(len(messages)))
        for attempt in range(BATCH_RETRIES + 1):
            if not pending:
                break
            if attempt:  # the logger asked to wait (429/503): the same backoff as a batch
                wait = BATCH_RETRY_WAIT_S * 2 ** (attempt - 1)
                await asyncio.sleep(min(BATCH_RETRY_MAX_WAIT_S, wait))
            answers: list[tuple[int, int, str]] = []  # (message, status, why not)
            for chunk in _chunks(pending, sizes, BATCH_MAX_BYTES):
                statuses, why = await poster.post_many([messages[i] for i in chunk])
                answers += [(i, status, why) for i, status in zip(chunk, statuses, strict=True)]
            again = []
            for i, status, why in answers:
                kind, event_id = events[i]
                if 200 <= status < 300:
                    sent[kind] += 1
                elif status in (429, 503) and attempt < BATCH_RETRIES:
                    again.append(i)
                else:
                    self._not_taken(1, f"event {event_id}", f"HTTP {status}" if status else why)
            pending = again
        for kind, count in sent.items():
            if count:
                self.sent += count
                self._sent[kind].inc(count)

    async def _deliver(self, poster: _Poster, head: bytes, content: bytes) -> tuple[bool, str]:
        """Post one batch; an answer of 429 or 503 (the logger's buffer is full, or it
        restarts) is posted again, up to ``BATCH_RETRIES`` times, backing off (the logger
        writes a re-posted event once, by id). Returns (delivered, why not)."""
        ok, reason = False, ""
        for attempt in range(BATCH_RETRIES + 1):
            try:
                status = await poster.post(head, content)
                ok, reason = 200 <= status < 300, f"HTTP {status}"
            except (OSError, ConnectionError, TimeoutError) as exc:
                status, ok = 0, False
                reason = f"{type(exc).__name__}: {exc or 'timed out'}"
            if ok or status not in (429, 503) or attempt == BATCH_RETRIES:
                break
            await asyncio.sleep(min(BATCH_RETRY_MAX_WAIT_S, BATCH_RETRY_WAIT_S * 2**attempt))
        return ok, reason

    def _structured_events(self, item: _Item) -> tuple[list[bytes], list[str], int]:
        """The structured-mode events (JSON bytes) of one queued inference, their types, and
        the size of their bodies; an event whose body cannot be encoded is left out."""
        event_id, request_body, response_body, at = item
        # The same id as a binary-mode post would carry (control characters replaced).
        safe_id = orjson.dumps(_CONTROL.sub("_", event_id))
        head = self._structured_head + safe_id
        stamp = b',"time":"' + self._stamp(at)
        time_member = stamp + b'","data":'
        events, kinds, size = [], [], 0
        for kind, body in ((REQUEST_TYPE, request_body), (RESPONSE_TYPE, response_body)):
            encoded = self._encode(event_id, body)  # bytes (JSON as it arrived) kept as is
            if encoded is None:
                continue
            if isinstance(body, BinaryBody):  # raw bytes travel base64, the length in metadata
                encoded = b'"' + base64.b64encode(encoded) + b'"'
                start = b"".join(
                    (
                        self._structured_binary_head,
                        orjson.dumps(body.metadata().decode()),
                        b',"id":',
                        safe_id,
                    )
                )
                members = stamp + b'","data_base64":'
            else:
                start, members = head, time_member
            events.append(
                b"".join((start, b',"type":"', kind.encode(), b'"', members, encoded, b"}"))
            )
            kinds.append(kind)
            size += len(encoded)
        return events, kinds, size

    async def _post_batch(self, poster: _Poster, events: list[bytes], kinds: list[str]) -> None:
        if not events:
            return
        content = b"[" + b",".join(events) + b"]"
        head = b"".join(
            (
                b"content-type: ",
                BATCH_CONTENT_TYPE.encode("ascii"),
                b"\r\ncontent-length: ",
                str(len(content)).encode("ascii"),
                b"\r\n\r\n",
            )
        )
        ok, reason = await self._deliver(poster, head, content)
        if ok:
            self.sent += len(events)
            requests = kinds.count(REQUEST_TYPE)
            if requests:
                self._sent[REQUEST_TYPE].inc(requests)
            if len(kinds) > requests:
                self._sent[RESPONSE_TYPE].inc(len(kinds) - requests)
            return
        self._not_taken(len(events), f"a batch of {len(events)} events", reason)

    async def _sender(self, poster: _Poster) -> None:
        assert self._queue is not None
        queue = self._queue
        batch_max = self.batch_max_events
        # An inference taken from the queue that did not fit in the previous batch (by size).
        carry: tuple[list[bytes], list[str], int] | None = None
        while True:
            if self.rows_format:
                await self._send_rows(poster, queue)
                continue
            if batch_max == 1:
                # The next inference and whatever else is queued, each event its own post,
                # all written at once on this sender's connection (HTTP/1.1 pipelining). One
                # sender waits on the queue at a time: each put woke another idle sender,
                # which found the queue emptied by the first and cost a task step for nothing.
                async with self._collecting:
                    items = [await self._next(queue)]
                    while len(items) < self.pipeline_items and not queue.empty():
                        items.append(queue.get_nowait())
                self._in_flight += 1
                try:
                    await self._post_events(poster, items)
                except Exception:  # a bug must cost its events, counted, not the sender
                    self._lost_to_bug(2 * len(items))
                finally:
                    self._posted()
                    self._pending -= 2 * len(items)
                    for _ in items:
                        queue.task_done()
                continue
            if carry is None:
                async with self._collecting:
                    first = await self._next(queue)
            else:
                first = None
            taken = 1  # queue items this batch accounts for (the carry's, or ``first``)
            self._in_flight += 1
            try:
                alone: list[_Item] = []  # large binary-tensor requests: posted as they came
                if carry is not None:
                    events, kinds, size = carry
                    carry = None
                elif _goes_alone(cast(_Item, first)):
                    alone.append(cast(_Item, first))
                    events, kinds, size = [], [], 0
                else:
                    events, kinds, size = self._structured_events(cast(_Item, first))
                # Whole inferences only: a batch takes both events of each, or neither.
                while len(events) + 2 * len(alone) + 2 <= batch_max and not queue.empty():
                    queued = queue.get_nowait()
                    if _goes_alone(queued):
                        taken += 1
                        alone.append(queued)
                        continue
                    item = self._structured_events(queued)
                    if events and size + item[2] > BATCH_MAX_BYTES:
                        carry = item  # accounted for by the next batch
                        break
                    taken += 1
                    events += item[0]
                    kinds += item[1]
                    size += item[2]
                await self._post_batch(poster, events, kinds)
                if alone:  # their events, pipelined on this sender's connection
                    await self._post_events(poster, alone)
            except Exception:  # a bug must cost events, counted, never the sender
                self._lost_to_bug(2 * taken)
            finally:
                self._posted()
                self._pending -= 2 * taken
                for _ in range(taken):
                    queue.task_done()

    async def _next(self, queue: asyncio.Queue[_Item]) -> _Item:
        """The next queued inference, for the sender holding ``_collecting``. While another
        sender's post is on its way, it waits until that post is answered or a whole post
        (``_full_post`` inferences) is queued: so under a load one connection carries, the
        events of many requests go in one write (with 16 senders each taking whatever had
        arrived, the predictor spent 1.14x the CPU per batch-1 request of logging off, 1.02x
        with one sender), and a backlog still spreads over more connections (logger pods).
        With no post on its way it waits out the rest of the linger (counted from when it took
        the inference) unless a whole post is queued."""
        item = await queue.get()
        linger_until = asyncio.get_running_loop().time() + self.linger
        while queue.qsize() + 1 < self._full_post:
            self._turn.clear()
            if self._in_flight:
                await self._turn.wait()
                continue
            left = linger_until - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    await self._turn.wait()
            except TimeoutError:
                break
        return item

    def _posted(self) -> None:
        self._in_flight -= 1
        self._turn.set()  # a sender waiting in _next may take its post now

    async def _send_rows(self, poster: _Poster, queue: asyncio.Queue[_Item]) -> None:
        """Post the next queued inference and whatever else is queued (up to
        ``batch_max_events / 2`` inferences and :data:`ROWS_MAX_PER_POST` rows) as Arrow rows
        posts, one per run of inferences with the same inputs (a hot swap may change them);
        something queued with bodies (:meth:`emit`) goes as the agent's events."""
        limit = max(1, self.batch_max_events // 2)
        async with self._collecting:  # one sender gathers a post at a time; others post
            items = [await queue.get()]
            if limit > 1 and queue.qsize() + 1 < limit:
                await asyncio.sleep(self.linger)
            rows = _item_rows(items[0])
            while len(items) < limit and rows < ROWS_MAX_PER_POST and not queue.empty():
                items.append(queue.get_nowait())
                rows += _item_rows(items[-1])
        try:
            run: list[RowsItem] = []
            bodies: list[_Item] = []
            for item in items:
                body = item[1]
                if not isinstance(body, RowsItem):
                    bodies.append(item)
                    continue
                if run and list(run[0].columns) != list(body.columns):
                    await self._post_rows(poster, run)
                    run = []
                run.append(body)
            if run:
                await self._post_rows(poster, run)
            if bodies:  # their events, pipelined on this sender's connection
                await self._post_events(poster, bodies)
        except Exception:  # a bug must cost events, counted, never the sender
            self._lost_to_bug(2 * len(items))
        finally:
            self._pending -= 2 * len(items)
            for _ in items:
                queue.task_done()

    async def _post_rows(self, poster: _Poster, items: list[RowsItem]) -> None:
        events = 2 * len(items)
        try:
            # Column by column, letting requests in between once a stretch of the work took
            # long: a post of a few hundred small inferences is a millisecond or two of work
            # that would otherwise stall them (the columns of one large inference, mostly
            # numpy and Arrow arrays already, take microseconds each: a yield per column cost
            # more than they did).
            names = [*items[0].columns, PREDICTION]
            arrays = []
            since = time.perf_counter()
            for name in names:
                arrays.append(column_of(items, name))
                if time.perf_counter() - since > ROWS_YIELD_S:
                    await asyncio.sleep(0)
                    since = time.perf_counter()
            content = rows_stream(items, names, arrays)
        except Exception as exc:  # arrays Arrow cannot take: counted, never raised
            self.dropped += events
            EVENTS_DROPPED.labels(reason="encode_failed").inc(events)
            log.warning("%d payload events not logged: cannot encode the rows: %s", events, exc)
            return
        head = b"".join(
            (
                self._binary_head,
                b"content-type: ",
                ROWS_CONTENT_TYPE.encode("ascii"),
                b"\r\nce-id: ",
                str(uuid.uuid4()).encode("ascii"),
                b"\r\nce-type: ",
                ROWS_TYPE.encode("ascii"),
                b"\r\nce-time: ",
                self._stamp(items[0].at),
                b"\r\ncontent-length: ",
                str(len(content)).encode("ascii"),
                b"\r\n\r\n",
            )
        )
        ok, reason = await self._deliver(poster, head, content)
        if ok:
            self.sent += events
            self._sent[REQUEST_TYPE].inc(len(items))
            self._sent[RESPONSE_TYPE].inc(len(items))
            return
        self._not_taken(events, f"the rows of {len(items)} inferences", reason)

    def _not_taken(self, count: int, what: str, reason: str) -> None:
        """``count`` events the logger did not take (``what``, for the log, rate-limited)."""
        self.failed += count
        self._send_failed.inc(count)
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log.warning("payload logger %s did not take %s: %s", self.url, what, reason)

    def _lost_to_bug(self, count: int) -> None:
        self.failed += count
        EVENTS_DROPPED.labels(reason="send_failed").inc(count)
        now = time.monotonic()
        if now - self._last_error_log > 10:  # at most one traceback per 10 s
            self._last_error_log = now
            log.exception("payload events: %d event(s) not sent: unexpected error", count)

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the queue is empty (True) or ``timeout`` seconds pass (False)."""
        if self._queue is None:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            return False
        return True

    @property
    def pending(self) -> int:
        """Events queued or being posted (not yet delivered nor counted as failed)."""
        return self._pending

    async def close(self, timeout: float = 5.0) -> int:
        """Flush for up to ``timeout`` seconds, then stop the senders and close the client.

        Returns the events left undelivered (still queued or in flight when the time ran out);
        they are counted as ``reason="shutdown"`` drops.
        """
        await self.flush(timeout)
        left = self.pending
        if left:
            self.dropped += left
            EVENTS_DROPPED.labels(reason="shutdown").inc(left)
        tasks, self._tasks = self._tasks, []
        for _ in range(STOP_TRIES):  # a cancel can be lost in a library (see _connect)
            running = [task for task in tasks if not task.done()]
            if not running:
                break
            for task in running:
                task.cancel()
            await asyncio.wait(running, timeout=STOP_WAIT_S)
        if any(not task.done() for task in tasks):
            log.error("payload events: a sender did not stop when cancelled; left running")
        posters, self._posters = self._posters, []
        for poster in posters:
            poster.close()
        return left


def _chunks(indices: list[int], sizes: list[int], most: int) -> list[list[int]]:
    """``indices`` in runs whose ``sizes`` add up to at most ``most`` (a bigger one alone)."""
    runs: list[list[int]] = []
    total = most
    for i in indices:
        if total + sizes[i] > most:
            runs.append([])
            total = 0
        runs[-1].append(i)
        total += sizes[i]
    return runs


def _goes_alone(item: _Item) -> bool:
    """Whether a batching sender posts ``item``'s events alone (binary mode) rather than in a
    batch: a binary-tensor request of :data:`BATCH_BINARY_ALONE_BYTES` or more."""
    body = item[1]
    return isinstance(body, BinaryBody) and len(body.raw) >= BATCH_BINARY_ALONE_BYTES


def _item_rows(item: _Item) -> int:
    body = item[1]
    return body.rows if isinstance(body, RowsItem) else 1


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
