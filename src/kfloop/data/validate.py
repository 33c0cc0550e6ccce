"""Validate a table with TensorFlow Data Validation: statistics, schema, anomalies and drift.

What :func:`validate_table` does, and the choices behind it:

Statistics (in memory, by default)
    The Parquet file(s) are read chunk by chunk (``chunk_rows`` rows at a time with
    ``pq.ParquetFile.iter_batches``); every chunk is turned into the record batch TFDV
    expects (:func:`to_tfdv_record_batch`: one *list* column per feature, a null value
    becoming a null list, i.e. *missing*) and handed to TFDV's in-memory generators.
    ``stats_impl.generate_statistics_in_memory(batch)`` is ``generate_partial_statistics_in_memory``
    (accumulators for one batch) followed by ``extract_statistics_output``. To combine chunks we
    call the first half per chunk, merge the accumulators with each generator's own
    ``merge_accumulators`` (what ``tfdv.generate_statistics_from_dataframe(n_jobs>1)`` and
    the Beam ``CombineFn`` do) and extract once at the end. Counts, missing counts, mean,
    standard deviation, min/max and top values are therefore exact over the whole table.
    Quantiles, median and histograms come from TFDV's quantile sketches (``epsilon=0.01``)
    and are approximate, as on Beam: they move slightly with the chunking (1,000,000 rows in
    64k-row chunks vs one batch: medians within 0.001 standard deviations); counts and means
    do not.
    Merging the *finished* per-chunk protos is not possible: tfx_bsl's
    ``merge_util.merge_dataset_feature_statistics`` joins shards that hold *different*
    features or slices: given chunks of the same features it refuses them when their
    ``num_examples`` differ and keeps one chunk's counts when they are equal; it never adds.

Statistics on Beam (``beam_pipeline_args`` non-empty)
    A Beam pipeline built with those arguments reads the same files with
    ``beam.io.ReadAllFromParquetBatched``, converts every batch with the same
    :func:`to_tfdv_record_batch` and runs ``tfdv.GenerateStatistics``. The DirectRunner
    gives the same counts as the in-memory path (tested); other runners (Flink, Spark,
    Dataflow) need their own arguments and a file system they can read.

Column conversion (flat Arrow/Parquet columns to TFDV's list columns)
    int8..int64/uint8..uint64 -> int64 (a uint64 above 2**63-1 is a DataError); floats kept;
    string/large_string -> binary/large_binary (zero copy); bool -> int64 0/1 (TFDV infers a
    ``bool_domain``); timestamp -> int64 *microseconds since the Unix epoch, UTC*;
    date32 -> int64 days since the epoch; date64 -> int64 milliseconds; time/duration ->
    int64 in their unit; decimal -> float64; dictionary -> its decoded values; an all-null
    column (Arrow ``null``) stays null (TFDV counts it as missing and reports it as STRING).
    :attr:`ValidationResult.conversions` lists every column whose meaning changed. Nested
    columns (list, struct, map) are refused with a :class:`DataError` naming the column:
    kfloop tables are flat. Timestamps and dates are kept (their presence and range are
    validated) but get no drift comparator: time moves forward between runs, so their
    distribution always "drifts".

Schema
    Inferred from the current statistics (``tfdv.infer_schema``) unless ``schema_path`` names
    a curated ``schema.pbtxt`` (``tfdv.load_schema_text``). To catch type changes between
    runs (a numeric column that became a string), pass the previous run's ``schema.pbtxt``
    as the curated schema: an inferred schema always agrees with the data it came from.
    The schema written out is the one validated against, drift comparators included.
    Statistics are always computed without the schema (``tfdv.StatsOptions()``), so two
    runs produce comparable statistics whatever schema each one was given.

Drift (retraining runs: ``previous_statistics_path`` given)
    Every feature without a comparator in the schema gets one: ``infinity_norm`` with
    ``drift_threshold_categorical`` for BYTES (string) features and
    ``jensen_shannon_divergence`` with ``drift_threshold_numeric`` for INT/FLOAT features.
    Comparators already present in a curated schema are kept (hand-set per-feature
    thresholds win). Timestamp/date columns and ``drift_exclude`` columns get none. Every
    measured value is returned (:attr:`ValidationResult.drift`), above threshold or not.

Severity: blocking or not
    TFDV rates every anomaly ERROR unless its ``severity_overrides`` say otherwise. We
    pass overrides to TFDV (``validation_api.validate_statistics_internal``, which
    ``tfdv.validate_statistics`` calls with no options): anomaly types listed in
    ``warning_anomaly_types`` become WARNING, and drift anomalies (``COMPARATOR_*``)
    become WARNING unless ``fail_on_drift``. The step fails (:class:`ValidationFailed`, a
    :class:`DataError`) when an ERROR anomaly remains and ``fail_on_anomalies`` is on (or it is
    a drift anomaly and ``fail_on_drift`` is on). The message lists one anomaly per line:
    feature, short description, long description. WARNING anomalies never fail the step;
    they are returned and written.

Outputs and atomicity
    ``stats.tfrecord`` (a one-record TFRecord holding the ``DatasetFeatureStatisticsList``:
    what ``tfdv.WriteStatisticsToTFRecord`` writes and ``tfdv.load_statistics`` reads),
    ``schema.pbtxt``, ``anomalies.pbtxt`` (text protos) and ``statistics.html``. TFRecord
    rather than TFX's bare binary ``FeatureStats.pb`` because ``tfdv.load_statistics`` reads
    TFRecord and text only; :func:`load_statistics` reads all three, so a TFX
    ``FeatureStats.pb`` works as previous statistics. They are
    written into a hidden temporary folder inside ``output_dir`` and renamed into place one
    by one only once all four are complete; on any error the temporary folder is removed,
    so no file ever appears half-written. Bad inputs (missing file, empty table, unreadable
    schema) leave nothing. A *blocking anomaly* is not a bad input: the four outputs are
    complete and are the record of why the step failed, so they are moved into place
    before :class:`ValidationFailed` is raised (the exception carries the result). On a
    cluster KFP does not publish the outputs of a failed task, which is why the error
    message itself carries the list of anomalies.
"""

