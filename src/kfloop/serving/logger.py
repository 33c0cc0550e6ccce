"""The payload logger (``kfloop logger``): KServe CloudEvents in, Parquet and drift metrics out.

An ASGI app (Starlette, served by uvicorn; ``POST /`` is answered in uvicorn's httptools
protocol itself, :mod:`kfloop.serving.logger_http`). ``POST /`` takes one CloudEvent per
call, as the KServe agent sends them (binary or structured mode, see
:mod:`kfloop.serving.events`), or a batch of them (see below); the request and response of an
inference are paired by id and decoded into rows, which are buffered and written as Parquet
to::

    <output>/<model>/<version>/date=YYYY-MM-DD/hour=HH/<uuid>.parquet

(``<output>`` defaults to ``s3://$KFLOOP_LOGS_BUCKET``; a local folder works too), by size
(``--flush-rows``) or age (``--flush-seconds``). KServe v1 and Open Inference Protocol v2
payloads are read, JSON or v2 binary tensors (see :mod:`kfloop.serving.events`).
Columns (the contract that ``kfloop.data.label`` feedback mode reads): ``request_id``
string, ``model_name`` string, ``model_version`` string, ``timestamp`` timestamp[us, UTC]
(the request's ``ce-time``, else its arrival), ``endpoint`` string (``ce-endpoint``), one
column per feature of the reference profile (numeric float64, categorical string; model
input order), ``prediction`` float64.

Guarantees:

- **No accepted event is lost on a clean shutdown** (SIGTERM/SIGINT): uvicorn stops accepting,
  finishes the requests in flight, then the app writes every buffered row and every
  half-pair (a request whose response never came: prediction null; a response without its
  request: features null, counted as orphans) before the process exits.
- **Bounded memory**: rows buffered + rows being written + half-pairs never exceed
  ``--max-buffered-rows`` (plus one event); past it an event gets ``429`` (counted,
  ``Retry-After: 1``), it is not accepted. A crash loses at most that buffer, which the
  ``kfloop_logger_unflushed_rows`` gauge shows (a test SIGKILLs the logger under traffic:
  the rows lost equal the last value scraped; a restarted logger writes new files beside the
  old ones, never over them). A failed write is retried (the rows stay
  buffered, so the 429 limit holds) until it succeeds; on shutdown after
  ``SHUTDOWN_WRITE_ATTEMPTS`` attempts the rows are counted as dropped (``write_failed``).
- **Duplicates** (agent retries of the same id and type) are answered 200 and written once.
- A CloudEvent without an id, of an unknown type or with an undecodable payload is a 400;
  a body over ``--max-body-bytes`` is a 413; events during shutdown get 503.

**Batched content mode** (``Content-Type: application/cloudevents-batch+json``, a JSON array
of structured-mode events; what kfloop's predictor sends with ``--logger-batch-events`` > 1)
on the same ``POST /``: one check of the buffer limit for the whole batch (over it, the whole
batch is ``429`` and nothing of it is accepted, so that the sender retries it as a whole; a
batch may thus take the buffer past the limit by its own size), then each event is taken as
if posted alone (paired, deduplicated by id, its rows buffered). A malformed batch (not JSON,
not an array, empty, an element that is not an object) is a ``400`` naming the index, and
nothing of it is accepted. An event of a well-formed batch that cannot be logged (no id, an
unknown type, an undecodable payload) is rejected alone, counted with its reason as a single
event would be, and the others are taken: the answer is ``200`` when at least one event was
accepted (retrying would duplicate nothing, but would not cure the bad ones either), with
``{"accepted": n, "rejected": [{"index", "reason", "error"}]}``; ``400`` with the same body
when none was.

**Arrow rows posts** (``Content-Type: application/vnd.apache.arrow.stream``, ``ce-type``
``dev.kfloop.serving.inference.rows``; what kfloop's predictor sends with ``--logger-format
arrow``; :mod:`kfloop.serving.rows`) on the same ``POST /``: the rows of several inferences,
already paired and decoded, taken whole (one check of the buffer limit, then all of the post
or, for a malformed one, none: ``400`` naming the column or the field) and written as the
JSON events of the same inferences would be; a re-posted ``ce-id`` is answered 200 and
written once; each inference counts as one request and one response event received.

Following production (``--follow-production``, with ``--model-name``): the logger reads the
model's production pointer (``s3://<models-bucket>/<model>/production.json``, see
:mod:`kfloop.deploy.registry`) at start and every ``--follow-seconds``, and logs under the
version it names, against that version's ``reference_profile.json`` (+ ``metadata.json``
input order) from ``pointer.uri``. When the version changes, the rows buffered for the old one
are written under the old version's path; the old version's half-pairs (requests waiting for
their response) complete under it too; the drift window starts afresh against the new profile;
the old version's gauge children are removed, so Prometheus sees only the serving version's
drift; ``kfloop_logger_model_info{model,version}`` is 1 for the version being logged. Until a
pointer exists, ``/readyz`` and events answer 503 ``no production version of <model> yet``
(``--model-version`` + ``--reference-profile``, when given, serve until then). A pointer that
cannot be read, or a version whose profile cannot be loaded, is logged with its URI (once per
distinct error) and counted in ``kfloop_logger_production_pointer_errors_total``; the
current version goes on.

Metrics on ``GET /metrics`` (every metric has ``model`` and ``version`` labels, but the two
``--follow-production`` counters, ``model`` only): events
received / rejected / dropped / rows written, event batches, write latency, orphans, the prediction
histogram, and, over a sliding window of the last ``--window-rows`` rows, updated every
``--drift-every-rows`` rows but at most every ``--drift-min-seconds`` (and at least once a
second while rows arrive): ``kfloop_feature_psi``,
``kfloop_feature_js_divergence`` (base 2, in [0, 1]), ``kfloop_feature_missing_rate`` per
feature, ``kfloop_prediction_psi`` / ``kfloop_prediction_js_divergence``, and
``kfloop_schema_violations_total{feature,reason}`` (``unknown_feature``, ``wrong_type``;
``prediction`` for the output).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import logging
import math
import signal
import threading
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
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kfloop.core.arrowio import write_parquet
from kfloop.core.errors import ConfigError, DataError, KfloopError, ObjectStoreError
from kfloop.core.objectstore import ObjectStore, S3Uri, is_s3_uri
from kfloop.core.settings import Settings
from kfloop.deploy.registry import pointer_uri, read_production
from kfloop.serving.cpus import cpu_budget, fit_arrow_pool
from kfloop.serving.drift import DriftMonitor
from kfloop.serving.events import (
    ARROW_ROWS,
    BATCH_CONTENT_TYPE,
    EventError,
    EventPairer,
    FeatureSchema,
    InferenceEvent,
    RowBlock,
    Violation,
    binary_attributes,
    media_type,
    parse_cloudevent,
    parse_cloudevent_batch,
)
from kfloop.serving.heap import freeze_startup_heap
from kfloop.serving.rows import (
    ROWS_CONTENT_TYPE,
    ROWS_TYPE,
    DecodedRows,
    RowsError,
    decode_rows,
    feature_column,
    numeric_values,
)

log = logging.getLogger(__name__)

PROFILE_FILE = "reference_profile.json"
METADATA_FILE = "metadata.json"
LOG_COLUMNS = ("request_id", "model_name", "model_version", "timestamp", "endpoint")
PREDICTION = "prediction"
SHUTDOWN_WRITE_ATTEMPTS = 5
_US_PER_HOUR = 3_600_000_000
DICTIONARY_PAGE_BYTES = 8192
"""The cap on each Parquet column's dictionary in the logged files. Under it (about 1,000 numbers,
or as many short strings) a column is written as a dictionary and small indices: categories, and
numbers such as ages, counts, scores and flags. Over it the rest of the column is written as
plain values, as continuous numbers are best written. Before, only the strings had dictionaries:
under pyarrow's 1 MiB cap, a dictionary of continuous numbers grows through the whole file, to
be thrown away. A file the serving benchmark logged (50,176 rows of 1,024-row requests) was
written in 14.0 to 14.9 against 15.5 to 16.7 ms of CPU, into 77 against 295 KB; the same rows
with their continuous columns drawn anew in 16.6 against 17.9 to 18.1 ms, into 1.33 against
1.41 MB."""


_suffixes = pa.array([], pa.string())  # ":0", ":1", ... (grown on demand)


def _row_suffixes(n: int) -> pa.Array:
    global _suffixes
    if len(_suffixes) < n:
        _suffixes = pa.array([f":{i}" for i in range(max(n, 2 * len(_suffixes)))], pa.string())
    return _suffixes.slice(0, n)


@functools.lru_cache(maxsize=16)
def _id_layout(head: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the bytes of ids ``"<id>:0"`` .. ``"<id>:<rows-1>"`` come from, for an id of
    ``head`` bytes: their offsets, and for each of their bytes its place in the id's bytes
    followed by the suffixes' (``":0:1:2..."``). The same for every id of that length (a
    UUID's is 36), and the layout of fewer rows is its beginning: one gather makes a batch's
    ids, whatever its size."""
    suffixes = _row_suffixes(rows)
    ends = np.frombuffer(
        suffixes.buffers()[1], np.int32, count=rows + 1, offset=4 * suffixes.offset
    )
    lengths = np.diff(ends)
    offsets = np.zeros(rows + 1, np.int32)
    np.cumsum(lengths + head, out=offsets[1:])
    index = np.empty(int(offsets[-1]), np.intp)  # numpy gathers with intp 4x as fast
    owner = np.repeat(np.arange(rows, dtype=np.int32), lengths)  # suffix byte -> its row
    in_suffixes = np.arange(int(ends[-1] - ends[0]), dtype=np.int32)
    index[in_suffixes + (owner + 1) * head] = in_suffixes + ends[0] + head
    heads = (offsets[:-1, None] + np.arange(head, dtype=np.int32)).ravel()
    index[heads] = np.tile(np.arange(head, dtype=np.int32), rows)
    return offsets, index


