"""Declarative, validated table cleaning with a counted report.

A :class:`CleanConfig` (parsed with :func:`kfloop.core.config.parse_config`, field ``config``)
names rules per column. They are applied in this fixed order, whatever the key order::

    1. drop_columns            remove columns
    2. normalize_strings       trim / change case (/ blank -> null) of string columns
    3. coerce                  convert column types; unparseable values -> null | drop_row | fail
    4. deduplicate             drop repeated rows (all columns or a key), keep first | last
    5. drop_rows_with_missing  drop rows missing any of the named columns (e.g. the label)
    6. clip_outliers           clip numeric values to bounds (iqr | quantile | range)
    7. impute                  fill missing values (mean | median | mode | constant)

Before any data is touched, the whole config is checked against the table's schema: every
column named anywhere must exist (and not be dropped by ``drop_columns``), and every rule must
fit the column's type after coercion (``mean`` of a string column, clipping a bool column,
a constant that is not of the column's type are :class:`~kfloop.core.errors.ConfigError`\\ s
naming the config path, e.g. ``config.impute.incme``, and listing the available columns).

Semantics:

- *Missing* means null, or NaN in a floating-point column. ``drop_rows_with_missing``,
  ``clip_outliers`` (ignores them) and ``impute`` (fills them) all use this definition.
- ``coerce`` targets: ``int64``, ``float64``, ``string``, ``bool``, ``timestamp``
  (``timestamp[us]``; from strings: ISO 8601 or ``format`` (strftime codes); values with a UTC
  offset are converted to UTC and the result has no time zone). From strings, surrounding
  whitespace is ignored and blank strings are missing (null), not errors; ``int64`` accepts
  ``"12"``, ``"+12"`` and ``"12.0"``; ``bool`` accepts true/false, t/f, yes/no, y/n, 1/0 in any
  case. From floats, ``int64`` accepts integral values only (2.5 is unparseable) and NaN is
  missing. A value that cannot be converted is *unparseable*; ``on_error`` says what happens:
  ``null`` (it becomes null, counted), ``drop_row`` (its row is dropped, counted) or ``fail``
  (:class:`~kfloop.core.errors.DataError` naming the column, how many values were bad, and the
  first one with its 0-based row index in the input table).
- ``impute`` statistics (mean, median, mode) are computed from the data as it reaches step 7
  (after coercion, deduplication, row drops and clipping), over non-missing values. On integer
  columns the mean/median is rounded to the nearest integer so the column keeps its type.
  ``mode`` ties go to the smallest value. Every fill value is recorded in the report
  (:attr:`CleanReport.fitted`); pass them back as ``fitted: {column: value}`` to reuse them
  (for example to clean serving-time or evaluation data exactly like the training data).
- ``deduplicate`` compares values exactly: null equals null and NaN equals NaN. It keeps the
  first (or last) row of each group in table order.
- ``clip_outliers`` bounds: ``iqr`` is ``[q1 - k*IQR, q3 + k*IQR]``, ``quantile`` is
  ``[q(lower_q), q(upper_q)]`` (linear interpolation), ``range`` is ``[min, max]`` (either may
  be omitted). On integer columns computed bounds are rounded outwards and ``range`` bounds
  inwards, so clipped values stay integers. The bounds used are recorded.
- Every rule's effect is counted in a :class:`CleanReport`, and ``rows_in == rows_out +
  rows_dropped`` is checked on every run (:class:`ReconciliationError` otherwise).

Works on Arrow tables with vectorised ``pyarrow.compute`` kernels; pandas is used only for
duplicate detection (on integer codes) and for parsing timestamps from strings.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from kfloop.core.arrowio import TableInfo
from kfloop.core.config import StrictModel, parse_config
from kfloop.core.errors import ConfigError, DataError, KfloopError
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
from kfloop.data._dataset_io import (
    check_destination,
    read_dataset,
    release_memory_promptly,
    write_dataset,
)

CONFIG_FIELD = "config"
ColumnType = Literal["int64", "float64", "string", "bool", "timestamp"]
Scalar = bool | int | float | str

TARGET_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us"),
}
# Which target types each source kind can be coerced to.
_COERCIBLE: dict[str, frozenset[str]] = {
    "string": frozenset(TARGET_TYPES),
    "null": frozenset(TARGET_TYPES),
    "int": frozenset({"int64", "float64", "string", "bool"}),
    "float": frozenset({"int64", "float64", "string", "bool"}),
    "bool": frozenset({"int64", "float64", "string", "bool"}),
    "decimal": frozenset({"int64", "float64", "string"}),
    "timestamp": frozenset({"timestamp", "string"}),
    "date": frozenset({"timestamp", "string"}),
    "other": frozenset(),
}
_TRUE_WORDS = ["true", "t", "yes", "y", "1"]
_FALSE_WORDS = ["false", "f", "no", "n", "0"]
_FLOAT_RE = r"^[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)$"
_INT64_MAX = 2**63 - 1


class ReconciliationError(KfloopError, RuntimeError):
    """Internal error: the per-rule row counts do not add up to the rows removed."""


# -- config -------------------------------------------------------------------------------


class CoerceRule(StrictModel):
    """Convert a column to ``type``; ``on_error`` decides the fate of unparseable values."""

    type: ColumnType
    on_error: Literal["null", "drop_row", "fail"] = "null"
    format: str | None = None

    @field_validator("on_error", mode="before")
    @classmethod
    def _none_is_null(cls, value: Any) -> Any:
        return "null" if value is None else value

    @model_validator(mode="after")
    def _format_only_for_timestamps(self) -> CoerceRule:
        if self.format is not None and self.type != "timestamp":
            raise ValueError("format applies only to type 'timestamp'")
        return self


class NormalizeRule(StrictModel):
    """String normalisation of one column."""

    trim: bool = True
    case: Literal["lower", "upper", "none"] = "none"
    empty_to_null: bool = False


class NormalizeGroup(NormalizeRule):
    """The same normalisation for several columns."""

    columns: list[str] = Field(min_length=1)


class ImputeRule(StrictModel):
    """How to fill missing values of one column."""

    strategy: Literal["mean", "median", "mode", "constant"]
    value: Scalar | None = None

    @model_validator(mode="after")
    def _value_iff_constant(self) -> ImputeRule:
        if self.strategy == "constant" and self.value is None:
            raise ValueError("strategy 'constant' needs a value")
        if self.strategy != "constant" and self.value is not None:
            raise ValueError(
                f"strategy {self.strategy!r} computes its value from the data; drop 'value' "
                "(or use strategy 'constant', or config.fitted to reuse a value)"
            )
        return self


class ClipRule(StrictModel):
    """Clip a numeric column to bounds computed from the data or given."""

    method: Literal["iqr", "quantile", "range"] = "iqr"
    k: float = Field(1.5, ge=0)
    lower_q: float = Field(0.01, ge=0, le=1)
    upper_q: float = Field(0.99, ge=0, le=1)
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ClipRule:
        given = self.model_fields_set
        only = {"k": "iqr", "lower_q": "quantile", "upper_q": "quantile"}
        only.update({"min": "range", "max": "range"})
        for name, method in only.items():
            if name in given and self.method != method:
                raise ValueError(f"{name} applies only to method {method!r}")
        if self.lower_q >= self.upper_q:
            raise ValueError(f"lower_q ({self.lower_q}) must be below upper_q ({self.upper_q})")
        if self.method == "range":
            if self.min is None and self.max is None:
                raise ValueError("method 'range' needs min, max or both")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class DedupeRule(StrictModel):
    """Drop repeated rows: equal on ``subset`` (all columns when null), keep first or last."""

    subset: list[str] | None = Field(None, min_length=1)
    keep: Literal["first", "last"] = "first"


class CleanConfig(StrictModel):
    """The cleaning rules. Every key is optional; see the module docstring for the order."""

    drop_columns: list[str] = Field(default_factory=list)
    normalize_strings: dict[str, NormalizeRule] | list[str | NormalizeGroup] = Field(
        default_factory=dict
    )
    coerce: dict[str, CoerceRule] = Field(default_factory=dict)
    deduplicate: DedupeRule | None = None
    drop_rows_with_missing: list[str] = Field(default_factory=list)
    clip_outliers: dict[str, ClipRule] = Field(default_factory=dict)
    impute: dict[str, ImputeRule] = Field(default_factory=dict)
    fitted: dict[str, Scalar] = Field(default_factory=dict)

    @field_validator("deduplicate", mode="before")
    @classmethod
    def _dedupe_shorthand(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return None
        return value

    @model_validator(mode="after")
    def _fitted_needs_impute(self) -> CleanConfig:
        for name in self.fitted:
            rule = self.impute.get(name)
            if rule is None:
                raise ValueError(f"fitted value for {name!r} but no impute rule for it")
            if rule.strategy == "constant":
                raise ValueError(f"fitted value for {name!r} whose impute strategy is 'constant'")
        return self

    def normalize_items(self) -> list[tuple[str, str, NormalizeRule]]:
        """``(config path, column, rule)`` for every column to normalise."""
        base = f"{CONFIG_FIELD}.normalize_strings"
        if isinstance(self.normalize_strings, dict):
            return [(f"{base}.{c}", c, r) for c, r in self.normalize_strings.items()]
        items: list[tuple[str, str, NormalizeRule]] = []
        for i, entry in enumerate(self.normalize_strings):
            if isinstance(entry, str):
                items.append((f"{base}.{i}", entry, NormalizeRule()))
                continue
            rule = NormalizeRule(
                trim=entry.trim, case=entry.case, empty_to_null=entry.empty_to_null
            )
            items.extend((f"{base}.{i}.columns.{j}", c, rule) for j, c in enumerate(entry.columns))
        return items


# -- report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormalizeCount:
    """Effect of ``normalize_strings`` on one column."""

    column: str
    trim: bool
    case: str
    changed: int
    emptied: int


@dataclass(frozen=True)
class CoerceCount:
    """Effect of ``coerce`` on one column."""

    column: str
    from_type: str
    to_type: str
    on_error: str
    converted: int
    missing_to_null: int
    unparseable: int
    nulled: int
    rows_dropped: int


@dataclass(frozen=True)
class DedupeCount:
    """Effect of ``deduplicate``."""

    subset: tuple[str, ...] | None
    keep: str
    rows_dropped: int


@dataclass(frozen=True)
class MissingCount:
    """Effect of ``drop_rows_with_missing``: missing values per column and rows dropped."""

    missing_per_column: dict[str, int]
    rows_dropped: int


@dataclass(frozen=True)
class ClipCount:
    """Effect of ``clip_outliers`` on one column: the bounds used and values changed."""

    column: str
    method: str
    lower: float | int | None
    upper: float | int | None
    below: int
    above: int

    @property
    def clipped(self) -> int:
        return self.below + self.above


@dataclass(frozen=True)
class ImputeCount:
    """Effect of ``impute`` on one column: the fill value, where it came from, values filled."""

    column: str
    strategy: str
    value: Any
    source: Literal["data", "fitted", "constant"]
    imputed: int


@dataclass(frozen=True)
class CleanReport:
    """Counts of every rule's effect. ``rows_in == rows_out + rows_dropped`` always holds."""

    rows_in: int
    rows_out: int
    columns_in: int
    columns_out: int
    dropped_columns: tuple[str, ...] = ()
    normalized: tuple[NormalizeCount, ...] = ()
    coerced: tuple[CoerceCount, ...] = ()
    deduplicated: DedupeCount | None = None
    missing: MissingCount | None = None
    clipped: tuple[ClipCount, ...] = ()
    imputed: tuple[ImputeCount, ...] = ()

    @property
    def rows_dropped_by_rule(self) -> dict[str, int]:
        """Rows removed per rule, e.g. ``{"coerce.age": 3, "deduplicate": 2}``."""
        out = {
            f"coerce.{c.column}": c.rows_dropped for c in self.coerced if c.on_error == "drop_row"
        }
        if self.deduplicated is not None:
            out["deduplicate"] = self.deduplicated.rows_dropped
        if self.missing is not None:
            out["drop_rows_with_missing"] = self.missing.rows_dropped
        return out

    @property
    def rows_dropped(self) -> int:
        return sum(self.rows_dropped_by_rule.values())

    @property
    def fitted(self) -> dict[str, Any]:
        """Fill values computed from the data (or reused): pass back as ``config.fitted``."""
        return {i.column: i.value for i in self.imputed if i.source != "constant"}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of everything in the report."""
        out = asdict(self)
        out["dropped_columns"] = list(self.dropped_columns)
        out["rows_dropped"] = self.rows_dropped
        out["rows_dropped_by_rule"] = self.rows_dropped_by_rule
        out["fitted"] = self.fitted
        return out

    def to_markdown(self) -> str:
        """The report as Markdown tables (for a KFP ``Markdown`` artifact)."""
        lines = [
            "# Data cleaning report",
            "",
            md_table(
                ["rows in", "rows out", "rows dropped", "columns in", "columns out"],
                [
                    [
                        self.rows_in,
                        self.rows_out,
                        self.rows_dropped,
                        self.columns_in,
                        self.columns_out,
                    ]
                ],
            ),
            "",
            "Rules run in this order: drop columns, normalise strings, coerce types, "
            "deduplicate, drop rows with missing values, clip outliers, impute.",
        ]
        if self.rows_dropped_by_rule:
            lines += ["", "## Rows dropped by rule", ""]
            lines.append(md_table(["rule", "rows"], list(self.rows_dropped_by_rule.items())))
        if self.dropped_columns:
            lines += [
                "",
                "## Dropped columns",
                "",
                ", ".join(f"`{c}`" for c in self.dropped_columns),
            ]
        if self.normalized:
            lines += ["", "## String normalisation", ""]
            lines.append(
                md_table(
                    ["column", "trim", "case", "values changed", "blank -> null"],
                    [[n.column, n.trim, n.case, n.changed, n.emptied] for n in self.normalized],
                )
            )
        if self.coerced:
            lines += ["", "## Type coercion", ""]
            lines.append(
                md_table(
                    [
                        "column",
                        "from",
                        "to",
                        "on error",
                        "converted",
                        "missing -> null",
                        "unparseable",
                        "nulled",
                        "rows dropped",
                    ],
                    [
                        [
                            c.column,
                            c.from_type,
                            c.to_type,
                            c.on_error,
                            c.converted,
                            c.missing_to_null,
                            c.unparseable,
                            c.nulled,
                            c.rows_dropped,
                        ]
                        for c in self.coerced
                    ],
                )
            )
        if self.deduplicated is not None:
            d = self.deduplicated
            subset = ", ".join(d.subset) if d.subset else "all columns"
            lines += ["", "## Duplicates", ""]
            lines.append(
                md_table(["key", "keep", "rows dropped"], [[subset, d.keep, d.rows_dropped]])
            )
        if self.missing is not None:
            lines += ["", "## Rows with missing values", ""]
            rows: list[list[Any]] = [[c, n] for c, n in self.missing.missing_per_column.items()]
            lines.append(md_table(["column", "missing values"], rows))
            lines += ["", f"Rows dropped: {self.missing.rows_dropped:,}"]
        if self.clipped:
            lines += ["", "## Outlier clipping", ""]
            lines.append(
                md_table(
                    ["column", "method", "lower", "upper", "below", "above", "clipped"],
                    [
                        [c.column, c.method, c.lower, c.upper, c.below, c.above, c.clipped]
                        for c in self.clipped
                    ],
                )
            )
        if self.imputed:
            lines += ["", "## Imputation", ""]
            lines.append(
                md_table(
                    ["column", "strategy", "fill value", "from", "values imputed"],
                    [[i.column, i.strategy, i.value, i.source, i.imputed] for i in self.imputed],
                )
            )
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class CleanResult:
    """What :func:`clean_data` wrote and what it did."""

    info: TableInfo
    report: CleanReport
    source: str = ""

    def metadata(self) -> dict[str, Any]:
        """Metadata for the output ``Dataset`` artifact."""
        meta = self.info.as_metadata()
        meta.update(
            rows_in=self.report.rows_in,
            rows_dropped=self.report.rows_dropped,
            rows_dropped_by_rule=self.report.rows_dropped_by_rule,
            fitted=self.report.fitted,
        )
        return meta


# -- helpers ------------------------------------------------------------------------------


def _filter_releasing(held: list[pa.Table], mask: pa.Array | pa.ChunkedArray) -> pa.Table:
    """``held[0].filter(mask)``, column by column, releasing each input column once filtered.

    ``held`` is emptied: when nothing else refers to the table (``clean_data`` keeps no
    reference to what it read), the peak is the table plus one column instead of two tables.
    """
    table = held.pop()
    if table.num_columns == 0:
        return table.filter(mask)
    schema = table.schema
    columns = table.columns
    del table
    columns.reverse()
    filtered = []
    while columns:
        filtered.append(columns.pop().filter(mask))
    return pa.Table.from_arrays(filtered, schema=schema)


def _set(table: pa.Table, name: str, values: pa.ChunkedArray | pa.Array) -> pa.Table:
    idx = table.schema.get_field_index(name)
    return table.set_column(idx, pa.field(name, values.type), values)


# -- validation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    config: CleanConfig
    normalize: list[tuple[str, str, NormalizeRule]]
    types: dict[str, pa.DataType]  # column types after drop + coercion


def _validate(config: CleanConfig, schema: pa.Schema) -> _Plan:
    """Check every column reference and type against ``schema``; return the resolved plan."""
    names = list(schema.names)
    dropped = set(config.drop_columns)
    base = CONFIG_FIELD

    def require(column: str, path: str, allow_dropped: bool = False) -> None:
        if column not in names:
            raise ConfigError(
                path, f"{column!r} is not a column of the table; {columns_hint(names)}"
            )
        if column in dropped and not allow_dropped:
            raise ConfigError(
                path, f"{column!r} is removed by {base}.drop_columns before this rule runs"
            )

    seen: set[str] = set()
    for i, column in enumerate(config.drop_columns):
        require(column, f"{base}.drop_columns.{i}", allow_dropped=True)
        if column in seen:
            raise ConfigError(f"{base}.drop_columns.{i}", f"{column!r} is listed twice")
        seen.add(column)

    types = {n: schema.field(n).type for n in names if n not in dropped}

    normalize = config.normalize_items()
    seen = set()
    for path, column, _rule in normalize:
        require(column, path)
        if column in seen:
            raise ConfigError(path, f"{column!r} is normalised twice")
        seen.add(column)
        if kind_of(types[column]) != "string":
            raise ConfigError(
                path,
                f"{column!r} is {types[column]}, not a string column; normalize_strings applies "
                "to string columns (it runs before coerce)",
            )

    for column, crule in config.coerce.items():
        path = f"{base}.coerce.{column}"
        require(column, path)
        source = kind_of(types[column])
        if crule.type not in _COERCIBLE[source]:
            allowed = sorted(_COERCIBLE[source])
            raise ConfigError(
                f"{path}.type",
                f"cannot coerce {column!r} from {types[column]} to {crule.type}; "
                f"allowed: {', '.join(allowed) if allowed else 'none'}",
            )
        target = TARGET_TYPES[crule.type]
        if crule.type == "timestamp" and pa.types.is_timestamp(types[column]):
            target = pa.timestamp("us", tz=types[column].tz)
        types[column] = target

    if config.deduplicate is not None:
        subset = config.deduplicate.subset
        if subset is not None:
            for i, column in enumerate(subset):
                require(column, f"{base}.deduplicate.subset.{i}")
        for column in subset if subset is not None else list(types):
            if kind_of(types[column]) == "other":
                raise ConfigError(
                    f"{base}.deduplicate" + (".subset" if subset is not None else ""),
                    f"column {column!r} has type {types[column]}, whose values cannot be "
                    "compared for deduplication; give deduplicate.subset without it",
                )

    for i, column in enumerate(config.drop_rows_with_missing):
        require(column, f"{base}.drop_rows_with_missing.{i}")

    for column, clip in config.clip_outliers.items():
        path = f"{base}.clip_outliers.{column}"
        require(column, path)
        kind = kind_of(types[column])
        if kind not in ("int", "float"):
            raise ConfigError(
                path, f"{column!r} is {types[column]}; clipping needs an int or float column"
            )
        if kind == "int" and clip.method == "range":
            low = math.ceil(clip.min) if clip.min is not None else None
            high = math.floor(clip.max) if clip.max is not None else None
            if low is not None and high is not None and low > high:
                raise ConfigError(
                    path, f"no integer lies in [{clip.min}, {clip.max}] for int column {column!r}"
                )

    for column, irule in config.impute.items():
        path = f"{base}.impute.{column}"
        require(column, path)
        dtype = types[column]
        kind = kind_of(dtype)
        if irule.strategy in ("mean", "median") and kind not in ("int", "float"):
            raise ConfigError(
                f"{path}.strategy",
                f"{irule.strategy} needs a numeric column; {column!r} is {dtype}"
                f"{' after coercion' if column in config.coerce else ''}; use 'mode' or 'constant'",
            )
        if kind in ("null", "other"):
            raise ConfigError(
                path, f"{column!r} has type {dtype}; coerce it to a concrete type to impute it"
            )
        if irule.strategy == "constant":
            to_scalar(irule.value, dtype, f"{path}.value")
        if column in config.fitted:
            to_scalar(config.fitted[column], dtype, f"{base}.fitted.{column}")

    return _Plan(config=config, normalize=normalize, types=types)


# -- coercion -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Coerced:
    values: pa.ChunkedArray
    bad: pa.ChunkedArray  # bool, no nulls: unparseable values
    missing_to_null: int


def _no_nulls(mask: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.fill_null(mask, False)


def _none_bad(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """An all-false mask as long as ``col``: no value was unparseable."""
    return pa.chunked_array([pa.array(np.zeros(len(col), dtype=bool))])


def _bad_where(source: pa.ChunkedArray, ok: pa.ChunkedArray) -> pa.ChunkedArray:
    """Non-null source values that are not ``ok``."""
    return pc.and_(pc.is_valid(source), pc.invert(_no_nulls(ok)))


def _null_unless(ok: pa.ChunkedArray, values: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.if_else(_no_nulls(ok), values, pa.scalar(None, type=values.type))


def _coerce_string(col: pa.ChunkedArray, rule: CoerceRule) -> _Coerced:
    trimmed = pc.utf8_trim_whitespace(col)
    blank = pc.equal(trimmed, "")
    blanks = count_true(blank)
    value = pc.if_else(_no_nulls(blank), pa.scalar(None, type=trimmed.type), trimmed)
    target = rule.type
    if target == "int64":
        text = pc.replace_substring_regex(value, r"^\+", "")
        text = pc.replace_substring_regex(text, r"\.0*$", "")
        ok = pc.match_substring_regex(text, r"^-?\d{1,18}$")
        long_ = _no_nulls(pc.match_substring_regex(text, r"^-?\d{19,}$"))
        if count_true(long_):  # rare: 19+ digits, check the int64 range in Python
            ok_np = _no_nulls(ok).to_numpy().copy()
            text_np = text.to_numpy()
            for i in np.flatnonzero(long_.to_numpy()):
                ok_np[i] = -_INT64_MAX - 1 <= int(text_np[i]) <= _INT64_MAX
            ok = pa.chunked_array([pa.array(ok_np, type=pa.bool_())])
        parsed = pc.cast(_null_unless(ok, text), pa.int64())
    elif target == "float64":
        text = pc.replace_substring_regex(value, r"^\+", "")
        ok = pc.match_substring_regex(text, _FLOAT_RE, ignore_case=True)
        parsed = pc.cast(_null_unless(ok, text), pa.float64())
    elif target == "bool":
        lower = pc.utf8_lower(value)
        is_true = pc.is_in(lower, value_set=pa.array(_TRUE_WORDS))
        ok = pc.or_(is_true, pc.is_in(lower, value_set=pa.array(_FALSE_WORDS)))
        parsed = _null_unless(ok, is_true)
    elif target == "timestamp":
        series = pd.Series(value.to_pandas(), dtype=object)
        stamps = pd.to_datetime(series, errors="coerce", utc=True, format=rule.format)
        arr = pa.Array.from_pandas(stamps.dt.tz_localize(None))
        parsed = pa.chunked_array([pc.cast(arr, pa.timestamp("us"), safe=False)])
        ok = pc.is_valid(parsed)
    else:  # string -> string
        return _Coerced(pc.cast(col, pa.string()), _none_bad(col), 0)
    if not isinstance(parsed, pa.ChunkedArray):
        parsed = pa.chunked_array([parsed])
    return _Coerced(parsed, _bad_where(value, ok), blanks)


def _coerce_numeric(col: pa.ChunkedArray, kind: str, rule: CoerceRule) -> _Coerced:
    """int, float, bool, decimal sources."""
    target = rule.type
    nans = 0
    if kind == "decimal" and target == "int64":
        col, kind = pc.cast(col, pa.float64()), "float"
    if kind == "float":
        nan = _no_nulls(pc.is_nan(col))
        nans = count_true(nan)
        if nans:
            col = pc.if_else(nan, pa.scalar(None, type=col.type), col)
    if target == "bool" and kind in ("int", "float"):
        zero = pc.equal(col, 0)
        ok = pc.or_(zero, pc.equal(col, 1))
        return _Coerced(_null_unless(ok, pc.invert(zero)), _bad_where(col, ok), nans)
    if target == "int64" and kind == "float":
        ok = pc.and_(
            pc.and_(pc.is_finite(col), pc.equal(pc.floor(col), col)),
            pc.and_(pc.greater_equal(col, -(2.0**63)), pc.less(col, 2.0**63)),
        )
        parsed = pc.cast(_null_unless(ok, col), pa.int64())
        return _Coerced(parsed, _bad_where(col, ok), nans)
    if target == "int64" and pa.types.is_uint64(col.type):
        ok = pc.less_equal(col, pa.scalar(_INT64_MAX, type=pa.uint64()))
        parsed = pc.cast(_null_unless(ok, col), pa.int64())
        return _Coerced(parsed, _bad_where(col, ok), nans)
    parsed = pc.cast(col, TARGET_TYPES[target], safe=False)
    return _Coerced(parsed, _none_bad(col), nans)


def _coerce(col: pa.ChunkedArray, rule: CoerceRule) -> _Coerced:
    kind = kind_of(col.type)
    target_type = TARGET_TYPES[rule.type]
    if kind == "timestamp" and rule.type == "timestamp":
        target_type = pa.timestamp("us", tz=col.type.tz)
    if col.type == target_type:
        return _Coerced(col, _none_bad(col), 0)
    if kind == "string":
        return _coerce_string(col, rule)
    if kind in ("int", "float", "bool", "decimal"):
        return _coerce_numeric(col, kind, rule)
    # null, timestamp, date: plain casts cannot fail for the allowed targets
    parsed = pc.cast(col, target_type, safe=False)
    return _Coerced(parsed, _none_bad(col), 0)


# -- steps --------------------------------------------------------------------------------


def _codes(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Dense int64 codes of a column's values (equal values, nulls, NaNs share a code)."""
    encoded = pc.dictionary_encode(col)
    if isinstance(encoded, pa.ChunkedArray):  # chunks share one dictionary
        indices = pa.chunked_array(
            [c.indices for c in encoded.chunks], type=encoded.type.index_type
        )
    else:
        indices = encoded.indices
    return np.asarray(pc.fill_null(indices, -1).to_numpy(), dtype=np.int64)


