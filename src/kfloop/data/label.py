"""Labelling: a label column from declarative rules, or from ground truth joined to served requests.

Two modes.

**rules** (:func:`label_table`): a :class:`RulesConfig` derives the label from the features::

    {"label_column": "label",
     "rules": [{"when": [{"column": "income", "op": "<", "value": 20000},
                         {"column": "plan", "op": "in", "value": ["basic"]}],
                "label": 1}],
     "default": 0}

Conditions in a rule are ANDed; the first rule that matches a row sets its label; rows no rule
matches get ``default`` (null ``default``: unlabeled). Ops: ``<``, ``<=``, ``>``, ``>=``, ``==``,
``!=``, ``in``, ``not_in`` (value: a list), ``is_null``, ``not_null`` (no value). A comparison
with a missing value (null, or NaN in a float column) is false for every op but ``is_null``.
The threshold shorthand ``{"label_column": "y", "threshold": {"column": "score", "op": ">=",
"value": 0.5}}`` labels matching rows ``threshold.label`` (1) and the rest ``default`` (0).
With neither ``rules`` nor ``threshold``, the table's existing ``label_column`` is used as is
(checked and reported). An existing column is replaced only with ``overwrite: true``.

**feedback** (:func:`join_feedback`): logged inference requests joined with ground truth.

The request logs are Parquet files written by kfloop's payload logger, several files under a
local folder or an ``s3://`` prefix (every ``*.parquet`` under it, in key order). Their schema
is the contract:

============== ========= ==========================================================
column         type      meaning
============== ========= ==========================================================
request_id     string    the request's id (the KServe/CloudEvents id); join key
model_name     string    the InferenceService / model that answered
model_version  string    its version
timestamp      timestamp when the request was served
<feature>...   any       one column per model input feature, raw values
prediction     any       the model's output for the request
============== ========= ==========================================================

Only ``request_id`` is required; the other logging columns are dropped when present. The
ground truth is a Parquet or CSV table (local or ``s3://``) with ``request_id`` and the true
label column (``label_column``). The output has ``request_id`` (kept as the key), the feature
columns, ``logged_prediction`` (only with ``keep_prediction: true``) and the label, in log
order. Requests logged more than once (agent retries) are written once: the earliest by
``timestamp`` (``duplicates: first``) or the latest (``last``); they are counted. Logged rows
without a request id are dropped and counted. Ground-truth rows repeated with the same label
are collapsed (counted); the same id with two different labels is a ``DataError``.
Ground-truth rows whose id matches no logged request are counted as *orphans*. Requests
without ground truth are unlabeled: ``unlabeled: drop`` (default) or ``keep`` (null label).

Labels keep their type (int64, float64, string or bool); an integral number such as ``1.0``
is an int, because KFP hands dict parameters over as protobuf Structs where ``1`` arrives as
``1.0`` (a label set with any fractional number is float64).

Both modes report labeled / unlabeled counts and the class balance in a :class:`LabelReport`
(Markdown for the KFP UI), and refuse a label with fewer than two classes unless
``allow_single_class`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from kfloop.core.arrowio import TableInfo
from kfloop.core.config import StrictModel, parse_config
from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import ObjectStore
from kfloop.data._columns import (
    columns_hint,
    count_true,
    kind_of,
    md_table,
    missing_mask,
    plain_value,
    to_scalar,
)
from kfloop.data._dataset_io import check_destination, read_dataset, read_source, write_dataset

CONFIG_FIELD = "config"
MODES = ("rules", "feedback")
REQUEST_ID = "request_id"
LOG_COLUMNS = ("model_name", "model_version", "timestamp", "endpoint")
PREDICTION = "prediction"
LOGGED_PREDICTION = "logged_prediction"
MAX_CLASSES_LISTED = 50

Op = Literal["<", "<=", ">", ">=", "==", "!=", "in", "not_in", "is_null", "not_null"]
LabelValue = bool | int | float | str
_COMPARE = {
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
    "==": pc.equal,
    "!=": pc.not_equal,
}
_ORDERED_KINDS = ("int", "float", "decimal", "string", "timestamp", "date")


# -- config -------------------------------------------------------------------------------


class Condition(StrictModel):
    """``<column> <op> <value>``."""

    column: str = Field(min_length=1)
    op: Op
    value: LabelValue | list[LabelValue] | None = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        if self.op in ("is_null", "not_null"):
            if self.value is not None:
                raise ValueError(f"op {self.op!r} takes no value")
        elif self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"op {self.op!r} needs a non-empty list as value")
        elif self.value is None or isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a single value (use 'in' for a list)")
        return self


class Rule(StrictModel):
    """Rows matching every condition in ``when`` get ``label``."""

    when: list[Condition] = Field(min_length=1)
    label: LabelValue


class Threshold(Condition):
    """Shorthand for one single-condition rule: matching rows get ``label``."""

    label: LabelValue = 1

    @model_validator(mode="after")
    def _comparison_only(self) -> Threshold:
        if self.op not in _COMPARE:
            raise ValueError(f"a threshold op is one of {', '.join(_COMPARE)}, not {self.op!r}")
        return self


class RulesConfig(StrictModel):
    """Rules mode: derive (or check) the label column of a table."""

    label_column: str = Field("label", min_length=1)
    rules: list[Rule] | None = Field(None, min_length=1)
    threshold: Threshold | None = None
    default: LabelValue | None = 0
    overwrite: bool = False
    unlabeled: Literal["drop", "keep"] = "drop"
    allow_single_class: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> RulesConfig:
        if self.rules is not None and self.threshold is not None:
            raise ValueError("give rules or threshold, not both")
        return self

    def all_rules(self) -> list[tuple[str, Rule, list[str]]]:
        """``(config path, rule, config path of each condition)``; a threshold is one rule."""
        if self.threshold is not None:
            t = self.threshold
            cond = Condition(column=t.column, op=t.op, value=t.value)
            path = f"{CONFIG_FIELD}.threshold"
            return [(path, Rule(when=[cond], label=t.label), [path])]
        return [
            (
                f"{CONFIG_FIELD}.rules.{i}",
                r,
                [f"{CONFIG_FIELD}.rules.{i}.when.{j}" for j in range(len(r.when))],
            )
            for i, r in enumerate(self.rules or [])
        ]


class FeedbackConfig(StrictModel):
    """Feedback mode: join logged requests with ground truth."""

    label_column: str = Field("label", min_length=1)
    keep_prediction: bool = False
    unlabeled: Literal["drop", "keep"] = "drop"
    duplicates: Literal["first", "last"] = "first"
    allow_single_class: bool = False


# -- report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleCount:
    """Rows a rule labeled (the first matching rule wins); ``rule`` -1 is the default."""

    rule: int
    description: str
    label: Any
    rows: int


@dataclass(frozen=True)
class FeedbackCount:
    """What the feedback join found."""

    log_files: int
    log_rows: int
    rows_without_request_id: int
    duplicate_requests: int
    requests: int
    ground_truth_rows: int
    ground_truth_duplicates: int
    matched: int
    orphans: int


@dataclass(frozen=True)
class LabelReport:
    """Labeled / unlabeled counts, class balance and what each mode did."""

    mode: str
    label_column: str
    rows_in: int
    rows_out: int
    labeled: int
    unlabeled: int
    unlabeled_policy: str
    unlabeled_dropped: int
    class_balance: tuple[tuple[Any, int], ...]
    distinct_labels: int
    rules: tuple[RuleCount, ...] = ()
    feedback: FeedbackCount | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the report."""
        out = asdict(self)
        out["class_balance"] = [[value, count] for value, count in self.class_balance]
        return out

    def balance_metadata(self) -> dict[str, int]:
        """Class balance keyed by the label as text (artifact metadata keys are strings)."""
        return {str(value): count for value, count in self.class_balance}

    def to_markdown(self) -> str:
        """The report as Markdown tables (for a KFP ``Markdown`` artifact)."""
        lines = [
            f"# Labeling report ({self.mode} mode)",
            "",
            f"Label column: `{self.label_column}`",
            "",
            md_table(
                ["rows in", "rows out", "labeled", "unlabeled", "unlabeled rows are", "dropped"],
                [
                    [
                        self.rows_in,
                        self.rows_out,
                        self.labeled,
                        self.unlabeled,
                        self.unlabeled_policy,
                        self.unlabeled_dropped,
                    ]
                ],
            ),
            "",
            "## Class balance",
            "",
        ]
        if self.class_balance:
            total = sum(count for _, count in self.class_balance) or 1
            lines.append(
                md_table(
                    ["label", "rows", "share"],
                    [[v, c, f"{100 * c / total:.1f}%"] for v, c in self.class_balance],
                )
            )
            if self.distinct_labels > len(self.class_balance):
                lines += ["", f"(first {len(self.class_balance)} of {self.distinct_labels})"]
        else:
            lines.append(f"{self.distinct_labels:,} distinct label values (not listed).")
        if self.rules:
            lines += ["", "## Rules (first match wins)", ""]
            lines.append(
                md_table(
                    ["rule", "when", "label", "rows"],
                    [
                        ["default" if r.rule < 0 else r.rule, r.description, r.label, r.rows]
                        for r in self.rules
                    ],
                )
            )
        if self.feedback is not None:
            f = self.feedback
            lines += ["", "## Feedback join", ""]
            lines.append(
                md_table(
                    ["measure", "count"],
                    [
                        ["log files", f.log_files],
                        ["logged rows", f.log_rows],
                        ["logged rows without request_id (dropped)", f.rows_without_request_id],
                        ["duplicate requests (retries, written once)", f.duplicate_requests],
                        ["distinct requests", f.requests],
                        ["ground-truth rows", f.ground_truth_rows],
                        ["ground-truth duplicates (collapsed)", f.ground_truth_duplicates],
                        ["requests with ground truth", f.matched],
                        ["orphan ground-truth rows (no logged request)", f.orphans],
                    ],
                )
            )
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LabelResult:
    """What :func:`label_data` wrote and what it did."""

    info: TableInfo
    report: LabelReport

    def metadata(self) -> dict[str, Any]:
        """Metadata for the output ``Dataset`` artifact."""
        meta = self.info.as_metadata()
        meta.update(
            mode=self.report.mode,
            label_column=self.report.label_column,
            labeled=self.report.labeled,
            unlabeled=self.report.unlabeled,
            unlabeled_dropped=self.report.unlabeled_dropped,
            class_balance=self.report.balance_metadata(),
        )
        if self.report.feedback is not None:
            meta.update(
                duplicate_requests=self.report.feedback.duplicate_requests,
                orphans=self.report.feedback.orphans,
            )
        return meta


