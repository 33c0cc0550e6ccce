"""ingest_data on real files: local paths, globs, folders and a real SeaweedFS."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from kfloop.core.errors import ConfigError, DataError, ObjectNotFound, ObjectStoreAuthError
from kfloop.core.objectstore import ObjectStore, sha256_file
from kfloop.core.settings import Settings
from kfloop.data.ingest import IngestResult, ingest_data, parse_schema_hints

CSV = "id,amount,country,active\n1,10.5,DE,true\n2,,FR,false\n3,7.25,,true\n"
EXPECTED = pa.table(
    {
        "id": pa.array([1, 2, 3], pa.int64()),
        "amount": pa.array([10.5, None, 7.25], pa.float64()),
        "country": pa.array(["DE", "FR", None], pa.string()),
        "active": pa.array([True, False, True], pa.bool_()),
    }
)


def leftovers(folder: Path) -> list[str]:
    """Everything in the output folder: must be empty after a failure (no partial files)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


# -- what comes out -------------------------------------------------------------------------


def test_csv_round_trip_with_result_metadata(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "in" / "data.csv", CSV)
    result = ingest_data(str(src), out / "table.parquet")
    table = pq.read_table(out / "table.parquet")
    assert table.equals(EXPECTED)
    assert isinstance(result, IngestResult)
    assert (result.rows, result.columns) == (3, 4)
    assert result.column_names == ("id", "amount", "country", "active")
    assert result.sha256 == sha256_file(out / "table.parquet")
    assert result.bytes == (out / "table.parquet").stat().st_size
    assert result.sources == (str(src),)
    assert result.rows_by_source() == {str(src): 3}
    meta = result.as_metadata()
    assert meta["sources"] == [str(src)] and meta["source_rows"] == {str(src): 3}
    json.dumps(meta)  # plain values only
    assert leftovers(out) == ["table.parquet"]
    compression = pq.ParquetFile(out / "table.parquet").metadata.row_group(0).column(0)
    assert compression.compression == "ZSTD"


def test_output_path_without_suffix_is_parquet(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "data.csv", CSV)
    ingest_data(str(src), out / "dataset")  # a KFP artifact path has no suffix
    assert pq.read_table(out / "dataset").equals(EXPECTED)


def test_csv_options_delimiter_quote_and_given_names(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "semi.csv", "a;b\n1;'x;y'\n2;'z'\n")
    ingest_data(str(src), out / "t.parquet", delimiter=";", quote_char="'")
    assert pq.read_table(out / "t.parquet").to_pydict() == {"a": [1, 2], "b": ["x;y", "z"]}

    ingest_data(
        str(src),
        out / "renamed.parquet",
        delimiter=";",
        quote_char="'",
        column_names=["key", "text"],
    )
    assert pq.read_table(out / "renamed.parquet").column_names == ["key", "text"]


def test_csv_without_header_generated_or_given_names(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "noheader.csv", "1,a\n2,b\n")
    ingest_data(str(src), out / "gen.parquet", has_header=False)
    assert pq.read_table(out / "gen.parquet").to_pydict() == {"f0": [1, 2], "f1": ["a", "b"]}
    ingest_data(str(src), out / "named.parquet", has_header=False, column_names=["n", "s"])
    assert pq.read_table(out / "named.parquet").to_pydict() == {"n": [1, 2], "s": ["a", "b"]}


def test_tsv_by_suffix(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "data.tsv", "id\tname\n1\tA, B\n")
    ingest_data(str(src), out / "t.parquet")
    assert pq.read_table(out / "t.parquet").to_pydict() == {"id": [1], "name": ["A, B"]}


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_encodings(tmp_path: Path, out: Path, encoding: str) -> None:
    src = write(tmp_path / "enc.csv", "city,n\nMünchen,1\nZürich,2\n".encode(encoding))
    ingest_data(str(src), out / "t.parquet", encoding=encoding)
    assert pq.read_table(out / "t.parquet").column("city").to_pylist() == ["München", "Zürich"]


@pytest.mark.parametrize("suffix,codec", [(".gz", "gzip"), (".zst", "zstd"), (".bz2", "bz2")])
def test_compressed_csv_by_suffix(tmp_path: Path, out: Path, suffix: str, codec: str) -> None:
    path = tmp_path / f"data.csv{suffix}"
    with pa.CompressedOutputStream(str(path), codec) as sink:
        sink.write(CSV.encode())
    ingest_data(str(path), out / "t.parquet")
    assert pq.read_table(out / "t.parquet").equals(EXPECTED)