def _deduplicate(table: pa.Table, rule: DedupeRule) -> np.ndarray:
    """Boolean array: rows to drop as duplicates of a kept row.

    Refines groups of candidate rows one key column at a time and drops every row that is
    alone in its group, so after a high-cardinality column (an id) only the few rows that may
    still be duplicates are encoded for the remaining columns.
    """
    n = table.num_rows
    subset = rule.subset if rule.subset is not None else table.column_names
    duplicated = np.zeros(n, dtype=bool)
    if n < 2 or not subset:
        return duplicated
    rows = np.arange(n, dtype=np.int64)  # candidates, ascending
    groups = np.zeros(n, dtype=np.int64)
    for name in subset:
        col = table[name] if len(rows) == n else table[name].take(pa.array(rows))
        codes = _codes(col)
        groups, _ = pd.factorize(groups * (int(codes.max()) + 2) + (codes + 1))
        multi = np.bincount(groups)[groups] > 1
        if not multi.all():
            rows = rows[multi]
            groups, _ = pd.factorize(groups[multi])
        if len(rows) == 0:
            return duplicated
    duplicated[rows[pd.Series(groups).duplicated(keep=rule.keep).to_numpy()]] = True
    return duplicated


def _quantiles(values: pa.ChunkedArray, qs: list[float]) -> list[float]:
    return [float(v) for v in pc.quantile(values, q=qs).to_pylist()]