# -- shared -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Finished:
    table: pa.Table
    labeled: int
    unlabeled: int
    dropped: int
    balance: tuple[tuple[Any, int], ...]
    distinct: int


def _finish(
    table: pa.Table, label: str, policy: str, allow_single_class: bool, where: str
) -> _Finished:
    """Apply the unlabeled policy, count classes, refuse fewer than two classes."""
    prefix = f"{where}: " if where else ""
    col = table[label]
    missing = pc.fill_null(missing_mask(col), False)
    unlabeled = count_true(missing)
    dropped = 0
    if unlabeled and policy == "drop":
        table = table.filter(pc.invert(missing))
        dropped = unlabeled
    labels = pc.filter(col, pc.invert(missing))
    counts = pc.value_counts(labels)
    values = counts.field("values").to_pylist()
    freq = counts.field("counts").to_pylist()
    pairs = sorted(zip(values, freq, strict=True), key=lambda p: (p[0] is None, p[0]))
    balance = tuple((plain_value(v), int(c)) for v, c in pairs)
    distinct = len(balance)
    if kind_of(col.type) == "float" and distinct > MAX_CLASSES_LISTED:
        balance = ()
    else:
        balance = balance[:MAX_CLASSES_LISTED]
    if not allow_single_class:
        if distinct == 0:
            raise DataError(
                f"{prefix}no row has a value in label column {label!r} "
                f"({table.num_rows + dropped:,} rows, all unlabeled); set allow_single_class "
                "to accept this"
            )
        if distinct == 1:
            value, n = balance[0]
            raise DataError(
                f"{prefix}label column {label!r} has only one class: {value} "
                f"({n:,} rows); a classifier needs two. Check the labels, or set "
                "allow_single_class to accept this"
            )
    return _Finished(table, len(labels), unlabeled, dropped, balance, distinct)


