"""Reading and writing the tables that data operations exchange (private to ``kfloop.data``).

A *dataset source* is any of:

- a Parquet / Arrow IPC / CSV file, local or ``s3://`` (format from the suffix);
- a local file without suffix (a KFP ``Dataset`` artifact written as one Parquet file);
- a local folder or an ``s3://`` prefix: its ``data.parquet`` when present (the folder-shaped
  ``Dataset`` artifacts kfloop writes), otherwise every ``*.parquet`` file under it, in key
  order, concatenated (missing columns become nulls).

A *dataset destination* is a ``.parquet`` path or ``s3://`` URI, or a local file path without
suffix (a KFP ``Dataset`` artifact's ``.path``, as ``ingest_data`` writes it): one Parquet file
(zstd), written atomically (:func:`kfloop.core.arrowio.write_parquet`, then a rename).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kfloop.core.arrowio import IPC_SUFFIXES, PARQUET_SUFFIXES, TableInfo, read_table, write_parquet
from kfloop.core.errors import ConfigError, DataError, ObjectNotFound
from kfloop.core.objectstore import ObjectStore, S3Uri, is_s3_uri

DATA_FILE = "data.parquet"
CSV_SUFFIXES = (".csv", ".csv.gz")


@dataclass(frozen=True)
class SourceTables:
    """Tables read from one source, one per file, in order."""

    source: str
    files: tuple[str, ...]
    tables: tuple[pa.Table, ...]

    def concat(self) -> pa.Table:
        """All files as one table; columns missing from a file are null there."""
        return concat_tables(self.tables, self.files, self.source)


def concat_tables(tables: tuple[pa.Table, ...], files: tuple[str, ...], source: str) -> pa.Table:
    """Concatenate ``tables`` (read from ``files``) promoting null-typed and missing columns."""
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(list(tables), promote=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        first = tables[0].schema
        for name, table in zip(files[1:], tables[1:], strict=True):
            for field in table.schema:
                idx = first.get_field_index(field.name)
                if idx >= 0 and first.field(idx).type != field.type and field.type != pa.null():
                    raise DataError(
                        f"{source}: column {field.name!r} is {first.field(idx).type} in "
                        f"{files[0]} but {field.type} in {name}; the files cannot be combined"
                    ) from None
        raise DataError(f"{source}: the files cannot be combined: {exc}") from None


def _suffix_kind(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(PARQUET_SUFFIXES) or lower.endswith(IPC_SUFFIXES):
        return "arrow"
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    return None


def _read_csv(path: Path, label: str, string_columns: tuple[str, ...]) -> pa.Table:
    options = pacsv.ConvertOptions(column_types={name: pa.string() for name in string_columns})
    try:
        return pacsv.read_csv(path, convert_options=options)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{label}: cannot read as CSV: {exc}") from None


def _read_local_file(path: Path, label: str, string_columns: tuple[str, ...]) -> pa.Table:
    kind = _suffix_kind(path.name)
    if kind == "csv":
        return _read_csv(path, label, string_columns)
    if kind == "arrow":
        try:
            return read_table(path)
        except DataError as exc:
            raise DataError(str(exc).replace(str(path), label, 1)) from None
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{label}: cannot read as Parquet: {exc}") from None


def _local_folder_files(folder: Path) -> list[Path]:
    direct = folder / DATA_FILE
    if direct.is_file():
        return [direct]
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name.lower().endswith(PARQUET_SUFFIXES)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def read_source(
    source: str | os.PathLike[str],
    *,
    what: str = "dataset",
    store: ObjectStore | None = None,
    string_columns: tuple[str, ...] = (),
) -> SourceTables:
    """Read every table of a dataset source (see the module docstring).

    Args:
        source: path, folder, ``s3://`` object or ``s3://`` prefix.
        what: what the source is, for error messages ("logs", "ground truth", ...).
        store: object store for ``s3://`` sources; from the environment when omitted.
        string_columns: CSV columns to read as strings whatever they look like (ids).

    Raises:
        DataError: nothing readable at ``source``, naming it.
    """
    text = os.fspath(source)
    if not text:
        raise DataError(f"{what}: no source given")
    if is_s3_uri(text):
        return _read_s3(text, what, store, string_columns)
    path = Path(text)
    if path.is_dir():
        files = _local_folder_files(path)
        if not files:
            raise DataError(f"{what}: no Parquet files under {path}")
        tables = tuple(_read_local_file(f, str(f), string_columns) for f in files)
        return SourceTables(text, tuple(str(f) for f in files), tables)
    if not path.exists():
        raise DataError(f"{what}: {path}: no such file or folder")
    return SourceTables(text, (text,), (_read_local_file(path, text, string_columns),))


def _read_s3(
    uri: str, what: str, store: ObjectStore | None, string_columns: tuple[str, ...]
) -> SourceTables:
    target = S3Uri.parse(uri, field=what)
    store = store or ObjectStore.from_env()
    with tempfile.TemporaryDirectory(prefix="kfloop-data-") as tmp:
        single = _suffix_kind(target.key) is not None
        if not single and target.key and not target.key.endswith("/"):
            single = store.exists(target)  # an artifact file without suffix
        if single:
            local = Path(tmp) / Path(target.key).name
            try:
                store.get_file(target, local)
            except ObjectNotFound:
                raise DataError(f"{what}: {uri}: no such object") from None
            return SourceTables(uri, (uri,), (_read_local_file(local, uri, string_columns),))
        prefix = S3Uri(target.bucket, target.key.rstrip("/") + "/" if target.key else "")
        try:
            keys = sorted(
                obj.uri.key
                for obj in store.list_objects(prefix)
                if obj.uri.key.lower().endswith(PARQUET_SUFFIXES)
            )
        except ObjectNotFound:
            raise DataError(f"{what}: no Parquet files under {prefix}: no such bucket") from None
        direct = prefix.key + DATA_FILE
        if direct in keys:
            keys = [direct]
        if not keys:
            raise DataError(f"{what}: no Parquet files under {prefix}")
        files = []
        tables = []
        for i, key in enumerate(keys):
            obj = S3Uri(target.bucket, key)
            local = Path(tmp) / f"{i:06d}.parquet"
            store.get_file(obj, local)
            tables.append(_read_local_file(local, str(obj), string_columns))
            local.unlink()
            files.append(str(obj))
        return SourceTables(uri, tuple(files), tuple(tables))


def release_memory_promptly() -> None:
    """Make Arrow's jemalloc return freed memory to the OS at once (``decay_ms`` 0).

    A data operation frees whole tables (the input once it is split or cleaned, each split
    once written) and then allocates outside Arrow (tfx-bsl's serialised examples are Python
    objects, TensorFlow has its own allocator). jemalloc keeps freed pages for reuse for a
    while and purges them only when it is next called; those pages count in the process's
    RSS, so without this the peak adds up the table Arrow no longer uses and what the other
    allocators hold. Decay 0 returns them as soon as they are freed (costs a few more
    ``madvise`` calls). It is process-wide: fine for a KFP component, which is its own process.
    Nothing happens when pyarrow does not use jemalloc (e.g. mimalloc or the system allocator).
    """
    try:
        if pa.default_memory_pool().backend_name == "jemalloc":
            pa.jemalloc_set_decay_ms(0)
    except (pa.ArrowNotImplementedError, AttributeError):  # pyarrow built without jemalloc
        pass


def read_dataset(
    source: str | os.PathLike[str],
    *,
    what: str = "dataset",
    store: ObjectStore | None = None,
    string_columns: tuple[str, ...] = (),
) -> pa.Table:
    """Read a dataset source as one table (see :func:`read_source`)."""
    return read_source(source, what=what, store=store, string_columns=string_columns).concat()


def check_destination(dest: str | os.PathLike[str], field: str = "output_path") -> str:
    """Check a destination before any work; see :func:`write_dataset`. Returns it as text."""
    text = os.fspath(dest)
    if not text:
        raise ConfigError(field, "is empty; give a .parquet path or s3:// URI")
    if is_s3_uri(text):
        S3Uri.parse(text, field=field)
        if not text.lower().endswith(PARQUET_SUFFIXES):
            raise ConfigError(field, f"{text!r}: an s3:// output must end in .parquet")
    elif Path(text).is_dir():
        raise ConfigError(field, f"{text!r} is a folder; give a file path")
    return text


def write_dataset(
    table: pa.Table,
    dest: str | os.PathLike[str],
    store: ObjectStore | None = None,
    field: str = "output_path",
) -> TableInfo:
    """Write ``table`` as Parquet (zstd) to a destination, atomically.

    ``dest`` is a ``.parquet`` path or ``s3://`` URI, or a local file path without that suffix
    (a KFP ``Dataset`` artifact's ``.path``), which is written as Parquet all the same.

    Raises:
        ConfigError: ``dest`` is a folder or an ``s3://`` URI without ``.parquet`` (``field``).
    """
    text = check_destination(dest, field)
    if text.lower().endswith(PARQUET_SUFFIXES):
        return write_parquet(table, text, store)
    path = Path(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".parquet", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        info = write_parquet(table, tmp, store)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dataclasses.replace(info, uri=str(path))
