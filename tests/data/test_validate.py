"""validate_table on small real tables with real TFDV (no mocks)."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.statistics import stats_impl
from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2
from tfx_bsl.statistics import merge_util

from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from kfloop.data.validate import (
    ANOMALIES_FILE,
    JENSEN_SHANNON,
    L_INFTY,
    OUTPUT_FILES,
    SCHEMA_FILE,
    ValidationFailed,
    load_statistics,
    statistics_in_memory,
    to_tfdv_record_batch,
    validate_table,
)

ROWS = 600
CATEGORIES = ["red", "green", "blue"]


def make_table(
    rows: int = ROWS,
    seed: int = 0,
    shift: float = 0.0,
    category_p: list[float] | None = None,
) -> pa.Table:
    """Nulls, strings, ints, floats, bools and a timestamp, like kfloop's demo data."""
    rng = np.random.default_rng(seed)
    amount = rng.normal(10.0 + shift, 2.0, rows)
    amount_mask = rng.random(rows) < 0.1
    count = rng.integers(0, 50, rows)
    count_mask = rng.random(rows) < 0.05
    color = rng.choice(CATEGORIES, rows, p=category_p).tolist()
    color = [None if i % 13 == 0 else c for i, c in enumerate(color)]
    start = dt.datetime(2026, 1, 1)
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "amount": pa.array(amount, mask=amount_mask),
            "ratio": pa.array(rng.random(rows).astype(np.float32)),
            "count": pa.array(count, mask=count_mask),
            "color": pa.array(color, pa.string()),
            "flag": pa.array(rng.random(rows) < 0.3),
            "event_time": pa.array(
                [start + dt.timedelta(minutes=i) for i in range(rows)], pa.timestamp("us")
            ),
            "label": pa.array(rng.integers(0, 2, rows)),
        }
    )


