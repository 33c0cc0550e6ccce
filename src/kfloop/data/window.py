"""The fresh data window of a retraining run: labeled served requests and/or new source rows.

:func:`collect_window` builds one labeled table from two optional sources, so a pipeline
(kfp 2.13's local runner cannot branch) passes whichever it has and leaves the other empty:

* **served requests** (``logs_uri`` + ``ground_truth_uri``): the payload logger's Parquet
  files, restricted to requests whose ``timestamp`` lies in ``[window_start, window_end]``
  (ISO-8601; an empty bound is open), joined with the ground truth by ``request_id`` with
  :func:`kfloop.data.label.join_feedback` (``label_data``'s feedback mode: retries
  deduplicated, unlabeled requests dropped). ``request_id`` becomes the key column;
* **source rows** (``data_uri``): a labeled table (file, folder or ``s3://`` prefix) holding
  the label column, read as ``ingest_data`` reads sources.

With both, the result keeps the columns both have (the others are dropped and reported) and
the source rows are cast to the logged types (the logger writes numeric features as float64,
categorical ones as string). Keys are cast to string. At least one source is required;
an empty window (no logged request in it, or no ground truth for any) is an error naming the
window, unless the source rows alone make a table.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kfloop.core.arrowio import TableInfo
from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import ObjectStore
from kfloop.data._dataset_io import read_dataset, read_source, write_dataset

REQUEST_ID = "request_id"
TIMESTAMP = "timestamp"


@dataclass(frozen=True)
class WindowReport:
    """What :func:`collect_window` read and kept."""

    window_start: str
    window_end: str
    log_rows: int = 0
    log_rows_in_window: int = 0
    feedback_rows: int = 0
    feedback_duplicates: int = 0
    feedback_unlabeled: int = 0
    data_rows: int = 0
    rows: int = 0
    dropped_columns: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """A Markdown summary for the KFP UI."""
        start = self.window_start or "(open)"
        end = self.window_end or "(open)"
        lines = [
            "# Fresh data window",
            "",
            f"Window: `{start}` .. `{end}`; sources: {', '.join(self.sources)}.",
            "",
            "| count | rows |",
            "|---|---|",
            f"| logged requests read | {self.log_rows} |",
            f"| logged requests in the window | {self.log_rows_in_window} |",
            f"| labeled by ground truth | {self.feedback_rows} |",
            f"| retries deduplicated | {self.feedback_duplicates} |",
            f"| without ground truth (dropped) | {self.feedback_unlabeled} |",
            f"| source rows (data_uri) | {self.data_rows} |",
            f"| **window rows** | **{self.rows}** |",
        ]
        if self.dropped_columns:
            lines += [
                "",
                "Columns not in both sources, dropped: " + ", ".join(self.dropped_columns),
            ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class WindowResult:
    info: TableInfo
    report: WindowReport

    def metadata(self) -> dict[str, Any]:
        """Artifact metadata: the table's and the report's counts."""
        meta = self.info.as_metadata()
        meta.pop("uri", None)
        meta.update(asdict(self.report))
        return meta


def parse_time(value: str, field_name: str) -> datetime | None:
    """An ISO-8601 time (``Z`` allowed; naive means UTC) or None for ``""``.

    Raises:
        ConfigError: naming ``field_name``.
    """
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            field_name, f"{value!r} is not an ISO-8601 time (e.g. 2026-11-28T04:00:00Z)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _time_bound(moment: datetime, typ: pa.DataType) -> pa.Scalar:
    tz = getattr(typ, "tz", None)
    value = moment if tz else moment.replace(tzinfo=None)
    return pa.scalar(value, type=typ)


def filter_window(
    logs: pa.Table, start: datetime | None, end: datetime | None, source: str
) -> pa.Table:
    """Rows of ``logs`` whose ``timestamp`` lies in ``[start, end]`` (None: open bound).

    Raises:
        DataError: a bound is given but the logs have no timestamp column (or not a time).
    """
    if start is None and end is None:
        return logs
    if TIMESTAMP not in logs.column_names:
        raise DataError(f"{source}: the request logs have no {TIMESTAMP!r} column to window on")
    column = logs[TIMESTAMP]
    if not pa.types.is_timestamp(column.type):
        raise DataError(
            f"{source}: column {TIMESTAMP!r} has type {column.type}; expected a timestamp"
        )
    mask = pc.invert(pc.is_null(column))
    if start is not None:
        mask = pc.and_(mask, pc.greater_equal(column, _time_bound(start, column.type)))
    if end is not None:
        mask = pc.and_(mask, pc.less_equal(column, _time_bound(end, column.type)))
    return logs.filter(pc.fill_null(mask, False))


def _conform(data: pa.Table, like: pa.Schema, source: str) -> pa.Table:
    """``data`` restricted and cast to the columns and types of ``like``."""
    arrays = []
    for target in like:
        column = data[target.name]
        if column.type != target.type:
            try:
                column = pc.cast(column, target.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataError(
                    f"{source}: column {target.name!r} ({column.type}) cannot be read as the "
                    f"logged type {target.type}: {exc}"
                ) from None
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=like)


def _with_string_key(table: pa.Table, key: str) -> pa.Table:
    if key not in table.column_names:
        return table
    index = table.column_names.index(key)
    return table.set_column(index, pa.field(key, pa.string()), pc.cast(table[key], pa.string()))


def collect_window(
    output_path: str,
    *,
    logs_uri: str = "",
    ground_truth_uri: str = "",
    window_start: str = "",
    window_end: str = "",
    data_uri: str = "",
    label: str = "label",
    key_column: str = "id",
    store: ObjectStore | None = None,
) -> WindowResult:
    """Build the labeled fresh window (see the module docstring) and write it as Parquet.

    Args:
        output_path: ``.parquet`` path or ``s3://`` URI, or a KFP artifact path.
        logs_uri: folder or ``s3://`` prefix of the payload logger's Parquet files; "" for none.
        ground_truth_uri: Parquet/CSV (file, folder or ``s3://``) of ``request_id`` + label;
            required with ``logs_uri``.
        window_start: ISO-8601 start of the window (inclusive); "" for open.
        window_end: ISO-8601 end of the window (inclusive); "" for open.
        data_uri: labeled source rows (file, folder or ``s3://``); "" for none.
        label: the label column (in the ground truth and in ``data_uri``).
        key_column: the unique key column of the output (``request_id`` of logged rows is
            renamed to it); cast to string.
        store: object store for ``s3://`` URIs; from the environment when omitted.

    Raises:
        ConfigError: no source, logs without ground truth, bad window bounds (named).
        DataError: an empty window, a missing label or timestamp column, types that do not
            match (file and column named).
    """
    from kfloop.data.label import join_feedback

    start = parse_time(window_start, "window_start")
    end = parse_time(window_end, "window_end")
    if start is not None and end is not None and start > end:
        raise ConfigError("window_end", f"{window_end!r} is before window_start {window_start!r}")
    if not logs_uri and not data_uri:
        raise ConfigError(
            "logs_uri", "give logs_uri (with ground_truth_uri) and/or data_uri: no data to train on"
        )
    if logs_uri and not ground_truth_uri:
        raise ConfigError(
            "ground_truth_uri", "logged requests need ground truth (request_id + label)"
        )
    if ground_truth_uri and not logs_uri:
        raise ConfigError("logs_uri", "ground truth is joined to logged requests; give logs_uri")
    if not key_column:
        raise ConfigError("key_column", "must not be empty")
    store = store or (ObjectStore.from_env() if "s3://" in logs_uri + data_uri else None)
    counts: dict[str, Any] = {}
    sources: list[str] = []
    feedback: pa.Table | None = None
    if logs_uri:
        logs = read_source(logs_uri, what="logs", store=store).concat()
        in_window = filter_window(logs, start, end, logs_uri)
        counts.update(log_rows=logs.num_rows, log_rows_in_window=in_window.num_rows)
        del logs
        if in_window.num_rows:
            with tempfile.TemporaryDirectory(prefix="kfloop-window-") as tmp:
                pq.write_table(in_window, Path(tmp) / "logs.parquet")
                feedback, report = join_feedback(
                    tmp,
                    ground_truth_uri,
                    {"label_column": label, "unlabeled": "drop", "allow_single_class": True},
                    store=store,
                )
            assert report.feedback is not None
            counts.update(
                feedback_rows=feedback.num_rows,
                feedback_duplicates=report.feedback.duplicate_requests,
                feedback_unlabeled=report.unlabeled,
            )
            if key_column != REQUEST_ID:
                if key_column in feedback.column_names:
                    raise DataError(
                        f"{logs_uri}: the request logs have a column {key_column!r}, the key "
                        "column request_id is renamed to; choose another key_column"
                    )
                feedback = feedback.rename_columns(
                    [key_column if n == REQUEST_ID else n for n in feedback.column_names]
                )
            feedback = _with_string_key(feedback, key_column)
            sources.append(f"served requests ({logs_uri})")
            if feedback.num_rows == 0:
                feedback = None
    data: pa.Table | None = None
    if data_uri:
        data = read_dataset(data_uri, what="data", store=store)
        if label not in data.column_names:
            raise DataError(
                f"{data_uri}: no label column {label!r}; columns are: "
                f"{', '.join(data.column_names)}"
            )
        data = _with_string_key(data, key_column)
        counts["data_rows"] = data.num_rows
        sources.append(f"source rows ({data_uri})")
    dropped: list[str] = []
    if feedback is not None and data is not None:
        common = [n for n in feedback.column_names if n in data.column_names]
        for need in (label, key_column):
            if need not in common:
                raise DataError(
                    f"{data_uri}: column {need!r} is in the labeled requests but not in the "
                    "source rows; both need it to be one window"
                )
        dropped = sorted({n for n in feedback.column_names + data.column_names if n not in common})
        like = feedback.select(common).schema
        table = pa.concat_tables(
            [feedback.select(common), _conform(data.select(common), like, data_uri)]
        )
    elif feedback is not None:
        table = feedback
    elif data is not None:
        table = data
    else:
        bounds = f"[{window_start or 'open'}, {window_end or 'open'}]"
        raise DataError(
            f"{logs_uri}: no logged request in the window {bounds} has ground truth in "
            f"{ground_truth_uri} ({counts.get('log_rows_in_window', 0)} requests in the window "
            f"of {counts.get('log_rows', 0)}); nothing to train on"
        )
    if table.num_rows == 0:
        raise DataError(f"{data_uri}: the source rows are empty; nothing to train on")
    report_out = WindowReport(
        window_start=window_start,
        window_end=window_end,
        rows=table.num_rows,
        dropped_columns=dropped,
        sources=sources,
        **counts,
    )
    info = write_dataset(table, os.fspath(output_path), store)
    return WindowResult(info=info, report=report_out)
