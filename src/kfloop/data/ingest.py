"""Ingest raw files into one Parquet table, streaming, with bounded memory.

Sources (``source_uri``):

- a local file, a glob (``/data/*.csv``, ``**`` recurses) or a folder (every file under it);
- ``s3://bucket/key`` (one object), ``s3://bucket/prefix`` or ``s3://bucket/prefix/`` (every
  object under the prefix), ``s3://bucket/prefix/*.csv`` (a glob over keys), on any
  S3-compatible store through :class:`~kfloop.core.objectstore.ObjectStore`.

In folders and prefixes, names starting with ``.`` or ``_`` (``_SUCCESS``, ``.crc``, hidden
folders) are skipped; any other file must have a readable format.

Formats (``file_format="auto"`` detects each file's format by suffix):

- CSV (``.csv``, ``.txt``) and TSV (``.tsv``, ``.tab``): delimiter, header or not (column
  names from the header, given, or generated ``f0, f1, ...``), quote character, encoding
  (``latin-1``, ``utf-16``, ...). Read with :func:`pyarrow.csv.open_csv` block by block.
  Empty fields are nulls, in string columns too.
- Parquet (``.parquet``, ``.pq``), read row group batch by batch.
- JSON Lines (``.jsonl``, ``.ndjson``, ``.json``: one object per line), read in blocks of
  whole lines.
- Arrow IPC (``.arrow``, ``.feather``, ``.ipc``, ``.arrows``; file or stream format), read
  record batch by record batch.

CSV/TSV and JSON Lines may be compressed; the suffix says how (``.gz``, ``.zst``, ``.bz2``).

``schema_hints`` maps a column to ``int64``, ``float64``, ``string``, ``bool`` or
``timestamp`` (``timestamp[us]``). For CSV they are the reader's column types; for the other
formats a cast. A value that contradicts its hint is a :class:`DataError` naming the file, the
line (CSV, JSON Lines) or row (Parquet, IPC), the column and the value.

All files must share one schema (after hints): same column names (in any order; the first
file's order is kept) and types. A column that is entirely null in one file fits any type.
CSV and JSON column types not given by a hint are inferred from each file's first block;
when a later block contradicts the inferred type, the error says which hint to add.

The output is one Parquet file (zstd), written to a temporary file in the destination folder
and renamed (or uploaded, for ``s3://``) only when complete: on any failure no output file
appears. Memory stays bounded by the block size and the row group size, whatever the input
size.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import glob
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import ObjectStore, S3Uri, is_s3_uri, sha256_file
from kfloop.data._dataset_io import release_memory_promptly

MIB = 1024 * 1024
DEFAULT_BLOCK_SIZE = 16 * MIB
DEFAULT_ROW_GROUP_BYTES = 64 * MIB
PARQUET_BATCH_ROWS = 64 * 1024

HINT_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us"),
}
HINT_ALIASES = {
    "int": "int64",
    "integer": "int64",
    "float": "float64",
    "double": "float64",
    "str": "string",
    "utf8": "string",
    "boolean": "bool",
    "timestamp[us]": "timestamp",
    "datetime": "timestamp",
}

FORMATS = ("auto", "csv", "tsv", "parquet", "jsonl", "arrow")
FORMAT_ALIASES = {"json": "jsonl", "ndjson": "jsonl", "ipc": "arrow", "feather": "arrow"}
SUFFIX_FORMATS = {
    ".csv": "csv",
    ".txt": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".arrows": "arrow",
}
COMPRESSION_SUFFIXES = {
    ".gz": "gzip",
    ".gzip": "gzip",
    ".zst": "zstd",
    ".zstd": "zstd",
    ".bz2": "bz2",
}
TEXT_FORMATS = ("csv", "tsv", "jsonl")
GLOB_CHARS = re.compile(r"[*?\[]")

_CSV_CONVERSION = re.compile(
    r"In CSV column #(\d+): Row #(\d+): CSV conversion error to (.+?): invalid value '(.*)'",
    re.S,
)
_CSV_FIELDS = re.compile(r"Row #(\d+): Expected (\d+) columns, got (\d+): (.*)", re.S)
_CSV_ROW = re.compile(r"Row #(\d+)")
_JSON_COLUMN = re.compile(r"Column\((/[^)]*)\)")


@dataclass(frozen=True)
class CsvOptions:
    """How to read CSV/TSV files."""

    delimiter: str = ","
    has_header: bool = True
    column_names: tuple[str, ...] = ()
    quote_char: str = '"'
    encoding: str = "utf-8"


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest_data` wrote.

    Attributes:
        rows: rows in the output.
        columns: columns in the output.
        column_names: output column names, in order.
        sha256: SHA-256 of the output file.
        bytes: size of the output file.
        uri: where the output is (local path or ``s3://`` URI).
        sources: every file read, in order, as strings (paths or ``s3://`` URIs).
        source_rows: rows read from each file, aligned with ``sources``.
    """

    rows: int
    columns: int
    column_names: tuple[str, ...]
    sha256: str
    bytes: int
    uri: str
    sources: tuple[str, ...]
    source_rows: tuple[int, ...]

    def rows_by_source(self) -> dict[str, int]:
        """Rows read from each source file."""
        return dict(zip(self.sources, self.source_rows, strict=True))

    def as_metadata(self) -> dict[str, Any]:
        """Plain values for ``artifact.metadata``."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "column_names": list(self.column_names),
            "sha256": self.sha256,
            "bytes": self.bytes,
            "uri": self.uri,
            "sources": list(self.sources),
            "source_rows": self.rows_by_source(),
        }


@dataclass(frozen=True)
class _Source:
    """One input file: where it is, its format and compression."""

    name: str  # shown in messages and results
    fmt: str
    compression: str | None
    size: int
    local: Path | None = None
    s3: S3Uri | None = None


# -- parameter checks -----------------------------------------------------------------------


def parse_schema_hints(hints: Mapping[str, str] | None) -> dict[str, pa.DataType]:
    """Turn ``{"col": "int64", ...}`` into Arrow types.

    Raises:
        ConfigError: naming ``schema_hints.<col>`` for an unknown type name.
    """
    if hints is None:
        return {}
    if not isinstance(hints, Mapping):
        raise ConfigError(
            "schema_hints", f"must be a mapping of column to type name, got {type(hints).__name__}"
        )
    result: dict[str, pa.DataType] = {}
    for column, name in hints.items():
        if not isinstance(column, str) or not column:
            raise ConfigError("schema_hints", f"column names must be non-empty strings: {column!r}")
        key = str(name).strip().lower() if isinstance(name, str) else ""
        key = HINT_ALIASES.get(key, key)
        if key not in HINT_TYPES:
            raise ConfigError(
                f"schema_hints.{column}",
                f"unknown type {name!r}; use one of {', '.join(HINT_TYPES)}",
            )
        result[column] = HINT_TYPES[key]
    return result


def _check_csv_options(
    delimiter: str,
    has_header: bool,
    column_names: Sequence[str] | None,
    quote_char: str,
    encoding: str,
) -> CsvOptions:
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\r\n":
        raise ConfigError(
            "delimiter", f"{delimiter!r} must be one character other than a newline, e.g. ',' '\\t'"
        )
    if not isinstance(quote_char, str) or len(quote_char) > 1 or quote_char in ("\r", "\n"):
        raise ConfigError(
            "quote_char", f"{quote_char!r} must be one character, or '' to disable quoting"
        )
    if quote_char and quote_char == delimiter:
        raise ConfigError("quote_char", f"{quote_char!r} is also the delimiter; use another one")
    if not isinstance(has_header, bool):
        raise ConfigError("has_header", f"{has_header!r} must be true or false")
    names = tuple(column_names or ())
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"column_names.{i}", f"{name!r} must be a non-empty string")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            "column_names", f"repeats {', '.join(map(repr, dupes))}; names must be unique"
        )
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise ConfigError(
            "encoding", f"{encoding!r} is not a known text encoding (e.g. utf-8, latin-1, utf-16)"
        ) from None
    return CsvOptions(delimiter, has_header, names, quote_char, encoding)


def _normalise_format(file_format: str) -> str:
    key = str(file_format).strip().lower() if isinstance(file_format, str) else ""
    key = FORMAT_ALIASES.get(key, key)
    if key not in FORMATS:
        raise ConfigError(
            "file_format",
            f"{file_format!r} is not a known format; use one of {', '.join(FORMATS)} "
            f"(or {', '.join(FORMAT_ALIASES)})",
        )
    return key


def _detect(name: str, file_format: str) -> tuple[str, str | None]:
    """The format and compression codec of a file, from its suffix (and ``file_format``)."""
    lower = name.lower()
    compression = None
    for suffix, codec in COMPRESSION_SUFFIXES.items():
        if lower.endswith(suffix):
            compression = codec
            lower = lower[: -len(suffix)]
            break
    if file_format == "auto":
        fmt = next((f for s, f in SUFFIX_FORMATS.items() if lower.endswith(s)), None)
        if fmt is None:
            raise ConfigError(
                "file_format",
                f"cannot tell the format of {name} from its suffix; name it "
                f"{'/'.join(SUFFIX_FORMATS)} (optionally + .gz/.zst/.bz2) or pass "
                f"file_format (one of {', '.join(FORMATS[1:])})",
            )
    else:
        fmt = file_format
    if compression and fmt not in TEXT_FORMATS:
        raise ConfigError(
            "source_uri",
            f"{name}: {compression}-compressed {fmt} is not supported; compress only CSV, TSV "
            "or JSON Lines files (Parquet and Arrow files carry their own compression)",
        )
    return fmt, compression


# -- finding the files ----------------------------------------------------------------------


def _skipped(rel_parts: Sequence[str]) -> bool:
    return any(part.startswith((".", "_")) for part in rel_parts)


def _local_sources(source: str, file_format: str) -> list[_Source]:
    paths: list[Path]
    if GLOB_CHARS.search(source):
        paths = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not paths:
            raise DataError(f"{source}: the pattern matches no files")
    else:
        root = Path(source)
        if root.is_dir():
            paths = sorted(
                p
                for p in root.rglob("*")
                if p.is_file() and not _skipped(p.relative_to(root).parts)
            )
            if not paths:
                raise DataError(f"{source}: the folder holds no data files")
        elif root.exists():
            paths = [root]
        else:
            raise DataError(f"{source}: no such file or folder")
    sources = []
    for path in paths:
        fmt, compression = _detect(path.name, file_format)
        sources.append(_Source(str(path), fmt, compression, path.stat().st_size, local=path))
    return sources


def _s3_sources(source: str, file_format: str, store: ObjectStore) -> list[_Source]:
    target = S3Uri.parse(source, field="source_uri")
    key = target.key
    match = GLOB_CHARS.search(key)
    if match:
        prefix = key[: match.start()]
        objects = [
            o
            for o in store.list_objects(S3Uri(target.bucket, prefix))
            if fnmatch.fnmatchcase(o.uri.key, key)
        ]
        if not objects:
            raise DataError(f"{source}: the pattern matches no objects")
    else:
        listed = list(store.list_objects(target))
        exact = [o for o in listed if o.uri.key == key]
        if key and exact:
            objects = exact
        else:
            folder = key.rstrip("/") + "/" if key else ""
            objects = [
                o
                for o in listed
                if o.uri.key.startswith(folder)
                and not _skipped(o.uri.key[len(folder) :].split("/"))
            ]
            if not objects:
                raise DataError(f"{source}: no such object, and no objects under this prefix")
    sources = []
    for obj in sorted(objects, key=lambda o: o.uri.key):
        fmt, compression = _detect(obj.uri.key, file_format)
        sources.append(_Source(str(obj.uri), fmt, compression, obj.size, s3=obj.uri))
    return sources


# -- the output -----------------------------------------------------------------------------


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema])


class _ParquetSink:
    """Writes batches of one schema to a Parquet file, in row groups of bounded size."""

    def __init__(self, path: Path, row_group_bytes: int) -> None:
        self.path = path
        self.row_group_bytes = row_group_bytes
        self.schema: pa.Schema | None = None
        self.first_source = ""
        self.writer: pq.ParquetWriter | None = None
        self.buffer: list[pa.RecordBatch] = []
        self.buffered = 0
        self.rows = 0

    def conform(self, schema: pa.Schema, source: str) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
        """Check ``schema`` against the first file's; return a batch adapter to the output."""
        if self.schema is None:
            self.schema = _nullable(schema.remove_metadata())
            self.first_source = source
            self.writer = pq.ParquetWriter(str(self.path), self.schema, compression="zstd")
        target = self.schema
        first = self.first_source
        names = schema.names
        for field in target:
            if field.name not in names:
                raise DataError(
                    f"{source} does not match the schema of {first}: column {field.name!r} is "
                    f"in {first} but not in {source}"
                )
        for field in schema:
            if field.name not in target.names:
                raise DataError(
                    f"{source} does not match the schema of {first}: column {field.name!r} is "
                    f"in {source} but not in {first}"
                )
            want = target.field(field.name).type
            if field.type != want and field.type != pa.null():
                raise DataError(
                    f"{source} does not match the schema of {first}: column {field.name!r} is "
                    f"{want} in {first} but {field.type} in {source}; give both files the same "
                    f"type, e.g. with schema_hints={{{field.name!r}: ...}}"
                )
        order = [names.index(f.name) for f in target]

        def adapt(batch: pa.RecordBatch) -> pa.RecordBatch:
            arrays = []
            for f, i in zip(target, order, strict=True):
                column = batch.column(i)
                if column.type != f.type:
                    column = column.cast(f.type)  # only null -> anything
                arrays.append(column)
            return pa.RecordBatch.from_arrays(arrays, schema=target)

        return adapt

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.buffer.append(batch)
        self.buffered += batch.nbytes
        self.rows += batch.num_rows
        if self.buffered >= self.row_group_bytes:
            self.flush()

    def flush(self) -> None:
        if self.buffer and self.writer is not None:
            table = pa.Table.from_batches(self.buffer, schema=self.schema)
            self.writer.write_table(table, row_group_size=max(1, table.num_rows))
        self.buffer = []
        self.buffered = 0

    def close(self) -> None:
        if self.writer is not None:
            self.flush()
            self.writer.close()
            self.writer = None

    def close_quietly(self) -> None:
        """Close after a failure: drop the buffer; the caller removes the file."""
        self.buffer = []
        if self.writer is not None:
            try:
                self.writer.close()
            except (pa.ArrowException, OSError):
                pass  # the file is about to be removed
            self.writer = None


