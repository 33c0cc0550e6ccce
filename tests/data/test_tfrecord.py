"""Arrow -> tf.Example TFRecord (GZIP) shards and back, on real tfx-bsl and TensorFlow."""

from __future__ import annotations

import datetime as dt
import decimal
import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from kfloop.core.errors import ConfigError, DataError
from kfloop.data import tfrecord
from kfloop.data.tfrecord import (
    example_feature_types,
    frame_records,
    read_tfrecord_examples,
    read_tfrecord_table,
    shard_names,
    write_tfrecord_shards,
)

UTC = dt.UTC


def mixed_table() -> pa.Table:
    """Every supported flat type, with nulls, NaN, unicode, empty strings and extremes."""
    return pa.table(
        {
            "id": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
            "amount": pa.array([1.1, None, float("nan"), -3.5e38 / 10, 0.0, 1e-7], pa.float64()),
            "count": pa.array([7, None, -9, 2**62, 0, -(2**63)], pa.int64()),
            "small": pa.array([1, 2, None, 4, 5, 255], pa.uint8()),
            "colour": pa.array(["red", "grün", None, "", "blue", "青"], pa.string()),
            "blob": pa.array([b"\x00\xff", None, b"", b"x", b"y", b"z"], pa.binary()),
            "active": pa.array([True, False, None, True, True, False]),
            "event_time": pa.array(
                [
                    dt.datetime(2025, 1, 1, 12, 0, 0, 123456),
                    None,
                    dt.datetime(1969, 12, 31, 23, 59, 59),
                    dt.datetime(2000, 2, 29),
                    dt.datetime(2025, 6, 1),
                    dt.datetime(2030, 1, 1),
                ],
                pa.timestamp("us"),
            ),
            "nanos": pa.array(
                [1_700_000_000_123_456_789, None, 0, 5, 999, 1_000], pa.timestamp("ns", tz="UTC")
            ),
            "day": pa.array(
                [dt.date(2025, 1, 1), None, dt.date(1970, 1, 1), dt.date(1969, 12, 31), None, None],
                pa.date32(),
            ),
            "tags": pa.array([["a", "b"], [], None, ["c"], ["d", "e", "f"], ["g"]]),
            "category": pa.array(["x", "y", "x", None, "y", "x"]).dictionary_encode(),
        }
    )


