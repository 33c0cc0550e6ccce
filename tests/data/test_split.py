"""split_table / split_dataset: stable hash, stratified random, time; outputs and failures."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path

import farmhash
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kfloop.core.arrowio import write_parquet
from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import ObjectStore, sha256_file
from kfloop.core.settings import Settings
from kfloop.data.split import (
    SPLITS,
    key_hash_buckets,
    split_artifact_parquet,
    split_artifact_tfrecords,
    split_dataset,
    split_table,
    split_to_artifacts,
)
from kfloop.data.tfrecord import example_feature_types, read_tfrecord_table


def demo_table(rows: int, seed: int = 0, first_id: int = 0) -> pa.Table:
    """The demo data set's shape: id, numeric, categorical, boolean, timestamp, label."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2025-01-01T00:00:00", "us")
    return pa.table(
        {
            "id": np.arange(first_id, first_id + rows, dtype=np.int64),
            "amount": rng.normal(100.0, 25.0, rows),
            "visits": rng.integers(0, 50, rows),
            "colour": pa.array(rng.choice(["red", "green", "blue"], rows)),
            "member": rng.random(rows) < 0.4,
            "event_time": pa.array(start + rng.integers(0, 10**13, rows).astype("timedelta64[us]")),
            "label": (rng.random(rows) < 0.3).astype(np.int64),
        }
    )


def shuffled(table: pa.Table, seed: int) -> pa.Table:
    return table.take(pa.array(np.random.default_rng(seed).permutation(table.num_rows)))


def membership(parts: dict[str, pa.Table], column: str = "id") -> dict[object, str]:
    return {key: name for name, part in parts.items() for key in part.column(column).to_pylist()}