def _batch_ids(rid: str, n: int) -> pa.Array:
    """``"<rid>:0"`` .. ``"<rid>:<n-1>"``: one gather from the id's bytes and the suffixes'
    (a third of the CPU of joining them with ``binary_join_element_wise``)."""
    head = rid.encode()
    rows = max(1024, 1 << (n - 1).bit_length())  # a few layouts serve every batch size
    offsets, index = _id_layout(len(head), rows)
    suffixes = _row_suffixes(rows)
    data = suffixes.buffers()[2]
    source = np.concatenate([np.frombuffer(head, np.uint8), np.frombuffer(data, np.uint8)])
    ids = source[index[: offsets[n]]]
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets[: n + 1]), pa.py_buffer(ids))


def _ids(blocks: Sequence[RowBlock]) -> pa.Array:
    """The request_id column: ``RowBlock.ids`` of every block."""
    return _row_ids([b.request_id for b in blocks], [b.n for b in blocks])


def _row_ids(ids: Sequence[str], counts: Sequence[int]) -> pa.Array:
    """The request_id column of inferences ``ids`` of ``counts`` rows: the id for one row,
    ``"<id>:<i>"`` within a batch; built in Arrow (a 1,024-row block's ids cost a third of what
    formatting them in Python did)."""
    parts: list[pa.Array] = []
    single: list[str] = []
    for rid, n in zip(ids, counts, strict=True):
        if n == 1:
            single.append(rid)
            continue
        if single:
            parts.append(pa.array(single, pa.string()))
            single = []
        parts.append(_batch_ids(rid, int(n)))
    if single:
        parts.append(pa.array(single, pa.string()))
    return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)


def _endpoints(blocks: Sequence[Block], n: int) -> pa.Array:
    """The endpoint column of ``blocks`` (``n`` rows)."""
    first = blocks[0].endpoint
    if all(b.endpoint == first for b in blocks):
        return pa.repeat(pa.scalar(first, pa.string()), n)
    return pa.array(_chain([[b.endpoint] * b.n for b in blocks]), pa.string())


def _tail(blocks: Sequence[Block], rows: int) -> list[Block]:
    """The newest of ``blocks`` that hold at least ``rows`` rows (all of them if fewer)."""
    out: list[Block] = []
    n = 0
    for b in reversed(blocks):
        if n >= rows:
            break
        out.append(b)
        n += b.n
    out.reverse()
    return out


def _has_features(block: Block) -> bool:
    """False for a response written without its request (an orphan: no features)."""
    return not isinstance(block, RowBlock) or block.columns is not None


def _predictions(blocks: Sequence[Block]) -> np.ndarray:
    """The prediction column of ``blocks`` as float64 (NaN where there is none)."""
    small, large = _by_size([b for b in blocks if isinstance(b, RowBlock)])
    parts = [np.array(_chain([b.prediction_values() for b in small]), dtype=np.float64)]
    if large:
        parts.append(_numpy(_prediction_array(large)))
    posts = [b.rows.batch for b in blocks if isinstance(b, TableBlock)]
    if posts:
        parts.append(numeric_values(posts, PREDICTION))
    return np.concatenate(parts).astype(np.float64, copy=False)


def _by_size(blocks: Sequence[RowBlock]) -> tuple[list[RowBlock], list[RowBlock]]:
    """``blocks`` of fewer than :data:`ARROW_ROWS` rows (their columns are lists), and the
    others (Arrow arrays), each in order. A table or a drift update takes the two apart: the
    rows of a file need no order, and each kind is joined its own way in one pass."""
    small = [b for b in blocks if b.n < ARROW_ROWS]
    if len(small) == len(blocks):
        return small, []
    return small, [b for b in blocks if b.n >= ARROW_ROWS]


def _feature_values(blocks: Sequence[RowBlock], width: int) -> list[list[Any]]:
    """Each of the ``width`` features' values over small ``blocks`` (lists), one list per
    feature, taken apart by C-level iteration (``zip``, ``chain``) rather than a Python call
    per block and feature."""
    if len(blocks) == 1:
        return [blocks[0].feature(i) for i in range(width)]
    per_block = [b.columns if b.columns is not None else [[None] * b.n] * width for b in blocks]
    return [list(itertools.chain.from_iterable(lists)) for lists in zip(*per_block, strict=True)]


def _feature_arrays(blocks: Sequence[RowBlock], types: Sequence[pa.DataType]) -> list[pa.Array]:
    """Each feature's values over large ``blocks`` (Arrow arrays), joined in C."""
    out: list[pa.Array] = []
    for i, typ in enumerate(types):
        parts = [
            pa.nulls(b.n, typ) if b.columns is None else _arrow(b.columns[i], typ) for b in blocks
        ]
        out.append(parts[0] if len(parts) == 1 else pa.concat_arrays(parts))
    return out


def _prediction_array(blocks: Sequence[RowBlock]) -> pa.Array:
    """The predictions of large ``blocks`` (null where there is none)."""
    parts = [
        pa.nulls(b.n, pa.float64())
        if b.predictions is None
        else _arrow(b.predictions, pa.float64())
        for b in blocks
    ]
    return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)


def _arrow(column: list[Any] | pa.Array, typ: pa.DataType) -> pa.Array:
    return column if isinstance(column, pa.Array) else pa.array(column, typ)


