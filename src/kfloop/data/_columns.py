"""Column helpers shared by the data operations (private to ``kfloop.data``).

Type kinds, the *missing* mask (null, or NaN in floating-point columns), typed scalars from
config values (with a :class:`~kfloop.core.errors.ConfigError` naming the config path), JSON-ready
values and Markdown tables for reports.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from kfloop.core.errors import ConfigError


def md_cell(value: Any) -> str:
    """One Markdown table cell: thousands separators, short floats, escaped pipes."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list[Any]] | list[tuple[Any, ...]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def kind_of(dtype: pa.DataType) -> str:
    """bool, int, float, string, timestamp, date, decimal, null or other."""
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_integer(dtype):
        return "int"
    if pa.types.is_floating(dtype):
        return "float"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    if pa.types.is_timestamp(dtype):
        return "timestamp"
    if pa.types.is_date(dtype):
        return "date"
    if pa.types.is_decimal(dtype):
        return "decimal"
    if pa.types.is_null(dtype):
        return "null"
    return "other"


def count_true(mask: pa.ChunkedArray | pa.Array) -> int:
    """Number of true values (nulls are not counted)."""
    return int(pc.sum(mask).as_py() or 0)


def missing_mask(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where null, or NaN in a floating-point column."""
    return pc.is_null(col, nan_is_null=pa.types.is_floating(col.type))


def plain_value(value: Any) -> Any:
    """A JSON-ready Python value (for the report and artifact metadata)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def columns_hint(names: list[str]) -> str:
    """ "available columns: a, b, ..." for error messages."""
    shown = ", ".join(names[:40])
    more = f", ... ({len(names) - 40} more)" if len(names) > 40 else ""
    return f"available columns: {shown}{more}" if names else "the table has no columns"


def to_scalar(value: Any, dtype: pa.DataType, path: str) -> pa.Scalar:
    """``value`` as a scalar of ``dtype``; ConfigError naming ``path`` when it does not fit."""
    kind = kind_of(dtype)
    bad = ConfigError(path, f"{value!r} is not a valid {dtype} value for this column")
    if isinstance(value, bool) and kind != "bool":
        raise bad
    try:
        if kind == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int):
                raise bad
            return pa.scalar(value, type=dtype)
        if kind == "float":
            if not isinstance(value, int | float):
                raise bad
            return pa.scalar(float(value), type=dtype)
        if kind == "string":
            if not isinstance(value, str):
                raise bad
            return pa.scalar(value, type=dtype)
        if kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return pa.scalar(value, type=dtype)
        if kind == "timestamp":
            if not isinstance(value, str | datetime):
                raise bad
            ts = pd.Timestamp(value)
            if dtype.tz is not None and ts.tz is None:
                ts = ts.tz_localize(dtype.tz)
            elif dtype.tz is None and ts.tz is not None:
                ts = ts.tz_convert("UTC").tz_localize(None)
            return pa.scalar(ts.to_pydatetime(), type=dtype)
        if kind == "date":
            if not isinstance(value, str | date):
                raise bad
            return pa.scalar(pd.Timestamp(value).date(), type=dtype)
        return pa.scalar(value).cast(dtype)
    except ConfigError:
        raise
    except (
        pa.ArrowInvalid,
        pa.ArrowTypeError,
        pa.ArrowNotImplementedError,
        ValueError,
        OverflowError,
    ):
        raise bad from None
