"""Split a table into train / validation / test: by key hash, seeded stratified random, or time.

Methods (``method``):

``hash`` (default)
    Each row goes by the FarmHash *Fingerprint64* of its key (``key_column``) modulo
    10,000 buckets: buckets below ``round(train_ratio * 10000)`` are train, the next
    ``round(validation_ratio * 10000)`` validation, the rest test. The key's bytes are its
    UTF-8 text for strings, the bytes themselves for binary columns and the base-10 ASCII
    text for integers (so ``42`` and ``"42"`` land together). *Stability guarantee*: a key's
    split depends on nothing but the key and the ratios - not on the other rows, their order,
    the seed, the machine or the library versions. Fingerprint64 is frozen by FarmHash's
    contract ("fingerprints never change"), TensorFlow documents its vectorised
    ``tf.strings.to_hash_bucket_fast`` (used here, about 0.1 s per million keys) as "will never
    change", and it is the same function as ``farmhash.fingerprint64`` of PyPI's
    ``pyfarmhash`` (the tests check both agree). Adding rows later therefore never moves an
    existing key to another split, and rows sharing a key always stay together. A null key is
    an error. The seed is not used.
``random``
    A seeded random split. With ``stratify_column`` it is stratified: every class (null is a
    class of its own) is cut in the ratios separately, so each split keeps the class
    proportions of the whole table (within one row per class). The result depends on the
    seed and on the row order of the input.
``time``
    Rows ordered by ``time_column`` (timestamp, date or number): the oldest go to train,
    then validation, the newest to test. Ties are resolved by value, never by row order: the
    cut points are the values at the target row counts and every row whose time equals a cut
    point goes to the earlier split, so one timestamp never straddles two splits (and the
    result does not depend on row order). The cut values are recorded in ``split.json``.
    A null (or NaN) time is an error. The seed is not used.

Outputs of :func:`split_dataset` (a local folder, created atomically: it is built in a
hidden sibling folder and renamed into place at the end; on failure nothing is left)::

    <output_dir>/train.parquet, validation.parquet, test.parquet     (zstd, schema kept)
    <output_dir>/tfrecord/train-00000-of-00002.tfrecord.gz ...       (tf.Example, GZIP)
    <output_dir>/split.json     method, ratios, seed, key, rows and sha256 per split, ...

:func:`split_to_artifacts` writes the same splits as three *split artifact folders* (the
``split_dataset`` component's outputs)::

    <artifact>/data.parquet
    <artifact>/tfrecord/part-00000-of-00001.tfrecord.gz ...

Downstream code finds the table of such a folder with :func:`split_artifact_parquet` and its
shards with :func:`split_artifact_tfrecords`. Rows keep their input order within a split.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfloop.core.arrowio import write_parquet
from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import is_s3_uri
from kfloop.data._dataset_io import DATA_FILE, read_dataset, release_memory_promptly
from kfloop.data.tfrecord import (
    COMPRESSION,
    SHARD_SUFFIX,
    example_feature_types,
    shard_names,
    write_tfrecord_shards,
)

SPLITS = ("train", "validation", "test")
METHODS = ("hash", "random", "time")
HASH_BUCKETS = 10_000
HASH_FUNCTION = "farmhash.fingerprint64"
RATIO_TOLERANCE = 1e-6
DEFAULT_RATIOS = (0.8, 0.1, 0.1)
MANIFEST = "split.json"
TFRECORD_DIR = "tfrecord"
ARTIFACT_PARQUET = DATA_FILE
ARTIFACT_SHARD_PREFIX = "part"


@dataclass(frozen=True)
class SplitOutput:
    """One written split: its Parquet file and TFRecord shards."""

    name: str
    rows: int
    columns: int
    parquet: str
    sha256: str
    bytes: int
    tfrecord_shards: tuple[str, ...]

    def as_metadata(self) -> dict[str, Any]:
        """Plain values for a KFP artifact's ``metadata`` (shard paths relative to the folder
        holding the Parquet file)."""
        folder = Path(self.parquet).parent
        return {
            "split": self.name,
            "rows": self.rows,
            "columns": self.columns,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "tfrecord_shards": [os.path.relpath(s, folder) for s in self.tfrecord_shards],
        }


@dataclass(frozen=True)
class SplitResult:
    """What :func:`split_dataset` / :func:`split_to_artifacts` wrote.

    ``manifest`` is the content of ``split.json`` (also for artifacts, where no file holds it).
    """

    method: str
    ratios: tuple[float, float, float]
    seed: int
    source_rows: int
    splits: Mapping[str, SplitOutput]
    manifest: Mapping[str, Any] = field(repr=False)
    output_dir: str | None = None

    @property
    def rows(self) -> dict[str, int]:
        """Rows per split."""
        return {name: out.rows for name, out in self.splits.items()}


@dataclass(frozen=True)
class _Plan:
    ratios: tuple[float, float, float]
    method: str
    key_column: str | None
    stratify_column: str | None
    time_column: str | None
    seed: int


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if isinstance(ratios, str | bytes) or not isinstance(ratios, Sequence) or len(ratios) != 3:
        raise ConfigError(
            "ratios", f"must be three numbers (train, validation, test), got {ratios!r}"
        )
    values = []
    for name, value in zip(SPLITS, ratios, strict=True):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError("ratios", f"the {name} ratio must be a number, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(
                "ratios",
                f"the {name} ratio must be > 0, got {value!r}; every split needs rows",
            )
        values.append(float(value))
    total = math.fsum(values)
    if abs(total - 1.0) > RATIO_TOLERANCE:
        raise ConfigError(
            "ratios",
            f"must sum to 1 (within {RATIO_TOLERANCE:g}); {' + '.join(f'{v:g}' for v in values)}"
            f" = {total:.9g}",
        )
    return values[0], values[1], values[2]


def _optional_name(value: str | None, field_name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(field_name, f"must be a column name, got {value!r}")
    return value


def _plan(
    ratios: Sequence[float],
    method: str,
    key_column: str | None,
    stratify_column: str | None,
    time_column: str | None,
    seed: int,
) -> _Plan:
    checked = _check_ratios(ratios)
    if method not in METHODS:
        raise ConfigError("method", f"must be one of {', '.join(METHODS)}; got {method!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed", f"must be an integer >= 0, got {seed!r}")
    key = _optional_name(key_column, "key_column")
    stratify = _optional_name(stratify_column, "stratify_column")
    time = _optional_name(time_column, "time_column")
    if method == "hash" and key is None:
        raise ConfigError("key_column", "method 'hash' needs the name of the key column")
    if method == "time" and time is None:
        raise ConfigError("time_column", "method 'time' needs the name of the time column")
    if stratify is not None and method != "random":
        raise ConfigError(
            "stratify_column",
            f"is only used by method 'random', not {method!r}; leave it empty or use 'random'",
        )
    if time is not None and method != "time":
        raise ConfigError(
            "time_column",
            f"is only used by method 'time', not {method!r}; leave it empty or use 'time'",
        )
    return _Plan(
        ratios=checked,
        method=method,
        key_column=key if method == "hash" else None,
        stratify_column=stratify,
        time_column=time,
        seed=seed,
    )


def _column(table: pa.Table, name: str, field_name: str) -> pa.Array:
    if name not in table.column_names:
        raise ConfigError(
            field_name,
            f"column {name!r} is not in the table; its columns are: "
            + ", ".join(table.column_names),
        )
    column = table.column(name)
    return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def _first_null(column: pa.Array) -> int:
    return int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))


def _is_key_type(dtype: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(dtype)
        or pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_binary(dtype)
        or pa.types.is_large_binary(dtype)
    )


def key_hash_buckets(
    keys: pa.Array | pa.ChunkedArray, num_buckets: int = HASH_BUCKETS
) -> np.ndarray:
    """``Fingerprint64(key bytes) % num_buckets`` for every key, vectorised (TensorFlow).

    Args:
        keys: integer, string or binary keys (or a dictionary of those), without nulls.
        num_buckets: bucket count.

    Returns:
        ``numpy.ndarray`` of int64 buckets, one per key.
    """
    import tensorflow as tf

    chunks = keys.chunks if isinstance(keys, pa.ChunkedArray) else [keys]
    out: list[np.ndarray] = []
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        if pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_decode()
        if chunk.null_count:
            raise DataError(f"{chunk.null_count} null key(s): a null key cannot be hashed")
        if pa.types.is_integer(chunk.type):
            chunk = pc.cast(chunk, pa.string())
        if not _is_key_type(chunk.type):
            raise DataError(f"keys of type {chunk.type} cannot be hashed; use integers or strings")
        large = pa.types.is_large_string(chunk.type) or pa.types.is_large_binary(chunk.type)
        _, offsets_buf, data_buf = chunk.buffers()
        offsets = np.frombuffer(
            offsets_buf,
            dtype=np.int64 if large else np.int32,
            count=len(chunk) + 1,
            offset=chunk.offset * (8 if large else 4),
        )
        data = data_buf.to_pybytes() if data_buf is not None else b""
        # One scalar string tensor sliced into the keys: no Python object per row.
        strings = tf.strings.substr(tf.constant(data), offsets[:-1], np.diff(offsets))
        out.append(tf.strings.to_hash_bucket_fast(strings, num_buckets).numpy())
    if not out:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(out).astype(np.int64)


def _cumulative(ratios: tuple[float, float, float]) -> tuple[float, float]:
    return ratios[0], ratios[0] + ratios[1]


def _assign_hash(table: pa.Table, plan: _Plan) -> tuple[np.ndarray, dict[str, Any]]:
    assert plan.key_column is not None
    keys = _column(table, plan.key_column, "key_column")
    dtype = keys.type.value_type if pa.types.is_dictionary(keys.type) else keys.type
    if not _is_key_type(dtype):
        raise ConfigError(
            "key_column",
            f"column {plan.key_column!r} has type {keys.type}; hash splitting needs an integer "
            "or string key (a unique id), or use method 'random' or 'time'",
        )
    if keys.null_count:
        raise DataError(
            f"key column {plan.key_column!r} has {keys.null_count} null value(s) out of "
            f"{len(keys)} rows (first at row {_first_null(keys)}); every row needs a key for a "
            "stable hash split: fill or drop them"
        )
    buckets = key_hash_buckets(keys)
    low, high = _cumulative(plan.ratios)
    bound1, bound2 = round(low * HASH_BUCKETS), round(high * HASH_BUCKETS)
    assignment = np.where(buckets < bound1, 0, np.where(buckets < bound2, 1, 2)).astype(np.int8)
    details = {
        "function": HASH_FUNCTION,
        "key_bytes": "UTF-8 of strings, raw binary, base-10 ASCII of integers",
        "buckets": HASH_BUCKETS,
        "train_buckets": [0, bound1],
        "validation_buckets": [bound1, bound2],
        "test_buckets": [bound2, HASH_BUCKETS],
    }
    return assignment, {"hash": details}


def _assign_random(table: pa.Table, plan: _Plan) -> tuple[np.ndarray, dict[str, Any]]:
    n = table.num_rows
    rng = np.random.default_rng(plan.seed)
    perm = rng.permutation(n)
    if plan.stratify_column is not None:
        labels = _column(table, plan.stratify_column, "stratify_column")
        if pa.types.is_dictionary(labels.type):
            labels = labels.dictionary_decode()
        try:
            encoded = labels.dictionary_encode()
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            raise ConfigError(
                "stratify_column",
                f"column {plan.stratify_column!r} has type {labels.type}, which cannot be used "
                "as classes; stratify on a label column of strings, integers or booleans",
            ) from None
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        codes = np.zeros(n, dtype=np.int64)
    # Group rows by class, keeping the random order inside each class.
    permuted_codes = codes[perm]
    order = np.argsort(permuted_codes, kind="stable")
    rows = perm[order]
    classes, starts, sizes = np.unique(permuted_codes[order], return_index=True, return_counts=True)
    rank = np.arange(n) - np.repeat(starts, sizes)
    size = np.repeat(sizes, sizes).astype(np.float64)
    # A random offset per class rounds its cut points up or down without bias, so many small
    # classes do not all round the same way; each class is still within one row of its share.
    offset = np.repeat(rng.random(len(classes)), sizes)
    low, high = _cumulative(plan.ratios)
    position = rank + offset
    split = np.where(position < size * low, 0, np.where(position < size * high, 1, 2))
    assignment = np.empty(n, dtype=np.int8)
    assignment[rows] = split
    details: dict[str, Any] = {}
    if plan.stratify_column is not None:
        counts: dict[str, dict[str, int]] = {}
        values = encoded.dictionary.to_pylist()
        for index, name in enumerate(SPLITS):
            mask = assignment == index
            found, number = np.unique(codes[mask], return_counts=True)
            counts[name] = {
                ("null" if c < 0 else str(values[c])): int(k)
                for c, k in zip(found, number, strict=True)
            }
        details["class_counts"] = counts
    return assignment, details


def _time_values(column: pa.Array, name: str) -> np.ndarray:
    dtype = column.type
    if pa.types.is_timestamp(dtype):
        return column.cast(pa.int64()).to_numpy(zero_copy_only=False)
    if pa.types.is_date32(dtype):
        return column.view(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_date64(dtype):
        return column.view(pa.int64()).to_numpy(zero_copy_only=False)
    if pa.types.is_integer(dtype):
        return pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
    if pa.types.is_floating(dtype):
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        nan = np.isnan(values)
        if nan.any():
            raise DataError(
                f"time column {name!r} has {int(nan.sum())} NaN value(s) (first at row "
                f"{int(np.argmax(nan))}); every row needs a time: fill or drop them"
            )
        return values
    raise ConfigError(
        "time_column",
        f"column {name!r} has type {dtype}; time splitting needs a timestamp, date or number",
    )


def _time_label(value: Any, dtype: pa.DataType) -> Any:
    if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        storage = pa.int32() if pa.types.is_date32(dtype) else pa.int64()
        return pa.array([int(value)], storage).view(dtype)[0].as_py().isoformat()
    return value.item() if hasattr(value, "item") else value


def _assign_time(table: pa.Table, plan: _Plan) -> tuple[np.ndarray, dict[str, Any]]:
    assert plan.time_column is not None
    column = _column(table, plan.time_column, "time_column")
    if column.null_count:
        raise DataError(
            f"time column {plan.time_column!r} has {column.null_count} null value(s) out of "
            f"{len(column)} rows (first at row {_first_null(column)}); every row needs a time: "
            "fill or drop them"
        )
    values = _time_values(column, plan.time_column)
    n = len(values)
    ordered = np.sort(values, kind="stable")
    low, high = _cumulative(plan.ratios)
    count1, count2 = math.floor(n * low + 0.5), math.floor(n * high + 0.5)
    # With too few rows a cut may fall before the first row: that split is then empty and
    # _split reports it.
    end1 = ordered[count1 - 1] if count1 > 0 else ordered[0] - 1
    end2 = ordered[count2 - 1] if count2 > count1 else end1
    assignment = np.where(values <= end1, 0, np.where(values <= end2, 1, 2)).astype(np.int8)
    bounds = {
        "train_end": _time_label(end1, column.type),
        "validation_end": _time_label(end2, column.type),
        "rule": "train: time <= train_end; validation: train_end < time <= validation_end; "
        "test: time > validation_end",
    }
    return assignment, {"time_bounds": bounds}


def _empty_split_hint(plan: _Plan, name: str) -> str:
    if plan.method == "hash":
        return (
            f"there are too few distinct keys in {plan.key_column!r} for these ratios; add rows, "
            f"raise the {name} ratio or use method 'random'"
        )
    if plan.method == "time":
        return (
            f"rows with equal {plan.time_column!r} values never straddle two splits, and there "
            f"are too few distinct times; add rows or raise the {name} ratio"
        )
    return f"there are too few rows for these ratios; add rows or raise the {name} ratio"


def _assignment(table: pa.Table, plan: _Plan, source: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Split index (0, 1, 2) of every row; DataError if a split would be empty."""
    if table.num_rows == 0:
        raise DataError(f"{source}: the table has no rows; there is nothing to split")
    assign = {"hash": _assign_hash, "random": _assign_random, "time": _assign_time}[plan.method]
    try:
        assignment, details = assign(table, plan)
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None
    counts = np.bincount(assignment, minlength=3)
    for index, name in enumerate(SPLITS):
        if counts[index] == 0:
            shares = ", ".join(f"{s}={int(c)}" for s, c in zip(SPLITS, counts, strict=True))
            raise DataError(
                f"{source}: split {name!r} would be empty (method {plan.method!r}, "
                f"{table.num_rows} rows: {shares}); {_empty_split_hint(plan, name)}"
            )
    return assignment, details