def _numpy(array: pa.Array) -> np.ndarray | pa.Array:
    """A float64 array as numpy (null as NaN); a string array as it is (drift reads both)."""
    if pa.types.is_floating(array.type):
        return array.to_numpy(zero_copy_only=False)
    return array


def _chain(lists: Sequence[list[Any]]) -> list[Any]:
    """One list of the lists' items (the lists themselves when there is only one)."""
    if len(lists) == 1:
        return lists[0]
    return list(itertools.chain.from_iterable(lists))


@dataclass(frozen=True)
class TableBlock:
    """Rows of a rows post (:mod:`kfloop.serving.rows`; a run of its inferences in one
    hour), kept as the record batch that arrived; converted to the Parquet contract's
    columns with the other posts of a flush (:meth:`PayloadLogger.to_table`)."""

    rows: DecodedRows
    endpoint: str | None

    @property
    def n(self) -> int:
        return self.rows.n

    @property
    def timestamp_us(self) -> int:
        """The first inference's time (the block's hour)."""
        return int(self.rows.times_us[0])


Block = RowBlock | TableBlock


@dataclass(frozen=True)
class LoggerConfig:
    """Parameters of one logger (one model; one version, or the production one).

    Args:
        model_name: Model name (Parquet path and ``model_name`` column, metric label).
        model_version: Model version (path, ``model_version`` column, metric label); may be
            empty with ``follow_production`` (the production pointer names it).
        output: Root of the logs: ``s3://bucket[/prefix]`` or a local folder.
        flush_rows: Write when this many rows are buffered. Each file costs a fixed few
            milliseconds (Parquet footer, upload, checksum): at 10,000 rows a file took 1.6 us
            of CPU per row into SeaweedFS, at 50,000 0.8 us, and readers prefer fewer, larger
            files. Slow streams are written by age (``flush_seconds``) anyway.
        flush_seconds: Write rows that have waited this long.
        max_buffered_rows: Answer 429 above this many unwritten rows (buffer, writes in
            flight, half-pairs).
        window_rows: Rows in the drift sliding window.
        drift_every_rows: Recompute drift after this many new rows (and at least once a
            second while rows arrive): the default, the window's size, keeps the per-feature
            PSI/JS out of every 1,024-row request's path (at 1,000 it took about a tenth of the
            logger's CPU on 1,024-row traffic).
        drift_min_seconds: ... but not more often than this. A published value depends only
            on the newest ``window_rows`` rows, so rows that leave the window between two
            updates need not be binned at all: at 200,000 rows/s this bins 10,000 rows a
            second instead of every row (binning was about a third of the logger's CPU on
            1,024-row traffic). Prometheus scrapes every 15-60 s; 0 updates on the row count
            alone.
        hold_seconds: How long a request waits for its response (and the reverse) before
            it is written alone as an orphan.
        max_body_bytes: Largest accepted event body (413 above).
        dedupe_ids: Completed ids remembered to drop agent retries.
        follow_production: Follow the model's production pointer
            (:mod:`kfloop.deploy.registry`): log under its version, against its profile.
        follow_seconds: How often the pointer is read.
    """

    model_name: str
    model_version: str
    output: str
    flush_rows: int = 50_000
    flush_seconds: float = 60.0
    max_buffered_rows: int = 100_000
    window_rows: int = 10_000
    drift_every_rows: int = 10_000
    drift_min_seconds: float = 1.0
    hold_seconds: float = 60.0
    max_body_bytes: int = 10 * 2**20
    dedupe_ids: int = 100_000
    follow_production: bool = False
    follow_seconds: float = 5.0

    def __post_init__(self) -> None:
        for name in ("model_name", "model_version", "output"):
            value = getattr(self, name)
            if name == "model_version" and not value and self.follow_production:
                continue
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
            "follow_seconds": self.follow_seconds,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(name, f"{value!r} must be > 0")
        if not self.drift_min_seconds >= 0:
            raise ConfigError("drift_min_seconds", f"{self.drift_min_seconds!r} must be >= 0")
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


class BulkHistogram(Collector):
    """A labelled Prometheus histogram fed a whole array of observations at a time.

    ``prometheus_client.Histogram`` takes one value per ``observe`` call (about a
    microsecond each, under a lock): a 1,024-row request paid a millisecond for its
    predictions alone. This one bins an array with numpy and adds the counts; the exposition
    is the same (``_bucket{le=...}`` cumulative, ``_count``, ``_sum``). Non-finite values are
    not observed.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = np.array(sorted({float(b) for b in buckets}), dtype=np.float64)
        self._children: dict[tuple[str, ...], tuple[np.ndarray, list[float]]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def touch(self, labels: tuple[str, ...]) -> tuple[np.ndarray, list[float]]:
        """The child of ``labels`` (created empty: exported at 0 from the start)."""
        child = self._children.get(labels)
        if child is None:
            with self._lock:
                child = self._children.setdefault(
                    labels, (np.zeros(self.bounds.size + 1, dtype=np.int64), [0.0])
                )
        return child

    def observe(self, labels: tuple[str, ...], values: np.ndarray) -> None:
        """Observe every finite value of ``values``."""
        x = np.asarray(values, dtype=np.float64)
        x = x[np.isfinite(x)]
        if not x.size:
            return
        counts = np.bincount(
            np.searchsorted(self.bounds, x, side="left"), minlength=self.bounds.size + 1
        )
        total = float(x.sum())
        counter, sums = self.touch(labels)
        with self._lock:
            counter += counts
            sums[0] += total

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        bounds = [floatToGoString(b) for b in self.bounds.tolist()] + ["+Inf"]
        with self._lock:
            children = [(k, c.cumsum().tolist(), s[0]) for k, (c, s) in self._children.items()]
        for labels, cumulative, total in children:
            family.add_metric(list(labels), list(zip(bounds, cumulative, strict=True)), total)
        return [family]


class Tally:
    """One child of a :class:`TallyCounter`: an integer, incremented without a lock."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class TallyCounter(Collector):
    """A labelled Prometheus counter counted in plain integers, for the counts taken on every
    event (from the event loop only, so no lock is needed).

    A ``prometheus_client.Counter`` child takes a lock on every ``inc``: with one count per
    event it was 4-5 % of the logger's CPU under 1-row events. The exposition is the same
    (``_total`` and ``_created``).
    """

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Tally] = {}
        registry.register(self)

    def labels(self, **labels: str) -> Tally:
        """The child of ``labels`` (created at 0: exported from then on)."""
        key = tuple(str(labels[name]) for name in self.labelnames)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = Tally()
        return child

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        family = self._family()
        for labels, child in list(self._children.items()):
            family.add_metric(list(labels), child.value, created=child.created)
        return [family]


