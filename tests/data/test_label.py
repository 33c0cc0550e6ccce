"""label_table / join_feedback / label_data on small real tables and the real SeaweedFS."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import ObjectStore
from kfloop.data.label import join_feedback, label_data, label_table

NAN = float("nan")
T0 = datetime(2024, 5, 1, 12, 0, 0)


def customers() -> pa.Table:
    return pa.table(
        {
            "income": pa.array([10_000, 50_000, 15_000, None, 5_000, 80_000], pa.int64()),
            "plan": pa.array(["basic", "basic", "pro", "basic", None, "pro"]),
            "score": pa.array([0.9, 0.2, NAN, 0.5, 0.7, None]),
        }
    )


EXAMPLE_RULES = {
    "label_column": "label",
    "rules": [
        {
            "when": [
                {"column": "income", "op": "<", "value": 20000},
                {"column": "plan", "op": "in", "value": ["basic"]},
            ],
            "label": 1,
        }
    ],
    "default": 0,
}


# -- rules mode -----------------------------------------------------------------------------


def test_rules_example_labels_and_counts() -> None:
    out, report = label_table(customers(), EXAMPLE_RULES)
    assert out.column_names == ["income", "plan", "score", "label"]
    assert out.schema.field("label").type == pa.int64()
    assert out["label"].to_pylist() == [1, 0, 0, 0, 0, 0]
    assert report.class_balance == ((0, 5), (1, 1))
    assert (report.labeled, report.unlabeled, report.rows_in, report.rows_out) == (6, 0, 6, 6)
    assert [(r.rule, r.rows) for r in report.rules] == [(0, 1), (-1, 5)]
    assert report.rules[0].description == "income < 20000 and plan in ['basic']"


def test_first_matching_rule_wins() -> None:
    config = {
        "label_column": "segment",
        "rules": [
            {"when": [{"column": "income", "op": "<", "value": 20000}], "label": "low"},
            {"when": [{"column": "plan", "op": "==", "value": "basic"}], "label": "basic"},
            {"when": [{"column": "income", "op": "is_null"}], "label": "unknown"},
        ],
        "default": "other",
    }
    out, report = label_table(customers(), config)
    assert out["segment"].to_pylist() == ["low", "basic", "low", "basic", "low", "other"]
    assert [r.rows for r in report.rules] == [3, 2, 0, 1]
    assert report.class_balance == (("basic", 2), ("low", 3), ("other", 1))


def test_threshold_shorthand() -> None:
    config = {"label_column": "y", "threshold": {"column": "score", "op": ">=", "value": 0.5}}
    out, report = label_table(customers(), config)
    # NaN and null compare false -> default 0
    assert out["y"].to_pylist() == [1, 0, 0, 1, 1, 0]
    assert report.rules[0].description == "score >= 0.5"


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"column": "income", "op": "<=", "value": 15000}, [1, 0, 1, 0, 1, 0]),
        ({"column": "income", "op": ">", "value": 15000.5}, [0, 1, 0, 0, 0, 1]),
        ({"column": "income", "op": "!=", "value": 10000}, [0, 1, 1, 0, 1, 1]),
        ({"column": "plan", "op": "==", "value": "pro"}, [0, 0, 1, 0, 0, 1]),
        ({"column": "plan", "op": "not_in", "value": ["basic"]}, [0, 0, 1, 0, 0, 1]),
        ({"column": "income", "op": "in", "value": [5000, 80000.0]}, [0, 0, 0, 0, 1, 1]),
        ({"column": "score", "op": "is_null"}, [0, 0, 1, 0, 0, 1]),
        ({"column": "plan", "op": "not_null"}, [1, 1, 1, 1, 0, 1]),
        ({"column": "plan", "op": "<", "value": "c"}, [1, 1, 0, 1, 0, 0]),
    ],
)
def test_each_op_with_missing_values_false(condition: dict[str, Any], expected: list[int]) -> None:
    config = {"rules": [{"when": [condition], "label": 1}], "default": 0}
    out, _ = label_table(customers(), config)
    assert out["label"].to_pylist() == expected


def test_timestamp_and_bool_conditions() -> None:
    table = pa.table(
        {"t": pa.array([T0, T0 + timedelta(days=2)], pa.timestamp("us")), "b": [True, False]}
    )
    config = {
        "rules": [
            {"when": [{"column": "t", "op": ">", "value": "2024-05-02"}], "label": True},
            {"when": [{"column": "b", "op": "==", "value": True}], "label": False},
        ],
        "default": None,
    }
    out, report = label_table(table, config)
    assert out.schema.field("label").type == pa.bool_()
    assert out["label"].to_pylist() == [False, True]
    assert report.class_balance == ((False, 1), (True, 1))


@pytest.mark.parametrize(
    ("config", "path", "words"),
    [
        (
            {"rules": [{"when": [{"column": "incme", "op": "<", "value": 1}], "label": 1}]},
            "config.rules.0.when.0.column",
            "'incme' is not a column of the table; available columns: income, plan, score",
        ),
        (
            {
                "rules": [
                    {"when": [{"column": "income", "op": "<", "value": 1}], "label": 1},
                    {"when": [{"column": "plan", "op": "~=", "value": "a"}], "label": 1},
                ]
            },
            "config.rules.1.when.0.op",
            "Input should be '<', '<=', '>', '>=', '==', '!=', 'in', 'not_in', 'is_null'",
        ),
        (
            {"threshold": {"column": "scor", "op": ">", "value": 0.5}},
            "config.threshold.column",
            "'scor'",
        ),
        (
            {"threshold": {"column": "score", "op": "in", "value": [0.5]}},
            "config.threshold",
            "threshold op",
        ),
        (
            {"rules": [{"when": [{"column": "plan", "op": ">", "value": 3}], "label": 1}]},
            "config.rules.0.when.0.value",
            "3",
        ),
        (
            {"rules": [{"when": [{"column": "income", "op": "==", "value": "x"}], "label": 1}]},
            "config.rules.0.when.0.value",
            "'x' is not a number",
        ),
        (
            {"rules": [{"when": [{"column": "income", "op": "in", "value": 5}], "label": 1}]},
            "config.rules.0.when.0",
            "list",
        ),
        (
            {"rules": [{"when": [{"column": "income", "op": "is_null", "value": 5}], "label": 1}]},
            "config.rules.0.when.0",
            "no value",
        ),
        (
            {"rules": [{"when": [{"column": "income", "op": "<", "value": 5}], "label": "a"}]},
            "config.default",
            "one type",
        ),
        ({"rules": []}, "config.rules", "at least 1"),
        (
            {
                "rules": [{"when": [{"column": "income", "op": "<", "value": 5}], "label": 1}],
                "threshold": {"column": "score", "op": ">", "value": 0.5},
            },
            "config",
            "not both",
        ),
        ({"label_column": "churned"}, "config.label_column", "'churned' is not a column"),
        ({"labels": "x"}, "config.labels", "unknown key"),
    ],
)
def test_bad_rules_name_the_config_path(config: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        label_table(customers(), config)
    assert info.value.field == path
    assert words in str(info.value)


def test_existing_label_column_checked_or_overwritten() -> None:
    table = customers().append_column("label", pa.array([0, 1, 0, 1, None, 1]))
    out, report = label_table(table, {"label_column": "label"})
    assert out.num_rows == 5 and report.unlabeled == 1 and report.unlabeled_dropped == 1
    assert report.class_balance == ((0, 2), (1, 3)) and report.rules == ()
    with pytest.raises(ConfigError, match="already a column") as info:
        label_table(table, EXAMPLE_RULES)
    assert info.value.field == "config.label_column"
    out, _ = label_table(table, {**EXAMPLE_RULES, "overwrite": True})
    assert out.column_names == table.column_names
    assert out["label"].to_pylist() == [1, 0, 0, 0, 0, 0]


def test_single_class_is_a_data_error_with_the_class_and_count() -> None:
    table = pa.table({"x": list(range(1234))})
    config = {"threshold": {"column": "x", "op": "<", "value": -1}}
    with pytest.raises(DataError) as info:
        label_table(table, config)
    assert "label column 'label' has only one class: 0 (1,234 rows)" in str(info.value)
    out, report = label_table(table, {**config, "allow_single_class": True})
    assert out.num_rows == 1234 and report.class_balance == ((0, 1234),)


def test_no_label_at_all_is_a_data_error() -> None:
    config = {"threshold": {"column": "income", "op": "<", "value": 0}, "default": None}
    with pytest.raises(DataError, match="no row has a value in label column 'label'"):
        label_table(customers(), config)


def test_unlabeled_rows_kept_or_dropped() -> None:
    config = {
        "label_column": "y",
        "rules": [
            {"when": [{"column": "score", "op": ">", "value": 0.6}], "label": 1},
            {"when": [{"column": "score", "op": "<", "value": 0.3}], "label": 0},
        ],
        "default": None,
    }
    kept, report = label_table(customers(), {**config, "unlabeled": "keep"})
    assert kept["y"].to_pylist() == [1, 0, None, None, 1, None]
    assert (report.labeled, report.unlabeled, report.unlabeled_dropped) == (3, 3, 0)
    dropped, report = label_table(customers(), config)
    assert dropped["y"].to_pylist() == [1, 0, 1]
    assert dropped["income"].to_pylist() == [10_000, 50_000, 5_000]
    assert (report.rows_out, report.unlabeled_dropped) == (3, 3)


def test_label_report_markdown_and_json() -> None:
    _, report = label_table(customers(), EXAMPLE_RULES)
    md = report.to_markdown()
    assert md.startswith("# Labeling report (rules mode)")
    assert "| 0 | 5 | 83.3% |" in md and "| 1 | 1 | 16.7% |" in md
    assert "| default | no rule matched | 0 | 5 |" in md
    data = json.loads(json.dumps(report.as_dict()))
    assert data["class_balance"] == [[0, 5], [1, 1]]


# -- feedback mode --------------------------------------------------------------------------


def log_table(ids: list[str | None], start: int = 0, **extra: list[Any]) -> pa.Table:
    n = len(ids)
    columns: dict[str, Any] = {
        "request_id": pa.array(ids, pa.string()),
        "model_name": ["churn"] * n,
        "model_version": ["3"] * n,
        "timestamp": pa.array([T0 + timedelta(seconds=start + i) for i in range(n)]),
        "income": pa.array([float(1000 * (start + i)) for i in range(n)]),
        "plan": ["basic"] * n,
        "prediction": pa.array([0.1 * ((start + i) % 10) for i in range(n)]),
    }
    columns.update(extra)
    return pa.table(columns)


def write_logs(folder: Path) -> None:
    folder.mkdir(parents=True)
    # r2 is retried: the retry (later timestamp, other file) must not win with "first"
    pq.write_table(log_table(["r1", "r2", "r3"]), folder / "part-000.parquet")
    pq.write_table(log_table(["r4", "r2", None], start=10), folder / "part-001.parquet")


def write_truth(path: Path, rows: dict[str, list[Any]]) -> Path:
    if path.suffix == ".csv":
        keys = list(rows)
        lines = [",".join(keys)]
        lines += [",".join(str(v) for v in values) for values in zip(*rows.values(), strict=True)]
        path.write_text("\n".join(lines) + "\n")
    else:
        pq.write_table(pa.table(rows), path)
    return path


def test_join_feedback_labels_dedupes_and_counts_orphans(tmp_path: Path) -> None:
    write_logs(tmp_path / "logs")
    truth = write_truth(
        tmp_path / "truth.csv",
        {"request_id": ["r1", "r2", "r2", "r4", "r9"], "churned": [0, 1, 1, 1, 0]},
    )
    config = {"label_column": "churned", "keep_prediction": True, "unlabeled": "keep"}
    out, report = join_feedback(str(tmp_path / "logs"), str(truth), config)

    assert out.column_names == ["request_id", "income", "plan", "logged_prediction", "churned"]
    assert out["request_id"].to_pylist() == ["r1", "r2", "r3", "r4"]
    assert out["income"].to_pylist() == [0.0, 1000.0, 2000.0, 10000.0]  # r2's first logging
    assert out["logged_prediction"].to_pylist()[:2] == [0.0, 0.1]
    assert out["churned"].to_pylist() == [0, 1, None, 1]
    f = report.feedback
    assert f is not None
    assert (f.log_files, f.log_rows, f.rows_without_request_id, f.duplicate_requests) == (
        2,
        6,
        1,
        1,
    )
    assert (f.requests, f.ground_truth_rows, f.ground_truth_duplicates) == (4, 5, 1)
    assert (f.matched, f.orphans) == (3, 1)
    assert (report.labeled, report.unlabeled, report.rows_out) == (3, 1, 4)
    assert report.class_balance == ((0, 1), (1, 2))
    md = report.to_markdown()
    assert "| duplicate requests (retries, written once) | 1 |" in md
    assert "| orphan ground-truth rows (no logged request) | 1 |" in md


def test_join_feedback_drops_unlabeled_and_prediction_by_default(tmp_path: Path) -> None:
    write_logs(tmp_path / "logs")
    truth = write_truth(
        tmp_path / "truth.parquet", {"request_id": ["r1", "r2", "r3"], "label": [0, 1, 0]}
    )
    out, report = join_feedback(str(tmp_path / "logs"), str(truth), {"duplicates": "last"})
    assert out.column_names == ["request_id", "income", "plan", "label"]
    assert out["request_id"].to_pylist() == ["r1", "r3", "r2"]  # r2's retry kept, in log order
    assert out["income"].to_pylist() == [0.0, 2000.0, 11000.0]
    assert (report.unlabeled, report.unlabeled_dropped, report.rows_out) == (1, 1, 3)


def test_join_feedback_combines_files_with_differing_columns(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    pq.write_table(
        log_table(["a", "b"], extra=pa.array([None, None], pa.null())), folder / "0.parquet"
    )
    pq.write_table(log_table(["c"], extra=pa.array(["x"])), folder / "1.parquet")
    truth = write_truth(tmp_path / "t.csv", {"request_id": ["a", "b", "c"], "label": [0, 1, 1]})
    out, _ = join_feedback(str(folder), str(truth), {})
    assert out["extra"].to_pylist() == [None, None, "x"]


def test_join_feedback_bad_inputs(tmp_path: Path) -> None:
    write_logs(tmp_path / "logs")
    logs = str(tmp_path / "logs")
    truth = write_truth(tmp_path / "t.csv", {"request_id": ["r1", "r2"], "label": [0, 1]})

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"no Parquet files under {empty}"):
        join_feedback(str(empty), str(truth), {})

    no_id = write_truth(tmp_path / "noid.csv", {"rid": ["r1"], "label": [0]})
    with pytest.raises(DataError, match=rf"{no_id}: ground truth has no 'request_id' column"):
        join_feedback(logs, str(no_id), {})

    with pytest.raises(DataError) as info:
        join_feedback(logs, str(truth), {"label_column": "churned"})
    assert str(truth) in str(info.value) and "no label column 'churned'" in str(info.value)

    conflict = write_truth(
        tmp_path / "c.csv", {"request_id": ["r1", "r2", "r1"], "label": [0, 1, 1]}
    )
    with pytest.raises(DataError, match=r"request_id 'r1' has different labels \(0 at row 0"):
        join_feedback(logs, str(conflict), {})

    one_class = write_truth(tmp_path / "one.csv", {"request_id": ["r1", "r2"], "label": [1, 1]})
    with pytest.raises(DataError, match=r"only one class: 1 \(2 rows\)"):
        join_feedback(logs, str(one_class), {})

    bad_log = tmp_path / "badlogs"
    bad_log.mkdir()
    pq.write_table(pa.table({"id": ["x"], "f": [1]}), bad_log / "x.parquet")
    with pytest.raises(
        DataError, match=rf"{bad_log / 'x.parquet'}: request log has no 'request_id'"
    ):
        join_feedback(str(bad_log), str(truth), {})

    with pytest.raises(ConfigError) as cinfo:
        join_feedback(logs, str(truth), {"keep_predictions": True})
    assert cinfo.value.field == "config.keep_predictions"


def test_join_feedback_from_s3(tmp_path: Path, store: ObjectStore, bucket: str) -> None:
    write_logs(tmp_path / "logs")
    store.put_dir(tmp_path / "logs", f"s3://{bucket}/logs/2024/05/01")
    store.put_bytes(b"not a log", f"s3://{bucket}/logs/2024/05/01/_SUCCESS")
    truth = write_truth(
        tmp_path / "truth.csv", {"request_id": ["r1", "r2", "r4"], "label": [0, 1, 1]}
    )
    store.put_file(truth, f"s3://{bucket}/truth/labels.csv")
    out, report = join_feedback(
        f"s3://{bucket}/logs/", f"s3://{bucket}/truth/labels.csv", {}, store=store
    )
    assert out["request_id"].to_pylist() == ["r1", "r2", "r4"]
    assert out["label"].to_pylist() == [0, 1, 1]
    assert report.feedback is not None and report.feedback.log_files == 2

    with pytest.raises(DataError, match=f"no Parquet files under s3://{bucket}/nothing/"):
        join_feedback(f"s3://{bucket}/nothing", f"s3://{bucket}/truth/labels.csv", {}, store=store)


# -- label_data -----------------------------------------------------------------------------


def test_label_data_rules_writes_parquet(tmp_path: Path) -> None:
    source = tmp_path / "dataset"  # a KFP artifact file without suffix
    pq.write_table(customers(), source)
    out = tmp_path / "labeled"
    result = label_data(str(out), "rules", EXAMPLE_RULES, dataset_path=str(source))
    assert pq.read_table(out)["label"].to_pylist() == [1, 0, 0, 0, 0, 0]
    meta = result.metadata()
    assert meta["rows"] == 6 and meta["labeled"] == 6 and meta["class_balance"] == {"0": 5, "1": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "labeled"]


def test_label_data_feedback_writes_parquet(tmp_path: Path) -> None:
    write_logs(tmp_path / "logs")
    truth = write_truth(tmp_path / "t.csv", {"request_id": ["r1", "r2"], "label": [0, 1]})
    result = label_data(
        str(tmp_path / "out.parquet"),
        "feedback",
        {"keep_prediction": True},
        logs_uri=str(tmp_path / "logs"),
        ground_truth_uri=str(truth),
    )
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 2
    meta = result.metadata()
    assert (meta["duplicate_requests"], meta["orphans"], meta["mode"]) == (1, 0, "feedback")


def test_label_data_failures_leave_no_output(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(customers(), source)
    out = tmp_path / "out" / "labeled"
    single = {"threshold": {"column": "income", "op": ">", "value": 0}, "default": 1}
    with pytest.raises(DataError) as info:
        label_data(str(out), "rules", single, dataset_path=str(source))
    assert str(source) in str(info.value) and "only one class: 1 (6 rows)" in str(info.value)
    assert not out.exists()

    for kwargs, field in [
        ({"mode": "active"}, "mode"),
        ({"mode": "rules"}, "dataset"),
        ({"mode": "rules", "dataset_path": str(source), "logs_uri": "s3://b/x"}, "logs_uri"),
        ({"mode": "feedback", "dataset_path": str(source)}, "dataset"),
        ({"mode": "feedback", "ground_truth_uri": str(source)}, "logs_uri"),
        ({"mode": "feedback", "logs_uri": str(tmp_path)}, "ground_truth_uri"),
    ]:
        with pytest.raises(ConfigError) as cinfo:
            label_data(str(out), **kwargs)
        assert cinfo.value.field == field
    assert not out.exists()


def test_integral_float_labels_from_kfp_are_ints() -> None:
    """KFP hands dict parameters over as protobuf Structs: 1 arrives as 1.0."""
    config = json.loads(json.dumps(EXAMPLE_RULES).replace(": 1}", ": 1.0}"))
    config["default"] = 0.0
    out, report = label_table(customers(), config)
    assert out.schema.field("label").type == pa.int64()
    assert report.class_balance == ((0, 5), (1, 1))
    config["default"] = 0.5
    out, _ = label_table(customers(), config)
    assert out.schema.field("label").type == pa.float64()


@pytest.mark.parametrize("case", ["no_logs", "no_request_id", "no_label_column", "no_bucket"])
def test_label_data_feedback_bad_inputs_leave_no_output(
    case: str, tmp_path: Path, store: ObjectStore, bucket: str
) -> None:
    write_logs(tmp_path / "logs")
    store.put_dir(tmp_path / "logs", f"s3://{bucket}/logs/")
    good = write_truth(tmp_path / "good.csv", {"request_id": ["r1", "r2"], "label": [0, 1]})
    store.put_file(good, f"s3://{bucket}/truth/good.csv")
    no_id = write_truth(tmp_path / "noid.parquet", {"req": ["r1"], "label": [0]})
    store.put_file(no_id, f"s3://{bucket}/truth/noid.parquet")
    logs, truth = f"s3://{bucket}/logs/", f"s3://{bucket}/truth/good.csv"
    config: dict[str, Any] = {}
    if case == "no_logs":
        logs, words = f"s3://{bucket}/logz/", f"no Parquet files under s3://{bucket}/logz/"
    elif case == "no_bucket":
        logs, words = "s3://no-such-bucket-kfloop/logs", "no Parquet files under s3://no-such"
    elif case == "no_request_id":
        truth = f"s3://{bucket}/truth/noid.parquet"
        words = f"{truth}: ground truth has no 'request_id' column; available columns: req"
    else:
        config = {"label_column": "churned"}
        words = f"{truth}: ground truth has no label column 'churned'"
    out = tmp_path / "out" / "labeled.parquet"
    with pytest.raises(DataError) as info:
        label_data(str(out), "feedback", config, logs_uri=logs, ground_truth_uri=truth, store=store)
    assert words in str(info.value)
    assert not out.parent.exists()


def test_read_an_s3_artifact_without_suffix(
    tmp_path: Path, store: ObjectStore, bucket: str
) -> None:
    pq.write_table(customers(), tmp_path / "dataset")
    store.put_file(tmp_path / "dataset", f"s3://{bucket}/run/ingest/dataset")
    result = label_data(
        f"s3://{bucket}/run/label/labeled.parquet",
        "rules",
        EXAMPLE_RULES,
        dataset_path=f"s3://{bucket}/run/ingest/dataset",
        store=store,
    )
    assert result.info.rows == 6
    assert store.exists(f"s3://{bucket}/run/label/labeled.parquet")