def _clip_bounds(
    col: pa.ChunkedArray, rule: ClipRule, is_int: bool
) -> tuple[float | int | None, float | int | None]:
    if rule.method == "range":
        if is_int:
            low = math.ceil(rule.min) if rule.min is not None else None
            high = math.floor(rule.max) if rule.max is not None else None
            return low, high
        return rule.min, rule.max
    values = pc.filter(col, pc.invert(missing_mask(col)))
    if len(values) == 0:
        return None, None
    if rule.method == "iqr":
        q1, q3 = _quantiles(values, [0.25, 0.75])
        low_f, high_f = q1 - rule.k * (q3 - q1), q3 + rule.k * (q3 - q1)
    else:
        low_f, high_f = _quantiles(values, [rule.lower_q, rule.upper_q])
    if is_int:
        return math.floor(low_f), math.ceil(high_f)
    return low_f, high_f


def _clip(name: str, col: pa.ChunkedArray, rule: ClipRule) -> tuple[pa.ChunkedArray, ClipCount]:
    is_int = kind_of(col.type) == "int"
    low, high = _clip_bounds(col, rule, is_int)
    below_n = above_n = 0
    out = col
    if high is not None:
        above = _no_nulls(pc.greater(col, pa.scalar(high)))
        above_n = count_true(above)
        if above_n:
            out = pc.if_else(above, pa.scalar(high).cast(col.type), out)
    if low is not None:
        below = _no_nulls(pc.less(col, pa.scalar(low)))
        below_n = count_true(below)
        if below_n:
            out = pc.if_else(below, pa.scalar(low).cast(col.type), out)
    return out, ClipCount(name, rule.method, low, high, below_n, above_n)