def write(table: pa.Table, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return str(path)


def feature(stats: object, name: str) -> object:
    for f in stats.datasets[0].features:  # type: ignore[attr-defined]
        if f.path.step[0] == name:
            return f
    raise AssertionError(f"no statistics for {name}")


def common(stats: object, name: str) -> object:
    f = feature(stats, name)
    which = f.WhichOneof("stats")  # type: ignore[attr-defined]
    return getattr(f, which).common_stats


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def base(tmp_path: Path) -> tuple[pa.Table, str]:
    table = make_table()
    return table, write(table, tmp_path / "base.parquet")


# ---------------------------------------------------------------- statistics


def test_chunked_statistics_equal_whole_table_counts(tmp_path: Path, base: tuple) -> None:
    table, path = base
    result = validate_table(path, str(tmp_path / "out"), chunk_rows=64)  # 10 chunks
    stats = tfdv.load_statistics(result.statistics_path)  # round trip through the file

    assert result.num_examples == ROWS == stats.datasets[0].num_examples
    assert result.num_features == table.num_columns
    assert common(stats, "amount").num_missing == table["amount"].null_count > 0
    assert common(stats, "count").num_missing == table["count"].null_count > 0
    assert common(stats, "color").num_missing == table["color"].null_count > 0
    assert common(stats, "id").num_missing == 0

    amount = table["amount"].to_pandas().to_numpy(dtype=float)
    assert abs(feature(stats, "amount").num_stats.mean - np.nanmean(amount)) < 1e-9
    assert abs(feature(stats, "amount").num_stats.std_dev - np.nanstd(amount)) < 1e-9
    flag = table["flag"].to_pandas().to_numpy(dtype=float)
    assert abs(feature(stats, "flag").num_stats.mean - flag.mean()) < 1e-9

    counts = collections.Counter(c for c in table["color"].to_pylist() if c is not None)
    top = feature(stats, "color").string_stats.top_values
    assert [(t.value, int(t.frequency)) for t in top] == counts.most_common()
    assert feature(stats, "color").string_stats.unique == len(CATEGORIES)

    # One chunk and ten chunks agree on counts, mean and top values.
    whole = stats_impl.generate_statistics_in_memory(
        to_tfdv_record_batch(pq.read_table(path)), tfdv.StatsOptions()
    )
    for name in table.column_names:
        assert common(whole, name).num_missing == common(stats, name).num_missing
        assert common(whole, name).num_non_missing == common(stats, name).num_non_missing
    assert abs(feature(whole, "amount").num_stats.mean - np.nanmean(amount)) < 1e-9
    assert list(feature(whole, "color").string_stats.top_values) == list(top)


def test_statistics_file_round_trips(tmp_path: Path, base: tuple) -> None:
    _, path = base
    result = validate_table(path, str(tmp_path / "out"))
    from_tfdv = tfdv.load_statistics(result.statistics_path)
    from_kfloop = load_statistics(result.statistics_path)
    assert from_tfdv == from_kfloop
    assert from_tfdv.datasets[0].num_examples == ROWS


def test_finished_protos_cannot_be_merged_by_adding(base: tuple) -> None:
    """Why chunks are merged as accumulators: tfx_bsl's proto merge joins shards of
    different features; two chunks of the same features are not added up."""
    table, _ = base
    batch = to_tfdv_record_batch(table)
    half = ROWS // 2
    first = stats_impl.generate_statistics_in_memory(batch.slice(0, half))
    second = stats_impl.generate_statistics_in_memory(batch.slice(half))
    joined = merge_util.merge_dataset_feature_statistics_list([first, second])
    assert joined.datasets[0].num_examples == half  # one shard's count, not the sum
    uneven = stats_impl.generate_statistics_in_memory(batch.slice(0, 100))
    with pytest.raises(RuntimeError, match="different num_examples"):
        merge_util.merge_dataset_feature_statistics_list([uneven, second])
    merged = statistics_in_memory([batch.slice(0, 100), batch.slice(100)], tfdv.StatsOptions())
    assert merged.datasets[0].num_examples == ROWS


def test_conversions_reported_and_types(tmp_path: Path, base: tuple) -> None:
    _, path = base
    result = validate_table(path, str(tmp_path / "out"))
    assert result.conversions == {
        "flag": "bool -> int64 (0/1)",
        "event_time": "timestamp[us] -> int64 microseconds since epoch (UTC)",
    }
    stats = load_statistics(result.statistics_path)
    kinds = {
        f.path.step[0]: statistics_pb2.FeatureNameStatistics.Type.Name(f.type)
        for f in stats.datasets[0].features
    }
    assert kinds == {
        "id": "INT",
        "amount": "FLOAT",
        "ratio": "FLOAT",
        "count": "INT",
        "color": "STRING",
        "flag": "INT",
        "event_time": "INT",
        "label": "INT",
    }
    assert feature(stats, "event_time").num_stats.min == pytest.approx(
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1e6
    )


def test_batch_conversion_of_other_flat_types() -> None:
    table = pa.table(
        {
            "day": pa.array([dt.date(1970, 1, 3), None], pa.date32()),
            "price": pa.array([decimal.Decimal("1.25"), None], pa.decimal128(5, 2)),
            "code": pa.array(["a", None]).dictionary_encode(),
            "when": pa.array(
                [dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC), None],
                pa.timestamp("ns", "Europe/Paris"),
            ),
            "small": pa.array([7, None], pa.uint8()),
            "empty": pa.nulls(2),
        }
    )
    batch = to_tfdv_record_batch(table)
    assert batch.to_pydict() == {
        "day": [[2], None],
        "price": [[1.25], None],
        "code": [[b"a"], None],
        "when": [[1_000_000], None],
        "small": [[7], None],
        "empty": [None, None],
    }
    with pytest.raises(DataError, match="column 'big' \\(uint64\\): values do not fit int64"):
        to_tfdv_record_batch(pa.table({"big": pa.array([2**64 - 1], pa.uint64())}))


def test_batch_conversion_nulls_become_missing() -> None:
    batch = to_tfdv_record_batch(
        pa.table({"s": pa.array(["a", None, "b"]), "b": pa.array([True, None, False])})
    )
    assert batch.schema.field("s").type == pa.list_(pa.binary())
    assert batch.schema.field("b").type == pa.list_(pa.int64())
    assert batch.column(0).to_pylist() == [[b"a"], None, [b"b"]]
    assert batch.column(1).to_pylist() == [[1], None, [0]]


# ---------------------------------------------------------------- schema and anomalies


def test_schema_inferred_and_written(tmp_path: Path, base: tuple) -> None:
    table, path = base
    out = tmp_path / "out"
    result = validate_table(path, str(out))
    assert result.schema_inferred
    assert result.anomalies == ()
    assert files_in(out) == sorted(OUTPUT_FILES)  # no temporary folder left behind
    schema = tfdv.load_schema_text(str(out / SCHEMA_FILE))
    assert [f.name for f in schema.feature] == table.column_names
    domain = tfdv.get_domain(schema, "color")
    assert sorted(domain.value) == sorted(CATEGORIES)
    assert tfdv.get_feature(schema, "flag").HasField("bool_domain")
    anomalies = tfdv.load_anomalies_text(str(out / ANOMALIES_FILE))
    assert not anomalies.anomaly_info