def _split(table: pa.Table, plan: _Plan, source: str) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    assignment, details = _assignment(table, plan, source)
    parts = {name: table.filter(pa.array(assignment == i)) for i, name in enumerate(SPLITS)}
    return parts, details


@dataclass
class _ReadSplit:
    parts: dict[str, pa.Table]
    details: dict[str, Any]
    schema: pa.Schema
    source_rows: int


def _read_and_split(dataset_path: str, plan: _Plan) -> _ReadSplit:
    """Read ``dataset_path`` and split it, holding about one copy of the table at a time.

    Columns are filtered one at a time and each input column is released as soon as its
    three parts exist, so the peak is the table plus one column rather than two tables.
    """
    source = str(dataset_path)
    table = read_dataset(dataset_path)
    assignment, details = _assignment(table, plan, source)
    schema, source_rows = table.schema, table.num_rows
    columns = table.columns
    del table  # from here on ``columns`` holds the only references to the input's data
    masks = [pa.array(assignment == i) for i in range(len(SPLITS))]
    del assignment
    split_columns: list[list[pa.ChunkedArray]] = [[] for _ in SPLITS]
    columns.reverse()
    while columns:
        column = columns.pop()
        for parts_of_split, mask in zip(split_columns, masks, strict=True):
            parts_of_split.append(column.filter(mask))
        del column  # released here: no table refers to it any more
    parts = {
        name: pa.Table.from_arrays(cols, schema=schema)
        for name, cols in zip(SPLITS, split_columns, strict=True)
    }
    return _ReadSplit(parts, details, schema, source_rows)