# -- readers: each returns (schema after hints, iterator of batches) -----------------------

BatchStream = tuple[pa.Schema, Iterator[pa.RecordBatch]]


def _first_bad_index(array: pa.Array, target: pa.DataType) -> int:
    """Index of the first value of ``array`` that does not cast to ``target`` (bisection)."""
    lo, hi = 0, len(array)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            array.slice(lo, mid - lo).cast(target)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


def _hinted(
    schema: pa.Schema,
    batches: Iterator[pa.RecordBatch],
    hints: Mapping[str, pa.DataType],
    source: str,
    unit: str,
    row_of: Callable[[int], int],
) -> BatchStream:
    """Apply ``hints`` as casts; ``row_of(i)`` turns a 0-based row index into a row number."""
    casts = {n: t for n, t in hints.items() if n in schema.names and schema.field(n).type != t}
    if not casts:
        return schema, batches
    for name, target in casts.items():
        try:
            pa.array([], type=schema.field(name).type).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(
                f"{source}: column {name!r} is {schema.field(name).type}, which cannot be read "
                f"as {target} (schema_hints.{name})"
            ) from None
    out_schema = pa.schema(
        [f.with_type(casts[f.name]) if f.name in casts else f for f in schema],
        metadata=schema.metadata,
    )

    def cast_all() -> Iterator[pa.RecordBatch]:
        offset = 0
        for batch in batches:
            arrays = []
            for i, field in enumerate(schema):
                column = batch.column(i)
                if field.name in casts:
                    try:
                        column = column.cast(casts[field.name])
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                        bad = _first_bad_index(column, casts[field.name])
                        value = column[bad].as_py()
                        raise DataError(
                            f"{source}: {unit} {row_of(offset + bad)}, column {field.name!r}: "
                            f"value {value!r} is not a valid {casts[field.name]} "
                            f"(schema_hints.{field.name}): {exc}"
                        ) from None
                arrays.append(column)
            offset += batch.num_rows
            yield pa.RecordBatch.from_arrays(arrays, schema=out_schema)

    return out_schema, cast_all()