from __future__ import annotations

import html
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import ObjectStore, S3Uri, is_s3_uri
from kfloop.data._dataset_io import DATA_FILE, release_memory_promptly

STATISTICS_FILE = "stats.tfrecord"
SCHEMA_FILE = "schema.pbtxt"
ANOMALIES_FILE = "anomalies.pbtxt"
REPORT_FILE = "statistics.html"
OUTPUT_FILES = (STATISTICS_FILE, SCHEMA_FILE, ANOMALIES_FILE, REPORT_FILE)
# Statistics files written by others that previous_statistics_path may point into.
STATISTICS_FILE_NAMES = (STATISTICS_FILE, "FeatureStats.pb", "stats.pb", "stats.pbtxt")

DRIFT_TYPE_PREFIX = "COMPARATOR_"
L_INFTY = "L_INFTY"
JENSEN_SHANNON = "JENSEN_SHANNON_DIVERGENCE"
_MAX_ROWS_PER_CHUNK = 10_000_000
# Rows per record batch handed to TFDV: on 1M rows x 17 columns 262,144 took about 5% less
# CPU than 65,536 (fewer per-batch conversions and accumulator merges); 1,048,576 no less.
DEFAULT_CHUNK_ROWS = 262_144


@dataclass(frozen=True)
class Anomaly:
    """One reason TFDV gave for one feature (or ``<dataset>`` for dataset-level anomalies)."""

    feature: str
    type: str
    short_description: str
    description: str
    severity: str
    drift: bool

    def line(self) -> str:
        """``feature: short description: long description [SEVERITY]`` on one line."""
        long = " ".join(self.description.split())
        return f"{self.feature}: {self.short_description}: {long} [{self.severity}]"


@dataclass(frozen=True)
class Drift:
    """A drift measurement TFDV made between the current and the previous statistics."""

    feature: str
    measure: str
    value: float
    threshold: float

    @property
    def drifted(self) -> bool:
        """True when the value is above the threshold (TFDV's rule)."""
        return self.value > self.threshold


@dataclass(frozen=True)
class ValidationResult:
    """Where the outputs are and what validation found."""

    statistics_path: str
    schema_path: str
    anomalies_path: str
    report_path: str
    num_examples: int
    num_features: int
    schema_inferred: bool
    engine: str
    anomalies: tuple[Anomaly, ...]
    drift: tuple[Drift, ...]
    conversions: dict[str, str] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        """Anomalies rated ERROR."""
        return sum(a.severity == "ERROR" for a in self.anomalies)

    @property
    def warning_count(self) -> int:
        """Anomalies rated WARNING (never blocking)."""
        return sum(a.severity != "ERROR" for a in self.anomalies)

    @property
    def drifted_features(self) -> tuple[str, ...]:
        """Features whose drift measurement is above its threshold."""
        return tuple(sorted({d.feature for d in self.drift if d.drifted}))

    @property
    def drift_values(self) -> dict[str, float]:
        """Drift value per feature (L-infinity or Jensen-Shannon, see :attr:`drift`)."""
        return {d.feature: d.value for d in self.drift}

    def anomaly_lines(self) -> list[str]:
        """One readable line per anomaly."""
        return [a.line() for a in self.anomalies]

    def as_metadata(self) -> dict[str, Any]:
        """Plain values for KFP artifact metadata."""
        return {
            "num_examples": self.num_examples,
            "num_features": self.num_features,
            "schema_inferred": self.schema_inferred,
            "engine": self.engine,
            "anomalies": len(self.anomalies),
            "error_anomalies": self.error_count,
            "warning_anomalies": self.warning_count,
            "anomaly_list": self.anomaly_lines(),
            "drifted_features": list(self.drifted_features),
            "drift": {d.feature: round(d.value, 6) for d in self.drift},
        }