def split_table(
    table: pa.Table,
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    method: str = "hash",
    key_column: str | None = "id",
    stratify_column: str | None = None,
    time_column: str | None = None,
    seed: int = 0,
) -> dict[str, pa.Table]:
    """Split ``table`` into ``{"train", "validation", "test"}`` tables (see the module docs).

    Args:
        table: rows to split; every column is kept, rows keep their order within a split.
        ratios: train, validation and test fractions, each > 0, summing to 1 (within 1e-6).
        method: ``hash`` (stable by key), ``random`` (seeded, optionally stratified) or
            ``time`` (oldest to newest).
        key_column: integer or string key column hashed by ``hash`` (ignored otherwise).
        stratify_column: class column whose proportions ``random`` keeps in every split.
        time_column: timestamp, date or numeric column ordering rows for ``time``.
        seed: seed of ``random`` (>= 0); ``hash`` and ``time`` do not use it.

    Returns:
        The three splits, in the order train, validation, test.

    Raises:
        ConfigError: a parameter is invalid or names a missing/unsuitable column.
        DataError: null keys or times, an empty table, or a split that would be empty.
    """
    plan = _plan(ratios, method, key_column, stratify_column, time_column, seed)
    parts, _ = _split(table, plan, "table")
    return parts


def _check_output_dir(output_dir: str | os.PathLike[str], field_name: str) -> Path:
    text = os.fspath(output_dir)
    if not text:
        raise ConfigError(field_name, "must be a local folder path, got an empty string")
    if is_s3_uri(text):
        raise ConfigError(
            field_name,
            f"must be a local folder (it is created atomically by a rename), got {text!r}; "
            "write locally and upload the folder",
        )
    path = Path(text)
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise ConfigError(
            field_name, f"{text} already exists and is not empty; choose a new folder"
        )
    return path