def _csv_header_names(path: Path, src: _Source, opts: CsvOptions) -> list[str]:
    """Column names of a CSV file, for error messages raised before the reader has a schema."""
    try:
        with pa.input_stream(str(path), compression=src.compression) as stream:
            head = stream.read(256 * 1024)
        text = head.decode(opts.encoding, errors="replace").lstrip("\ufeff")
        row = next(
            csv.reader(
                io.StringIO(text),
                delimiter=opts.delimiter,
                quotechar=opts.quote_char or None,
                quoting=csv.QUOTE_MINIMAL if opts.quote_char else csv.QUOTE_NONE,
            ),
            [],
        )
    except (OSError, csv.Error, pa.ArrowException):
        return []
    if opts.column_names:
        return list(opts.column_names)
    if opts.has_header:
        return row
    return [f"f{i}" for i in range(len(row))]


def _csv_error(
    exc: BaseException,
    src: _Source,
    names: Sequence[str],
    hints: Mapping[str, pa.DataType],
    opts: CsvOptions,
    block_size: int,
) -> DataError:
    text = str(exc)
    conv = _CSV_CONVERSION.search(text)
    if conv:
        index, line, type_name, value = int(conv[1]), int(conv[2]), conv[3], conv[4]
        name = names[index] if index < len(names) else f"#{index}"
        if name in hints:
            why = f"(schema_hints.{name} = {type_name})"
        else:
            why = (
                f"(the type was inferred from the first block of {block_size} bytes; if the "
                f"column holds other values further down, add schema_hints={{{name!r}: ...}})"
            )
        return DataError(
            f"{src.name}: line {line}, column {name!r}: value {value!r} is not a valid "
            f"{type_name} {why}"
        )
    fields = _CSV_FIELDS.search(text)
    if fields:
        hint = (
            f"column_names gives {len(opts.column_names)} names"
            if opts.column_names
            else f"check the delimiter ({opts.delimiter!r}) and quote_char ({opts.quote_char!r})"
        )
        return DataError(
            f"{src.name}: line {fields[1]}: expected {fields[2]} fields, got {fields[3]}: "
            f"{fields[4].strip()!r}; {hint}"
        )
    if "Empty CSV file" in text:
        return DataError(f"{src.name}: the file is empty (no header, no rows)")
    if isinstance(exc, UnicodeDecodeError):
        return DataError(
            f"{src.name}: is not valid {opts.encoding} text ({exc.reason} at byte {exc.start}); "
            "set encoding to the file's encoding (e.g. latin-1, utf-16)"
        )
    row_match = _CSV_ROW.search(text)
    where = f" line {row_match[1]}:" if row_match else ""
    return DataError(f"{src.name}:{where} cannot read as CSV: {text}")