def expected_values(table: pa.Table) -> dict[str, list[object]]:
    """What each column must decode to: one-element lists of the converted value, or None."""
    out: dict[str, list[object]] = {}
    for name in table.column_names:
        col = table.column(name)
        values: list[object] = []
        for value in col.to_pylist():
            if value is None:
                values.append(None)
            elif isinstance(value, list):
                values.append([v.encode() for v in value])
            elif isinstance(value, bool):
                values.append([int(value)])
            elif isinstance(value, float):
                values.append([float(np.float32(value))])
            elif isinstance(value, str):
                values.append([value.encode()])
            elif isinstance(value, dt.datetime):
                aware = value if value.tzinfo else value.replace(tzinfo=UTC)
                delta = aware - dt.datetime(1970, 1, 1, tzinfo=UTC)
                values.append([delta // dt.timedelta(microseconds=1)])
            elif isinstance(value, dt.date):
                values.append([(value - dt.date(1970, 1, 1)).days])
            else:
                values.append([value])
        out[name] = values
    # Nanoseconds are truncated to microseconds (the Python datetime above already is).
    out["nanos"] = [
        None if v is None else [v // 1000]
        for v in table.column("nanos").cast(pa.int64()).to_pylist()
    ]
    return out


def assert_same(actual: list[object], expected: list[object], column: str) -> None:
    assert len(actual) == len(expected), column
    for row, (got, want) in enumerate(zip(actual, expected, strict=True)):
        if want is None:
            assert got is None, (column, row, got)
        elif want and isinstance(want[0], float) and np.isnan(want[0]):
            assert got is not None and np.isnan(got[0]), (column, row, got)
        else:
            assert got == want, (column, row, got, want)


def test_round_trip_preserves_values_types_and_missing(tmp_path: Path) -> None:
    table = mixed_table()
    types = example_feature_types(table.schema)
    assert types == {
        "id": "int64",
        "amount": "float",
        "count": "int64",
        "small": "int64",
        "colour": "bytes",
        "blob": "bytes",
        "active": "int64",
        "event_time": "int64",
        "nanos": "int64",
        "day": "int64",
        "tags": "bytes",
        "category": "bytes",
    }

    paths = write_tfrecord_shards(table, tmp_path, "train", num_shards=2)

    assert [Path(p).name for p in paths] == [
        "train-00000-of-00002.tfrecord.gz",
        "train-00001-of-00002.tfrecord.gz",
    ]
    for path in paths:
        assert Path(path).read_bytes()[:2] == b"\x1f\x8b"  # GZIP
    decoded = read_tfrecord_table(paths, types)
    assert decoded.num_rows == table.num_rows
    assert decoded.column_names == table.column_names
    expected = expected_values(table)
    for name in table.column_names:
        assert_same(decoded.column(name).to_pylist(), expected[name], name)


def test_missing_values_are_missing_features_for_tensorflow(tmp_path: Path) -> None:
    table = mixed_table()
    paths = write_tfrecord_shards(table, tmp_path, "t")
    examples = read_tfrecord_examples(paths)
    assert len(examples) == 6
    second = examples[1].features.feature  # type: ignore[attr-defined]
    assert second["amount"].WhichOneof("kind") is None
    assert second["blob"].WhichOneof("kind") is None
    assert list(second["colour"].bytes_list.value) == ["grün".encode()]
    assert list(second["id"].int64_list.value) == [2]
    assert list(second["tags"].bytes_list.value) == []  # an empty list stays an empty list
    first = examples[0].features.feature  # type: ignore[attr-defined]
    assert list(first["colour"].bytes_list.value) == [b"red"]
    assert first["amount"].float_list.value[0] == pytest.approx(1.1, rel=1e-7)

    serialized = [e.SerializeToString() for e in examples]  # type: ignore[attr-defined]
    parsed = tf.io.parse_example(
        serialized,
        {
            "amount": tf.io.FixedLenFeature([1], tf.float32, default_value=[-1.0]),
            "colour": tf.io.FixedLenFeature([1], tf.string, default_value=["<missing>"]),
            "event_time": tf.io.FixedLenFeature([1], tf.int64, default_value=[-1]),
        },
    )
    assert parsed["amount"].numpy()[1, 0] == -1.0
    assert parsed["colour"].numpy()[2, 0] == b"<missing>"
    assert parsed["colour"].numpy()[1, 0] == "grün".encode()
    assert parsed["event_time"].numpy()[1, 0] == -1
    assert parsed["event_time"].numpy()[0, 0] == 1735732800123456


def test_shards_hold_contiguous_ranges_in_order_across_batches(tmp_path: Path) -> None:
    rows = 103
    table = pa.table({"id": np.arange(rows), "x": np.linspace(0, 1, rows)})
    paths = write_tfrecord_shards(table, tmp_path, "part", num_shards=4, batch_rows=7)
    sizes = []
    ids: list[int] = []
    for path in paths:
        part = read_tfrecord_table([path], example_feature_types(table.schema), batch_size=5)
        sizes.append(part.num_rows)
        ids.extend(v[0] for v in part.column("id").to_pylist())
    assert sizes == [25, 26, 26, 26]
    assert ids == list(range(rows))


def test_more_shards_than_rows_writes_empty_shards(tmp_path: Path) -> None:
    table = pa.table({"id": [1, 2]})
    paths = write_tfrecord_shards(table, tmp_path, "p", num_shards=3, max_workers=1)
    assert len(paths) == 3
    assert [len(read_tfrecord_examples([p])) for p in paths] == [0, 1, 1]


def test_read_without_feature_types_infers_them(tmp_path: Path) -> None:
    table = pa.table({"id": [1, 2, 3], "name": ["a", None, "c"], "score": [0.5, 1.5, None]})
    paths = write_tfrecord_shards(table, tmp_path, "p")
    decoded = read_tfrecord_table(paths)
    assert decoded.column("id").to_pylist() == [[1], [2], [3]]
    assert decoded.column("name").to_pylist() == [[b"a"], None, [b"c"]]
    assert decoded.column("score").to_pylist() == [[0.5], [1.5], None]


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (pa.array([decimal.Decimal("1.5")] * 4), "column 'bad' has type decimal128"),
        (pa.array([{"a": 1}] * 4), "column 'bad' has type struct"),
        (pa.array([[[1]]] * 4), "column 'bad'"),
        (pa.array([[1, None], [2], [3], [4]]), "column 'bad' has 1 null value(s) inside lists"),
        (pa.array([1, 2, 3, 2**64 - 1], pa.uint64()), "column 'bad' (uint64)"),
    ],
)
def test_unsupported_columns_fail_naming_the_column_and_leave_no_file(
    tmp_path: Path, column: pa.Array, message: str
) -> None:
    table = pa.table({"id": [1, 2, 3, 4], "bad": column})
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        write_tfrecord_shards(table, out, "train", num_shards=2)
    assert message in str(err.value)
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_in_a_later_shard_removes_the_shards_already_written(
    tmp_path: Path, workers: int
) -> None:
    # The bad value sits in the last shard only: earlier shards complete, then are removed.
    values = pa.array([1] * 9 + [2**64 - 1], pa.uint64())
    table = pa.table({"id": np.arange(10), "v": values})
    with pytest.raises(DataError, match="column 'v'"):
        write_tfrecord_shards(table, tmp_path, "train", num_shards=5, max_workers=workers)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_shards": 0}, "num_shards"),
        ({"num_shards": 10_001}, "num_shards"),
        ({"num_shards": 1.5}, "num_shards"),
        ({"prefix": ""}, "prefix"),
        ({"prefix": "a/b"}, "prefix"),
        ({"compression_level": 0}, "compression_level"),
    ],
)
def test_bad_parameters_are_config_errors(
    tmp_path: Path, kwargs: dict[str, object], field: str
) -> None:
    args: dict[str, object] = {"prefix": "train", "num_shards": 1, **kwargs}
    with pytest.raises(ConfigError) as err:
        write_tfrecord_shards(pa.table({"id": [1]}), tmp_path, **args)  # type: ignore[arg-type]
    assert err.value.field == field
    assert list(tmp_path.iterdir()) == []