def _mode(values: pa.ChunkedArray) -> Any:
    counts = pc.value_counts(values)
    uniques, freq = counts.field("values"), counts.field("counts")
    top = pc.max(freq)
    best = pc.filter(uniques, pc.equal(freq, top))
    return pc.min_max(best)["min"] if len(best) > 1 else best[0]


def _impute(
    name: str, col: pa.ChunkedArray, rule: ImputeRule, fitted: Mapping[str, Any]
) -> tuple[pa.ChunkedArray, ImputeCount]:
    dtype = col.type
    path = f"{CONFIG_FIELD}.impute.{name}"
    missing = _no_nulls(missing_mask(col))
    n_missing = count_true(missing)
    source: Literal["data", "fitted", "constant"]
    if rule.strategy == "constant":
        scalar, source = to_scalar(rule.value, dtype, f"{path}.value"), "constant"
    elif name in fitted:
        scalar = to_scalar(fitted[name], dtype, f"{CONFIG_FIELD}.fitted.{name}")
        source = "fitted"
    else:
        source = "data"
        values = pc.filter(col, pc.invert(missing))
        if len(values) == 0:
            if n_missing:
                raise DataError(
                    f"column {name!r}: cannot compute the {rule.strategy} to impute "
                    f"{n_missing:,} missing values: the column has no non-missing values; use "
                    f"strategy 'constant' or give {CONFIG_FIELD}.fitted.{name}"
                )
            return col, ImputeCount(name, rule.strategy, None, source, 0)
        if rule.strategy == "mean":
            stat: Any = pc.mean(values).as_py()
        elif rule.strategy == "median":
            stat = _quantiles(values, [0.5])[0]
        else:
            stat = _mode(values)
        if isinstance(stat, pa.Scalar):
            scalar = stat
        else:
            if kind_of(dtype) == "int":
                stat = round(stat)
            scalar = pa.scalar(stat).cast(dtype)
    out = pc.if_else(missing, scalar, col) if n_missing else col
    return out, ImputeCount(name, rule.strategy, plain_value(scalar.as_py()), source, n_missing)


