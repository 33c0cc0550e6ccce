"""Arrow rows: kfloop's columnar payload logging from its predictor to its logger.

The KServe agent logs each inference as two JSON CloudEvents, which the logger must parse
again, value by value, although the predictor had already decoded and checked them. With
``--logger-format arrow`` kfloop's predictor posts what it decoded instead: the inputs the
model saw and its predictions, for up to ``--logger-batch-events / 2`` inferences per post,
as one Arrow IPC stream (one record batch). The logger takes the columns as they are, with no
per-value work in Python; on 2 shared cores this is what keeps logging from costing the
predictor its throughput (figures in ``tests/benchmarks/bench_serving.py``'s output). The
agent's JSON CloudEvents stay the default, and the logger takes both.

The post is a binary-mode CloudEvent:

=====================================  =========================================================
``content-type``                       :data:`ROWS_CONTENT_TYPE` (Arrow IPC streaming format)
``ce-type``                            :data:`ROWS_TYPE`
``ce-id``                              a new UUID per post: the logger writes a re-posted id
                                       once (the sender re-posts after 429/503)
``ce-time``, ``ce-source``,            as for the agent's events (``ce-endpoint``: the rows'
``ce-inferenceservicename``, ...       ``endpoint``)
=====================================  =========================================================

and the body one record batch with a column per model input, named after the input (numbers:
any integer, floating point or boolean type, NaN = missing; strings: ``string``, ``""`` =
missing), and ``prediction``; the schema's metadata key :data:`META_KEY` holds JSON
``{"ids": [...], "rows": [...], "times_us": [...]}``: each inference's request id, its row
count (the record batch is their rows one inference after the other) and its time in
microseconds since the epoch, UTC. Rows are logged as the JSON events of the same inference
are (``request_id`` is the id for one row and ``"<id>:<i>"`` within a batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

ROWS_CONTENT_TYPE = "application/vnd.apache.arrow.stream"
ROWS_TYPE = "dev.kfloop.serving.inference.rows"
META_KEY = b"kfloop.inferences"
PREDICTION = "prediction"


@dataclass(frozen=True)
class RowsItem:
    """One inference as the predictor decoded it: ``columns`` maps each model input (in the
    model's order) to its ``rows`` values (a numpy array of any shape, read flat, or an Arrow
    string array), ``predictions`` the model's output, ``at`` the time (epoch seconds)."""

    event_id: str
    columns: Mapping[str, np.ndarray | pa.Array]
    predictions: np.ndarray
    at: float

    @property
    def rows(self) -> int:
        return int(self.predictions.size)


def _column(parts: Sequence[np.ndarray | pa.Array]) -> pa.Array:
    if any(isinstance(p, pa.Array) for p in parts):  # strings the predictor split with Arrow
        arrays = [p if isinstance(p, pa.Array) else _column([p]) for p in parts]
        return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)
    if len(parts) == 1:
        values = parts[0].reshape(-1)
    else:
        try:  # one call for arrays of the same shape ((rows, 1) from the predictor)
            values = np.concatenate(parts).reshape(-1)
        except ValueError:
            values = np.concatenate([p.reshape(-1) for p in parts])
    if values.dtype == object:
        return pa.array(values, pa.string())
    return pa.array(values)


def column_of(items: Sequence[RowsItem], name: str) -> pa.Array:
    """Input ``name`` of ``items`` as one Arrow array (``prediction``: the predictions)."""
    if name == PREDICTION:
        return _column([it.predictions for it in items])
    return _column([it.columns[name] for it in items])


def encode_rows(items: Sequence[RowsItem]) -> bytes:
    """The Arrow IPC stream of ``items`` (which share their input names and order)."""
    if not items:
        raise ValueError("no inference to encode")
    names = [*items[0].columns, PREDICTION]
    return rows_stream(items, names, [column_of(items, name) for name in names])


def rows_stream(
    items: Sequence[RowsItem], names: Sequence[str], arrays: Sequence[pa.Array]
) -> bytes:
    """The Arrow IPC stream of ``items`` given their columns (``names``, ``arrays``: every
    input, then ``prediction``)."""
    meta = {
        "ids": [it.event_id for it in items],
        "rows": [it.rows for it in items],
        "times_us": [int(it.at * 1_000_000) for it in items],
    }
    batch = pa.record_batch(
        list(arrays), names=list(names), metadata={META_KEY: orjson.dumps(meta)}
    )
    # The stream's messages, joined: what an IPC stream writer writes, in half its time.
    return b"".join(
        (batch.schema.serialize().to_pybytes(), batch.serialize().to_pybytes(), _END_OF_STREAM)
    )


_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"
"""The Arrow IPC stream's end: a continuation marker and a zero length."""


class RowsError(ValueError):
    """A rows post that cannot be logged; the message names the column or the field."""


@dataclass
class DecodedRows:
    """One rows post, checked but not converted (a post costs a few Arrow calls; the
    conversion is done once per flush, on many posts, by :func:`feature_column`): the record
    batch, each inference's id, row count and time, and the schema violations."""

    batch: pa.RecordBatch
    ids: list[str]
    counts: np.ndarray
    times_us: np.ndarray
    violations: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.batch.num_rows)


def _check_type(name: str, typ: pa.DataType, kind: str, what: str) -> None:
    if kind == "numeric":
        if not (pa.types.is_floating(typ) or pa.types.is_integer(typ) or pa.types.is_boolean(typ)):
            raise RowsError(f"column {name!r} is {typ}; {what} is numeric (a number type)")
    elif not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise RowsError(f"column {name!r} is {typ}; {what} is categorical (string)")