def _temp_sibling(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))


def _write_split(
    name: str,
    table: pa.Table,
    folder: Path,
    parquet_name: str,
    shard_prefix: str,
    num_shards: int,
    write_tfrecord: bool,
) -> SplitOutput:
    info = write_parquet(table, folder / parquet_name)
    shards: list[str] = []
    if write_tfrecord:
        paths = write_tfrecord_shards(table, folder / TFRECORD_DIR, shard_prefix, num_shards)
        shards = [f"{TFRECORD_DIR}/{Path(p).name}" for p in paths]
    return SplitOutput(
        name=name,
        rows=table.num_rows,
        columns=table.num_columns,
        parquet=parquet_name,
        sha256=info.sha256,
        bytes=info.bytes,
        tfrecord_shards=tuple(shards),
    )


def _manifest(
    plan: _Plan,
    source: str,
    source_rows: int,
    details: dict[str, Any],
    outputs: Mapping[str, SplitOutput],
    schema: pa.Schema,
    num_shards: int,
    write_tfrecord: bool,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "method": plan.method,
        "ratios": dict(zip(SPLITS, plan.ratios, strict=True)),
        "seed": plan.seed,
        "key_column": plan.key_column,
        "stratify_column": plan.stratify_column,
        "time_column": plan.time_column,
        "source": source,
        "source_rows": source_rows,
        "rows": {name: out.rows for name, out in outputs.items()},
        "sha256": {name: out.sha256 for name, out in outputs.items()},
        "parquet": {name: out.parquet for name, out in outputs.items()},
    }
    manifest.update(details)
    if write_tfrecord:
        manifest["tfrecord"] = {
            "format": "tf.Example",
            "compression": COMPRESSION,
            "num_shards": num_shards,
            "files": {name: list(out.tfrecord_shards) for name, out in outputs.items()},
            "features": example_feature_types(schema),
        }
    else:
        manifest["tfrecord"] = None
    return manifest