class ValidationFailed(DataError):
    """Blocking anomalies were found; ``result`` holds everything validation produced."""

    def __init__(self, message: str, result: ValidationResult) -> None:
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------- conversion


def _flat_values(arr: pa.Array, column: str) -> tuple[pa.Array, str | None]:
    """``arr`` as a primitive array TFDV accepts, plus a note when its meaning changed."""
    t = arr.type
    if pa.types.is_dictionary(t):
        values, note = _flat_values(arr.dictionary_decode(), column)
        return values, note or f"{t} -> decoded {t.value_type}"
    if pa.types.is_null(t):
        return arr, None
    if pa.types.is_boolean(t):
        return arr.cast(pa.int64()), "bool -> int64 (0/1)"
    if pa.types.is_integer(t):
        if t == pa.int64():
            return arr, None
        try:
            return arr.cast(pa.int64()), None
        except pa.ArrowInvalid as exc:
            raise DataError(f"column {column!r} ({t}): values do not fit int64: {exc}") from None
    if pa.types.is_floating(t):  # float32/float64 (pyarrow 10's Parquet has no float16)
        return arr, None
    if pa.types.is_decimal(t):
        return arr.cast(pa.float64()), f"{t} -> float64"
    if pa.types.is_string(t):
        return arr.cast(pa.binary()), None
    if pa.types.is_large_string(t):
        return arr.cast(pa.large_binary()), None
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return arr, None
    if pa.types.is_timestamp(t):
        us = arr.cast(pa.timestamp("us", t.tz), safe=False)
        return us.cast(pa.int64()), f"{t} -> int64 microseconds since epoch (UTC)"
    if pa.types.is_date32(t):
        return arr.cast(pa.int32()).cast(pa.int64()), f"{t} -> int64 days since epoch"
    if pa.types.is_date64(t):
        return arr.cast(pa.int64()), f"{t} -> int64 milliseconds since epoch"
    if pa.types.is_time32(t):
        return arr.cast(pa.int32()).cast(pa.int64()), f"{t} -> int64 (time of day)"
    if pa.types.is_time64(t) or pa.types.is_duration(t):
        return arr.cast(pa.int64()), f"{t} -> int64"
    raise DataError(
        f"column {column!r} has Arrow type {t}, which validate_data does not support; "
        "kfloop tables are flat (numbers, strings, booleans, timestamps): drop or flatten it"
    )


def _is_time_like(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_time_like(t.value_type)
    return bool(pa.types.is_timestamp(t) or pa.types.is_date(t))


def _as_list_array(arr: pa.Array) -> pa.Array:
    """One-element lists for values, null lists (= missing) for nulls."""
    n = len(arr)
    if pa.types.is_null(arr.type):
        return arr
    if arr.null_count == 0:
        return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), arr)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(valid, out=offsets[1:])
    values = arr.filter(pa.array(valid))
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~valid))