def _inferences(raw: bytes | None, n: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    if raw is None:
        raise RowsError(f"the schema has no {META_KEY.decode()} metadata (ids, rows, times_us)")
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RowsError(f"{META_KEY.decode()} metadata is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise RowsError(f"{META_KEY.decode()} metadata must be a JSON object")
    ids, rows, times = meta.get("ids"), meta.get("rows"), meta.get("times_us")
    for key, value, kind in (("ids", ids, str), ("rows", rows, int), ("times_us", times, int)):
        if not isinstance(value, list) or not value:
            raise RowsError(f"{META_KEY.decode()}.{key} must be a non-empty list")
        bad = next((i for i, v in enumerate(value) if type(v) is not kind), None)
        if bad is not None:
            raise RowsError(
                f"{META_KEY.decode()}.{key}[{bad}] is {value[bad]!r:.40}, not a {kind.__name__}"
            )
    assert isinstance(ids, list) and isinstance(rows, list) and isinstance(times, list)
    if not len(ids) == len(rows) == len(times):
        raise RowsError(
            f"{META_KEY.decode()}: {len(ids)} ids, {len(rows)} row counts and {len(times)} "
            "times: one of each per inference"
        )
    empty = next((i for i, v in enumerate(ids) if not v.strip()), None)
    if empty is not None:
        raise RowsError(f"{META_KEY.decode()}.ids[{empty}] is empty")
    counts = np.asarray(rows, dtype=np.int64)
    if (counts < 1).any():
        at = int(np.argmax(counts < 1))
        raise RowsError(f"{META_KEY.decode()}.rows[{at}] is {rows[at]}; an inference has rows")
    if int(counts.sum()) != n:
        raise RowsError(
            f"{META_KEY.decode()}.rows add up to {int(counts.sum())} rows but the record batch "
            f"has {n}"
        )
    return ids, counts, np.asarray(times, dtype=np.int64)


def decode_rows(
    body: bytes, names: Sequence[str], kinds: Mapping[str, str], where: str = "rows post"
) -> DecodedRows:
    """Read and check one rows post for features ``names`` (``kinds``: numeric or
    categorical); the values are converted later (:func:`feature_column`).

    A column that is not a feature is reported as ``(name, "unknown_feature")`` (and not
    logged); no ``prediction`` column gives null predictions and
    ``(prediction, "no_prediction")``; a feature without a column is null.

    Raises:
        RowsError: not an Arrow IPC stream of one record batch, metadata missing or not
            matching the rows, repeated column names, or a column of the wrong type (the
            message starts with ``where`` and names the column or the field).
    """
    try:
        try:
            reader = pa.ipc.open_stream(body)
            batch = reader.read_next_batch()
        except StopIteration:
            raise RowsError("the Arrow IPC stream holds no record batch") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise RowsError(f"the body is not an Arrow IPC stream: {exc}") from None
        schema = batch.schema
        ids, counts, times = _inferences((schema.metadata or {}).get(META_KEY), batch.num_rows)
        given = schema.names
        if len(set(given)) != len(given):
            raise RowsError(f"column names repeat: {given}")
        violations: list[tuple[str, str]] = []
        wanted = set(names)
        for f in schema:
            if f.name == PREDICTION:
                _check_type(f.name, f.type, "numeric", "the prediction")
            elif f.name in wanted:
                _check_type(f.name, f.type, kinds[f.name], f"feature {f.name!r}")
            else:
                violations.append((f.name, "unknown_feature"))
        if PREDICTION not in given:
            violations.append((PREDICTION, "no_prediction"))
    except RowsError as exc:
        raise RowsError(f"{where}: {exc}") from None
    return DecodedRows(batch, ids, counts, times, violations)


def numeric_values(batches: Sequence[pa.RecordBatch], name: str) -> np.ndarray:
    """Numeric column ``name`` of ``batches`` (checked by :func:`decode_rows`) as float64,
    NaN for missing (and in a batch without it)."""
    parts: list[np.ndarray] = []
    for batch in batches:
        i = batch.schema.get_field_index(name)
        if i < 0:
            parts.append(np.full(batch.num_rows, np.nan))
            continue
        column = batch.column(i)
        if not pa.types.is_floating(column.type):
            column = column.cast(pa.float64())
        parts.append(column.to_numpy(zero_copy_only=False))
    joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return joined.astype(np.float64, copy=False)


def feature_column(batches: Sequence[pa.RecordBatch], name: str, kind: str) -> pa.Array:
    """Column ``name`` of ``batches`` (checked by :func:`decode_rows`) as logged: float64
    with NaN as null (``numeric``: features and the prediction), or string with ``""`` as
    null; null in a batch without it."""
    if kind == "numeric":
        return pa.array(numeric_values(batches, name), pa.float64(), from_pandas=True)
    parts: list[pa.Array] = []
    for batch in batches:
        i = batch.schema.get_field_index(name)
        if i < 0:
            parts.append(pa.nulls(batch.num_rows, pa.string()))
            continue
        column = batch.column(i)
        parts.append(column if column.type == pa.string() else column.cast(pa.string()))
    return blank_to_null(parts[0] if len(parts) == 1 else pa.concat_arrays(parts))


def blank_to_null(strings: pa.Array) -> pa.Array:
    """A string array with ``""`` as null (a categorical value's missing)."""
    empty = pc.equal(strings, "")
    if not pc.any(empty).as_py():
        return strings
    return pc.if_else(empty, pa.scalar(None, strings.type), strings)