def _curated_schema(tmp_path: Path, table: pa.Table) -> str:
    """The schema a first run writes, used as the curated schema of a second run."""
    first = validate_table(write(table, tmp_path / "first.parquet"), str(tmp_path / "first"))
    return first.schema_path


def test_domain_excluding_a_present_value_blocks(tmp_path: Path) -> None:
    schema_path = _curated_schema(tmp_path, make_table())
    schema = tfdv.load_schema_text(schema_path)
    domain = tfdv.get_domain(schema, "color")
    domain.ClearField("value")
    domain.value.extend(["red", "green"])  # "blue" is present in the data
    tfdv.write_schema_text(schema, schema_path)
    out = tmp_path / "out"

    with pytest.raises(ValidationFailed) as info:
        validate_table(
            write(make_table(), tmp_path / "d.parquet"), str(out), schema_path=schema_path
        )

    assert isinstance(info.value, DataError)
    message = str(info.value)
    line = next(x for x in message.splitlines() if x.strip().startswith("color:"))
    assert "Unexpected string values" in line
    assert "blue" in line
    assert "[ERROR]" in line
    assert info.value.result.error_count == 1
    # Outputs are complete and kept as the record of the failure.
    assert files_in(out) == sorted(OUTPUT_FILES)
    anomalies = tfdv.load_anomalies_text(str(out / ANOMALIES_FILE))
    assert list(anomalies.anomaly_info) == ["color"]


def test_numeric_column_that_became_string_is_an_anomaly(tmp_path: Path) -> None:
    schema_path = _curated_schema(tmp_path, make_table())
    table = make_table(seed=1)
    as_text = pa.array([None if v is None else f"{v:.3f}" for v in table["amount"].to_pylist()])
    table = table.set_column(table.column_names.index("amount"), "amount", as_text)

    with pytest.raises(ValidationFailed) as info:
        validate_table(
            write(table, tmp_path / "d.parquet"), str(tmp_path / "out"), schema_path=schema_path
        )

    kinds = {(a.feature, a.type) for a in info.value.result.anomalies}
    assert ("amount", "UNEXPECTED_DATA_TYPE") in kinds
    assert "amount: Unexpected data type: Expected data of type: FLOAT but got STRING" in str(
        info.value
    )


def test_warning_only_anomalies_pass(tmp_path: Path) -> None:
    schema_path = _curated_schema(tmp_path, make_table())
    table = make_table(seed=2).append_column("extra", pa.array(np.ones(ROWS)))
    path = write(table, tmp_path / "d.parquet")

    with pytest.raises(ValidationFailed, match="extra: New column"):  # ERROR by default
        validate_table(path, str(tmp_path / "strict"), schema_path=schema_path)

    result = validate_table(
        path,
        str(tmp_path / "out"),
        schema_path=schema_path,
        warning_anomaly_types=["SCHEMA_NEW_COLUMN"],
    )
    assert (result.error_count, result.warning_count) == (0, 1)
    assert result.anomalies[0].feature == "extra"
    assert result.anomalies[0].severity == "WARNING"
    anomalies = tfdv.load_anomalies_text(result.anomalies_path)
    assert anomalies.anomaly_info["extra"].severity == anomalies_pb2.AnomalyInfo.WARNING


def test_fail_on_anomalies_false_reports_errors_without_raising(tmp_path: Path) -> None:
    schema_path = _curated_schema(tmp_path, make_table())
    table = make_table(seed=2).drop(["color"])
    result = validate_table(
        write(table, tmp_path / "d.parquet"),
        str(tmp_path / "out"),
        schema_path=schema_path,
        fail_on_anomalies=False,
    )
    assert result.error_count == 1
    assert result.anomaly_lines() == ["color: Column dropped: Column is completely missing [ERROR]"]


# ---------------------------------------------------------------- drift