def to_tfdv_record_batch(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """Turn a flat Arrow batch into TFDV's input: one list column per feature.

    Args:
        batch: a record batch (or a table, combined into one batch) of flat columns.

    Returns:
        A record batch with the same column names whose columns are ``list<...>`` arrays,
        converted as described in the module docstring.

    Raises:
        DataError: a column has a type TFDV cannot take (naming the column and its type).
    """
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks()
        arrays = [col.chunk(0) if col.num_chunks else pa.array([], col.type) for col in batch]
        batch = pa.RecordBatch.from_arrays(arrays, batch.column_names)
    columns = [
        _as_list_array(_flat_values(batch.column(i), name)[0])
        for i, name in enumerate(batch.schema.names)
    ]
    return pa.RecordBatch.from_arrays(columns, batch.schema.names)


def _conversion_notes(schema: pa.Schema) -> dict[str, str]:
    notes = {}
    for f in schema:
        _, note = _flat_values(pa.array([], f.type), f.name)
        if note:
            notes[f.name] = note
    return notes


# --------------------------------------------------------------------------- inputs


def _string_list(value: Sequence[str] | None, field_name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ConfigError(field_name, f"must be a list of strings, got {value!r}")
    return list(value)


def _check_parameters(
    chunk_rows: int,
    drift_threshold_categorical: float,
    drift_threshold_numeric: float,
    beam_pipeline_args: Sequence[str],
    warning_anomaly_types: Sequence[str],
    fail_on_drift: bool,
    flags: dict[str, object],
) -> None:
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int):
        raise ConfigError("chunk_rows", f"must be an integer, got {chunk_rows!r}")
    if not 1 <= chunk_rows <= _MAX_ROWS_PER_CHUNK:
        raise ConfigError(
            "chunk_rows", f"must be between 1 and {_MAX_ROWS_PER_CHUNK}, got {chunk_rows}"
        )
    for name, value in (
        ("drift_threshold_categorical", drift_threshold_categorical),
        ("drift_threshold_numeric", drift_threshold_numeric),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(name, f"must be a number, got {value!r}")
        if not (0 < value <= 1) or math.isnan(value):
            raise ConfigError(
                name, f"must be in (0, 1] (a distance between distributions), got {value}"
            )
    if not all(a.startswith("--") for a in beam_pipeline_args):
        raise ConfigError(
            "beam_pipeline_args",
            f"must be a list of '--flag=value' strings, got {beam_pipeline_args!r}",
        )
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    known = set(anomalies_pb2.AnomalyInfo.Type.keys())
    for name in warning_anomaly_types:
        if name not in known:
            raise ConfigError(
                "warning_anomaly_types",
                f"{name!r} is not a TFDV anomaly type; use names of "
                "tensorflow_metadata AnomalyInfo.Type such as SCHEMA_NEW_COLUMN or "
                "ENUM_TYPE_UNEXPECTED_STRING_VALUES",
            )
        if fail_on_drift and name.startswith(DRIFT_TYPE_PREFIX):
            raise ConfigError(
                "warning_anomaly_types",
                f"{name!r} is a drift anomaly but fail_on_drift is true; choose one",
            )


def _fetch(uri: str, tmp: Path, name: str, field_name: str) -> Path:
    """Download one ``s3://`` object into ``tmp``."""
    target = S3Uri.parse(uri, field=field_name)
    local = tmp / name
    ObjectStore.from_env().get_file(target, local)
    return local


def _dataset_files(dataset_path: str, tmp: Path) -> list[Path]:
    """The Parquet files of a dataset: a file, a folder (its ``data.parquet`` or every
    ``*.parquet`` under it) or an ``s3://`` object/prefix (downloaded into ``tmp``)."""
    if is_s3_uri(dataset_path):
        target = S3Uri.parse(dataset_path, field="dataset_path")
        store = ObjectStore.from_env()
        if target.key.lower().endswith((".parquet", ".pq")):
            local = tmp / "dataset-000000.parquet"
            store.get_file(target, local)
            return [local]
        prefix = S3Uri(target.bucket, target.key.rstrip("/") + "/" if target.key else "")
        keys = sorted(
            o.uri.key
            for o in store.list_objects(prefix)
            if o.uri.key.lower().endswith((".parquet", ".pq"))
        )
        if prefix.key + DATA_FILE in keys:
            keys = [prefix.key + DATA_FILE]
        if not keys:
            raise DataError(f"dataset {dataset_path}: no Parquet files under it")
        files = []
        for i, key in enumerate(keys):
            local = tmp / f"dataset-{i:06d}.parquet"
            store.get_file(S3Uri(target.bucket, key), local)
            files.append(local)
        return files
    path = Path(dataset_path)
    if path.is_dir():
        if (path / DATA_FILE).is_file():
            return [path / DATA_FILE]
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.name.lower().endswith((".parquet", ".pq"))
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"dataset {dataset_path}: a folder with no Parquet files in it")
        return files
    if not path.exists():
        raise DataError(f"dataset {dataset_path}: no such file or folder")
    return [path]


def _open_parquet(files: Sequence[Path], label: str) -> tuple[pa.Schema, int]:
    """Arrow schema and total row count of the files; they must share one schema."""
    schema: pa.Schema | None = None
    rows = 0
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"dataset {label}: {f} cannot be read as Parquet: {exc}") from None
        rows += pf.metadata.num_rows
        if schema is None:
            schema = pf.schema_arrow
        elif not pf.schema_arrow.remove_metadata().equals(schema.remove_metadata()):
            raise DataError(
                f"dataset {label}: {f} has columns {pf.schema_arrow.names} with types "
                f"{[str(t) for t in pf.schema_arrow.types]}, unlike {files[0]}; the files of "
                "one dataset must share one schema"
            )
    assert schema is not None
    if len(schema) == 0:
        raise DataError(f"dataset {label}: the table has no columns; nothing to validate")
    dupes = sorted({n for n in schema.names if schema.names.count(n) > 1})
    if dupes:
        raise DataError(f"dataset {label}: duplicate column names {dupes}")
    if rows == 0:
        raise DataError(
            f"dataset {label}: the table has 0 rows (columns {schema.names}); TFDV cannot "
            "validate an empty table: check the step that produced it"
        )
    for f in schema:  # refuse unsupported types before any work is done
        try:
            _flat_values(pa.array([], f.type), f.name)
        except DataError as exc:
            raise DataError(f"dataset {label}: {exc}") from None
    return schema, rows


def _resolve_named_file(path: Path, names: Sequence[str]) -> Path:
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
    return path