def _open_csv(
    path: Path,
    src: _Source,
    opts: CsvOptions,
    hints: Mapping[str, pa.DataType],
    block_size: int,
) -> BatchStream:
    delimiter = "\t" if src.fmt == "tsv" else opts.delimiter
    if opts.has_header and opts.column_names:
        read = pacsv.ReadOptions(
            use_threads=False,
            block_size=block_size,
            encoding=opts.encoding,
            column_names=list(opts.column_names),
            skip_rows=1,
        )
    elif opts.column_names:
        read = pacsv.ReadOptions(
            use_threads=False,
            block_size=block_size,
            encoding=opts.encoding,
            column_names=list(opts.column_names),
        )
    else:
        read = pacsv.ReadOptions(
            use_threads=False,
            block_size=block_size,
            encoding=opts.encoding,
            autogenerate_column_names=not opts.has_header,
        )
    parse = pacsv.ParseOptions(
        delimiter=delimiter,
        quote_char=opts.quote_char if opts.quote_char else False,
    )
    convert = pacsv.ConvertOptions(column_types=dict(hints), strings_can_be_null=True)
    stream = pa.input_stream(str(path), compression=src.compression)
    readable = opts if delimiter == opts.delimiter else replace(opts, delimiter=delimiter)
    try:
        reader = pacsv.open_csv(
            stream, read_options=read, parse_options=parse, convert_options=convert
        )
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as exc:
        stream.close()
        names = _csv_header_names(path, src, readable)
        raise _csv_error(exc, src, names, hints, readable, block_size) from None
    names = reader.schema.names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        stream.close()
        raise DataError(
            f"{src.name}: the header repeats column {', '.join(map(repr, dupes))}; "
            "rename it in the file or pass column_names"
        )

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as exc:
            raise _csv_error(exc, src, names, hints, readable, block_size) from None
        finally:
            stream.close()

    return reader.schema, batches()