def test_drift_measured_reported_and_blocking_only_when_asked(tmp_path: Path) -> None:
    first = validate_table(write(make_table(), tmp_path / "a.parquet"), str(tmp_path / "a"))
    shifted = make_table(seed=5, shift=4.0, category_p=[0.8, 0.1, 0.1])
    path = write(shifted, tmp_path / "b.parquet")

    result = validate_table(
        path,
        str(tmp_path / "b"),
        previous_statistics_path=first.statistics_path,
        drift_exclude=["id"],
    )
    measured = {d.feature: d for d in result.drift}
    assert measured["amount"].measure == JENSEN_SHANNON
    assert measured["amount"].value > 0.1
    assert measured["color"].measure == L_INFTY
    assert measured["color"].value > 0.1
    assert measured["ratio"].value < 0.1  # same distribution: measured, not drifted
    assert "event_time" not in measured  # time always moves: no comparator
    assert "id" not in measured  # excluded
    assert result.drifted_features == ("amount", "color")
    assert {a.feature for a in result.anomalies} == {"amount", "color"}
    assert all(a.severity == "WARNING" and a.drift for a in result.anomalies)
    schema = tfdv.load_schema_text(result.schema_path)
    assert tfdv.get_feature(schema, "color").drift_comparator.infinity_norm.threshold == 0.1
    comparator = tfdv.get_feature(schema, "amount").drift_comparator
    assert comparator.jensen_shannon_divergence.threshold == 0.1

    with pytest.raises(ValidationFailed) as info:
        validate_table(
            path,
            str(tmp_path / "c"),
            previous_statistics_path=first.statistics_path,
            fail_on_drift=True,
            drift_exclude=["id"],
        )
    message = str(info.value)
    assert "amount: High approximate Jensen-Shannon divergence" in message
    assert "color: High Linfty distance" in message

    # Looser thresholds: nothing drifts.
    loose = validate_table(
        path,
        str(tmp_path / "d"),
        previous_statistics_path=first.statistics_path,
        fail_on_drift=True,
        drift_threshold_numeric=1.0,
        drift_threshold_categorical=1.0,
        drift_exclude=["id"],
    )
    assert loose.drifted_features == ()
    assert loose.anomalies == ()


# ---------------------------------------------------------------- Beam


def test_beam_direct_runner_gives_the_same_statistics(tmp_path: Path, base: tuple) -> None:
    table, path = base
    memory = validate_table(path, str(tmp_path / "memory"), chunk_rows=100)
    beam = validate_table(
        path, str(tmp_path / "beam"), chunk_rows=100, beam_pipeline_args=["--runner=DirectRunner"]
    )
    assert (memory.engine, beam.engine) == ("in-memory", "beam")
    a = load_statistics(memory.statistics_path)
    b = load_statistics(beam.statistics_path)
    assert a.datasets[0].num_examples == b.datasets[0].num_examples == ROWS
    for name in table.column_names:
        assert common(a, name).num_missing == common(b, name).num_missing
        assert common(a, name).num_non_missing == common(b, name).num_non_missing
    assert abs(feature(a, "amount").num_stats.mean - feature(b, "amount").num_stats.mean) < 1e-9
    assert list(feature(a, "color").string_stats.top_values) == list(
        feature(b, "color").string_stats.top_values
    )
    assert beam.anomalies == memory.anomalies == ()


# ---------------------------------------------------------------- report


def test_html_report_names_features_and_compares_runs(tmp_path: Path) -> None:
    first = validate_table(write(make_table(), tmp_path / "a.parquet"), str(tmp_path / "a"))
    page = Path(first.report_path).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for name in make_table().column_names:
        assert f"<td>{name}</td>" in page
    assert "facets-overview" in page
    assert "No anomalies." in page

    second = validate_table(
        write(make_table(seed=3, shift=4.0), tmp_path / "b.parquet"),
        str(tmp_path / "b"),
        previous_statistics_path=first.statistics_path,
    )
    page = Path(second.report_path).read_text(encoding="utf-8")
    assert "current vs previous" in page
    assert "Drift against the previous statistics" in page
    assert "High approximate Jensen-Shannon divergence" in page


# ---------------------------------------------------------------- inputs


def test_folder_dataset_with_several_files(tmp_path: Path) -> None:
    table = make_table()
    folder = tmp_path / "parts"
    write(table.slice(0, 250), folder / "part-0.parquet")
    write(table.slice(250), folder / "part-1.parquet")
    result = validate_table(str(folder), str(tmp_path / "out"), chunk_rows=100)
    assert result.num_examples == ROWS