def test_parquet_jsonl_and_arrow_inputs(tmp_path: Path, out: Path) -> None:
    pq.write_table(EXPECTED, tmp_path / "a.parquet")
    with (
        pa.OSFile(str(tmp_path / "b.arrow"), "wb") as sink,
        ipc.new_file(sink, EXPECTED.schema) as writer,
    ):
        writer.write_table(EXPECTED)
    with (
        pa.OSFile(str(tmp_path / "c.arrows"), "wb") as sink,
        ipc.new_stream(sink, EXPECTED.schema) as writer,
    ):
        writer.write_table(EXPECTED)
    lines = [json.dumps(row) for row in EXPECTED.to_pylist()]
    write(tmp_path / "d.jsonl", "\n".join(lines) + "\n")
    write(tmp_path / "e.json.gz", gzip.compress(("\n".join(lines) + "\n").encode()))
    for name in ["a.parquet", "b.arrow", "c.arrows", "d.jsonl", "e.json.gz"]:
        ingest_data(str(tmp_path / name), out / f"{name}.parquet")
        assert pq.read_table(out / f"{name}.parquet").equals(EXPECTED), name
    result = ingest_data(str(tmp_path / "*.*"), out / "all.parquet")
    assert result.rows == 15
    assert list(result.source_rows) == [3] * 5


def test_explicit_file_format_overrides_suffix(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "export.dat", CSV)
    ingest_data(str(src), out / "t.parquet", file_format="csv")
    assert pq.read_table(out / "t.parquet").equals(EXPECTED)


def test_glob_and_folder_read_every_file_in_order(tmp_path: Path, out: Path) -> None:
    folder = tmp_path / "raw"
    write(folder / "part-0.csv", "id,v\n1,a\n2,b\n")
    write(folder / "sub" / "part-1.csv", "v,id\nc,3\n")  # other column order: kept by name
    write(folder / "_SUCCESS", "")
    write(folder / ".part-0.csv.crc", "junk")
    result = ingest_data(str(folder), out / "folder.parquet")
    assert pq.read_table(out / "folder.parquet").to_pydict() == {
        "id": [1, 2, 3],
        "v": ["a", "b", "c"],
    }
    assert result.rows_by_source() == {
        str(folder / "part-0.csv"): 2,
        str(folder / "sub" / "part-1.csv"): 1,
    }
    by_glob = ingest_data(str(folder / "**" / "*.csv"), out / "glob.parquet")
    assert by_glob.rows == 3 and len(by_glob.sources) == 2


def test_schema_hints_set_csv_types(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "h.csv", "id,zip,when,flag\n1,01234,2024-03-01 10:00:00,1\n")
    ingest_data(
        str(src),
        out / "t.parquet",
        schema_hints={"id": "float64", "zip": "string", "when": "timestamp", "flag": "bool"},
    )
    table = pq.read_table(out / "t.parquet")
    assert table.schema.field("id").type == pa.float64()
    assert table.column("zip").to_pylist() == ["01234"]  # leading zero kept
    assert table.schema.field("when").type == pa.timestamp("us")
    assert table.column("flag").to_pylist() == [True]


def test_schema_hints_cast_other_formats(tmp_path: Path, out: Path) -> None:
    pq.write_table(pa.table({"n": ["1", "2"], "x": [1, 2]}), tmp_path / "s.parquet")
    ingest_data(
        str(tmp_path / "s.parquet"), out / "t.parquet", schema_hints={"n": "int64", "x": "float64"}
    )
    table = pq.read_table(out / "t.parquet")
    assert table.to_pydict() == {"n": [1, 2], "x": [1.0, 2.0]}
    assert table.schema.field("x").type == pa.float64()


def test_hint_aliases_and_parse() -> None:
    assert parse_schema_hints({"a": "int", "b": "double", "c": "boolean"}) == {
        "a": pa.int64(),
        "b": pa.float64(),
        "c": pa.bool_(),
    }


def test_small_blocks_stream_into_several_row_groups(tmp_path: Path, out: Path) -> None:
    """Not timed: the output is written group by group while the CSV is read block by block."""
    rows = 300_000
    src = tmp_path / "big.csv"
    rng = np.random.default_rng(0)
    values = rng.normal(size=rows)
    with src.open("w") as handle:
        handle.write("id,value,kind\n")
        handle.writelines(f"{i},{values[i]:.6f},k{i % 7}\n" for i in range(rows))
    result = ingest_data(
        str(src), out / "big.parquet", block_size=256 * 1024, row_group_bytes=1024 * 1024
    )
    meta = pq.ParquetFile(out / "big.parquet").metadata
    assert result.rows == rows == meta.num_rows
    assert meta.num_row_groups > 3
    back = pq.read_table(out / "big.parquet")
    assert back.column("id").to_pylist()[-1] == rows - 1
    assert back.column("kind").to_pylist()[:8] == [f"k{i % 7}" for i in range(8)]


