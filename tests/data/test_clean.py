"""clean_table / clean_data on small real tables (and the real SeaweedFS for s3://)."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import ObjectStore
from kfloop.data.clean import CleanConfig, CleanReport, clean_data, clean_table

NAN = float("nan")


def people() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([1, 2, 2, 3, 4, 5, 6], pa.int64()),
            "age": pa.array([" 34", "x", "x", "41.0", "", None, "+29"], pa.string()),
            "income": pa.array([1000.0, 2000.0, 2000.0, None, 3000.0, NAN, 1e9], pa.float64()),
            "plan": pa.array([" Basic", "PRO ", "PRO ", None, "basic", "pro", "Pro"]),
            "label": pa.array([0, 1, 1, 0, None, 1, 0], pa.int64()),
            "junk": pa.array(["a"] * 7),
        }
    )


def full_config() -> dict[str, Any]:
    return {
        "drop_columns": ["junk"],
        "normalize_strings": {"plan": {"trim": True, "case": "lower"}},
        "coerce": {"age": {"type": "int64", "on_error": "null"}},
        "deduplicate": {"subset": ["id"], "keep": "first"},
        "drop_rows_with_missing": ["label"],
        "clip_outliers": {"income": {"method": "range", "max": 5000}},
        "impute": {
            "income": {"strategy": "median"},
            "age": {"strategy": "mean"},
            "plan": {"strategy": "constant", "value": "unknown"},
        },
    }


def test_clean_table_applies_every_rule_in_order_and_counts_it() -> None:
    out, report = clean_table(people(), full_config())

    assert out.column_names == ["id", "age", "income", "plan", "label"]
    assert out.schema.field("age").type == pa.int64()
    # row id=2 is a duplicate, row id=4 has no label
    assert out["id"].to_pylist() == [1, 2, 3, 5, 6]
    # ages 34, null("x"), 41, null(None), 29 -> mean of (34, 41, 29) = 34.67 -> 35
    assert out["age"].to_pylist() == [34, 35, 41, 35, 29]
    # 1e9 clipped to 5000; median of (1000, 2000, 5000) = 2000 fills null and NaN
    assert out["income"].to_pylist() == [1000.0, 2000.0, 2000.0, 2000.0, 5000.0]
    assert out["plan"].to_pylist() == ["basic", "pro", "unknown", "pro", "pro"]

    assert report.rows_in == 7 and report.rows_out == 5 and report.rows_dropped == 2
    assert report.rows_dropped_by_rule == {"deduplicate": 1, "drop_rows_with_missing": 1}
    assert report.dropped_columns == ("junk",)
    (norm,) = report.normalized
    assert (norm.column, norm.changed) == ("plan", 4)  # " Basic", "PRO " twice, "Pro"
    (coerce,) = report.coerced
    counts = (coerce.converted, coerce.missing_to_null, coerce.unparseable, coerce.nulled)
    assert counts == (3, 1, 2, 2)
    assert report.missing is not None and report.missing.missing_per_column == {"label": 1}
    (clip,) = report.clipped
    assert (clip.lower, clip.upper, clip.below, clip.above) == (None, 5000.0, 0, 1)
    imputed = {i.column: i for i in report.imputed}
    assert (imputed["income"].value, imputed["income"].imputed) == (2000.0, 2)
    assert (imputed["age"].value, imputed["age"].imputed, imputed["age"].source) == (35, 2, "data")
    assert (imputed["plan"].value, imputed["plan"].source) == ("unknown", "constant")
    assert report.fitted == {"income": 2000.0, "age": 35}


def test_report_is_json_ready_and_renders_markdown_tables() -> None:
    _, report = clean_table(people(), full_config())
    data = json.loads(json.dumps(report.as_dict()))
    assert data["rows_dropped"] == 2 and data["fitted"] == {"income": 2000.0, "age": 35}
    md = report.to_markdown()
    assert md.startswith("# Data cleaning report")
    assert "| rows in | rows out | rows dropped | columns in | columns out |" in md
    assert "| 7 | 5 | 2 | 6 | 5 |" in md
    assert "| income | range | - | 5000 | 0 | 1 | 1 |" in md
    assert "| age | mean | 35 | data | 2 |" in md


@pytest.mark.parametrize(
    ("target", "values", "expected", "bad"),
    [
        (
            "int64",
            ["1", " +2 ", "3.0", "-4", "1.5", "abc", "", None],
            [1, 2, 3, -4] + [None] * 4,
            2,
        ),
        (
            "int64",
            ["9223372036854775807", "9223372036854775808"],
            [9223372036854775807, None],
            1,
        ),
        (
            "float64",
            ["1.5", "+2", "1e3", ".5", "inf", "x1", "  ", None],
            [1.5, 2.0, 1000.0, 0.5, math.inf, None, None, None],
            1,
        ),
        (
            "bool",
            ["true", "No", " Y ", "0", "1", "F", "maybe", None],
            [True, False, True, False, True, False, None, None],
            1,
        ),
        (
            "timestamp",
            ["2024-01-02", "2024-01-02T03:04:05Z", "2024-01-02 05:04:05+02:00", "soon", None],
            [
                datetime(2024, 1, 2),
                datetime(2024, 1, 2, 3, 4, 5),
                datetime(2024, 1, 2, 3, 4, 5),
                None,
                None,
            ],
            1,
        ),
        ("string", ["a", None], ["a", None], 0),
    ],
)
def test_coerce_from_strings(
    target: str, values: list[str | None], expected: list[Any], bad: int
) -> None:
    table = pa.table({"c": pa.array(values, pa.string())})
    out, report = clean_table(table, {"coerce": {"c": {"type": target}}})
    assert out["c"].to_pylist() == expected
    assert report.coerced[0].unparseable == bad
    assert report.coerced[0].nulled == bad


def test_coerce_timestamp_with_format() -> None:
    table = pa.table({"d": ["02/01/2024", "2024-01-02"]})
    out, report = clean_table(table, {"coerce": {"d": {"type": "timestamp", "format": "%d/%m/%Y"}}})
    assert out.schema.field("d").type == pa.timestamp("us")
    assert out["d"].to_pylist() == [datetime(2024, 1, 2), None]
    assert report.coerced[0].unparseable == 1


@pytest.mark.parametrize(
    ("column", "target", "expected", "bad", "missing"),
    [
        (pa.array([1.0, 2.5, NAN, None, 1e20]), "int64", [1, None, None, None, None], 2, 1),
        (pa.array([0, 1, 2, None]), "bool", [False, True, None, None], 1, 0),
        (pa.array([1.0, NAN]), "string", ["1", None], 0, 1),
        (pa.array([True, None]), "int64", [1, None], 0, 0),
        (pa.array([3, None], pa.int32()), "float64", [3.0, None], 0, 0),
    ],
)
def test_coerce_between_non_string_types(
    column: pa.Array, target: str, expected: list[Any], bad: int, missing: int
) -> None:
    out, report = clean_table(pa.table({"c": column}), {"coerce": {"c": {"type": target}}})
    assert out["c"].to_pylist() == expected
    assert (report.coerced[0].unparseable, report.coerced[0].missing_to_null) == (bad, missing)


def test_coerce_drop_row_counts_each_dropped_row_once() -> None:
    table = pa.table({"a": ["1", "x", "y", "4"], "b": ["1", "x", "3", "z"]})
    config = {
        "coerce": {
            "a": {"type": "int64", "on_error": "drop_row"},
            "b": {"type": "int64", "on_error": "drop_row"},
        }
    }
    out, report = clean_table(table, config)
    assert out.to_pydict() == {"a": [1], "b": [1]}
    assert [c.rows_dropped for c in report.coerced] == [2, 1]
    assert [c.unparseable for c in report.coerced] == [2, 2]
    assert report.rows_dropped == 3 and report.rows_in == report.rows_out + 3


def test_coerce_fail_names_column_row_value_and_count() -> None:
    table = pa.table({"id": [1, 2, 3, 4], "age": ["3", "4", "four", "n/a"]})
    with pytest.raises(DataError) as info:
        clean_table(table, {"coerce": {"age": {"type": "int64", "on_error": "fail"}}})
    message = str(info.value)
    assert "'age'" in message and "2 values" in message
    assert "'four'" in message and "row 2" in message


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"drop_columns": ["incme"]}, "config.drop_columns.0"),
        ({"normalize_strings": {"incme": {}}}, "config.normalize_strings.incme"),
        ({"normalize_strings": ["plan", "incme"]}, "config.normalize_strings.1"),
        (
            {"normalize_strings": [{"columns": ["plan", "incme"], "case": "upper"}]},
            "config.normalize_strings.0.columns.1",
        ),
        ({"coerce": {"incme": {"type": "int64"}}}, "config.coerce.incme"),
        ({"deduplicate": {"subset": ["id", "incme"]}}, "config.deduplicate.subset.1"),
        ({"drop_rows_with_missing": ["incme"]}, "config.drop_rows_with_missing.0"),
        ({"clip_outliers": {"incme": {}}}, "config.clip_outliers.incme"),
        ({"impute": {"incme": {"strategy": "mean"}}}, "config.impute.incme"),
    ],
)
def test_unknown_column_names_config_path_and_lists_columns(
    config: dict[str, Any], path: str
) -> None:
    with pytest.raises(ConfigError) as info:
        clean_table(people(), config)
    assert info.value.field == path
    assert "'incme'" in str(info.value)
    assert "available columns: id, age, income, plan, label, junk" in str(info.value)


@pytest.mark.parametrize(
    ("config", "path", "words"),
    [
        ({"impute": {"plan": {"strategy": "mean"}}}, "config.impute.plan.strategy", "numeric"),
        (
            {"coerce": {"id": {"type": "string"}}, "impute": {"id": {"strategy": "median"}}},
            "config.impute.id.strategy",
            "after coercion",
        ),
        ({"clip_outliers": {"plan": {}}}, "config.clip_outliers.plan", "int or float"),
        (
            {"impute": {"income": {"strategy": "constant", "value": "lots"}}},
            "config.impute.income.value",
            "'lots'",
        ),
        (
            {"impute": {"label": {"strategy": "constant", "value": 0.5}}},
            "config.impute.label.value",
            "0.5",
        ),
        ({"normalize_strings": ["income"]}, "config.normalize_strings.0", "not a string"),
        ({"coerce": {"label": {"type": "timestamp"}}}, "config.coerce.label.type", "int64"),
        (
            {"drop_columns": ["junk"], "impute": {"junk": {"strategy": "mode"}}},
            "config.impute.junk",
            "drop_columns",
        ),
        (
            {"impute": {"income": {"strategy": "mean"}}, "fitted": {"income": "x"}},
            "config.fitted.income",
            "'x'",
        ),
    ],
)
def test_rules_must_fit_the_column_type(config: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        clean_table(people(), config)
    assert info.value.field == path
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"imputee": {}}, "config.imputee"),
        ({"impute": {"income": {"strategy": "avg"}}}, "config.impute.income.strategy"),
        ({"impute": {"income": {"strategy": "constant"}}}, "config.impute.income"),
        ({"impute": {"income": {"strategy": "mean", "value": 3}}}, "config.impute.income"),
        ({"coerce": {"age": {"type": "int32"}}}, "config.coerce.age.type"),
        (
            {"coerce": {"age": {"type": "int64", "on_error": "ignore"}}},
            "config.coerce.age.on_error",
        ),
        ({"clip_outliers": {"income": {"method": "range"}}}, "config.clip_outliers.income"),
        (
            {"clip_outliers": {"income": {"method": "quantile", "k": 3}}},
            "config.clip_outliers.income",
        ),
        ({"clip_outliers": {"income": {"k": -1}}}, "config.clip_outliers.income.k"),
        ({"deduplicate": {"keep": "none"}}, "config.deduplicate.keep"),
        ({"fitted": {"income": 3.0}}, "config"),
    ],
)
def test_malformed_config_is_a_config_error_naming_the_path(
    config: dict[str, Any], path: str
) -> None:
    with pytest.raises(ConfigError) as info:
        clean_table(people(), config)
    assert info.value.field == path


def test_on_error_null_accepts_json_null() -> None:
    cfg = CleanConfig.model_validate({"coerce": {"a": {"type": "int64", "on_error": None}}})
    assert cfg.coerce["a"].on_error == "null"


def test_fitted_values_are_reused_instead_of_recomputed() -> None:
    _, first = clean_table(people(), full_config())
    other = pa.table(
        {
            "id": [10, 11],
            "age": ["90", None],
            "income": [9.0, None],
            "plan": ["x", None],
            "label": [1, 0],
            "junk": ["a", "b"],
        }
    )
    config = {**full_config(), "fitted": first.fitted}
    out, second = clean_table(other, config)
    assert out["income"].to_pylist() == [9.0, 2000.0]
    assert out["age"].to_pylist() == [90, 35]
    assert {i.column: i.source for i in second.imputed} == {
        "income": "fitted",
        "age": "fitted",
        "plan": "constant",
    }
    assert second.fitted == first.fitted


def test_impute_mode_breaks_ties_by_smallest_and_handles_bool_and_timestamps() -> None:
    t0, t1 = datetime(2024, 1, 1), datetime(2024, 1, 2)
    table = pa.table(
        {
            "s": ["b", "a", "b", "a", None],
            "f": [True, False, True, None, None],
            "t": pa.array([t1, t0, t1, None, None], pa.timestamp("us")),
        }
    )
    config = {"impute": {c: {"strategy": "mode"} for c in ("s", "f", "t")}}
    out, report = clean_table(table, config)
    assert out["s"].to_pylist()[-1] == "a"
    assert out["f"].to_pylist()[-2:] == [True, True]
    assert out["t"].to_pylist()[3:] == [t1, t1]
    assert report.fitted == {"s": "a", "f": True, "t": "2024-01-02T00:00:00"}
    json.dumps(report.as_dict())


def test_impute_all_missing_column_is_a_data_error_unless_constant() -> None:
    table = pa.table({"x": pa.array([None, None], pa.float64())})
    with pytest.raises(DataError, match=r"'x'.*no non-missing values.*config\.fitted\.x"):
        clean_table(table, {"impute": {"x": {"strategy": "mean"}}})
    out, _ = clean_table(table, {"impute": {"x": {"strategy": "constant", "value": 0}}})
    assert out["x"].to_pylist() == [0.0, 0.0]


def test_empty_table_passes_every_rule() -> None:
    table = people().slice(0, 0)
    out, report = clean_table(table, full_config())
    assert out.num_rows == 0 and report.rows_in == 0 and report.rows_dropped == 0
    assert out.schema.field("age").type == pa.int64()


@pytest.mark.parametrize(
    ("rule", "expected", "bounds"),
    [
        ({"method": "iqr", "k": 1.5}, [1, 2, 3, 4, 5, 6, 7, 8, 9, 15, None], (-4, 15)),
        (
            {"method": "quantile", "lower_q": 0.1, "upper_q": 0.9},
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 9],
            None,
        ),
        ({"method": "range", "min": 2.5, "max": 8.5}, [3, 3, 3, 4, 5, 6, 7, 8, 8, 8, None], (3, 8)),
    ],
)
def test_clip_outliers_on_an_int_column_keeps_ints(
    rule: dict[str, Any], expected: list[Any], bounds: tuple[int, int] | None
) -> None:
    values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 100, None]
    if rule["method"] == "quantile":
        values = values[:-1]
    out, report = clean_table(pa.table({"n": values}), {"clip_outliers": {"n": rule}})
    assert out.schema.field("n").type == pa.int64()
    (clip,) = report.clipped
    if bounds is not None:
        assert (clip.lower, clip.upper) == bounds
    else:
        assert isinstance(clip.lower, int) and isinstance(clip.upper, int)
        expected = [min(max(v, clip.lower), clip.upper) for v in values]
    assert out["n"].to_pylist() == expected
    changed = sum(1 for a, b in zip(values, expected, strict=True) if a != b)
    assert clip.clipped == changed == clip.below + clip.above


def test_clip_ignores_missing_values_and_nan() -> None:
    table = pa.table({"x": [NAN, None, 1.0, 2.0, 3.0, 50.0]})
    out, report = clean_table(
        table, {"clip_outliers": {"x": {"method": "quantile", "lower_q": 0.0, "upper_q": 0.5}}}
    )
    got = out["x"].to_pylist()
    assert math.isnan(got[0]) and got[1] is None
    assert got[2:] == [1.0, 2.0, 2.5, 2.5]
    assert report.clipped[0].above == 2


def test_deduplicate_all_columns_keep_last_treats_nulls_and_nans_as_equal() -> None:
    table = pa.table(
        {
            "k": [1, 1, None, None, 2],
            "v": [NAN, NAN, 1.0, 1.0, 2.0],
            "n": [0, 1, 2, 3, 4],
        }
    )
    out, report = clean_table(table, {"deduplicate": {"subset": ["k", "v"], "keep": "last"}})
    assert out["n"].to_pylist() == [1, 3, 4]
    assert report.deduplicated is not None and report.deduplicated.rows_dropped == 2
    out, report = clean_table(table, {"deduplicate": True})
    assert out.num_rows == 5 and report.rows_dropped_by_rule == {"deduplicate": 0}


def test_normalize_list_forms_and_empty_to_null() -> None:
    table = pa.table({"a": [" X ", "  "], "b": ["Y ", " z"], "c": [" Q", None]})
    config = {
        "normalize_strings": [
            "a",
            {"columns": ["b", "c"], "case": "lower", "empty_to_null": True},
        ]
    }
    out, report = clean_table(table, config)
    assert out.to_pydict() == {"a": ["X", ""], "b": ["y", "z"], "c": ["q", None]}
    assert [(n.column, n.changed, n.emptied) for n in report.normalized] == [
        ("a", 2, 0),
        ("b", 2, 0),
        ("c", 1, 0),
    ]
    out, report = clean_table(table, {"normalize_strings": {"a": {"empty_to_null": True}}})
    assert out["a"].to_pylist() == ["X", None] and report.normalized[0].emptied == 1


def test_config_may_be_a_json_string() -> None:
    out, _ = clean_table(people(), json.dumps({"drop_columns": ["junk", "plan"]}))
    assert out.column_names == ["id", "age", "income", "label"]


# -- reconciliation over random tables and configs ---------------------------------------

COLUMNS = ("i", "f", "s", "b")


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(0, 12))
    ints = st.one_of(st.none(), st.integers(-5, 5))
    floats = st.one_of(st.none(), st.just(NAN), st.floats(-10, 10, allow_nan=False))
    strs = st.one_of(st.none(), st.sampled_from(["1", " 2", "x", "", "3.0", "true", "no"]))
    return pa.table(
        {
            "i": pa.array(draw(st.lists(ints, min_size=n, max_size=n)), pa.int64()),
            "f": pa.array(draw(st.lists(floats, min_size=n, max_size=n)), pa.float64()),
            "s": pa.array(draw(st.lists(strs, min_size=n, max_size=n)), pa.string()),
            "b": pa.array(
                draw(st.lists(st.one_of(st.none(), st.booleans()), min_size=n, max_size=n)),
                pa.bool_(),
            ),
        }
    )


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if draw(st.booleans()):
        config["normalize_strings"] = {"s": {"case": draw(st.sampled_from(["lower", "none"]))}}
    if draw(st.booleans()):
        config["coerce"] = {
            "s": {
                "type": draw(st.sampled_from(["int64", "float64", "bool", "string"])),
                "on_error": draw(st.sampled_from(["null", "drop_row"])),
            }
        }
        if draw(st.booleans()):
            config["coerce"]["f"] = {"type": "int64", "on_error": "drop_row"}
    if draw(st.booleans()):
        subset = draw(
            st.one_of(st.none(), st.lists(st.sampled_from(COLUMNS), min_size=1, unique=True))
        )
        config["deduplicate"] = {"subset": subset, "keep": draw(st.sampled_from(["first", "last"]))}
    config["drop_rows_with_missing"] = draw(st.lists(st.sampled_from(COLUMNS), unique=True))
    if draw(st.booleans()):
        config["clip_outliers"] = {"f": {"method": draw(st.sampled_from(["iqr", "quantile"]))}}
    if draw(st.booleans()):
        config["impute"] = {"b": {"strategy": "mode"}, "i": {"strategy": "constant", "value": 0}}
    return config


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables(), config=configs())
def test_rows_always_reconcile(table: pa.Table, config: dict[str, Any]) -> None:
    try:
        out, report = clean_table(table, config)
    except DataError as exc:  # only possible failure: mode of an all-missing column
        assert "no non-missing values" in str(exc)
        return
    assert isinstance(report, CleanReport)
    assert report.rows_in == table.num_rows
    assert report.rows_out == out.num_rows
    assert report.rows_in == report.rows_out + report.rows_dropped
    for name in config.get("drop_rows_with_missing", []):
        column = out[name]
        assert column.null_count == 0
    json.dumps(report.as_dict())


# -- clean_data: files, folders, s3 --------------------------------------------------------


def test_clean_data_writes_parquet_atomically_and_returns_metadata(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(people(), source)
    result = clean_data(str(source), str(tmp_path / "out.parquet"), full_config())
    written = pq.read_table(tmp_path / "out.parquet")
    expected, _ = clean_table(people(), full_config())
    assert written.equals(expected)
    meta = result.metadata()
    assert meta["rows"] == 5 and meta["columns"] == 5 and len(meta["sha256"]) == 64
    assert meta["rows_in"] == 7 and meta["rows_dropped"] == 2
    assert meta["fitted"] == {"income": 2000.0, "age": 35}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "out.parquet"]


def test_clean_data_reads_an_artifact_file_without_suffix_and_a_folder(tmp_path: Path) -> None:
    plain = tmp_path / "dataset"
    pq.write_table(people(), plain)
    folder = tmp_path / "split"
    folder.mkdir()
    pq.write_table(people(), folder / "data.parquet")
    for source in (plain, folder):
        out = tmp_path / f"cleaned-{source.name}"
        result = clean_data(str(source), str(out), {"drop_columns": ["junk"]})
        assert result.info.rows == 7 and pq.read_table(out).num_columns == 5


def test_clean_data_failure_leaves_no_output(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(people(), source)
    out = tmp_path / "out" / "cleaned"
    config = {"coerce": {"age": {"type": "int64", "on_error": "fail"}}}
    with pytest.raises(DataError) as info:
        clean_data(str(source), str(out), config)
    assert str(source) in str(info.value) and "'age'" in str(info.value)
    assert "'x' at row 1" in str(info.value)
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_clean_data_rejects_bad_paths(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(people(), source)
    with pytest.raises(ConfigError) as info:
        clean_data(str(source), str(tmp_path), {})
    assert info.value.field == "output_path"
    with pytest.raises(DataError, match="missing.parquet"):
        clean_data(str(tmp_path / "missing.parquet"), str(tmp_path / "o.parquet"), {})
    assert not (tmp_path / "o.parquet").exists()


def test_clean_data_from_and_to_s3(tmp_path: Path, store: ObjectStore, bucket: str) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(people(), source)
    store.put_file(source, f"s3://{bucket}/raw/data.parquet")
    result = clean_data(
        f"s3://{bucket}/raw/", f"s3://{bucket}/clean/data.parquet", full_config(), store=store
    )
    assert result.info.uri == f"s3://{bucket}/clean/data.parquet"
    store.get_file(f"s3://{bucket}/clean/data.parquet", tmp_path / "back.parquet")
    back = pq.read_table(tmp_path / "back.parquet")
    assert back.num_rows == 5 and back["income"].to_pylist()[-1] == 5000.0


def _reference_duplicates(rows: list[tuple[Any, ...]], keep: str) -> list[int]:
    """Indices of the rows kept, computed the slow, obvious way."""

    def key(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple("NaN" if isinstance(v, float) and math.isnan(v) else v for v in row)

    order = range(len(rows)) if keep == "first" else reversed(range(len(rows)))
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for i in order:
        if key(rows[i]) not in seen:
            seen.add(key(rows[i]))
            kept.append(i)
    return sorted(kept)


@settings(max_examples=100, deadline=None)
@given(
    table=tables(),
    subset=st.one_of(st.none(), st.lists(st.sampled_from(COLUMNS), min_size=1, unique=True)),
    keep=st.sampled_from(["first", "last"]),
)
def test_deduplicate_matches_a_reference(
    table: pa.Table, subset: list[str] | None, keep: str
) -> None:
    indexed = table.append_column("row", pa.array(range(table.num_rows), pa.int64()))
    key_columns = subset or list(COLUMNS)
    out, report = clean_table(indexed, {"deduplicate": {"subset": key_columns, "keep": keep}})
    rows = list(zip(*(table[c].to_pylist() for c in key_columns), strict=True))
    expected = _reference_duplicates(rows, keep) if table.num_rows else []
    assert out["row"].to_pylist() == expected
    assert report.rows_dropped == table.num_rows - len(expected)


@pytest.mark.parametrize(
    ("config", "error", "words"),
    [
        ({"impute": {"incme": {"strategy": "mean"}}}, ConfigError, "config.impute.incme"),
        ({"impute": {"plan": {"strategy": "mean"}}}, ConfigError, "numeric column"),
        ({"drop_colums": ["junk"]}, ConfigError, "config.drop_colums: drop_colums: unknown key"),
        (
            {"coerce": {"plan": {"type": "bool", "on_error": "fail"}}},
            DataError,
            "' Basic' at row 0",
        ),
    ],
)
def test_clean_data_bad_config_leaves_no_output(
    tmp_path: Path, config: dict[str, Any], error: type[Exception], words: str
) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(people(), source)
    out = tmp_path / "out.parquet"
    with pytest.raises(error) as info:
        clean_data(str(source), str(out), config)
    assert words in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]