def _open_parquet(path: Path, src: _Source, hints: Mapping[str, pa.DataType]) -> BatchStream:
    try:
        parquet = pq.ParquetFile(str(path))
        schema = parquet.schema_arrow
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{src.name}: cannot read as Parquet: {exc}") from None

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{src.name}: cannot read as Parquet: {exc}") from None
        finally:
            parquet.close()

    return _hinted(schema, batches(), hints, src.name, "row", lambda i: i + 1)


def _open_arrow(path: Path, src: _Source, hints: Mapping[str, pa.DataType]) -> BatchStream:
    source = pa.memory_map(str(path), "r")
    try:
        file_reader = ipc.open_file(source)
        schema = file_reader.schema

        def read_file() -> Iterator[pa.RecordBatch]:
            for i in range(file_reader.num_record_batches):
                yield file_reader.get_batch(i)

        produce: Callable[[], Iterator[pa.RecordBatch]] = read_file
    except pa.ArrowInvalid:
        try:
            source.seek(0)
            stream_reader = ipc.open_stream(source)
        except (pa.ArrowInvalid, OSError) as exc:
            source.close()
            raise DataError(
                f"{src.name}: cannot read as an Arrow IPC file or stream: {exc}"
            ) from None
        schema = stream_reader.schema

        def read_stream() -> Iterator[pa.RecordBatch]:
            yield from stream_reader

        produce = read_stream

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from produce()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{src.name}: cannot read as Arrow IPC: {exc}") from None
        finally:
            source.close()

    return _hinted(schema, batches(), hints, src.name, "row", lambda i: i + 1)