def _check_write_options(num_shards: int, write_tfrecord: bool) -> None:
    if not isinstance(write_tfrecord, bool):
        raise ConfigError("write_tfrecord", f"must be true or false, got {write_tfrecord!r}")
    shard_names("check", num_shards)  # ConfigError naming num_shards when out of range


def split_dataset(
    dataset_path: str,
    output_dir: str,
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    method: str = "hash",
    key_column: str | None = "id",
    stratify_column: str | None = None,
    time_column: str | None = None,
    seed: int = 0,
    num_shards: int = 1,
    write_tfrecord: bool = True,
) -> SplitResult:
    """Split a dataset and write Parquet, TFRecord shards and ``split.json`` to ``output_dir``.

    Args:
        dataset_path: Parquet/Arrow/CSV file, a folder holding ``data.parquet`` or Parquet
            files, local or ``s3://``.
        output_dir: local folder to create (it must not exist, or be empty). Built in a
            hidden sibling folder and renamed into place when complete.
        ratios: train, validation and test fractions, each > 0, summing to 1 (within 1e-6).
        method: ``hash``, ``random`` or ``time`` (see the module docs).
        key_column: key hashed by ``hash``.
        stratify_column: class column kept proportional by ``random``.
        time_column: column ordering rows for ``time``.
        seed: seed of ``random``.
        num_shards: TFRecord files per split (1 to 10,000).
        write_tfrecord: also write the ``tf.Example`` shards.

    Returns:
        What was written, with the manifest.

    Raises:
        ConfigError: a parameter is invalid (names it), or ``output_dir`` is not empty.
        DataError: unreadable input, null keys/times, or a split that would be empty.
    """
    plan = _plan(ratios, method, key_column, stratify_column, time_column, seed)
    _check_write_options(num_shards, write_tfrecord)
    final = _check_output_dir(output_dir, "output_dir")
    release_memory_promptly()
    read = _read_and_split(dataset_path, plan)
    tmp = _temp_sibling(final)
    try:
        outputs: dict[str, SplitOutput] = {}
        for name in SPLITS:
            part = read.parts.pop(name)  # written, then released before the next split
            outputs[name] = _write_split(
                name, part, tmp, f"{name}.parquet", name, num_shards, write_tfrecord
            )
            del part
        manifest = _manifest(
            plan,
            str(dataset_path),
            read.source_rows,
            read.details,
            outputs,
            read.schema,
            num_shards,
            write_tfrecord,
        )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        if final.is_dir():
            final.rmdir()  # empty (checked above); replaced by the complete folder
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SplitResult(
        method=plan.method,
        ratios=plan.ratios,
        seed=plan.seed,
        source_rows=read.source_rows,
        splits={
            name: _replace_paths(out, final / out.parquet, final) for name, out in outputs.items()
        },
        manifest=manifest,
        output_dir=str(final),
    )


