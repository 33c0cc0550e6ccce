"""Arrow helpers: Parquet and Arrow IPC, locally and on S3, with KFP artifact metadata.

Works with pyarrow 10 (pipeline environment) and pyarrow >= 20 (serving environment).
Writes go to a temporary file that is renamed only when complete, or to S3 in one upload
(from memory, or from a temporary file for large tables), so a failed write never leaves a
partial file or object under the final name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from kfloop.core.errors import DataError
from kfloop.core.objectstore import ObjectStore, S3Uri, is_s3_uri, sha256_file

PARQUET_SUFFIXES = (".parquet", ".pq")
IPC_SUFFIXES = (".arrow", ".feather", ".ipc", ".arrows")


@dataclass(frozen=True)
class TableInfo:
    """Metadata KFP ``Dataset`` artifacts carry: ``rows``, ``columns``, ``sha256``."""

    rows: int
    columns: int
    sha256: str
    bytes: int
    uri: str

    def as_metadata(self) -> dict[str, Any]:
        """Plain values for ``artifact.metadata``."""
        return asdict(self)


def _format_of(path: str) -> str:
    lower = path.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(IPC_SUFFIXES):
        return "ipc"
    raise DataError(
        f"{path}: unknown table format; use a {'/'.join(PARQUET_SUFFIXES + IPC_SUFFIXES)} suffix"
    )


def _encode(table: pa.Table, sink: str | pa.NativeFile, fmt: str, parquet: dict[str, Any]) -> None:
    if fmt == "parquet":
        pq.write_table(table, sink, **parquet)
    elif isinstance(sink, str):
        with pa.OSFile(sink, "wb") as handle, ipc.new_file(handle, table.schema) as writer:
            writer.write_table(table)
    else:
        with ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


def _write_local(table: pa.Table, path: Path, fmt: str, parquet: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _encode(table, str(tmp), fmt, parquet)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


IN_MEMORY_UPLOAD_BYTES = 256 * 2**20
"""A table of at most this many bytes (in memory, Arrow's ``nbytes``) is encoded into memory
and uploaded from there; a larger one through a temporary file, so that its encoded copy is
not held in memory beside it. From memory the payload logger's files of 50,000 rows (about
300 KB) cost its writer about 0.6 ms less each, and no disk write."""


def write_table(
    table: pa.Table,
    dest: str | os.PathLike[str],
    store: ObjectStore | None = None,
    compression: str = "zstd",
    use_dictionary: bool | Sequence[str] = True,
    write_statistics: bool | Sequence[str] = True,
    dictionary_page_bytes: int | None = None,
) -> TableInfo:
    """Write ``table`` as Parquet or Arrow IPC (by suffix) to a path or ``s3://`` URI.

    ``use_dictionary``: Parquet dictionary encoding for every column (True), or only the
    named ones (dictionaries of unique ids or continuous floats are built and thrown away).
    ``write_statistics``: Parquet min/max statistics for every column (True), or only the
    named ones (those of strings cost the most and serve readers the least).
    ``dictionary_page_bytes``: a column's dictionary stops growing at this size, and the rest
    of the column is written as plain values (Parquet's ``dictionary_pagesize_limit``; None:
    pyarrow's 1 MiB).
    """
    target = os.fspath(dest)
    fmt = _format_of(target)
    parquet: dict[str, Any] = {
        "compression": compression,
        "use_dictionary": use_dictionary,
        "write_statistics": write_statistics,
    }
    if dictionary_page_bytes is not None:
        parquet["dictionary_pagesize_limit"] = dictionary_page_bytes
    if is_s3_uri(target):
        if store is None:
            store = ObjectStore.from_env()
        if table.nbytes <= IN_MEMORY_UPLOAD_BYTES:
            sink = pa.BufferOutputStream()
            _encode(table, sink, fmt, parquet)
            info = store.put_bytes(sink.getvalue(), target)
        else:
            with tempfile.TemporaryDirectory(prefix="kfloop-write-") as tmp:
                local = Path(tmp) / Path(S3Uri.parse(target).key).name
                _write_local(table, local, fmt, parquet)
                info = store.put_file(local, target)
        return TableInfo(table.num_rows, table.num_columns, info.sha256 or "", info.size, target)
    path = Path(target)
    _write_local(table, path, fmt, parquet)
    return TableInfo(
        table.num_rows, table.num_columns, sha256_file(path), path.stat().st_size, str(path)
    )


def write_parquet(
    table: pa.Table,
    dest: str | os.PathLike[str],
    store: ObjectStore | None = None,
    *,
    use_dictionary: bool | Sequence[str] = True,
    write_statistics: bool | Sequence[str] = True,
    dictionary_page_bytes: int | None = None,
) -> TableInfo:
    """Write Parquet (zstd) to a path or ``s3://`` URI; returns artifact metadata. The options
    are :func:`write_table`'s."""
    if not os.fspath(dest).lower().endswith(PARQUET_SUFFIXES):
        raise DataError(f"{dest}: a Parquet file name must end in .parquet")
    return write_table(
        table,
        dest,
        store,
        use_dictionary=use_dictionary,
        write_statistics=write_statistics,
        dictionary_page_bytes=dictionary_page_bytes,
    )


def _read_local(path: Path, fmt: str, columns: list[str] | None) -> pa.Table:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        if fmt == "parquet":
            return pq.read_table(path, columns=columns)
        with pa.OSFile(str(path), "rb") as source:
            try:
                table = ipc.open_file(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                table = ipc.open_stream(source).read_all()
        return table.select(columns) if columns else table
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read as {fmt}: {exc}") from None


def read_table(
    src: str | os.PathLike[str],
    store: ObjectStore | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Read a Parquet or Arrow IPC table from a path or ``s3://`` URI."""
    source = os.fspath(src)
    fmt = _format_of(source)
    if is_s3_uri(source):
        if store is None:
            store = ObjectStore.from_env()
        with tempfile.TemporaryDirectory(prefix="kfloop-read-") as tmp:
            local = Path(tmp) / Path(S3Uri.parse(source).key).name
            store.get_file(source, local)
            return _read_local(local, fmt, columns)
    return _read_local(Path(source), fmt, columns)


def table_info(path: str | os.PathLike[str]) -> TableInfo:
    """Artifact metadata of a Parquet file already on disk, without reading its data."""
    local = Path(path)
    meta = pq.read_metadata(local)
    return TableInfo(
        meta.num_rows, meta.num_columns, sha256_file(local), local.stat().st_size, str(local)
    )
