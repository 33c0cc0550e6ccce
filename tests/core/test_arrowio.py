from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kfloop.core import arrowio
from kfloop.core.arrowio import read_table, table_info, write_parquet, write_table
from kfloop.core.errors import DataError
from kfloop.core.objectstore import ObjectStore, sha256_file


def sample(n: int = 1000) -> pa.Table:
    rng = np.random.default_rng(7)
    return pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "x": pa.array(rng.normal(size=n)),
            "cat": pa.array([["a", "b", None][i % 3] for i in range(n)]),
            "flag": pa.array([i % 2 == 0 for i in range(n)]),
        }
    )


@pytest.mark.parametrize("name", ["t.parquet", "t.arrow"])
def test_local_round_trip_with_metadata(tmp_path: Path, name: str) -> None:
    table = sample()
    info = write_table(table, tmp_path / name)
    assert (info.rows, info.columns) == (1000, 4)
    assert info.sha256 == sha256_file(tmp_path / name)
    assert read_table(tmp_path / name).equals(table)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary files left


@pytest.mark.parametrize("name", ["t.parquet", "t.arrow"])
def test_s3_round_trip(store: ObjectStore, bucket: str, name: str) -> None:
    table = sample()
    uri = f"s3://{bucket}/tables/{name}"
    info = write_table(table, uri, store)
    assert info.uri == uri
    assert info.as_metadata()["rows"] == 1000
    assert store.stat(uri).sha256 == info.sha256
    assert read_table(uri, store).equals(table)
    assert read_table(uri, store, columns=["id"]).column_names == ["id"]


def test_table_info_reads_only_metadata(tmp_path: Path) -> None:
    write_parquet(sample(10), tmp_path / "a.parquet")
    info = table_info(tmp_path / "a.parquet")
    assert (info.rows, info.columns) == (10, 4)


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown table format"):
        write_table(sample(), tmp_path / "t.csv")
    with pytest.raises(DataError, match="must end in .parquet"):
        write_parquet(sample(), tmp_path / "t.arrow")
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="bad.parquet: cannot read"):
        read_table(bad)


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.parquet"
    write_parquet(sample(5), target)
    before = target.read_bytes()

    with pytest.raises(Exception):  # noqa: B017 - any failure of the writer
        write_parquet("not a table", target)  # type: ignore[arg-type]
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.parquet"]


def test_parquet_dictionaries_only_for_the_named_columns(tmp_path: Path) -> None:
    table = pa.table({"id": [f"id-{i}" for i in range(100)], "plan": ["a", "b"] * 50})
    every, named = tmp_path / "every.parquet", tmp_path / "named.parquet"
    write_parquet(table, every)
    write_parquet(table, named, use_dictionary=["plan"])

    def dictionary_encoded(path: Path) -> list[bool]:
        group = pq.ParquetFile(path).metadata.row_group(0)
        return [
            any("DICTIONARY" in e for e in group.column(i).encodings)
            for i in range(group.num_columns)
        ]

    assert dictionary_encoded(every) == [True, True]
    assert dictionary_encoded(named) == [False, True]
    assert pq.read_table(named).equals(table)


def test_a_dictionary_over_its_cap_falls_back_to_plain_values(tmp_path: Path) -> None:
    """Few distinct numbers keep their dictionary; many stop theirs at the cap, and the rest
    of the column is plain values (8 bytes each) instead of a dictionary of every value plus
    indices."""
    n, cap = 10_000, 1024
    rng = np.random.default_rng(1)
    table = pa.table({"count": rng.integers(0, 5, n).astype(float), "amount": rng.random(n)})
    capped, uncapped = tmp_path / "capped.parquet", tmp_path / "uncapped.parquet"
    write_parquet(table, capped, dictionary_page_bytes=cap)
    write_parquet(table, uncapped)

    def sizes(path: Path) -> list[int]:
        group = pq.ParquetFile(path).metadata.row_group(0)
        assert all(group.column(i).has_dictionary_page for i in range(2))
        return [group.column(i).total_uncompressed_size for i in range(2)]

    (count, amount), (count_full, amount_full) = sizes(capped), sizes(uncapped)
    assert count == count_full < n  # 5 values: indices of a few bits each
    assert amount <= 8 * n + 2 * cap < amount_full
    assert pq.read_table(capped).equals(table)


@pytest.mark.parametrize("in_memory", [True, False])
def test_s3_writes_from_memory_and_through_a_file_agree(
    store: ObjectStore, bucket: str, monkeypatch: pytest.MonkeyPatch, in_memory: bool
) -> None:
    if not in_memory:  # a table above the bound goes through a temporary file
        monkeypatch.setattr(arrowio, "IN_MEMORY_UPLOAD_BYTES", 0)
    table = sample(5000)
    for name in ("t.parquet", "t.arrow"):
        uri = f"s3://{bucket}/{in_memory}/{name}"
        info = write_table(table, uri, store)
        assert store.stat(uri).sha256 == info.sha256
        assert store.stat(uri).size == info.bytes
        assert read_table(uri, store).equals(table)