def load_schema(schema_path: str, field_name: str = "schema_path") -> Any:
    """Read a curated schema (text ``Schema`` proto), a local path or ``s3://`` URI.

    A folder is read as its ``schema.pbtxt``.

    Raises:
        ConfigError: naming ``field_name`` and the file when it is missing, not a valid
            ``Schema`` text proto, or has no features.
    """
    import tensorflow_data_validation as tfdv
    from google.protobuf import text_format

    with tempfile.TemporaryDirectory(prefix="kfloop-schema-") as tmp:
        local = (
            _fetch(schema_path, Path(tmp), SCHEMA_FILE, field_name)
            if is_s3_uri(schema_path)
            else _resolve_named_file(Path(schema_path), (SCHEMA_FILE,))
        )
        if not local.is_file():
            raise ConfigError(field_name, f"{schema_path}: no such file")
        try:
            schema = tfdv.load_schema_text(str(local))
        except (text_format.ParseError, UnicodeDecodeError) as exc:
            raise ConfigError(
                field_name, f"{schema_path} is not a valid Schema text proto (pbtxt): {exc}"
            ) from None
    if not schema.feature:
        raise ConfigError(
            field_name, f"{schema_path} has no features; a curated schema must list them"
        )
    return schema


def _parse_statistics_file(path: Path) -> Any:
    """A ``DatasetFeatureStatisticsList`` from a one-record TFRecord, a text or a binary proto.

    Returns None when the file is none of those.
    """
    import tensorflow as tf
    from google.protobuf import message, text_format
    from tensorflow_data_validation.utils import stats_util
    from tensorflow_metadata.proto.v0 import statistics_pb2

    try:
        return stats_util.load_stats_tfrecord(str(path))
    except (tf.errors.OpError, StopIteration, ValueError, message.DecodeError):
        pass  # not a one-record TFRecord: try the proto encodings below
    data = path.read_bytes()
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    try:
        return text_format.Parse(data.decode("utf-8"), stats)
    except (UnicodeDecodeError, text_format.ParseError):
        stats.Clear()
    try:
        stats.ParseFromString(data)  # binary proto, e.g. TFX's FeatureStats.pb
    except message.DecodeError:
        return None
    return stats


def load_statistics(stats_path: str, field_name: str = "previous_statistics_path") -> Any:
    """Read a ``DatasetFeatureStatisticsList``: a one-record TFRecord (what this module and
    ``tfdv.generate_statistics_from_*`` write), a text proto, or a binary proto (TFX's
    ``FeatureStats.pb``), from a local path, a folder holding one of those, or ``s3://``.

    Raises:
        ConfigError: naming ``field_name`` and the file when it is missing or unreadable.
    """
    with tempfile.TemporaryDirectory(prefix="kfloop-stats-") as tmp:
        local = (
            _fetch(stats_path, Path(tmp), "stats", field_name)
            if is_s3_uri(stats_path)
            else _resolve_named_file(Path(stats_path), STATISTICS_FILE_NAMES)
        )
        if not local.is_file():
            raise ConfigError(field_name, f"{stats_path}: no such file")
        stats = _parse_statistics_file(local)
    if stats is None or not stats.datasets or stats.datasets[0].num_examples == 0:
        raise ConfigError(
            field_name,
            f"{stats_path} is not a TFDV DatasetFeatureStatisticsList (TFRecord, text or "
            "binary proto) with at least one non-empty dataset",
        )
    return stats