def _peak_ingest_memory(tmp_path: Path, rows: int) -> tuple[int, int]:
    """Arrow's peak allocation while ingesting a CSV of ``rows`` rows (fresh process), and
    the in-memory size of the whole table."""
    src = tmp_path / f"mem-{rows}.csv"
    ids = np.arange(rows)
    table = pa.table(
        {
            "id": ids,
            "a": ids * 0.5,
            "b": ids % 97,
            "c": pa.array([f"name-{i % 1013}" for i in range(rows)]),
            "label": ids % 2,
        }
    )
    pacsv.write_csv(table, src)
    dest = tmp_path / f"mem-{rows}.parquet"
    script = textwrap.dedent(
        f"""
        import pyarrow as pa
        from kfloop.data.ingest import ingest_data
        ingest_data({str(src)!r}, {str(dest)!r}, block_size=256 * 1024,
                    row_group_bytes=1024 * 1024)
        print(pa.default_memory_pool().max_memory())
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert pq.ParquetFile(dest).metadata.num_rows == rows
    return int(run.stdout.split()[-1]), table.nbytes


def test_peak_memory_does_not_grow_with_the_input(tmp_path: Path) -> None:
    """Not timed: 4x the rows, same peak Arrow memory; and well below the table's size."""
    small_peak, _ = _peak_ingest_memory(tmp_path, 200_000)
    big_peak, big_size = _peak_ingest_memory(tmp_path, 800_000)
    assert big_size > 25 * 1024 * 1024
    assert big_peak < 1.5 * small_peak, (small_peak, big_peak)
    assert big_peak < big_size / 2, (big_peak, big_size)


# -- S3 ------------------------------------------------------------------------------------


def test_s3_key_prefix_and_glob(store: ObjectStore, bucket: str, tmp_path: Path, out: Path) -> None:
    write(tmp_path / "a.csv", "id,v\n1,a\n2,b\n")
    write(tmp_path / "b.csv", "id,v\n3,c\n")
    store.put_file(tmp_path / "a.csv", f"s3://{bucket}/raw/2024/a.csv")
    store.put_file(tmp_path / "b.csv", f"s3://{bucket}/raw/2024/b.csv")
    store.put_bytes(b"", f"s3://{bucket}/raw/2024/_SUCCESS")
    store.put_file(tmp_path / "b.csv", f"s3://{bucket}/raw-other/b.csv")  # not under raw/

    one = ingest_data(f"s3://{bucket}/raw/2024/a.csv", out / "one.parquet", store=store)
    assert one.rows == 2 and one.sources == (f"s3://{bucket}/raw/2024/a.csv",)

    prefix = ingest_data(f"s3://{bucket}/raw", out / "prefix.parquet", store=store)
    assert prefix.rows_by_source() == {
        f"s3://{bucket}/raw/2024/a.csv": 2,
        f"s3://{bucket}/raw/2024/b.csv": 1,
    }
    assert pq.read_table(out / "prefix.parquet").column("v").to_pylist() == ["a", "b", "c"]

    pattern = ingest_data(f"s3://{bucket}/raw/*/b.csv", out / "glob.parquet", store=store)
    assert pattern.sources == (f"s3://{bucket}/raw/2024/b.csv",)


def test_s3_output(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    src = write(tmp_path / "data.csv", CSV)
    uri = f"s3://{bucket}/tables/ingested.parquet"
    result = ingest_data(str(src), uri, store=store)
    assert result.uri == uri
    store.get_file(uri, tmp_path / "back.parquet")
    assert sha256_file(tmp_path / "back.parquet") == result.sha256
    assert pq.read_table(tmp_path / "back.parquet").equals(EXPECTED)


# -- bad input: each names what is wrong and leaves no output --------------------------------


def test_missing_file(tmp_path: Path, out: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        ingest_data(str(tmp_path / "nope.csv"), out / "t.parquet")
    assert leftovers(out) == []


def test_glob_and_folder_that_match_nothing(tmp_path: Path, out: Path) -> None:
    with pytest.raises(DataError, match=r"\*\.csv: the pattern matches no files"):
        ingest_data(str(tmp_path / "*.csv"), out / "t.parquet")
    (tmp_path / "empty-folder").mkdir()
    write(tmp_path / "empty-folder" / "_SUCCESS", "")
    with pytest.raises(DataError, match="empty-folder: the folder holds no data files"):
        ingest_data(str(tmp_path / "empty-folder"), out / "t.parquet")
    assert leftovers(out) == []


def test_s3_prefix_that_matches_nothing(store: ObjectStore, bucket: str, out: Path) -> None:
    with pytest.raises(DataError, match=rf"s3://{bucket}/nothing/here: no such object"):
        ingest_data(f"s3://{bucket}/nothing/here", out / "t.parquet", store=store)
    assert leftovers(out) == []


def test_empty_file(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        ingest_data(str(src), out / "t.parquet")
    assert leftovers(out) == []


def test_header_only_csv(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "header.csv", "id,v\n")
    with pytest.raises(DataError, match=r"header\.csv: has a header but no rows"):
        ingest_data(str(src), out / "t.parquet")
    assert leftovers(out) == []


def test_empty_second_file_fails_the_whole_ingest(tmp_path: Path, out: Path) -> None:
    write(tmp_path / "in" / "a.csv", "id\n1\n")
    write(tmp_path / "in" / "b.csv", "")
    with pytest.raises(DataError, match=r"b\.csv: the file is empty"):
        ingest_data(str(tmp_path / "in"), out / "t.parquet")
    assert leftovers(out) == []


def test_malformed_row_names_file_and_line(tmp_path: Path, out: Path) -> None:
    rows = "".join(f"{i},{i}\n" for i in range(1, 50))
    src = write(tmp_path / "bad.csv", "a,b\n" + rows + "50,50,50\n" + "51,51\n")
    with pytest.raises(DataError) as err:
        ingest_data(str(src), out / "t.parquet")
    message = str(err.value)
    assert str(src) in message
    assert "line 51" in message  # header is line 1, rows 1..49 are lines 2..50
    assert "expected 2 fields, got 3" in message
    assert leftovers(out) == []


def test_malformed_row_in_a_later_block(tmp_path: Path, out: Path) -> None:
    rows = "".join(f"{i},{i}\n" for i in range(1, 20_000))
    src = write(tmp_path / "late.csv", "a,b\n" + rows + "x\n")
    with pytest.raises(DataError, match=r"late\.csv: line 20001: expected 2 fields, got 1"):
        ingest_data(str(src), out / "t.parquet", block_size=4096)
    assert leftovers(out) == []


def test_value_contradicting_csv_hint_names_file_line_and_column(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "typed.csv", "id,qty,name\n1,2,a\n2,3,b\n3,4,c\n4,abc,d\n")
    with pytest.raises(DataError) as err:
        ingest_data(str(src), out / "t.parquet", schema_hints={"qty": "int64"})
    message = str(err.value)
    assert str(src) in message
    assert "line 5" in message
    assert "column 'qty'" in message
    assert "'abc'" in message
    assert "schema_hints.qty" in message
    assert leftovers(out) == []


def test_value_contradicting_hint_in_parquet_names_row_and_column(
    tmp_path: Path, out: Path
) -> None:
    pq.write_table(pa.table({"code": ["1", "2", "3", "x7"]}), tmp_path / "codes.parquet")
    with pytest.raises(DataError) as err:
        ingest_data(
            str(tmp_path / "codes.parquet"), out / "t.parquet", schema_hints={"code": "int64"}
        )
    message = str(err.value)
    assert "codes.parquet" in message and "row 4" in message
    assert "column 'code'" in message and "'x7'" in message
    assert leftovers(out) == []


def test_value_contradicting_hint_in_jsonl_names_line(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "e.jsonl", '{"n": "1"}\n\n{"n": "2"}\n{"n": "two"}\n')
    with pytest.raises(DataError) as err:
        ingest_data(str(src), out / "t.parquet", schema_hints={"n": "int64"})
    message = str(err.value)
    assert "e.jsonl" in message and "line 4" in message and "column 'n'" in message
    assert leftovers(out) == []


def test_inferred_type_contradicted_later_suggests_a_hint(tmp_path: Path, out: Path) -> None:
    rows = "".join(f"{i},{i}\n" for i in range(1, 5000))
    src = write(tmp_path / "drift.csv", "a,b\n" + rows + "5000,5000.5\n")
    with pytest.raises(DataError) as err:
        ingest_data(str(src), out / "t.parquet", block_size=4096)
    message = str(err.value)
    assert "line 5001" in message and "column 'b'" in message
    assert "schema_hints" in message
    assert leftovers(out) == []


def test_json_errors_name_the_line(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "broken.jsonl", '{"a": 1}\n{"a": 2}\n{"a": 3\n')
    with pytest.raises(DataError, match=r"broken\.jsonl: line 3"):
        ingest_data(str(src), out / "t.parquet")
    array = write(tmp_path / "array.json", '[{"a": 1}]')
    with pytest.raises(DataError, match="JSON array"):
        ingest_data(str(array), out / "t.parquet")
    assert leftovers(out) == []


def test_unknown_hint_type(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "d.csv", CSV)
    with pytest.raises(ConfigError) as err:
        ingest_data(str(src), out / "t.parquet", schema_hints={"amount": "decimal"})
    assert err.value.field == "schema_hints.amount"
    assert "'decimal'" in str(err.value) and "float64" in str(err.value)
    assert leftovers(out) == []


def test_hint_for_a_column_that_does_not_exist(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "d.csv", CSV)
    with pytest.raises(ConfigError) as err:
        ingest_data(str(src), out / "t.parquet", schema_hints={"amonut": "float64"})
    assert err.value.field == "schema_hints.amonut"
    assert "amount" in str(err.value)  # lists the real columns
    assert leftovers(out) == []


def test_schema_mismatch_names_both_files_and_the_column(tmp_path: Path, out: Path) -> None:
    a = write(tmp_path / "in" / "a.csv", "id,price\n1,2.5\n")
    b = write(tmp_path / "in" / "b.csv", "id,price\n2,cheap\n")
    with pytest.raises(DataError) as err:
        ingest_data(str(tmp_path / "in"), out / "t.parquet")
    message = str(err.value)
    assert str(a) in message and str(b) in message and "'price'" in message
    assert "double" in message and "string" in message
    c = write(tmp_path / "in2" / "a.csv", "id,price\n1,2.5\n")
    d = write(tmp_path / "in2" / "b.csv", "id,cost\n2,3.5\n")
    with pytest.raises(DataError) as err:
        ingest_data(str(tmp_path / "in2"), out / "t.parquet")
    message = str(err.value)
    assert str(c) in message and str(d) in message and "'price'" in message
    assert leftovers(out) == []


def test_unknown_suffix_and_bad_parameters(tmp_path: Path, out: Path) -> None:
    src = write(tmp_path / "notes.md", "# hi\n")
    with pytest.raises(ConfigError, match="file_format") as err:
        ingest_data(str(src), out / "t.parquet")
    assert "notes.md" in str(err.value)
    data = write(tmp_path / "d.csv", CSV)
    with pytest.raises(ConfigError, match="^file_format: 'xlsx'"):
        ingest_data(str(data), out / "t.parquet", file_format="xlsx")
    with pytest.raises(ConfigError, match="^delimiter"):
        ingest_data(str(data), out / "t.parquet", delimiter=";;")
    with pytest.raises(ConfigError, match="^encoding: 'klingon'"):
        ingest_data(str(data), out / "t.parquet", encoding="klingon")
    with pytest.raises(ConfigError, match="^column_names"):
        ingest_data(str(data), out / "t.parquet", column_names=["a", "a", "b", "c"])
    assert leftovers(out) == []


def test_wrong_s3_credentials(
    settings: Settings, bucket: str, store: ObjectStore, out: Path
) -> None:
    store.put_bytes(CSV.encode(), f"s3://{bucket}/d.csv")
    bad = ObjectStore(settings.with_credentials("unknown-key-id", "wrong-secret-value"))
    with pytest.raises(ObjectStoreAuthError) as err:
        ingest_data(f"s3://{bucket}/d.csv", out / "t.parquet", store=bad)
    assert "AWS_ACCESS_KEY_ID" in str(err.value)
    assert "wrong-secret-value" not in str(err.value)
    assert leftovers(out) == []


def test_bucket_that_does_not_exist(store: ObjectStore, out: Path) -> None:
    with pytest.raises(ObjectNotFound) as err:
        ingest_data("s3://kfloop-no-such-bucket-xyz/raw/", out / "t.parquet", store=store)
    assert "kfloop-no-such-bucket-xyz" in str(err.value)
    assert "bucket" in str(err.value)
    assert leftovers(out) == []