class LoggerMetrics:
    """The logger's Prometheus metrics, in their own registry.

    ``labels`` (``model``, ``version``) are the version being logged now; :meth:`bind` moves
    them to a new version and :meth:`forget` removes a version's gauge children.
    """

    def __init__(self, model: str, version: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        mv = ("model", "version")
        self.model = model
        self.received = TallyCounter(
            "kfloop_logger_events_received",
            "CloudEvents accepted, by type (request/response); duplicates included",
            [*mv, "type"],
            r,
        )
        self.rejected = Counter(
            "kfloop_logger_events_rejected",
            "CloudEvents refused (not accepted), by reason: overload (429), no_id, bad_event, "
            "unknown_type, bad_payload (400), too_large (413), shutting_down, "
            "no_production_version (503)",
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
        self.batches = Counter(
            "kfloop_logger_event_batches",
            "Batched-content-mode posts (application/cloudevents-batch+json) with at least one "
            "event accepted, and Arrow rows posts taken; their events are counted in "
            "events_received one by one (a rows post: a request and a response per inference)",
            mv,
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
            "Rows accepted but not yet in the store (buffer, writes in flight, half-pairs; of "
            "every version still draining too): what a crash would lose",
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
        self.prediction: BulkHistogram | None = None  # buckets from the first reference profile
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
        self.model_info = Gauge(
            "kfloop_logger_model_info",
            "1 for the model version being logged and compared against (its reference profile)",
            mv,
            registry=r,
        )
        self.switches = Counter(
            "kfloop_logger_version_switches",
            "Times the logger switched to a new production version (--follow-production)",
            ["model"],
            registry=r,
        )
        self.pointer_errors = Counter(
            "kfloop_logger_production_pointer_errors",
            "Failed reads of the production pointer or of its version's reference profile "
            "(--follow-production; the version being logged goes on)",
            ["model"],
            registry=r,
        )
        self.labels = {"model": model, "version": version}
        if version:
            self.bind(version)

    def bind(self, version: str) -> None:
        """Label what follows with ``version`` (bound children for the hot path)."""
        self.labels = {"model": self.model, "version": version}
        lb = self.labels
        self.received_request = self.received.labels(**lb, type="request")
        self.received_response = self.received.labels(**lb, type="response")
        if self.prediction is not None:
            self.prediction.touch((self.model, version))
        for counter in (self.written, self.files, self.write_errors):
            counter.labels(**lb)  # exported at 0 from the start, not only after a write

    def ensure_prediction(self, buckets: Sequence[float]) -> None:
        """Create the prediction histogram (once: Prometheus buckets cannot change)."""
        if self.prediction is not None:
            return
        finite = sorted({float(b) for b in buckets if math.isfinite(b)})
        self.prediction = BulkHistogram(
            "kfloop_prediction",
            "Logged predictions (buckets: the first reference profile's prediction bin edges)",
            ("model", "version"),
            finite or [b for b in Histogram.DEFAULT_BUCKETS if math.isfinite(b)],
            self.registry,
        )
        self.prediction.touch((self.model, self.labels["version"]))

    def forget(self, version: str, features: Sequence[str]) -> None:
        """Remove ``version``'s gauge children: Prometheus then sees only the new version's
        drift (counters stay: they are totals)."""
        mv = (self.model, version)
        for gauge in (self.psi, self.js, self.missing):
            for feature in features:
                with contextlib.suppress(KeyError):
                    gauge.remove(*mv, feature)
        for gauge in (
            self.prediction_psi,
            self.prediction_js,
            self.window_rows,
            self.model_info,
            self.unflushed,
            self.pending,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(*mv)

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


class _Target:
    """One model version being logged: its features, pairer, buffer and drift window."""

    def __init__(
        self,
        version: str,
        source: str,
        profile: Mapping[str, Any],
        order: Sequence[str] | None,
        config: LoggerConfig,
    ) -> None:
        self.version = version
        self.source = source  # where the reference profile came from
        self.schema = FeatureSchema.from_profile(profile, order)
        clash = [n for n in self.schema.names if n in (*LOG_COLUMNS, PREDICTION)]
        if clash:
            raise DataError(
                f"features {clash} have the names of logging columns {[*LOG_COLUMNS, PREDICTION]}"
            )
        self.drift = DriftMonitor(profile, config.window_rows)
        self.prediction_edges: list[float] = list(
            (profile.get("prediction") or {}).get("edges") or []
        )
        self.pairer = EventPairer(self.schema, config.hold_seconds, config.dedupe_ids)
        self.buffer: list[Block] = []
        self.buffer_rows = 0
        self.buffer_since = time.monotonic()
        self.drift_blocks: list[Block] = []
        self.drift_rows = 0
        self.drift_at = -math.inf  # time.monotonic() of the last drift update
        fields = [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("model_name", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("timestamp", pa.timestamp("us", tz="UTC")),
            pa.field("endpoint", pa.string()),
        ]
        self.feature_types = [
            pa.float64() if self.schema.kinds[name] == "numeric" else pa.string()
            for name in self.schema.names
        ]
        fields += [
            pa.field(name, typ)
            for name, typ in zip(self.schema.names, self.feature_types, strict=True)
        ]
        fields.append(pa.field(PREDICTION, pa.float64()))
        self.arrow_schema = pa.schema(fields)
        # Parquet dictionaries for every column but the ids and times, each capped at
        # DICTIONARY_PAGE_BYTES (see there): a column of few distinct values is written as
        # small indices, one of many (continuous numbers) falls back to plain values.
        self.dictionary_columns = [
            f.name for f in fields if f.name not in ("request_id", "timestamp")
        ]
        # Min/max statistics where a reader can skip by them (time and numbers): those of the
        # strings took a fifth of the writing's CPU (50,000 logged rows, 376 -> 308 us per
        # 1,024 rows).
        self.statistics_columns = (
            ["timestamp"]
            + [n for n in self.schema.names if self.schema.kinds[n] == "numeric"]
            + [PREDICTION]
        )

    @property
    def unflushed_rows(self) -> int:
        return self.buffer_rows + self.pairer.pending_rows


class PayloadLogger:
    """Pairs events into rows, buffers them, writes Parquet, publishes drift.

    Use :meth:`handle` per event from the event loop; :meth:`start` and :meth:`close` (the
    ASGI lifespan does both) run the timer, the single writer task and, with
    ``config.follow_production``, the production pointer poller.

    Following production: when the pointer names a new version, the rows buffered for the old
    one are handed to the writer under the old version's path; requests of the old version
    still waiting for their response stay with it (the old version drains: its half-pairs
    complete or expire under its path); new events go to the new version, whose reference
    profile and input order are loaded from ``pointer.uri``, with a fresh drift window; the old
    version's gauge children are removed. A pointer that cannot be read or a profile that
    cannot be loaded is logged (with its URI) and counted; the current version goes on.

    Args:
        config: The logger's parameters.
        profile: The reference profile of ``config.model_version`` (None with
            ``follow_production``: wait for the pointer).
        order: The model's input order (``metadata.json``).
        store: The object store (needed for ``s3://`` outputs and to follow production).
        models_root: ``s3://<models-bucket>`` where the production pointer lives.
        reference_source: Where ``profile`` came from (logged).
    """

    def __init__(
        self,
        config: LoggerConfig,
        profile: Mapping[str, Any] | None = None,
        order: Sequence[str] | None = None,
        store: ObjectStore | None = None,
        *,
        models_root: str | None = None,
        reference_source: str = "",
    ) -> None:
        self.config = config
        if is_s3_uri(config.output) and store is None:
            raise ConfigError("output", f"{config.output}: an s3:// output needs S3 settings")
        if config.follow_production and (store is None or not models_root):
            raise ConfigError(
                "follow_production", "following the production pointer needs S3 settings"
            )
        if profile is None and not config.follow_production:
            raise ConfigError("reference_profile", "is required unless following production")
        self.store = store
        self.models_root = models_root
        self.metrics = LoggerMetrics(config.model_name)
        self.target: _Target | None = None
        self._draining: list[_Target] = []
        self._queue: asyncio.Queue[tuple[_Target, list[Block], int]] | None = None
        self._inflight_rows = 0
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._follow_error: str | None = None
        if profile is not None:
            source = reference_source or "(given)"
            self._activate(_Target(config.model_version, source, profile, order, config))

    # -- compatibility views of the current version --

    @property
    def schema(self) -> FeatureSchema:
        """Features of the version being logged."""
        return self._current().schema

    @property
    def drift(self) -> DriftMonitor:
        """Drift window of the version being logged."""
        return self._current().drift

    @property
    def pairer(self) -> EventPairer:
        """Pairer of the version being logged."""
        return self._current().pairer

    @property
    def version(self) -> str | None:
        """The version being logged (None while waiting for a production version)."""
        return self.target.version if self.target else None

    def _current(self) -> _Target:
        if self.target is None:
            raise KfloopError(f"no production version of {self.config.model_name} yet")
        return self.target

    # -- accounting --

    def _targets(self) -> list[_Target]:
        return [*self._draining, *([self.target] if self.target else [])]

    @property
    def unflushed_rows(self) -> int:
        """Rows a crash would lose now (every version)."""
        total = self._inflight_rows
        if self.target is not None:
            total += self.target.unflushed_rows
        for t in self._draining:
            total += t.unflushed_rows
        return total

    def _update_gauges(self) -> None:
        if self.target is None:
            return
        lb = self.metrics.labels
        pending = sum(t.pairer.pending_events for t in self._targets())
        self.metrics.unflushed.labels(**lb).set(self.unflushed_rows)
        self.metrics.pending.labels(**lb).set(pending)

    # -- events --

    def handle(
        self, headers: Mapping[str, str], body: bytes, *, lowercase: bool = False
    ) -> tuple[int, str]:
        """Take one HTTP-delivered CloudEvent; returns (HTTP status, message). ``lowercase``:
        the header names are already lower case."""
        m = self.metrics
        try:
            target = self._check_accepting()
            event = parse_cloudevent(headers, body, lowercase=lowercase)
            status = self._take(target, event)
        except (_Reject, EventError) as exc:
            m.reject(exc.reason)
            return exc.status, str(exc)
        return 200, status

    def _check_accepting(self) -> _Target:
        """The current target, or :class:`_Reject` (503 shutting down / no version, 429)."""
        if self._closing:
            raise _Reject(503, "shutting_down", "the logger is shutting down; retry")
        target = self.target
        if target is None:
            raise _Reject(
                503,
                "no_production_version",
                f"no production version of {self.config.model_name} yet; retry",
            )
        if self.unflushed_rows >= self.config.max_buffered_rows:
            raise _Reject(
                429,
                "overload",
                f"{self.unflushed_rows} rows not yet written (limit "
                f"{self.config.max_buffered_rows}); retry later",
            )
        return target

    def _take(self, target: _Target, event: InferenceEvent) -> str:
        """Pair one parsed event and buffer its rows; returns the pairer's status.

        Raises:
            EventError: the payload cannot be decoded (nothing of the event is kept).
        """
        m = self.metrics
        if self._draining:
            target = next((t for t in self._draining if t.pairer.knows(event.id)), target)
        result = target.pairer.add(event, time.monotonic(), time.time())
        (m.received_request if event.kind == "request" else m.received_response).inc()
        if result.violations:
            m.violation(result.violations)
        if result.status in ("duplicate", "late"):
            m.drop(result.status)
        elif result.block is not None:
            self._add_blocks(target, [result.block])
        return result.status

    def handle_batch(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Take one batched-content-mode post (see the module docs); returns (HTTP status,
        JSON answer): 200 ``{"accepted", "rejected"}`` when any event was accepted, 400 when
        none was or the batch is malformed, 429/503 for the whole batch."""
        m = self.metrics
        try:
            target = self._check_accepting()
            parsed = parse_cloudevent_batch(body)
        except _Reject as exc:
            m.reject(exc.reason)
            return exc.status, {"error": str(exc)}
        except EventError as exc:
            m.reject(exc.reason)
            return exc.status, {"error": str(exc)}
        accepted = 0
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(parsed):
            try:
                if isinstance(item, EventError):
                    raise item
                self._take(target, item)
                accepted += 1
            except EventError as exc:
                m.reject(exc.reason)
                rejected.append({"index": index, "reason": exc.reason, "error": str(exc)})
        answer: dict[str, Any] = {"accepted": accepted, "rejected": rejected}
        if not accepted:
            answer["error"] = f"no event of the batch was accepted: {rejected[0]['error']}"
            return 400, answer
        m.batches.labels(**m.labels).inc()
        return 200, answer

    def handle_rows(
        self, headers: Mapping[str, str], body: bytes, *, lowercase: bool = False
    ) -> tuple[int, str]:
        """Take one rows post (Arrow, see :mod:`kfloop.serving.rows`) whole, or nothing of
        it; returns (HTTP status, message). Its ``ce-id`` is remembered: a re-post is a
        duplicate, answered 200 and not written again."""
        m = self.metrics
        try:
            target = self._check_accepting()
            lower = headers if lowercase else {k.lower(): v for k, v in headers.items()}
            post_id = (lower.get("ce-id") or "").strip()
            if not post_id:
                raise EventError(
                    "no_id",
                    "rows post has no ce-id header; kfloop's predictor sets a new UUID per "
                    "post, by which a re-posted one is written once",
                )
            attrs = binary_attributes(lower)
            if attrs["type"] != ROWS_TYPE:
                raise EventError(
                    "unknown_type",
                    f"a {ROWS_CONTENT_TYPE} post must have ce-type {ROWS_TYPE!r}, "
                    f"not {attrs['type']!r}",
                )
            if any(t.pairer.knows(post_id) for t in self._targets()):
                m.drop("duplicate")
                return 200, "duplicate"
            try:
                rows = decode_rows(
                    body, target.schema.names, target.schema.kinds, f"rows post {post_id}"
                )
            except RowsError as exc:
                raise EventError("bad_payload", str(exc)) from None
        except (_Reject, EventError) as exc:
            m.reject(exc.reason)
            return exc.status, str(exc)
        blocks = self._table_blocks(rows, attrs.get("endpoint") or None)
        target.pairer.remember(post_id)
        inferences = len(rows.ids)
        m.received_request.inc(inferences)
        m.received_response.inc(inferences)
        m.batches.labels(**m.labels).inc()
        if rows.violations:
            m.violation(rows.violations)
        self._add_blocks(target, blocks)
        return 200, "taken"

    def _table_blocks(self, rows: DecodedRows, endpoint: str | None) -> list[TableBlock]:
        """A rows post as blocks: one per run of its inferences in the same hour."""
        hours = rows.times_us // _US_PER_HOUR
        if (hours == hours[0]).all():
            return [TableBlock(rows, endpoint)]
        blocks: list[TableBlock] = []
        start = 0  # first inference of the run
        offset = 0  # its first row
        for k in range(1, len(hours) + 1):
            if k < len(hours) and hours[k] == hours[start]:
                continue
            length = int(rows.counts[start:k].sum())
            part = DecodedRows(
                rows.batch.slice(offset, length),
                rows.ids[start:k],
                rows.counts[start:k],
                rows.times_us[start:k],
            )
            blocks.append(TableBlock(part, endpoint))
            start, offset = k, offset + length
        return blocks

    def _add_blocks(self, target: _Target, blocks: Sequence[Block]) -> None:
        if not target.buffer:
            target.buffer_since = time.monotonic()
        rows = sum(b.n for b in blocks)
        target.buffer.extend(blocks)
        target.buffer_rows += rows
        if target is self.target:
            target.drift_blocks.extend(blocks)
            target.drift_rows += rows
            cfg = self.config
            if target.drift_rows >= cfg.drift_every_rows:
                if time.monotonic() - target.drift_at >= cfg.drift_min_seconds:
                    self.update_drift()
                elif target.drift_rows >= 2 * cfg.window_rows + cfg.drift_every_rows:
                    self._trim_drift(target)
        if target.buffer_rows >= self.config.flush_rows:
            self.flush(target)

    def expire_orphans(self, everything: bool = False) -> int:
        """Write out half-pairs past their hold time (all with ``everything``)."""
        count = 0
        now = time.monotonic()
        for target in self._targets():
            orphans = target.pairer.expire(now, everything=everything)
            lb = {"model": self.config.model_name, "version": target.version}
            if orphans.requests:
                self.metrics.orphans.labels(**lb, kind="request").inc(orphans.requests)
            if orphans.responses:
                self.metrics.orphans.labels(**lb, kind="response").inc(orphans.responses)
            if orphans.blocks:
                self._add_blocks(target, orphans.blocks)
            count += orphans.requests + orphans.responses
        return count

    # -- versions --

    def _activate(self, new: _Target) -> None:
        """Make ``new`` the version being logged (see the class docs)."""
        old = self.target
        m = self.metrics
        if old is not None:
            old.drift_blocks, old.drift_rows = [], 0
            if self._queue is not None:
                self.flush(old)
            if old.pairer.pending_events or old.buffer:
                self._draining.append(old)
            new.pairer.inherit(old.pairer)
            m.forget(old.version, old.drift.features)
            m.switches.labels(model=self.config.model_name).inc()
            log.info(
                "%s: switching from version %s to %s (reference %s); %d half-pairs of %s drain",
                self.config.model_name,
                old.version,
                new.version,
                new.source,
                old.pairer.pending_events,
                old.version,
            )
        self.target = new
        m.bind(new.version)
        m.ensure_prediction(new.prediction_edges)
        m.model_info.labels(**m.labels).set(1)
        self.update_drift()
        self._update_gauges()

    def _retire_drained(self) -> None:
        """Drop draining versions whose half-pairs are all written (their ids kept for dedupe)."""
        for t in list(self._draining):
            if t.pairer.pending_events:
                continue
            if t.buffer and self._queue is not None:
                self.flush(t)
            if not t.buffer:
                self._draining.remove(t)
                if self.target is not None:
                    self.target.pairer.inherit(t.pairer)

    def _load_production(self) -> _Target | None:
        """Read the pointer (blocking); a new target when it names another version."""
        assert self.store is not None and self.models_root is not None
        model = self.config.model_name
        pointer = read_production(self.store, self.models_root, model)
        where = pointer_uri(self.models_root, model)
        if pointer is None:
            if self.target is None:
                self._note_follow(f"no production version of {model} yet ({where}); waiting", False)
            return None
        if pointer.model != model:
            raise DataError(f"{where}: names model {pointer.model!r}, not {model!r}")
        if not pointer.version or "/" in pointer.version:
            raise DataError(f"{where}: version {pointer.version!r} is not a version name")
        current = self.target
        if current is not None and (current.version, current.source) == (
            pointer.version,
            pointer.uri,
        ):
            return None
        if current is not None and current.version == pointer.version:
            return None  # same version republished elsewhere: same path, same reference
        profile, order = load_reference(pointer.uri, self.store)
        return _Target(pointer.version, pointer.uri, profile, order, self.config)

    def _note_follow(self, message: str, error: bool = True) -> None:
        if message != self._follow_error:
            (log.error if error else log.info)("%s", message)
        self._follow_error = message

    async def poll_production(self) -> bool:
        """Read the production pointer once; switch when it names a new version.

        Returns True when the logger switched. Failures are logged (once per distinct
        message) and counted; the current version goes on.
        """
        try:
            new = await asyncio.to_thread(self._load_production)
        except (KfloopError, OSError, ValueError) as exc:
            self.metrics.pointer_errors.labels(model=self.config.model_name).inc()
            assert self.models_root is not None
            where = pointer_uri(self.models_root, self.config.model_name)
            keep = f"; still logging {self.target.version}" if self.target else ""
            self._note_follow(f"production pointer {where}: {exc}{keep}")
            return False
        if new is None or self._closing:
            return False
        self._follow_error = None
        self._activate(new)
        return True

    async def _follower(self) -> None:
        while True:
            await self.poll_production()
            await asyncio.sleep(self.config.follow_seconds)

    # -- drift --

    def _trim_drift(self, target: _Target) -> None:
        """Between two drift updates, let go of the rows the next one would not bin (older
        than the newest ``window_rows`` with features and the newest ``window_rows``
        predictions); their predictions go to the histogram now."""
        blocks, window = target.drift_blocks, self.config.window_rows
        start, rows, with_features = len(blocks), 0, 0
        while start > 0 and (rows < window or with_features < window):
            start -= 1
            b = blocks[start]
            rows += b.n
            if _has_features(b):
                with_features += b.n
        if start == 0:
            return
        old, target.drift_blocks, target.drift_rows = blocks[:start], blocks[start:], rows
        m = self.metrics
        if m.prediction is not None:
            m.prediction.observe((m.labels["model"], m.labels["version"]), _predictions(old))

    def update_drift(self) -> None:
        """Add the rows since the last update to the window and publish drift gauges."""
        target = self.target
        if target is None:
            return
        blocks, target.drift_blocks, target.drift_rows = target.drift_blocks, [], 0
        target.drift_at = time.monotonic()
        m, lb = self.metrics, self.metrics.labels
        drift = target.drift
        # A window holds the last ``window_rows`` values: older new rows would only be
        # binned to be pushed out again, so features are read from the newest blocks only.
        with_features = _tail([b for b in blocks if _has_features(b)], self.config.window_rows)
        row_blocks = [b for b in with_features if isinstance(b, RowBlock)]
        posts = [b for b in with_features if isinstance(b, TableBlock)]
        small, large = _by_size(row_blocks)
        names = target.schema.names
        if small:
            values = _feature_values(small, len(names))
            columns: dict[str, Any] = {
                name: values[i] for i, name in enumerate(names) if name in drift.windows
            }
            drift.add_features(columns)
        if large:
            arrays = _feature_arrays(large, target.feature_types)
            drift.add_features(
                {name: _numpy(arrays[i]) for i, name in enumerate(names) if name in drift.windows}
            )
        if posts:
            batches = [b.rows.batch for b in posts]
            kinds = target.schema.kinds
            columns = {
                name: numeric_values(batches, name)
                if kinds[name] == "numeric"
                else feature_column(batches, name, kinds[name])
                for name in target.schema.names
                if name in drift.windows
            }
            drift.add_features(columns)
        # Every prediction goes to the histogram (and the newest to the window).
        preds = _predictions(blocks)
        if preds.size:
            drift.add_predictions(preds)
            if m.prediction is not None:
                m.prediction.observe((lb["model"], lb["version"]), preds)
        for name, value in drift.feature_drift().items():
            m.psi.labels(**lb, feature=name).set(value.psi)
            m.js.labels(**lb, feature=name).set(value.js)
            m.missing.labels(**lb, feature=name).set(value.missing_rate)
        pred = drift.prediction_drift()
        m.prediction_psi.labels(**lb).set(pred.psi)
        m.prediction_js.labels(**lb).set(pred.js)
        m.window_rows.labels(**lb).set(pred.rows)

    # -- writing --

    def to_table(self, blocks: Sequence[Block], target: _Target | None = None) -> pa.Table:
        """The Parquet contract's table of ``blocks`` (of ``target``, default the current)."""
        t = target or self._current()
        row_blocks = [b for b in blocks if isinstance(b, RowBlock)]
        posts = [b for b in blocks if isinstance(b, TableBlock)]
        parts = [self._rows_table(row_blocks, t)] if row_blocks else []
        if posts:
            parts.append(self._posts_table(posts, t))
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def _posts_table(self, posts: Sequence[TableBlock], t: _Target) -> pa.Table:
        """The Parquet contract's table of rows posts, converted together."""
        batches = [b.rows.batch for b in posts]
        ids = list(itertools.chain.from_iterable(b.rows.ids for b in posts))
        counts = np.concatenate([b.rows.counts for b in posts])
        stamps = np.repeat(np.concatenate([b.rows.times_us for b in posts]), counts)
        n = len(stamps)
        arrays: list[pa.Array] = [
            _row_ids(ids, counts.tolist()),
            pa.repeat(pa.scalar(self.config.model_name, pa.string()), n),
            pa.repeat(pa.scalar(t.version, pa.string()), n),
            pa.array(stamps).cast(pa.timestamp("us", tz="UTC")),
            _endpoints(posts, n),
        ]
        kinds = t.schema.kinds
        arrays += [feature_column(batches, name, kinds[name]) for name in t.schema.names]
        arrays.append(feature_column(batches, PREDICTION, "numeric"))
        return pa.Table.from_arrays(arrays, schema=t.arrow_schema)

    def _rows_table(self, blocks: Sequence[RowBlock], t: _Target) -> pa.Table:
        small, large = _by_size(blocks)
        parts: list[pa.Table] = []
        if small:
            names = t.schema.names
            features = [
                pa.array(values, typ)
                for values, typ in zip(
                    _feature_values(small, len(names)), t.feature_types, strict=True
                )
            ]
            preds = _chain([b.prediction_values() for b in small])
            parts.append(self._blocks_table(small, t, features, pa.array(preds, pa.float64())))
        if large:
            features = _feature_arrays(large, t.feature_types)
            parts.append(self._blocks_table(large, t, features, _prediction_array(large)))
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def _blocks_table(
        self, blocks: Sequence[RowBlock], t: _Target, features: list[pa.Array], preds: pa.Array
    ) -> pa.Table:
        """The Parquet contract's table of ``blocks`` given their features and predictions."""
        counts = np.fromiter((b.n for b in blocks), dtype=np.int64, count=len(blocks))
        n = int(counts.sum())
        stamps = np.fromiter((b.timestamp_us for b in blocks), dtype=np.int64, count=len(blocks))
        arrays: list[pa.Array] = [
            _ids(blocks),
            pa.repeat(pa.scalar(self.config.model_name, pa.string()), n),
            pa.repeat(pa.scalar(t.version, pa.string()), n),
            pa.array(np.repeat(stamps, counts)).cast(pa.timestamp("us", tz="UTC")),
            _endpoints(blocks, n),
            *features,
            preds,
        ]
        return pa.Table.from_arrays(arrays, schema=t.arrow_schema)

    def partition_uri(self, hour_us: int, version: str | None = None) -> str:
        """Where a file of the hour starting at ``hour_us`` (epoch microseconds) goes."""
        t = datetime.fromtimestamp(hour_us / 1_000_000, tz=UTC)
        cfg = self.config
        version = version or self._current().version
        return (
            f"{cfg.output.rstrip('/')}/{cfg.model_name}/{version}/"
            f"date={t:%Y-%m-%d}/hour={t:%H}/{uuid.uuid4().hex}.parquet"
        )

    def flush(self, target: _Target | None = None) -> None:
        """Hand a version's buffer (default: the current one's) to the writer, one batch per
        date/hour partition."""
        target = target or self.target
        if target is None:
            return
        blocks, target.buffer, target.buffer_rows = target.buffer, [], 0
        if not blocks:
            return
        if self._queue is None:
            raise RuntimeError("PayloadLogger.start() was not called")
        hours: dict[int, list[Block]] = {}
        for b in blocks:
            hours.setdefault(b.timestamp_us // _US_PER_HOUR, []).append(b)
        for batch in hours.values():
            rows = sum(b.n for b in batch)
            self._inflight_rows += rows
            self._queue.put_nowait((target, batch, rows))
        self._update_gauges()

    def write_batch(self, blocks: Sequence[Block], target: _Target | None = None) -> float:
        """Write one partition's blocks as one Parquet file (blocking); returns the seconds
        the write took. The caller counts the file in the metrics (:meth:`_wrote`), on the
        event loop, with the rows it no longer holds: a scrape never counts a file's rows as
        both written and unflushed."""
        t = target or self._current()
        table = self.to_table(blocks, t)
        hour = (blocks[0].timestamp_us // _US_PER_HOUR) * _US_PER_HOUR
        uri = self.partition_uri(hour, t.version)
        started = time.perf_counter()
        write_parquet(
            table,
            uri,
            self.store,
            use_dictionary=t.dictionary_columns,
            write_statistics=t.statistics_columns,
            dictionary_page_bytes=DICTIONARY_PAGE_BYTES,
        )
        return time.perf_counter() - started

    def _wrote(self, target: _Target, rows: int, seconds: float) -> None:
        """Count one written file of ``rows`` rows (event loop)."""
        m = self.metrics
        lb = {"model": self.config.model_name, "version": target.version}
        m.write_seconds.labels(**lb).observe(seconds)
        m.files.labels(**lb).inc()
        m.written.labels(**lb).inc(rows)

    async def _writer(self) -> None:
        assert self._queue is not None
        while True:
            target, batch, rows = await self._queue.get()
            attempt = 0
            while True:
                attempt += 1
                try:
                    seconds = await asyncio.to_thread(self.write_batch, batch, target)
                    self._wrote(target, rows, seconds)
                    break
                except (KfloopError, OSError, pa.ArrowException) as exc:
                    self.metrics.write_errors.labels(
                        model=self.config.model_name, version=target.version
                    ).inc()
                    if self._closing and attempt >= SHUTDOWN_WRITE_ATTEMPTS:
                        log.error(
                            "giving up writing %d rows after %d attempts at shutdown: %s",
                            rows,
                            attempt,
                            exc,
                        )
                        self.metrics.drop("write_failed", rows)
                        break
                    delay = min(30.0, 0.5 * 2 ** min(attempt, 6))
                    log.warning(
                        "writing %d rows failed (%s); retry %d in %.1fs",
                        rows,
                        exc,
                        attempt,
                        delay,
                    )
                    await asyncio.sleep(delay if not self._closing else 0.5)
            self._inflight_rows -= rows
            self._update_gauges()
            self._queue.task_done()

    async def _ticker(self) -> None:
        period = max(0.05, min(1.0, self.config.flush_seconds / 4, self.config.hold_seconds / 4))
        while True:
            await asyncio.sleep(period)
            self.expire_orphans()
            now = time.monotonic()
            for target in self._targets():
                if target.buffer and now - target.buffer_since >= self.config.flush_seconds:
                    self.flush(target)
            if self.target is not None and self.target.drift_blocks:
                self.update_drift()
            if self._draining:
                self._retire_drained()
            self._update_gauges()

    async def start(self) -> None:
        """Start the writer, the timer and the follower (call from the running event loop)."""
        # pyarrow imports pandas on its first conversion of Python objects: about a second of
        # CPU holding the GIL. Pay it here, before the logger reports ready, rather than on
        # the first flush, where it stalled the event loop under traffic.
        pa.array([0.0], pa.float64())
        self._queue = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._writer(), name="kfloop-logger-writer"),
            asyncio.create_task(self._ticker(), name="kfloop-logger-ticker"),
        ]
        if self.config.follow_production:
            self._tasks.append(asyncio.create_task(self._follower(), name="kfloop-logger-follow"))
        self.update_drift()
        self._update_gauges()

    async def close(self) -> None:
        """Refuse new events, write every half-pair and buffered row, stop the tasks."""
        self._closing = True
        for task in self._tasks[1:]:  # the ticker and the follower; the writer goes on
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        orphans = self.expire_orphans(everything=True)
        for target in self._targets():
            self.flush(target)
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


_RETRY_AFTER = (b"retry-after", b"1")
_JSON = (b"content-type", b"application/json")


class EventsFront:
    """Raw ASGI for ``POST /`` (every event the logger takes), in front of the Starlette app
    that serves everything else (``/metrics``, ``/healthz``, ``/readyz``, lifespan).

    Starlette's request/response cycle (middleware stack, router, ``Request``, ``Response``)
    cost about as much CPU as parsing and pairing one event; here a post is the body read
    under the size limit and one ``http.response.start``/``body`` pair. Answers: 200 (empty
    for one event, ``{"accepted", "rejected"}`` for a batch), 400 naming the problem, 413 over
    ``max_body_bytes`` (from ``content-length`` before reading, or while reading a chunked
    body), 429/503 with ``Retry-After: 1``.
    """

    def __init__(self, service: PayloadLogger, app: Any) -> None:
        self.service = service
        self.app = app
        self.limit = service.config.max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/":
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _answer(send, 405, {"error": "events are posted: POST /"}, [(b"allow", b"POST")])
            return
        service, limit = self.service, self.limit
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _answer(send, 413, too_large(service, length))
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away before its body arrived: nothing was taken
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > limit:
                await _answer(send, 413, too_large(service))
                return
            chunks.append(chunk)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        status, answer = take_post(service, headers, body)
        if answer is None:
            await send({"type": "http.response.start", "status": 200, "headers": _EMPTY})
            await send({"type": "http.response.body", "body": b""})
            return
        await _answer(send, status, answer)


_EMPTY = [(b"content-length", b"0")]


def take_post(
    service: PayloadLogger, headers: Mapping[str, str], body: bytes
) -> tuple[int, dict[str, Any] | None]:
    """Hand the body of one ``POST /`` to ``service`` (an event, a batch or a rows post, by its
    headers, whose names are lower case as uvicorn and ASGI give them); returns the HTTP status
    and the JSON answer, None for an empty 200."""
    content_type = media_type(headers.get("content-type"))
    if content_type == BATCH_CONTENT_TYPE:
        return service.handle_batch(body)
    if content_type == ROWS_CONTENT_TYPE:
        status, text = service.handle_rows(headers, body, lowercase=True)
    else:
        status, text = service.handle(headers, body, lowercase=True)
    return (200, None) if status == 200 else (status, {"error": text})


def too_large(service: PayloadLogger, length: str | None = None) -> dict[str, Any]:
    """Count a body over ``max_body_bytes`` (its ``content-length``, when it came first) and
    return the 413 answer."""
    service.metrics.reject("too_large")
    limit = service.config.max_body_bytes
    if length is not None:
        return {"error": f"body of {length} bytes is over the limit of {limit}"}
    return {"error": f"body is over the limit of {limit} bytes"}


def answer_body(answer: dict[str, Any]) -> bytes:
    """A JSON answer's bytes."""
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()


async def _answer(
    send: Any, status: int, answer: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = answer_body(answer)
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *(extra or [])]
    if status in (429, 503):
        headers.append(_RETRY_AFTER)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(service: PayloadLogger) -> EventsFront:
    """The ASGI app: ``POST /`` events (one, or a batch; :class:`EventsFront`), and through
    Starlette ``GET /metrics``, ``/healthz``, ``/readyz``."""

    async def metrics(request: Request) -> Response:
        service._update_gauges()
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        if service._closing:
            return JSONResponse({"status": "shutting down"}, 503)
        if service.target is None:
            return JSONResponse(
                {"status": f"no production version of {service.config.model_name} yet"}, 503
            )
        return JSONResponse({"status": "ready", "version": service.target.version})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.close()

    return EventsFront(
        service,
        Starlette(
            routes=[
                Route("/metrics", metrics, methods=["GET"]),
                Route("/healthz", healthz, methods=["GET"]),
                Route("/readyz", readyz, methods=["GET"]),
            ],
            lifespan=lifespan,
        ),
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
        default=None,
        help="the model folder (local or s3://) holding reference_profile.json, or the file "
        "(optional with --follow-production)",
    )
    p.add_argument("--model-name", required=True, help="model name (Parquet path, metrics)")
    p.add_argument(
        "--model-version", default="", help="model version (optional with --follow-production)"
    )
    p.add_argument(
        "--follow-production",
        action="store_true",
        help="log the model's production version (s3://<models-bucket>/<model>/production.json)"
        " and switch reference profile and version when it changes",
    )
    p.add_argument(
        "--follow-seconds",
        type=float,
        default=d.follow_seconds,
        help=f"how often the production pointer is read (default {d.follow_seconds:g})",
    )
    p.add_argument(
        "--models-root",
        default=None,
        help="where the production pointer lives (default s3://$KFLOOP_MODELS_BUCKET)",
    )
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
    p.add_argument("--drift-min-seconds", type=float, default=d.drift_min_seconds)
    p.add_argument("--hold-seconds", type=float, default=d.hold_seconds)
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def logger_main(argv: list[str] | None = None) -> int:
    """``kfloop logger``: run the payload logger until SIGTERM/SIGINT. Returns the exit code."""
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    fit_arrow_pool(cpu_budget())
    try:
        follow = bool(args.follow_production)
        if not follow:
            for flag, value in (
                ("--reference-profile", args.reference_profile),
                ("--model-version", args.model_version),
            ):
                if not value:
                    raise ConfigError(flag, "is required (unless --follow-production)")
        if bool(args.reference_profile) != bool(args.model_version):
            raise ConfigError(
                "--reference-profile" if args.model_version else "--model-version",
                "give --reference-profile and --model-version together",
            )
        needs_s3 = follow or args.output is None or is_s3_uri(args.output)
        needs_s3 = needs_s3 or is_s3_uri(args.reference_profile or "")
        store = ObjectStore(Settings.from_env()) if needs_s3 else None
        output = args.output
        if output is None:
            assert store is not None
            output = f"s3://{store.settings.logs_bucket}"
        models_root = None
        if follow:
            assert store is not None
            models_root = args.models_root or f"s3://{store.settings.models_bucket}"
            pointer_uri(models_root, args.model_name)  # checks both
        config = LoggerConfig(
            model_name=args.model_name,
            model_version=args.model_version,
            output=output,
            flush_rows=args.flush_rows,
            flush_seconds=args.flush_seconds,
            max_buffered_rows=args.max_buffered_rows,
            window_rows=args.window_rows,
            drift_every_rows=args.drift_every_rows,
            drift_min_seconds=args.drift_min_seconds,
            hold_seconds=args.hold_seconds,
            max_body_bytes=args.max_body_bytes,
            follow_production=follow,
            follow_seconds=args.follow_seconds,
        )
        profile: dict[str, Any] | None = None
        order: list[str] | None = None
        if args.reference_profile:
            profile, order = load_reference(args.reference_profile, store)
        service = PayloadLogger(
            config,
            profile,
            order,
            store,
            models_root=models_root,
            reference_source=args.reference_profile or "",
        )
        if store is not None and is_s3_uri(output):
            store.ensure_bucket(S3Uri.parse(output, "output").bucket)
    except (KfloopError, ObjectStoreError) as exc:
        log.error("%s", exc)
        return 2
    if service.target is not None:
        log.info(
            "payload logger for %s/%s: %d features, writing to %s%s",
            config.model_name,
            service.target.version,
            len(service.target.schema.names),
            config.output,
            f"; following {pointer_uri(models_root, config.model_name)}" if models_root else "",
        )
    else:
        assert models_root is not None
        log.info(
            "payload logger for %s: waiting for %s, writing to %s",
            config.model_name,
            pointer_uri(models_root, config.model_name),
            config.output,
        )
    from kfloop.serving.logger_http import events_protocol

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            http=events_protocol(service),
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
    freeze_startup_heap()
    server.run()
    if not server.started:
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(logger_main())