def _json_chunks(
    path: Path, src: _Source, encoding: str, block_size: int
) -> Iterator[tuple[int, bytes]]:
    """Blocks of whole lines, with the 1-based number of each block's first line."""
    stream = pa.input_stream(str(path), compression=src.compression)
    if codecs.lookup(encoding).name != "utf-8":
        stream = pa.transcoding_input_stream(stream, encoding, "utf-8")
    line = 1
    carry = b""
    first = True
    try:
        while True:
            data = stream.read(block_size)
            if not data:
                break
            if first:
                first = False
                data = data.removeprefix(codecs.BOM_UTF8)
                if data.lstrip()[:1] == b"[":
                    raise DataError(
                        f"{src.name}: holds a JSON array; kfloop reads JSON Lines (one object "
                        "per line). Convert it, e.g. `jq -c '.[]' file.json > file.jsonl`"
                    )
            buffer = carry + data
            cut = buffer.rfind(b"\n")
            if cut < 0:
                carry = buffer
                continue
            chunk, carry = buffer[: cut + 1], buffer[cut + 1 :]
            yield line, chunk
            line += chunk.count(b"\n")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{src.name}: is not valid {encoding} text ({exc.reason}); set encoding"
        ) from None
    finally:
        stream.close()
    if carry.strip():
        yield line, carry


def _parse_json(chunk: bytes, schema: pa.Schema | None) -> pa.Table:
    read = pajson.ReadOptions(use_threads=False, block_size=max(len(chunk) + 1, 1 << 20))
    parse = (
        pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
        if schema is not None
        else pajson.ParseOptions()
    )
    return pajson.read_json(io.BytesIO(chunk), read_options=read, parse_options=parse)


def _json_error(
    exc: BaseException, chunk: bytes, start_line: int, schema: pa.Schema | None, src: _Source
) -> DataError:
    """Find the first line of ``chunk`` that fails (bisection on prefixes) and name it."""
    lines = chunk.splitlines(keepends=True)
    lo, hi = 0, len(lines)  # the first hi lines fail; the first lo lines parse
    message = str(exc)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            _parse_json(b"".join(lines[:mid]), schema)
            lo = mid
        except pa.ArrowInvalid as inner:
            hi = mid
            message = str(inner)
    line = start_line + hi - 1
    text = lines[hi - 1].decode("utf-8", errors="replace").strip() if lines else ""
    column = _JSON_COLUMN.search(message)
    where = f", column {column[1].lstrip('/')!r}" if column else ""
    extra = ""
    if "unexpected field" in message and schema is not None:
        try:
            keys = set(json.loads(text)) - set(schema.names)
            extra = (
                f" (field {', '.join(map(repr, sorted(keys)))} is not in the first block; "
                "JSON Lines files need the same fields throughout)"
            )
        except (ValueError, TypeError):
            pass
    elif schema is not None:
        extra = " (types come from the first block; add a schema_hint for this column)"
    return DataError(
        f"{src.name}: line {line}{where}: {message.removeprefix('JSON parse error: ')}{extra}: "
        f"{text[:200]!r}"
    )