def test_s3_dataset(
    tmp_path: Path,
    store: ObjectStore,
    bucket: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    local = write(make_table(), tmp_path / "d.parquet")
    store.put_file(local, f"s3://{bucket}/tables/d.parquet")
    result = validate_table(f"s3://{bucket}/tables/d.parquet", str(tmp_path / "out"))
    assert result.num_examples == ROWS


# ---------------------------------------------------------------- bad inputs


def test_missing_dataset_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    missing = tmp_path / "nope.parquet"
    with pytest.raises(DataError, match=f"{missing}: no such file"):
        validate_table(str(missing), str(out))
    assert files_in(out) == []


def test_empty_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = write(make_table().slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="0 rows") as info:
        validate_table(path, str(out))
    assert path in str(info.value)
    assert not isinstance(info.value, ValidationFailed)
    assert files_in(out) == []


def test_not_a_parquet_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_text("id,x\n1,2\n")
    with pytest.raises(DataError, match="cannot be read as Parquet") as info:
        validate_table(str(bad), str(tmp_path / "out"))
    assert str(bad) in str(info.value)
    assert files_in(tmp_path / "out") == []


def test_nested_column_is_refused_naming_it(tmp_path: Path) -> None:
    table = make_table().append_column("tags", pa.array([["a", "b"]] * ROWS))
    with pytest.raises(DataError, match="column 'tags' has Arrow type list<item: string>"):
        validate_table(write(table, tmp_path / "d.parquet"), str(tmp_path / "out"))
    assert files_in(tmp_path / "out") == []


def test_curated_schema_that_is_not_pbtxt(tmp_path: Path, base: tuple) -> None:
    _, path = base
    bad = tmp_path / "schema.pbtxt"
    bad.write_text("feature { name: 'x' type: NOT_A_TYPE }\n")
    with pytest.raises(ConfigError) as info:
        validate_table(path, str(tmp_path / "out"), schema_path=str(bad))
    assert info.value.field == "schema_path"
    assert str(bad) in str(info.value)
    assert "not a valid Schema text proto" in str(info.value)
    assert files_in(tmp_path / "out") == []


def test_curated_schema_missing_or_empty(tmp_path: Path, base: tuple) -> None:
    _, path = base
    with pytest.raises(ConfigError, match="schema_path: .*nope.pbtxt: no such file"):
        validate_table(path, str(tmp_path / "out"), schema_path=str(tmp_path / "nope.pbtxt"))
    empty = tmp_path / "empty.pbtxt"
    empty.write_text("")
    with pytest.raises(ConfigError, match="has no features"):
        validate_table(path, str(tmp_path / "out"), schema_path=str(empty))
    assert files_in(tmp_path / "out") == []


def test_previous_statistics_missing_or_invalid(tmp_path: Path, base: tuple) -> None:
    _, path = base
    missing = tmp_path / "nope" / "stats.tfrecord"
    with pytest.raises(ConfigError) as info:
        validate_table(path, str(tmp_path / "out"), previous_statistics_path=str(missing))
    assert info.value.field == "previous_statistics_path"
    assert f"{missing}: no such file" in str(info.value)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\xff not statistics " * 10)
    with pytest.raises(ConfigError, match="garbage.bin is not a TFDV DatasetFeatureStatisticsList"):
        validate_table(path, str(tmp_path / "out"), previous_statistics_path=str(garbage))
    assert files_in(tmp_path / "out") == []


@pytest.mark.parametrize(
    ("kwargs", "field", "text"),
    [
        ({"chunk_rows": 0}, "chunk_rows", "between 1 and"),
        ({"drift_threshold_numeric": 1.5}, "drift_threshold_numeric", "(0, 1]"),
        ({"drift_threshold_categorical": 0}, "drift_threshold_categorical", "(0, 1]"),
        ({"beam_pipeline_args": ["runner=DirectRunner"]}, "beam_pipeline_args", "--flag"),
        ({"warning_anomaly_types": ["NEW_COLUMN"]}, "warning_anomaly_types", "'NEW_COLUMN'"),
        (
            {"warning_anomaly_types": ["COMPARATOR_L_INFTY_HIGH"], "fail_on_drift": True},
            "warning_anomaly_types",
            "choose one",
        ),
        ({"fail_on_anomalies": "yes"}, "fail_on_anomalies", "true or false"),
        ({"drift_exclude": ["nope"]}, "drift_exclude", "['nope'] are not columns"),
        ({"drift_exclude": "id"}, "drift_exclude", "must be a list of strings"),
    ],
)
def test_bad_parameters(tmp_path: Path, base: tuple, kwargs: dict, field: str, text: str) -> None:
    _, path = base
    with pytest.raises(ConfigError) as info:
        validate_table(path, str(tmp_path / "out"), **kwargs)
    assert info.value.field == field
    assert text in str(info.value)
    assert files_in(tmp_path / "out") == []