def test_shard_names() -> None:
    assert shard_names("test", 2) == [
        "test-00000-of-00002.tfrecord.gz",
        "test-00001-of-00002.tfrecord.gz",
    ]


def test_reading_a_missing_or_corrupt_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such TFRecord file"):
        read_tfrecord_table([tmp_path / "nope.tfrecord.gz"])
    bad = tmp_path / "bad.tfrecord.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="bad.tfrecord.gz: cannot read as GZIP TFRecord"):
        read_tfrecord_examples([bad])


def test_framing_is_byte_identical_to_tensorflows_writer(tmp_path: Path) -> None:
    records = [b"", b"x", b"\x00" * 300, "grün".encode(), bytes(range(256)) * 5]
    plain = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(plain)) as writer:
        for record in records:
            writer.write(record)
    assert frame_records(records) == plain.read_bytes()
    assert frame_records([]) == b""


@pytest.mark.parametrize("workers", [1, 2])
def test_one_shard_of_many_batches_is_one_valid_gzip_stream_in_row_order(
    tmp_path: Path, workers: int
) -> None:
    rows = 1000
    table = pa.table({"id": np.arange(rows), "name": [f"n{i}" for i in range(rows)]})
    [path] = write_tfrecord_shards(table, tmp_path, "p", batch_rows=37, max_workers=workers)
    decoded = read_tfrecord_table([path], example_feature_types(table.schema), batch_size=100)
    assert [v[0] for v in decoded.column("id").to_pylist()] == list(range(rows))
    assert decoded.column("name").to_pylist()[-1] == [b"n999"]
    # Python's gzip checks the trailer (CRC-32 and size) of the concatenated batches too.
    with gzip.open(path) as handle:
        raw = handle.read()
    assert len(raw) > 0 and len(list(tf.data.TFRecordDataset([path], "GZIP"))) == rows
    assert list(tmp_path.iterdir()) == [Path(path)]


def test_without_google_crc32c_tensorflows_writer_writes_the_same_examples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = mixed_table()
    ours = write_tfrecord_shards(table, tmp_path / "ours", "t", num_shards=2, batch_rows=2)
    monkeypatch.setattr(tfrecord, "_have_crc32c", lambda: False)
    theirs = write_tfrecord_shards(table, tmp_path / "tf", "t", num_shards=2, batch_rows=2)
    assert [Path(p).name for p in ours] == [Path(p).name for p in theirs]
    expected = expected_values(table)
    for paths in (ours, theirs):  # map order inside a serialised example may differ: decode
        decoded = read_tfrecord_table(paths, example_feature_types(table.schema))
        for name in table.column_names:
            assert_same(decoded.column(name).to_pylist(), expected[name], name)