def _open_jsonl(
    path: Path,
    src: _Source,
    hints: Mapping[str, pa.DataType],
    encoding: str,
    block_size: int,
) -> BatchStream:
    chunks = _json_chunks(path, src, encoding, block_size)

    def parse(start: int, chunk: bytes, schema: pa.Schema | None) -> pa.Table:
        try:
            return _parse_json(chunk, schema)
        except pa.ArrowInvalid as exc:
            raise _json_error(exc, chunk, start, schema, src) from None

    try:
        start, chunk = next(chunks)
    except StopIteration:
        raise DataError(f"{src.name}: the file is empty (no JSON lines)") from None
    first = parse(start, chunk, None)
    # Later blocks must parse to the first block's types; null-typed columns take their hint.
    schema = pa.schema(
        [
            f.with_type(hints[f.name]) if f.type == pa.null() and f.name in hints else f
            for f in first.schema
        ]
    )
    # Row index -> line number, for the block being read: (first row, first line, offsets).
    where: list[tuple[int, int, list[int]]] = []

    def remember(start_row: int, start_line: int, block: bytes) -> None:
        offsets = [i for i, text in enumerate(block.splitlines()) if text.strip()]
        where[:] = [(start_row, start_line, offsets)]

    def row_of(index: int) -> int:
        start_row, start_line, offsets = where[0]
        position = index - start_row
        return start_line + offsets[position] if 0 <= position < len(offsets) else index + 1

    def batches() -> Iterator[pa.RecordBatch]:
        rows = 0
        remember(rows, start, chunk)
        table = first.cast(schema) if first.schema != schema else first
        while True:
            yield from table.to_batches()
            rows += table.num_rows
            try:
                next_start, next_chunk = next(chunks)
            except StopIteration:
                return
            remember(rows, next_start, next_chunk)
            table = parse(next_start, next_chunk, schema).select(schema.names)
            if table.schema != schema:
                table = table.cast(schema)

    return _hinted(schema, batches(), hints, src.name, "line", row_of)


# -- the operation --------------------------------------------------------------------------


def _open(
    path: Path,
    src: _Source,
    opts: CsvOptions,
    hints: Mapping[str, pa.DataType],
    block_size: int,
) -> BatchStream:
    if src.fmt in ("csv", "tsv"):
        return _open_csv(path, src, opts, hints, block_size)
    if src.fmt == "parquet":
        return _open_parquet(path, src, hints)
    if src.fmt == "arrow":
        return _open_arrow(path, src, hints)
    return _open_jsonl(path, src, hints, opts.encoding, block_size)


def _ingest_file(
    path: Path,
    src: _Source,
    sink: _ParquetSink,
    opts: CsvOptions,
    hints: Mapping[str, pa.DataType],
    block_size: int,
) -> int:
    """Stream one local file into ``sink``; returns its row count."""
    if path.stat().st_size == 0:
        raise DataError(f"{src.name}: the file is empty (0 bytes)")
    schema, batches = _open(path, src, opts, hints, block_size)
    if sink.schema is None:
        missing = [name for name in hints if name not in schema.names]
        if missing:
            raise ConfigError(
                f"schema_hints.{missing[0]}",
                f"names column {missing[0]!r}, which {src.name} does not have; its columns: "
                f"{', '.join(schema.names)}",
            )
    adapt = sink.conform(schema, src.name)
    rows = 0
    for batch in batches:
        rows += batch.num_rows
        sink.write(adapt(batch))
    if rows == 0:
        header = "has a header but " if src.fmt in ("csv", "tsv") and opts.has_header else ""
        raise DataError(f"{src.name}: {header}no rows")
    return rows