# --- ratios and parameters ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratios", "needle"),
    [
        ((0.8, 0.1, 0.2), "0.8 + 0.1 + 0.2 = 1.1"),
        ((0.5, 0.1, 0.1), "= 0.7"),
        ((0.9, 0.1, 0.0), "the test ratio must be > 0"),
        ((1.1, -0.05, -0.05), "the validation ratio must be > 0"),
        ((0.8, 0.2), "must be three numbers"),
        ("0.8,0.1,0.1", "must be three numbers"),
        ((0.8, float("nan"), 0.1), "the validation ratio must be > 0"),
        ((0.8, "0.1", 0.1), "the validation ratio must be a number"),
    ],
)
def test_bad_ratios_are_config_errors_naming_ratios(ratios: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        split_table(demo_table(10), ratios=ratios)  # type: ignore[arg-type]
    assert err.value.field == "ratios"
    assert needle in str(err.value)


def test_ratios_within_tolerance_are_accepted() -> None:
    parts = split_table(demo_table(1000), ratios=(0.7, 0.2, 0.1000004))
    assert sum(p.num_rows for p in parts.values()) == 1000


@pytest.mark.parametrize(
    ("kwargs", "field", "needle"),
    [
        ({"method": "stratified"}, "method", "hash, random, time"),
        ({"seed": -1}, "seed", "-1"),
        ({"seed": 1.5}, "seed", "1.5"),
        ({"key_column": ""}, "key_column", "needs the name"),
        ({"method": "time"}, "time_column", "needs the name"),
        ({"stratify_column": "label"}, "stratify_column", "only used by method 'random'"),
        ({"method": "random", "time_column": "event_time"}, "time_column", "only used by"),
    ],
)
def test_bad_parameters_are_config_errors(
    kwargs: dict[str, object], field: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        split_table(demo_table(10), **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"key_column": "user"}, "key_column"),
        ({"method": "random", "stratify_column": "target"}, "stratify_column"),
        ({"method": "time", "time_column": "when"}, "time_column"),
    ],
)
def test_missing_columns_are_config_errors_naming_the_column(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        split_table(demo_table(10), **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field
    missing = next(iter(v for k, v in kwargs.items() if k.endswith("_column")))
    assert f"column {missing!r} is not in the table" in str(err.value)
    assert "id, amount" in str(err.value)


def test_empty_table_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no rows"):
        split_table(demo_table(0))


# --- hash ----------------------------------------------------------------------------------


def test_hash_buckets_are_farmhash_fingerprint64_of_the_key_text() -> None:
    ints = pa.array([0, 1, -1, 42, 2**63 - 1, -(2**63), 123456789], pa.int64())
    strings = pa.array(["", "a", "42", "grün", "青い空", "x" * 1000, "user-000017"])
    for keys, texts in [
        (ints, [str(v) for v in ints.to_pylist()]),
        (strings, strings.to_pylist()),
        (pa.array(strings.to_pylist(), pa.large_string()), strings.to_pylist()),
        (pa.array([1, 2, 3], pa.uint16()), ["1", "2", "3"]),
        (pa.chunked_array([strings[:3], strings[3:]]), strings.to_pylist()),
        (strings.slice(2, 4), strings.to_pylist()[2:6]),  # offset into the buffers
        (strings.dictionary_encode(), strings.to_pylist()),
    ]:
        expected = [farmhash.fingerprint64(text) % 10_000 for text in texts]
        assert key_hash_buckets(keys).tolist() == expected
    assert key_hash_buckets(pa.array([42])).tolist() == key_hash_buckets(pa.array(["42"])).tolist()


def test_hash_split_is_stable_when_rows_are_added_and_shuffled() -> None:
    original = demo_table(3000, seed=1)
    first = membership(split_table(original))

    grown = shuffled(pa.concat_tables([original, demo_table(2000, seed=2, first_id=3000)]), 5)
    second = membership(split_table(grown))

    assert {key: second[key] for key in first} == first
    assert len(second) == 5000
    counts = {name: sum(1 for v in second.values() if v == name) for name in SPLITS}
    assert abs(counts["train"] / 5000 - 0.8) < 0.02
    assert abs(counts["validation"] / 5000 - 0.1) < 0.015


def test_hash_split_with_string_keys_is_stable_and_keeps_duplicate_keys_together() -> None:
    base = demo_table(2000, seed=3)
    users = pa.array([f"user-{i % 700:05d}" for i in range(2000)])
    table = base.append_column("user", users)
    first = split_table(table, key_column="user")
    for name, part in first.items():
        other = {u for n, p in first.items() if n != name for u in p.column("user").to_pylist()}
        assert not set(part.column("user").to_pylist()) & other
    again = split_table(shuffled(table, 9), key_column="user")
    assert membership(again, "id") == membership(first, "id")


def test_hash_split_keeps_rows_in_input_order() -> None:
    parts = split_table(demo_table(500))
    for part in parts.values():
        ids = part.column("id").to_pylist()
        assert ids == sorted(ids)


def test_null_keys_are_a_data_error_with_the_count() -> None:
    table = demo_table(20)
    ids = pa.array([None if i in (3, 11) else i for i in range(20)], pa.int64())
    table = table.set_column(0, "id", ids)
    with pytest.raises(DataError) as err:
        split_table(table)
    message = str(err.value)
    assert "key column 'id'" in message
    assert "2 null value(s) out of 20 rows" in message
    assert "first at row 3" in message


def test_float_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="column 'amount' has type double") as err:
        split_table(demo_table(20), key_column="amount")
    assert err.value.field == "key_column"


def test_too_few_keys_for_a_split_is_a_data_error_naming_the_split() -> None:
    with pytest.raises(DataError) as err:
        split_table(demo_table(4))
    message = str(err.value)
    assert "would be empty" in message
    assert "method 'hash'" in message
    assert "4 rows" in message


# --- random --------------------------------------------------------------------------------


def class_shares(table: pa.Table, column: str) -> dict[object, float]:
    values, counts = np.unique(
        np.array(table.column(column).to_pylist(), dtype=object), return_counts=True
    )
    return {v: c / table.num_rows for v, c in zip(values.tolist(), counts.tolist(), strict=True)}


@pytest.mark.parametrize("labels", ["binary", "three_imbalanced"])
def test_stratified_random_keeps_class_shares_within_one_point(labels: str) -> None:
    table = demo_table(10_000, seed=4)
    if labels == "three_imbalanced":
        rng = np.random.default_rng(11)
        classes = pa.array(rng.choice(["common", "rare", "mid"], 10_000, p=[0.75, 0.05, 0.2]))
        table = table.set_column(table.column_names.index("label"), "label", classes)
    overall = class_shares(table, "label")

    parts = split_table(table, method="random", stratify_column="label", seed=3)

    assert {n: p.num_rows for n, p in parts.items()} == {
        "train": pytest.approx(8000, abs=3),
        "validation": pytest.approx(1000, abs=3),
        "test": pytest.approx(1000, abs=3),
    }
    assert sum(p.num_rows for p in parts.values()) == 10_000
    for part in parts.values():
        shares = class_shares(part, "label")
        assert shares.keys() == overall.keys()
        for value, share in overall.items():
            assert abs(shares[value] - share) < 0.01  # the requirement
            # What stratification guarantees: each class within a row or so of its share
            # (an unstratified random split misses this by up to ~1.5 points here).
            assert abs(shares[value] - share) <= 3 / part.num_rows
    assert len(set(membership(parts))) == 10_000


def test_random_split_is_seeded() -> None:
    table = demo_table(1000)
    one = membership(split_table(table, method="random", seed=7))
    two = membership(split_table(table, method="random", seed=7))
    other = membership(split_table(table, method="random", seed=8))
    assert one == two
    assert one != other
    assert sorted(one.values()).count("train") == 800


def test_stratified_random_treats_null_labels_as_a_class() -> None:
    table = demo_table(1000, seed=6)
    labels = pa.array([None if i % 10 == 0 else i % 2 for i in range(1000)], pa.int64())
    table = table.set_column(table.column_names.index("label"), "label", labels)
    parts = split_table(table, method="random", stratify_column="label")
    assert [p.column("label").null_count for p in parts.values()] == [80, 10, 10]


# --- time ----------------------------------------------------------------------------------


def test_time_split_puts_oldest_in_train_and_newest_in_test() -> None:
    table = demo_table(1000, seed=8)
    parts = split_table(table, method="time", time_column="event_time")
    assert [p.num_rows for p in parts.values()] == [800, 100, 100]
    times = {n: p.column("event_time").cast(pa.int64()).to_numpy() for n, p in parts.items()}
    assert times["train"].max() < times["validation"].min()
    assert times["validation"].max() < times["test"].min()


def test_time_ties_never_straddle_splits_and_do_not_depend_on_row_order() -> None:
    rows = 1000
    table = demo_table(rows, seed=9)
    days = pa.array(
        [dt.date(2025, 1, 1) + dt.timedelta(days=int(d)) for d in np.arange(rows) // 40],
        pa.date32(),
    )  # 25 distinct days, 40 rows each
    table = table.append_column("day", days)

    parts = split_table(table, method="time", time_column="day", ratios=(0.7, 0.15, 0.15))
    again = split_table(
        shuffled(table, 3), method="time", time_column="day", ratios=(0.7, 0.15, 0.15)
    )

    assert membership(again) == membership(parts)
    day_sets = [set(p.column("day").to_pylist()) for p in parts.values()]
    assert not day_sets[0] & day_sets[1] and not day_sets[1] & day_sets[2]
    # The 700th row falls inside day 17 (rows 680..719): that whole day goes to train. The
    # 850th falls inside day 21 (rows 840..879): that whole day goes to validation.
    assert [p.num_rows for p in parts.values()] == [720, 160, 120]


def test_time_split_records_its_cut_points(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    write_parquet(demo_table(100), source)
    result = split_dataset(
        str(source), str(tmp_path / "out"), method="time", time_column="event_time"
    )
    bounds = result.manifest["time_bounds"]
    train = pq.read_table(tmp_path / "out" / "train.parquet").column("event_time")
    assert bounds["train_end"] == max(train.to_pylist()).isoformat()


def test_time_ties_that_empty_a_split_are_a_data_error() -> None:
    table = demo_table(100)
    same = pa.array([dt.datetime(2025, 1, 1)] * 95 + [dt.datetime(2025, 1, 2)] * 5)
    table = table.set_column(table.column_names.index("event_time"), "event_time", same)
    with pytest.raises(DataError) as err:
        split_table(table, method="time", time_column="event_time")
    assert "split 'validation' would be empty" in str(err.value)
    assert "never straddle" in str(err.value)


def test_null_times_are_a_data_error_with_the_count() -> None:
    table = demo_table(30)
    times = table.column("event_time").to_pylist()
    times[7] = None
    table = table.set_column(5, "event_time", pa.array(times, pa.timestamp("us")))
    with pytest.raises(DataError) as err:
        split_table(table, method="time", time_column="event_time")
    assert "time column 'event_time' has 1 null value(s) out of 30 rows" in str(err.value)
    assert "first at row 7" in str(err.value)


def test_string_time_column_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'colour' has type string") as err:
        split_table(demo_table(30), method="time", time_column="colour")
    assert err.value.field == "time_column"


# --- split_dataset: files, manifest, atomicity ---------------------------------------------


def test_split_dataset_writes_parquet_tfrecords_and_manifest(tmp_path: Path) -> None:
    table = demo_table(400)
    source = tmp_path / "in.parquet"
    write_parquet(table, source)
    out = tmp_path / "splits"

    result = split_dataset(str(source), str(out), num_shards=2, seed=5)

    assert sorted(p.name for p in out.iterdir()) == [
        "split.json",
        "test.parquet",
        "tfrecord",
        "train.parquet",
        "validation.parquet",
    ]
    manifest = json.loads((out / "split.json").read_text())
    assert manifest == result.manifest
    assert manifest["method"] == "hash"
    assert manifest["ratios"] == {"train": 0.8, "validation": 0.1, "test": 0.1}
    assert manifest["seed"] == 5
    assert manifest["key_column"] == "id"
    assert manifest["hash"]["function"] == "farmhash.fingerprint64"
    expected = split_table(table)
    total = 0
    for name in SPLITS:
        parquet = out / f"{name}.parquet"
        part = pq.read_table(parquet)
        assert part.equals(expected[name])
        assert manifest["rows"][name] == part.num_rows == result.rows[name]
        assert manifest["sha256"][name] == sha256_file(parquet)
        shards = manifest["tfrecord"]["files"][name]
        assert shards == [
            f"tfrecord/{name}-00000-of-00002.tfrecord.gz",
            f"tfrecord/{name}-00001-of-00002.tfrecord.gz",
        ]
        decoded = read_tfrecord_table(
            [out / s for s in shards], example_feature_types(table.schema)
        )
        assert [v[0] for v in decoded.column("id").to_pylist()] == part.column("id").to_pylist()
        total += part.num_rows
    assert total == 400
    assert manifest["tfrecord"]["features"]["colour"] == "bytes"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_split_dataset_without_tfrecords(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    write_parquet(demo_table(100), source)
    result = split_dataset(
        str(source),
        str(tmp_path / "out"),
        method="random",
        stratify_column="label",
        write_tfrecord=False,
    )
    assert not (tmp_path / "out" / "tfrecord").exists()
    assert result.manifest["tfrecord"] is None
    assert set(result.manifest["class_counts"]["train"]) == {"0", "1"}


def test_split_dataset_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    # A column TFRecords cannot hold fails the write after the Parquet files were written.
    table = demo_table(100).append_column("price", pa.array([decimal.Decimal("1.25")] * 100))
    source = tmp_path / "in.parquet"
    write_parquet(table, source)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="column 'price'"):
        split_dataset(str(source), str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


def test_split_dataset_bad_data_leaves_nothing_behind(tmp_path: Path) -> None:
    table = demo_table(50)
    table = table.set_column(0, "id", pa.array([None] * 50, pa.int64()))
    source = tmp_path / "in.parquet"
    write_parquet(table, source)
    with pytest.raises(DataError) as err:
        split_dataset(str(source), str(tmp_path / "out"))
    assert str(source) in str(err.value)
    assert "50 null value(s)" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


def test_split_dataset_refuses_a_non_empty_output_folder(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    write_parquet(demo_table(50), source)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError) as err:
        split_dataset(str(source), str(out))
    assert err.value.field == "output_dir"
    assert "not empty" in str(err.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_split_dataset_fills_an_existing_empty_folder(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    write_parquet(demo_table(100), source)
    out = tmp_path / "out"
    out.mkdir()
    split_dataset(str(source), str(out), write_tfrecord=False)
    assert (out / "split.json").is_file()


def test_split_dataset_rejects_an_s3_output_and_bad_shards(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        split_dataset(str(tmp_path / "in.parquet"), "s3://bucket/splits")
    assert err.value.field == "output_dir"
    with pytest.raises(ConfigError) as err:
        split_dataset(str(tmp_path / "in.parquet"), str(tmp_path / "o"), num_shards=0)
    assert err.value.field == "num_shards"


def test_split_dataset_reads_from_s3(
    tmp_path: Path,
    store: ObjectStore,
    bucket: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    table = demo_table(200)
    uri = f"s3://{bucket}/clean/data.parquet"
    write_parquet(table, uri, store)
    result = split_dataset(uri, str(tmp_path / "out"), write_tfrecord=False)
    assert sum(result.rows.values()) == 200
    assert result.manifest["source"] == uri


# --- split artifacts -----------------------------------------------------------------------


def test_split_to_artifacts_and_artifact_helpers(tmp_path: Path) -> None:
    table = demo_table(300)
    source = tmp_path / "in.parquet"
    write_parquet(table, source)
    dirs = {name: str(tmp_path / "artifacts" / name) for name in SPLITS}

    result = split_to_artifacts(str(source), dirs, num_shards=3)

    for name in SPLITS:
        folder = Path(dirs[name])
        assert sorted(p.name for p in folder.iterdir()) == ["data.parquet", "tfrecord"]
        parquet = split_artifact_parquet(folder)
        assert parquet == str(folder / "data.parquet")
        assert split_artifact_parquet(parquet) == parquet
        shards = split_artifact_tfrecords(folder)
        assert [Path(s).name for s in shards] == [
            f"part-0000{i}-of-00003.tfrecord.gz" for i in range(3)
        ]
        meta = result.splits[name].as_metadata()
        assert meta["rows"] == pq.read_table(parquet).num_rows
        assert meta["sha256"] == sha256_file(parquet)
        assert meta["tfrecord_shards"] == [f"tfrecord/{Path(s).name}" for s in shards]
        assert meta["split"] == name
    assert sum(result.rows.values()) == 300


def test_split_to_artifacts_failure_leaves_no_artifact(tmp_path: Path) -> None:
    table = demo_table(100).append_column("price", pa.array([decimal.Decimal("1")] * 100))
    source = tmp_path / "in.parquet"
    write_parquet(table, source)
    root = tmp_path / "artifacts"
    with pytest.raises(DataError, match="column 'price'"):
        split_to_artifacts(str(source), {name: str(root / name) for name in SPLITS})
    assert list(root.iterdir()) == []


def test_split_artifact_parquet_rejects_other_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no data.parquet"):
        split_artifact_parquet(tmp_path)
    with pytest.raises(DataError, match="no such split artifact"):
        split_artifact_parquet(tmp_path / "missing")