def write_statistics(stats: Any, path: str | os.PathLike[str]) -> None:
    """Write ``stats`` as a one-record TFRecord (readable with ``tfdv.load_statistics``)."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        writer.write(stats.SerializeToString())


# --------------------------------------------------------------------------- statistics


def _iter_record_batches(files: Sequence[Path], chunk_rows: int) -> Iterator[pa.RecordBatch]:
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=chunk_rows):
            if batch.num_rows:
                try:
                    yield to_tfdv_record_batch(batch)
                except DataError as exc:
                    raise DataError(f"dataset {f}: {exc}") from None


def statistics_in_memory(batches: Iterable[pa.RecordBatch], options: Any) -> Any:
    """TFDV statistics of ``batches`` (already in TFDV's list-column form), merged exactly.

    Each batch goes through ``stats_impl.generate_partial_statistics_in_memory`` (the
    accumulating half of ``generate_statistics_in_memory``); accumulators are merged with
    the generators' ``merge_accumulators`` and the output is extracted once.
    """
    from tensorflow_data_validation.statistics import stats_impl

    generators = stats_impl.get_generators(options, in_memory=True)
    merged: list[Any] | None = None
    for batch in batches:
        partial_stats = stats_impl.generate_partial_statistics_in_memory(batch, options, generators)
        if merged is None:
            merged = partial_stats
        else:
            merged = [
                gen.merge_accumulators([acc, new])
                for gen, acc, new in zip(generators, merged, partial_stats, strict=True)
            ]
    if merged is None:
        raise DataError("no rows to compute statistics on")
    return stats_impl.extract_statistics_output(merged, generators)


def _beam_batches(table: pa.Table, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    for batch in table.to_batches(max_chunksize=chunk_rows):
        if batch.num_rows:
            yield to_tfdv_record_batch(batch)


def statistics_on_beam(
    files: Sequence[Path], options: Any, beam_pipeline_args: Sequence[str], chunk_rows: int
) -> Any:
    """TFDV statistics of the Parquet ``files`` computed by a Beam pipeline.

    Runs ``ReadAllFromParquetBatched -> to_tfdv_record_batch -> tfdv.GenerateStatistics``
    with ``beam_pipeline_args`` (for example ``["--runner=DirectRunner"]``).
    """
    import apache_beam as beam
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions

    with tempfile.TemporaryDirectory(prefix="kfloop-beam-stats-") as tmp:
        out = os.path.join(tmp, "stats.pb")
        with beam.Pipeline(options=PipelineOptions(list(beam_pipeline_args))) as pipeline:
            _ = (
                pipeline
                | "Files" >> beam.Create([str(f) for f in files])
                | "ReadParquet" >> beam.io.ReadAllFromParquetBatched()
                | "ToTfdvBatches" >> beam.FlatMap(partial(_beam_batches, chunk_rows=chunk_rows))
                | "GenerateStatistics" >> tfdv.GenerateStatistics(options)
                | "WriteStatistics" >> tfdv.WriteStatisticsToBinaryFile(out)
            )
        return tfdv.load_stats_binary(out)


# --------------------------------------------------------------------------- validation


def _add_drift_comparators(
    schema: Any,
    categorical: float,
    numeric: float,
    skip: set[str],
) -> None:
    from tensorflow_metadata.proto.v0 import schema_pb2

    for feature in schema.feature:
        if feature.name in skip or feature.HasField("drift_comparator"):
            continue
        if feature.type == schema_pb2.BYTES:
            feature.drift_comparator.infinity_norm.threshold = categorical
        elif feature.type in (schema_pb2.INT, schema_pb2.FLOAT):
            feature.drift_comparator.jensen_shannon_divergence.threshold = numeric


def _anomaly_records(anomalies: Any, warning_types: set[str]) -> list[Anomaly]:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    type_name = anomalies_pb2.AnomalyInfo.Type.Name
    records = []
    infos = [(name, info) for name, info in sorted(anomalies.anomaly_info.items())]
    if anomalies.HasField("dataset_anomaly_info"):
        infos.append(("<dataset>", anomalies.dataset_anomaly_info))
    for name, info in infos:
        reasons = list(info.reason) or [
            anomalies_pb2.AnomalyInfo.Reason(
                type=anomalies_pb2.AnomalyInfo.UNKNOWN_TYPE,
                short_description=info.short_description,
                description=info.description,
            )
        ]
        for reason in reasons:
            kind = type_name(reason.type)
            # TFDV's own rule: ERROR unless a severity override lowers the type (TFDV keeps
            # only the feature's maximum; a feature rated WARNING has no ERROR reason).
            lowered = kind in warning_types or info.severity == anomalies_pb2.AnomalyInfo.WARNING
            severity = "WARNING" if lowered else "ERROR"
            records.append(
                Anomaly(
                    feature=name,
                    type=kind,
                    short_description=reason.short_description,
                    description=reason.description,
                    severity=severity,
                    drift=kind.startswith(DRIFT_TYPE_PREFIX),
                )
            )
    return records


def _drift_records(anomalies: Any) -> list[Drift]:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    measure_name = anomalies_pb2.DriftSkewInfo.Measurement.Type.Name
    out = []
    for info in anomalies.drift_skew_info:
        feature = ".".join(info.path.step)
        for m in info.drift_measurements:
            out.append(Drift(feature, measure_name(m.type), float(m.value), float(m.threshold)))
    return sorted(out, key=lambda d: d.feature)


def _feature_summary_rows(stats: Any) -> list[tuple[str, str, str, str, str]]:
    from tensorflow_metadata.proto.v0 import statistics_pb2

    dataset = stats.datasets[0]
    rows = []
    for feat in dataset.features:
        name = ".".join(feat.path.step) or feat.name
        kind = statistics_pb2.FeatureNameStatistics.Type.Name(feat.type)
        which = feat.WhichOneof("stats")
        common = (
            feat.num_stats.common_stats
            if which == "num_stats"
            else feat.string_stats.common_stats
            if which == "string_stats"
            else None
        )
        missing = f"{common.num_missing}" if common is not None else "?"
        if which == "num_stats":
            s = feat.num_stats
            detail = f"mean {s.mean:.6g}, std {s.std_dev:.6g}, min {s.min:.6g}, max {s.max:.6g}"
        elif which == "string_stats":
            s = feat.string_stats
            top = ", ".join(v.value for v in s.top_values[:5])
            detail = f"{s.unique} unique; top: {top}"
        else:
            detail = ""
        rows.append((name, kind, missing, str(dataset.num_examples), detail))
    return rows


def render_report(
    stats: Any,
    previous_stats: Any | None,
    anomalies: Sequence[Anomaly],
    drift: Sequence[Drift],
    title: str = "Data validation",
) -> str:
    """A self-contained HTML page: summary, anomalies, drift, features, and TFDV's Facets view.

    The Facets part is ``display_util.get_statistics_html`` (current vs previous when given);
    it does not need IPython, but loads the Facets web components from a CDN, so offline
    viewers only see the plain tables above it.
    """
    from tensorflow_data_validation.utils import display_util

    esc = html.escape
    facets = display_util.get_statistics_html(
        stats, previous_stats, lhs_name="current", rhs_name="previous"
    )
    dataset = stats.datasets[0]
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
        ".ERROR{color:#b00020}.WARNING{color:#a66a00}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{dataset.num_examples} examples, {len(dataset.features)} features; "
        f"{sum(a.severity == 'ERROR' for a in anomalies)} error and "
        f"{sum(a.severity != 'ERROR' for a in anomalies)} warning anomalies.</p>",
        "<h2>Anomalies</h2>",
    ]
    if anomalies:
        parts.append(
            "<table><tr><th>feature</th><th>severity</th><th>anomaly</th><th>description</th></tr>"
        )
        for a in anomalies:
            parts.append(
                f'<tr class="{esc(a.severity)}"><td>{esc(a.feature)}</td>'
                f"<td>{esc(a.severity)}</td><td>{esc(a.short_description)}</td>"
                f"<td>{esc(a.description)}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>No anomalies.</p>")
    if drift:
        parts.append(
            "<h2>Drift against the previous statistics</h2><table><tr>"
            "<th>feature</th><th>measure</th><th>value</th><th>threshold</th>"
            "<th>drifted</th></tr>"
        )
        for d in drift:
            parts.append(
                f"<tr><td>{esc(d.feature)}</td><td>{esc(d.measure)}</td>"
                f"<td>{d.value:.6g}</td><td>{d.threshold:.6g}</td>"
                f"<td>{'yes' if d.drifted else 'no'}</td></tr>"
            )
        parts.append("</table>")
    parts.append(
        "<h2>Features</h2><table><tr><th>feature</th><th>type</th><th>missing</th>"
        "<th>examples</th><th>summary</th></tr>"
    )
    for row in _feature_summary_rows(stats):
        parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    parts.append("</table>")
    parts.append(
        "<h2>Facets overview" + (" (current vs previous)" if previous_stats else "") + "</h2>"
    )
    parts.append(facets)
    parts.append("</body></html>")
    return "\n".join(parts)


def _blocking(
    anomalies: Sequence[Anomaly], fail_on_anomalies: bool, fail_on_drift: bool
) -> list[Anomaly]:
    return [
        a
        for a in anomalies
        if a.severity == "ERROR" and (fail_on_drift if a.drift else fail_on_anomalies)
    ]


def _place_outputs(tmp: Path, output_dir: Path) -> None:
    for name in OUTPUT_FILES:
        (tmp / name).replace(output_dir / name)


def validate_table(
    dataset_path: str,
    output_dir: str,
    *,
    schema_path: str | None = None,
    previous_statistics_path: str | None = None,
    fail_on_anomalies: bool = True,
    fail_on_drift: bool = False,
    drift_threshold_categorical: float = 0.1,
    drift_threshold_numeric: float = 0.1,
    drift_exclude: Sequence[str] | None = None,
    warning_anomaly_types: Sequence[str] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    beam_pipeline_args: Sequence[str] | None = None,
) -> ValidationResult:
    """Compute TFDV statistics of a Parquet table, infer or apply a schema, find anomalies.

    See the module docstring for the statistics path, conversions, drift, severities and
    what is written when.

    Args:
        dataset_path: a Parquet file, a folder (``data.parquet`` or every ``*.parquet``
            in it) or an ``s3://`` object/prefix.
        output_dir: local folder receiving ``stats.tfrecord``, ``schema.pbtxt``,
            ``anomalies.pbtxt`` and ``statistics.html`` (created if missing).
        schema_path: curated ``schema.pbtxt`` to validate against; inferred when omitted.
        previous_statistics_path: statistics of the previous (training) data; turns on
            drift detection and a current-vs-previous report.
        fail_on_anomalies: raise :class:`ValidationFailed` on ERROR schema anomalies.
        fail_on_drift: rate drift above threshold ERROR and raise on it.
        drift_threshold_categorical: L-infinity threshold for string features, in (0, 1].
        drift_threshold_numeric: Jensen-Shannon divergence threshold for numeric
            features, in (0, 1].
        drift_exclude: columns to leave out of drift detection (ids, keys).
        warning_anomaly_types: TFDV anomaly type names (``AnomalyInfo.Type``, e.g.
            ``SCHEMA_NEW_COLUMN``) rated WARNING instead of ERROR.
        chunk_rows: rows per record batch given to TFDV.
        beam_pipeline_args: when non-empty, compute statistics on Beam with these args.

    Returns:
        A :class:`ValidationResult`.

    Raises:
        ConfigError: a parameter is invalid, or the schema/previous statistics file is
            missing or unreadable (naming the parameter and the file).
        DataError: the dataset is missing, unreadable, empty or has unsupported columns.
        ValidationFailed: blocking anomalies (a ``DataError``; one anomaly per line).
    """
    beam_args = _string_list(beam_pipeline_args, "beam_pipeline_args")
    warn_types = _string_list(warning_anomaly_types, "warning_anomaly_types")
    exclude = _string_list(drift_exclude, "drift_exclude")
    _check_parameters(
        chunk_rows,
        drift_threshold_categorical,
        drift_threshold_numeric,
        beam_args,
        warn_types,
        fail_on_drift,
        {"fail_on_anomalies": fail_on_anomalies, "fail_on_drift": fail_on_drift},
    )
    if not dataset_path:
        raise ConfigError("dataset_path", "is empty; give a Parquet file, folder or s3:// URI")
    if not output_dir or is_s3_uri(output_dir):
        raise ConfigError("output_dir", f"must be a local folder, got {output_dir!r}")

    # Read small inputs first: a bad schema or previous statistics fails before any work.
    curated = load_schema(schema_path) if schema_path else None
    previous = load_statistics(previous_statistics_path) if previous_statistics_path else None

    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.anomalies.proto import validation_config_pb2
    from tensorflow_data_validation.api import validation_api, validation_options
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    release_memory_promptly()
    with tempfile.TemporaryDirectory(prefix="kfloop-validate-in-") as tmp_in:
        files = _dataset_files(dataset_path, Path(tmp_in))
        arrow_schema, _ = _open_parquet(files, dataset_path)
        unknown = [c for c in exclude if c not in arrow_schema.names]
        if unknown:
            raise ConfigError(
                "drift_exclude",
                f"{unknown} are not columns of {dataset_path}: {arrow_schema.names}",
            )
        # The schema is deliberately not passed to StatsOptions: statistics are then computed
        # the same way in every run (a bool_domain/categorical INT would otherwise get
        # string statistics in one run and numeric ones in the next), so drift compares like
        # with like.
        options = tfdv.StatsOptions()
        if beam_args:
            stats = statistics_on_beam(files, options, beam_args, chunk_rows)
            engine = "beam"
        else:
            stats = statistics_in_memory(_iter_record_batches(files, chunk_rows), options)
            engine = "in-memory"

    schema = curated if curated is not None else tfdv.infer_schema(stats)
    if previous is not None:
        time_like = {f.name for f in arrow_schema if _is_time_like(f.type)}
        _add_drift_comparators(
            schema, drift_threshold_categorical, drift_threshold_numeric, time_like | set(exclude)
        )
    warning_types = set(warn_types)
    if not fail_on_drift:
        warning_types |= {
            n
            for n in anomalies_pb2.AnomalyInfo.Type.DESCRIPTOR.values_by_name
            if n.startswith(DRIFT_TYPE_PREFIX)
        }
    overrides = [
        validation_config_pb2.SeverityOverride(
            type=anomalies_pb2.AnomalyInfo.Type.Value(n),
            severity=anomalies_pb2.AnomalyInfo.WARNING,
        )
        for n in sorted(warning_types)
    ]
    anomalies_proto = validation_api.validate_statistics_internal(
        stats,
        schema,
        previous_span_statistics=previous,
        validation_options=validation_options.ValidationOptions(severity_overrides=overrides),
    )
    anomalies = _anomaly_records(anomalies_proto, warning_types)
    drift = _drift_records(anomalies_proto)

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".validate-", dir=out))
    try:
        write_statistics(stats, tmp / STATISTICS_FILE)
        tfdv.write_schema_text(schema, str(tmp / SCHEMA_FILE))
        tfdv.write_anomalies_text(anomalies_proto, str(tmp / ANOMALIES_FILE))
        (tmp / REPORT_FILE).write_text(
            render_report(stats, previous, anomalies, drift), encoding="utf-8"
        )
        _place_outputs(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = ValidationResult(
        statistics_path=str(out / STATISTICS_FILE),
        schema_path=str(out / SCHEMA_FILE),
        anomalies_path=str(out / ANOMALIES_FILE),
        report_path=str(out / REPORT_FILE),
        num_examples=int(stats.datasets[0].num_examples),
        num_features=len(stats.datasets[0].features),
        schema_inferred=curated is None,
        engine=engine,
        anomalies=tuple(anomalies),
        drift=tuple(drift),
        conversions=_conversion_notes(arrow_schema),
    )
    blocking = _blocking(anomalies, fail_on_anomalies, fail_on_drift)
    if blocking:
        lines = "\n".join(f"  {a.line()}" for a in blocking)
        raise ValidationFailed(
            f"dataset {dataset_path}: {len(blocking)} blocking anomal"
            f"{'y' if len(blocking) == 1 else 'ies'} (feature: anomaly: description):\n{lines}\n"
            f"Fix the data, or update the schema ({result.schema_path} is the one used), "
            "or rate these types as warnings with warning_anomaly_types.",
            result,
        )
    return result