def _replace_paths(out: SplitOutput, parquet: Path, folder: Path) -> SplitOutput:
    return SplitOutput(
        name=out.name,
        rows=out.rows,
        columns=out.columns,
        parquet=str(parquet),
        sha256=out.sha256,
        bytes=out.bytes,
        tfrecord_shards=tuple(str(folder / s) for s in out.tfrecord_shards),
    )


def split_to_artifacts(
    dataset_path: str,
    artifact_dirs: Mapping[str, str],
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    method: str = "hash",
    key_column: str | None = "id",
    stratify_column: str | None = None,
    time_column: str | None = None,
    seed: int = 0,
    num_shards: int = 1,
    write_tfrecord: bool = True,
) -> SplitResult:
    """Split a dataset into three split artifact folders (``data.parquet`` + ``tfrecord/``).

    Same parameters as :func:`split_dataset`, except ``artifact_dirs``: ``{"train": path,
    "validation": path, "test": path}``, local folders that must not exist yet (or be empty).
    All three are built in hidden sibling folders and renamed into place only when every one
    is complete; on failure none is left. Shards are named
    ``tfrecord/part-00000-of-00001.tfrecord.gz``.
    """
    plan = _plan(ratios, method, key_column, stratify_column, time_column, seed)
    _check_write_options(num_shards, write_tfrecord)
    if not isinstance(artifact_dirs, Mapping) or sorted(artifact_dirs) != sorted(SPLITS):
        raise ConfigError(
            "artifact_dirs",
            f"must map exactly {', '.join(SPLITS)} to folders, got {artifact_dirs!r}",
        )
    finals = {name: _check_output_dir(artifact_dirs[name], name) for name in SPLITS}
    release_memory_promptly()
    read = _read_and_split(dataset_path, plan)
    temps: dict[str, Path] = {}
    placed: list[Path] = []
    try:
        outputs: dict[str, SplitOutput] = {}
        for name in SPLITS:
            part = read.parts.pop(name)  # written, then released before the next split
            temps[name] = _temp_sibling(finals[name])
            outputs[name] = _write_split(
                name,
                part,
                temps[name],
                ARTIFACT_PARQUET,
                ARTIFACT_SHARD_PREFIX,
                num_shards,
                write_tfrecord,
            )
            del part
        manifest = _manifest(
            plan,
            str(dataset_path),
            read.source_rows,
            read.details,
            outputs,
            read.schema,
            num_shards,
            write_tfrecord,
        )
        for name in SPLITS:
            if finals[name].is_dir():
                finals[name].rmdir()
            os.replace(temps[name], finals[name])
            placed.append(finals[name])
    except BaseException:
        for path in [*temps.values(), *placed]:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return SplitResult(
        method=plan.method,
        ratios=plan.ratios,
        seed=plan.seed,
        source_rows=read.source_rows,
        splits={
            name: _replace_paths(out, finals[name] / out.parquet, finals[name])
            for name, out in outputs.items()
        },
        manifest=manifest,
        output_dir=None,
    )


def split_artifact_parquet(path: str | os.PathLike[str]) -> str:
    """The Parquet file of a split artifact: ``<path>/data.parquet``.

    A path that is itself a Parquet file (ends in ``.parquet``) is returned unchanged, so
    downstream operations accept both a split artifact and a plain table.

    Raises:
        DataError: ``path`` is neither a Parquet file nor a folder holding ``data.parquet``.
    """
    text = os.fspath(path)
    local = Path(text)
    if local.is_dir():
        candidate = local / ARTIFACT_PARQUET
        if candidate.is_file():
            return str(candidate)
        raise DataError(
            f"{text}: not a split artifact folder: it holds no {ARTIFACT_PARQUET} "
            "(expected the output of split_dataset)"
        )
    if text.lower().endswith(".parquet") and local.is_file():
        return text
    raise DataError(f"{text}: no such split artifact folder or Parquet file")


def split_artifact_tfrecords(path: str | os.PathLike[str]) -> list[str]:
    """The TFRecord shards of a split artifact folder, in shard order (empty if none)."""
    folder = Path(split_artifact_parquet(path)).parent / TFRECORD_DIR
    if not Path(path).is_dir() or not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir() if p.name.endswith(SHARD_SUFFIX) and p.is_file())