def _as_label(value: LabelValue | None) -> LabelValue | None:
    """Integral floats as ints: KFP passes dict parameters as protobuf Structs (1 -> 1.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _label_type(values: list[tuple[str, Any]]) -> pa.DataType:
    """One Arrow type for every rule label and the default; ConfigError if they disagree."""
    kinds: dict[str, str] = {}
    for path, value in values:
        if value is None:
            continue
        kind = (
            "bool"
            if isinstance(value, bool)
            else "number"
            if isinstance(value, int | float)
            else "string"
        )
        kinds.setdefault(kind, path)
        if len(kinds) > 1:
            first_kind, first_path = next(iter(kinds.items()))
            raise ConfigError(
                path,
                f"{value!r} is a {kind} but {first_path} is a {first_kind}; all labels (and "
                "the default) must have one type",
            )
    present = [v for _, v in values if v is not None]
    if not present:
        return pa.int64()
    if isinstance(present[0], bool):
        return pa.bool_()
    if isinstance(present[0], str):
        return pa.string()
    if any(isinstance(v, float) for v in present):
        return pa.float64()
    return pa.int64()


# -- rules mode ---------------------------------------------------------------------------


def _condition_scalar(value: LabelValue, dtype: pa.DataType, path: str) -> pa.Scalar:
    kind = kind_of(dtype)
    if kind in ("int", "float", "decimal"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"{value!r} is not a number; the column is {dtype}")
        return pa.scalar(value)
    return to_scalar(value, dtype, path)


def _condition_mask(table: pa.Table, cond: Condition, path: str) -> pa.ChunkedArray:
    names = table.column_names
    if cond.column not in names:
        raise ConfigError(
            f"{path}.column", f"{cond.column!r} is not a column of the table; {columns_hint(names)}"
        )
    col = table[cond.column]
    kind = kind_of(col.type)
    if cond.op == "is_null":
        return pc.fill_null(missing_mask(col), False)
    if cond.op == "not_null":
        return pc.invert(pc.fill_null(missing_mask(col), False))
    if kind in ("other", "null"):
        raise ConfigError(
            f"{path}.op", f"{cond.column!r} has type {col.type}; only is_null/not_null apply"
        )
    if cond.op in ("in", "not_in"):
        assert isinstance(cond.value, list)
        scalars = [
            _condition_scalar(v, col.type, f"{path}.value.{i}") for i, v in enumerate(cond.value)
        ]
        if kind in ("int", "float", "decimal"):
            target = pa.float64() if any(s.type == pa.float64() for s in scalars) else col.type
            try:
                value_set = pa.array([s.as_py() for s in scalars]).cast(target)
            except (pa.ArrowInvalid, OverflowError):
                raise ConfigError(
                    f"{path}.value", f"{cond.value!r} does not fit column type {col.type}"
                ) from None
            col = pc.cast(col, target, safe=False) if target != col.type else col
        else:
            value_set = pa.array([s.as_py() for s in scalars], type=col.type)
        hit = pc.is_in(col, value_set=value_set)
        if cond.op == "in":
            return pc.fill_null(hit, False)
        return pc.and_(pc.invert(pc.fill_null(missing_mask(col), False)), pc.invert(hit))
    if cond.op not in ("==", "!=") and kind not in _ORDERED_KINDS:
        raise ConfigError(
            f"{path}.op", f"{cond.op!r} needs an ordered column; {cond.column!r} is {col.type}"
        )
    assert not isinstance(cond.value, list) and cond.value is not None
    scalar = _condition_scalar(cond.value, col.type, f"{path}.value")
    return pc.fill_null(_COMPARE[cond.op](col, scalar), False)


def _describe(rule: Rule) -> str:
    parts = []
    for c in rule.when:
        value = [_as_label(v) for v in c.value] if isinstance(c.value, list) else _as_label(c.value)
        parts.append(f"{c.column} {c.op}" + ("" if value is None else f" {value!r}"))
    return " and ".join(parts)


def label_table(
    table: pa.Table, config: RulesConfig | Mapping[str, Any] | str | None
) -> tuple[pa.Table, LabelReport]:
    """Derive (or check) the label column of ``table`` with rules (see the module docstring).

    Args:
        table: the features.
        config: a :class:`RulesConfig`, or a dict / JSON string of one.

    Returns:
        The labeled table (label column replaced in place, or appended last) and the report.

    Raises:
        ConfigError: a rule names a column that does not exist, an op that does not fit the
            column, a value of the wrong type, or the label column is missing (no rules) or
            already present (rules without ``overwrite``); the config path is named.
        DataError: the label has fewer than two classes and ``allow_single_class`` is off.
    """
    cfg = parse_config(RulesConfig, config, CONFIG_FIELD)
    label = cfg.label_column
    names = table.column_names
    rules = cfg.all_rules()
    rule_counts: list[RuleCount] = []
    if not rules:
        if label not in names:
            raise ConfigError(
                f"{CONFIG_FIELD}.label_column",
                f"{label!r} is not a column of the table; {columns_hint(names)}. Give rules or "
                "a threshold to create it",
            )
        labeled = table
    else:
        if label in names and not cfg.overwrite:
            raise ConfigError(
                f"{CONFIG_FIELD}.label_column",
                f"{label!r} is already a column of the table; set overwrite to replace it, or "
                "name another label_column",
            )
        default_label = _as_label(cfg.default)
        labels = [_as_label(r.label) for _, r, _ in rules]
        dtype = _label_type(
            [(f"{p}.label", v) for (p, _, _), v in zip(rules, labels, strict=True)]
            + [(f"{CONFIG_FIELD}.default", default_label)]
        )
        masks = []
        for _, rule, cond_paths in rules:
            mask: pa.ChunkedArray | None = None
            for cond, where in zip(rule.when, cond_paths, strict=True):
                m = _condition_mask(table, cond, where)
                mask = m if mask is None else pc.and_(mask, m)
            assert mask is not None
            masks.append(mask)
        values: pa.ChunkedArray | pa.Array = pa.nulls(table.num_rows, type=dtype)
        if default_label is not None:
            values = pc.fill_null(values, pa.scalar(default_label, type=dtype))
        for value, mask in zip(reversed(labels), reversed(masks), strict=True):
            values = pc.if_else(mask, pa.scalar(value, type=dtype), values)
        taken = np.zeros(table.num_rows, dtype=bool)
        for i, ((_, rule, _), mask) in enumerate(zip(rules, masks, strict=True)):
            hit = np.asarray(mask.to_numpy(), dtype=bool)
            rule_counts.append(RuleCount(i, _describe(rule), labels[i], int((hit & ~taken).sum())))
            taken |= hit
        rule_counts.append(RuleCount(-1, "no rule matched", default_label, int((~taken).sum())))
        if label in names:
            labeled = table.set_column(names.index(label), pa.field(label, dtype), values)
        else:
            labeled = table.append_column(pa.field(label, dtype), values)
    done = _finish(labeled, label, cfg.unlabeled, cfg.allow_single_class, "")
    report = LabelReport(
        mode="rules",
        label_column=label,
        rows_in=table.num_rows,
        rows_out=done.table.num_rows,
        labeled=done.labeled,
        unlabeled=done.unlabeled,
        unlabeled_policy=cfg.unlabeled,
        unlabeled_dropped=done.dropped,
        class_balance=done.balance,
        distinct_labels=done.distinct,
        rules=tuple(rule_counts),
    )
    return done.table, report


# -- feedback mode ------------------------------------------------------------------------


def _string_ids(col: pa.ChunkedArray, where: str) -> pa.ChunkedArray:
    if kind_of(col.type) == "string":
        return pc.cast(col, pa.string())
    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"{where}: {REQUEST_ID} has type {col.type}; expected string") from None


def _dedupe_logs(logs: pa.Table, keep: str) -> tuple[pa.Table, int]:
    """Keep one row per request id: the earliest (first) or latest (last) by timestamp."""
    order = pa.array(np.arange(logs.num_rows))
    keyed = logs.select([REQUEST_ID]).append_column("__order", order)
    sort_keys = [("__order", "ascending")]
    if "timestamp" in logs.column_names and kind_of(logs["timestamp"].type) in _ORDERED_KINDS:
        keyed = keyed.append_column("__ts", logs["timestamp"])
        sort_keys.insert(0, ("__ts", "ascending"))
    indices = pc.sort_indices(keyed, sort_keys=sort_keys).to_numpy()
    ids = keyed[REQUEST_ID].to_numpy()[indices]
    duplicated = pd.Series(ids).duplicated(keep=keep).to_numpy()
    kept = np.sort(indices[~duplicated])
    n_dup = int(duplicated.sum())
    return (logs.take(pa.array(kept)) if n_dup else logs), n_dup


def join_feedback(
    logs_uri: str,
    ground_truth_uri: str,
    config: FeedbackConfig | Mapping[str, Any] | str | None,
    store: ObjectStore | None = None,
) -> tuple[pa.Table, LabelReport]:
    """Label logged inference requests with ground truth by ``request_id``.

    Args:
        logs_uri: a local folder or file, or an ``s3://`` prefix or object, of request logs
            (Parquet; schema in the module docstring).
        ground_truth_uri: Parquet or CSV table (local or ``s3://``) with ``request_id`` and
            the label column.
        config: a :class:`FeedbackConfig`, or a dict / JSON string of one.
        store: object store for ``s3://`` URIs; from the environment when omitted.

    Returns:
        The labeled table (``request_id``, features, [``logged_prediction``], label) and the
        report.

    Raises:
        ConfigError: a malformed config or empty URI.
        DataError: no logs under ``logs_uri`` (named); a log file or the ground truth lacks
            ``request_id`` (file named); the ground truth lacks the label column (named) or
            gives one request two labels; fewer than two classes without
            ``allow_single_class``.
    """
    cfg = parse_config(FeedbackConfig, config, CONFIG_FIELD)
    if not logs_uri:
        raise ConfigError("logs_uri", "give the folder or s3:// prefix of the request logs")
    if not ground_truth_uri:
        raise ConfigError("ground_truth_uri", "give the Parquet/CSV file of ground-truth labels")
    label = cfg.label_column

    source = read_source(logs_uri, what="logs", store=store)
    for name, part in zip(source.files, source.tables, strict=True):
        if REQUEST_ID not in part.column_names:
            raise DataError(
                f"{name}: request log has no {REQUEST_ID!r} column; "
                f"{columns_hint(part.column_names)}"
            )
    logs = source.concat()
    log_rows = logs.num_rows
    logs = logs.set_column(
        logs.column_names.index(REQUEST_ID),
        pa.field(REQUEST_ID, pa.string()),
        _string_ids(logs[REQUEST_ID], logs_uri),
    )
    no_id = pc.is_null(logs[REQUEST_ID])
    without_id = count_true(no_id)
    if without_id:
        logs = logs.filter(pc.invert(no_id))
    logs, duplicates = _dedupe_logs(logs, cfg.duplicates)

    features = [n for n in logs.column_names if n not in (REQUEST_ID, PREDICTION, *LOG_COLUMNS)]
    if label in features:
        raise DataError(
            f"{logs_uri}: the request logs already have a column {label!r}; name the ground-truth "
            "label column differently (config.label_column)"
        )
    keep = [REQUEST_ID, *features]
    out = logs.select(keep)
    if cfg.keep_prediction:
        if PREDICTION not in logs.column_names:
            raise DataError(
                f"{logs_uri}: the request logs have no {PREDICTION!r} column to keep; set "
                "keep_prediction to false"
            )
        out = out.append_column(LOGGED_PREDICTION, logs[PREDICTION])

    truth = read_dataset(
        ground_truth_uri, what="ground truth", store=store, string_columns=(REQUEST_ID,)
    )
    if REQUEST_ID not in truth.column_names:
        raise DataError(
            f"{ground_truth_uri}: ground truth has no {REQUEST_ID!r} column; "
            f"{columns_hint(truth.column_names)}"
        )
    if label not in truth.column_names:
        raise DataError(
            f"{ground_truth_uri}: ground truth has no label column {label!r} "
            f"(config.label_column); {columns_hint(truth.column_names)}"
        )
    gt_rows = truth.num_rows
    gt_ids = _string_ids(truth[REQUEST_ID], ground_truth_uri)
    gt_labels = truth[label]
    frame = pd.DataFrame(
        {"id": gt_ids.to_pandas(), "label": gt_labels.to_pandas(), "row": np.arange(gt_rows)}
    )
    frame = frame[frame["id"].notna()]
    unique_pairs = frame.drop_duplicates(["id", "label"])
    gt_duplicates = len(frame) - len(unique_pairs)
    conflict = unique_pairs["id"].duplicated(keep=False)
    if conflict.any():
        bad_id = unique_pairs.loc[conflict, "id"].iloc[0]
        rows = unique_pairs.loc[unique_pairs["id"] == bad_id, "row"].tolist()
        shown = [gt_labels[int(r)].as_py() for r in rows[:2]]
        n_ids = unique_pairs.loc[conflict, "id"].nunique()
        raise DataError(
            f"{ground_truth_uri}: request_id {bad_id!r} has different labels "
            f"({shown[0]!r} at row {rows[0]}, {shown[1]!r} at row {rows[1]}); {n_ids:,} "
            "request id(s) have conflicting labels. Fix the ground truth"
        )
    rows_kept = pa.array(unique_pairs["row"].to_numpy(dtype=np.int64))
    ids_unique = gt_ids.take(rows_kept)
    labels_unique = gt_labels.take(rows_kept)

    index = pc.index_in(out[REQUEST_ID], value_set=ids_unique.combine_chunks())
    matched = len(index) - index.null_count
    joined = labels_unique.take(index)
    orphans = (
        gt_rows
        - gt_duplicates
        - count_true(pc.is_in(ids_unique, value_set=out[REQUEST_ID].combine_chunks()))
    )
    out = out.append_column(pa.field(label, labels_unique.type), joined)

    done = _finish(out, label, cfg.unlabeled, cfg.allow_single_class, ground_truth_uri)
    feedback = FeedbackCount(
        log_files=len(source.files),
        log_rows=log_rows,
        rows_without_request_id=without_id,
        duplicate_requests=duplicates,
        requests=out.num_rows,
        ground_truth_rows=gt_rows,
        ground_truth_duplicates=gt_duplicates,
        matched=matched,
        orphans=orphans,
    )
    report = LabelReport(
        mode="feedback",
        label_column=label,
        rows_in=log_rows,
        rows_out=done.table.num_rows,
        labeled=done.labeled,
        unlabeled=done.unlabeled,
        unlabeled_policy=cfg.unlabeled,
        unlabeled_dropped=done.dropped,
        class_balance=done.balance,
        distinct_labels=done.distinct,
        feedback=feedback,
    )
    return done.table, report


# -- operation ----------------------------------------------------------------------------


def label_data(
    output_path: str,
    mode: str = "rules",
    config: Mapping[str, Any] | str | None = None,
    *,
    dataset_path: str = "",
    logs_uri: str = "",
    ground_truth_uri: str = "",
    store: ObjectStore | None = None,
) -> LabelResult:
    """Label a dataset (rules mode) or logged requests (feedback mode); write Parquet atomically.

    Args:
        output_path: a ``.parquet`` path or ``s3://`` URI, or a local file path without suffix
            (a KFP artifact's ``.path``).
        mode: ``rules`` (:func:`label_table` on ``dataset_path``) or ``feedback``
            (:func:`join_feedback` of ``logs_uri`` and ``ground_truth_uri``).
        config: :class:`RulesConfig` or :class:`FeedbackConfig` as a dict or JSON string.
        dataset_path: rules mode: the table to label (file, folder or ``s3://``).
        logs_uri: feedback mode: folder or ``s3://`` prefix of request logs.
        ground_truth_uri: feedback mode: Parquet/CSV table of ``request_id`` and label.
        store: object store for ``s3://`` URIs; from the environment when omitted.

    Returns:
        :class:`LabelResult` with the output's :class:`TableInfo` and the report.

    Raises:
        ConfigError: bad mode, parameter or config (named).
        DataError: bad input data (file, column named).
    """
    if mode not in MODES:
        raise ConfigError("mode", f"{mode!r} is not a labeling mode; use one of {', '.join(MODES)}")
    check_destination(output_path, "output_path")
    if mode == "rules":
        if not dataset_path:
            raise ConfigError("dataset", "rules mode labels a dataset; give one")
        for name, value in (("logs_uri", logs_uri), ("ground_truth_uri", ground_truth_uri)):
            if value:
                raise ConfigError(name, "is used only in feedback mode; leave it empty")
        cfg = parse_config(RulesConfig, config, CONFIG_FIELD)
        table = read_dataset(dataset_path, what="dataset", store=store)
        try:
            labeled, report = label_table(table, cfg)
        except DataError as exc:
            raise DataError(f"{os.fspath(dataset_path)}: {exc}") from None
    else:
        if dataset_path:
            raise ConfigError(
                "dataset", "feedback mode reads logs_uri and ground_truth_uri; give no dataset"
            )
        labeled, report = join_feedback(logs_uri, ground_truth_uri, config, store=store)
    info = write_dataset(labeled, output_path, store)
    return LabelResult(info=info, report=report)