# -- public API ---------------------------------------------------------------------------


def clean_table(
    table: pa.Table, config: CleanConfig | Mapping[str, Any] | str | None
) -> tuple[pa.Table, CleanReport]:
    """Apply the cleaning rules to ``table``; see the module docstring for order and semantics.

    Args:
        table: the input table.
        config: a :class:`CleanConfig`, or a dict / JSON string of one.

    Returns:
        The cleaned table and the :class:`CleanReport` counting every rule's effect.

    Raises:
        ConfigError: the config is malformed or does not fit the table (path named).
        DataError: ``coerce`` with ``on_error: fail`` met unparseable values, or a statistic
            could not be computed.
        ReconciliationError: internal; the row counts do not reconcile.
    """
    cfg = parse_config(CleanConfig, config, CONFIG_FIELD)
    plan = _validate(cfg, table.schema)
    rows_in, columns_in = table.num_rows, table.num_columns

    # 1. drop columns
    if cfg.drop_columns:
        table = table.drop(cfg.drop_columns)

    # 2. normalise strings
    normalized = []
    for _path, name, nrule in plan.normalize:
        col = table[name]
        out = col
        if nrule.trim:
            out = pc.utf8_trim_whitespace(out)
        if nrule.case == "lower":
            out = pc.utf8_lower(out)
        elif nrule.case == "upper":
            out = pc.utf8_upper(out)
        changed = count_true(pc.not_equal(col, out)) if out is not col else 0
        emptied = 0
        if nrule.empty_to_null:
            empty = _no_nulls(pc.equal(out, ""))
            emptied = count_true(empty)
            if emptied:
                out = pc.if_else(empty, pa.scalar(None, type=out.type), out)
        table = _set(table, name, out)
        normalized.append(NormalizeCount(name, nrule.trim, nrule.case, changed, emptied))

    # 3. coerce (all columns on the full table, so row indices are the input's; then drop)
    coerced = []
    drop_rows: pa.ChunkedArray | None = None
    for name, crule in cfg.coerce.items():
        col = table[name]
        result = _coerce(col, crule)
        bad_n = count_true(result.bad)
        if bad_n and crule.on_error == "fail":
            first = pc.index(result.bad, True).as_py()
            raise DataError(
                f"column {name!r}: {bad_n:,} value{'s' if bad_n != 1 else ''} cannot be "
                f"converted to {crule.type}; the first is {col[first].as_py()!r} at row {first} "
                f"(0-based). {CONFIG_FIELD}.coerce.{name}.on_error is 'fail'; use 'null' or "
                "'drop_row' to keep going"
            )
        dropped_here = 0
        if crule.on_error == "drop_row" and bad_n:
            if drop_rows is None:
                dropped_here, drop_rows = bad_n, result.bad
            else:
                dropped_here = count_true(pc.and_(result.bad, pc.invert(drop_rows)))
                drop_rows = pc.or_(drop_rows, result.bad)
        converted = 0 if col.type == result.values.type else len(col) - result.values.null_count
        coerced.append(
            CoerceCount(
                name,
                str(col.type),
                str(result.values.type),
                crule.on_error,
                converted,
                result.missing_to_null,
                bad_n,
                bad_n if crule.on_error == "null" else 0,
                dropped_here,
            )
        )
        table = _set(table, name, result.values)
    if drop_rows is not None:
        held = [table]
        del table
        table = _filter_releasing(held, pc.invert(drop_rows))

    # 4. deduplicate
    deduplicated = None
    if cfg.deduplicate is not None:
        dup = _deduplicate(table, cfg.deduplicate)
        n_dup = int(dup.sum())
        if n_dup:
            held = [table]
            del table
            table = _filter_releasing(held, pa.array(~dup))
        subset = tuple(cfg.deduplicate.subset) if cfg.deduplicate.subset else None
        deduplicated = DedupeCount(subset, cfg.deduplicate.keep, n_dup)

    # 5. drop rows with missing values
    missing = None
    if cfg.drop_rows_with_missing:
        per_column = {}
        any_missing: pa.ChunkedArray | None = None
        for name in cfg.drop_rows_with_missing:
            mask = _no_nulls(missing_mask(table[name]))
            per_column[name] = count_true(mask)
            any_missing = mask if any_missing is None else pc.or_(any_missing, mask)
        assert any_missing is not None
        n_missing = count_true(any_missing)
        if n_missing:
            held = [table]
            del table
            table = _filter_releasing(held, pc.invert(any_missing))
        missing = MissingCount(per_column, n_missing)

    # 6. clip outliers
    clipped = []
    for name, clip in cfg.clip_outliers.items():
        out, count = _clip(name, table[name], clip)
        table = _set(table, name, out)
        clipped.append(count)

    # 7. impute
    imputed = []
    for name, irule in cfg.impute.items():
        out, icount = _impute(name, table[name], irule, cfg.fitted)
        table = _set(table, name, out)
        imputed.append(icount)

    report = CleanReport(
        rows_in=rows_in,
        rows_out=table.num_rows,
        columns_in=columns_in,
        columns_out=table.num_columns,
        dropped_columns=tuple(cfg.drop_columns),
        normalized=tuple(normalized),
        coerced=tuple(coerced),
        deduplicated=deduplicated,
        missing=missing,
        clipped=tuple(clipped),
        imputed=tuple(imputed),
    )
    if report.rows_in != report.rows_out + report.rows_dropped:
        raise ReconciliationError(
            f"internal error: {report.rows_in} rows in, {report.rows_out} out, but the rules "
            f"account for {report.rows_dropped} dropped ({report.rows_dropped_by_rule}); "
            "please report this with the config"
        )
    return table, report