def ingest_data(
    source_uri: str,
    output_path: str | os.PathLike[str],
    *,
    file_format: str = "auto",
    delimiter: str = ",",
    has_header: bool = True,
    column_names: Sequence[str] | None = None,
    quote_char: str = '"',
    encoding: str = "utf-8",
    schema_hints: Mapping[str, str] | None = None,
    store: ObjectStore | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
) -> IngestResult:
    """Read every file at ``source_uri`` and write them as one Parquet file (zstd).

    Args:
        source_uri: local file, glob, folder, ``s3://bucket/key``, ``s3://bucket/prefix`` or
            ``s3://bucket/prefix/*.csv``.
        output_path: local file path (written as Parquet whatever its suffix) or an
            ``s3://`` URI ending in ``.parquet``.
        file_format: ``auto`` (by suffix), ``csv``, ``tsv``, ``parquet``, ``jsonl`` or ``arrow``.
        delimiter: CSV field delimiter (TSV files always use a tab).
        has_header: whether the first CSV line holds the column names.
        column_names: CSV column names; with a header they replace it, without one they
            name the columns (default ``f0, f1, ...``).
        quote_char: CSV quote character; ``""`` disables quoting.
        encoding: text encoding of CSV and JSON Lines files.
        schema_hints: column -> ``int64``/``float64``/``string``/``bool``/``timestamp``.
        store: object store for ``s3://`` sources or output; from the environment if omitted.
        block_size: bytes the CSV and JSON readers take at a time (also the span of CSV
            type inference).
        row_group_bytes: Arrow bytes buffered per Parquet row group.

    Returns:
        The output's size, checksum and schema, and the rows read from each file.

    Raises:
        ConfigError: a bad parameter, naming it (``schema_hints.<column>`` for hints).
        DataError: missing, empty or malformed input, naming the file, line and column.
        ObjectStoreError: from the object store (wrong credentials, missing bucket, ...).
    """
    if not isinstance(source_uri, str) or not source_uri.strip():
        raise ConfigError("source_uri", "is empty; give a path, glob, folder or s3:// URI")
    source_uri = source_uri.strip()
    output = os.fspath(output_path)
    if not output:
        raise ConfigError("output_path", "is empty")
    if is_s3_uri(output):
        S3Uri.parse(output, field="output_path")
        if not output.lower().endswith(".parquet"):
            raise ConfigError("output_path", f"{output!r}: an s3:// output must end in .parquet")
    elif Path(output).is_dir():
        raise ConfigError("output_path", f"{output!r} is a folder; give a file path")
    fmt = _normalise_format(file_format)
    opts = _check_csv_options(delimiter, has_header, column_names, quote_char, encoding)
    hints = parse_schema_hints(schema_hints)
    for name, value in (("block_size", block_size), ("row_group_bytes", row_group_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1024:
            raise ConfigError(name, f"{value!r} must be an integer of at least 1024 bytes")

    release_memory_promptly()
    needs_store = is_s3_uri(source_uri) or is_s3_uri(output)
    if needs_store and store is None:
        store = ObjectStore.from_env()
    if is_s3_uri(source_uri):
        assert store is not None
        sources = _s3_sources(source_uri, fmt, store)
    else:
        sources = _local_sources(source_uri, fmt)

    with tempfile.TemporaryDirectory(prefix="kfloop-ingest-") as scratch:
        if is_s3_uri(output):
            final_local = Path(scratch) / "output.parquet"
            tmp = Path(scratch) / ".output.parquet.part"
        else:
            final_local = Path(output)
            final_local.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{final_local.name}.", suffix=".part", dir=final_local.parent
            )
            os.close(fd)
            tmp = Path(tmp_name)
        sink = _ParquetSink(tmp, row_group_bytes)
        counts: list[int] = []
        try:
            for src in sources:
                if src.s3 is not None:
                    if src.size == 0:
                        raise DataError(f"{src.name}: the file is empty (0 bytes)")
                    assert store is not None
                    local = Path(scratch) / f"source-{len(counts):06d}-{Path(src.s3.key).name}"
                    store.get_file(src.s3, local)
                    try:
                        counts.append(_ingest_file(local, src, sink, opts, hints, block_size))
                    finally:
                        local.unlink(missing_ok=True)
                else:
                    assert src.local is not None
                    counts.append(_ingest_file(src.local, src, sink, opts, hints, block_size))
            sink.close()
            schema = sink.schema
            assert schema is not None
            if is_s3_uri(output):
                assert store is not None
                tmp.replace(final_local)
                info = store.put_file(final_local, output)
                digest, size = info.sha256 or sha256_file(final_local), info.size
            else:
                digest, size = sha256_file(tmp), tmp.stat().st_size
                tmp.replace(final_local)
        except BaseException:
            sink.close_quietly()
            tmp.unlink(missing_ok=True)
            raise
    return IngestResult(
        rows=sink.rows,
        columns=len(schema),
        column_names=tuple(schema.names),
        sha256=digest,
        bytes=size,
        uri=output,
        sources=tuple(src.name for src in sources),
        source_rows=tuple(counts),
    )