def clean_data(
    dataset_path: str,
    output_path: str,
    config: CleanConfig | Mapping[str, Any] | str | None,
    store: ObjectStore | None = None,
) -> CleanResult:
    """Read a dataset, clean it with :func:`clean_table`, write Parquet atomically.

    Args:
        dataset_path: a Parquet file, a folder holding ``data.parquet`` (or Parquet files), or
            an ``s3://`` object or prefix.
        output_path: a ``.parquet`` path or ``s3://`` URI, or a local file path without
            suffix (a KFP artifact's ``.path``), written as Parquet (zstd) atomically.
        config: the :class:`CleanConfig` (dict, JSON string or instance).
        store: object store for ``s3://`` paths; from the environment when omitted.

    Returns:
        :class:`CleanResult` with the output's :class:`TableInfo` and the report.

    Raises:
        ConfigError: bad parameter or config (named).
        DataError: unreadable input, or data the config rejects (file and column named).
    """
    if not isinstance(dataset_path, str | os.PathLike) or not os.fspath(dataset_path):
        raise ConfigError("dataset_path", "give the path or s3:// URI of the table to clean")
    if not isinstance(output_path, str | os.PathLike) or not os.fspath(output_path):
        raise ConfigError("output_path", "give the path or s3:// URI to write the cleaned table")
    check_destination(output_path, "output_path")
    cfg = parse_config(CleanConfig, config, CONFIG_FIELD)
    release_memory_promptly()
    # Handed over without a local reference, so clean_table's replaced columns and filtered
    # tables free the input's memory as it goes instead of keeping a second copy alive.
    source = [read_dataset(dataset_path, what="dataset", store=store)]
    try:
        cleaned, report = clean_table(source.pop(), cfg)
    except DataError as exc:
        raise DataError(f"{os.fspath(dataset_path)}: {exc}") from None
    info = write_dataset(cleaned, output_path, store)
    return CleanResult(info=info, report=report, source=os.fspath(dataset_path))
