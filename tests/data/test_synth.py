"""generate_synthetic_data: determinism, shape of the demo data, learnability, drift, errors."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from kfloop.core.errors import ConfigError
from kfloop.core.objectstore import ObjectStore, sha256_file
from kfloop.data.synth import (
    CategoricalFeature,
    DriftSpec,
    LabelRule,
    NumericFeature,
    RegressionTarget,
    SynthSpec,
    TimestampColumn,
    default_spec,
    generate_synthetic_data,
    generate_table,
)

NUMERIC = ["age", "income", "balance", "tenure_months", "num_products", "credit_score"]
CATEGORICAL = ["country", "plan", "channel"]


def column(table: pa.Table, name: str) -> np.ndarray:
    """A column as float64, nulls dropped."""
    return np.asarray(pc.drop_null(table.column(name)).to_numpy(), dtype=np.float64)


def assert_no_output(folder: Path) -> None:
    assert not folder.exists() or list(folder.iterdir()) == []


# -- the demo data set ----------------------------------------------------------------------


def test_default_schema_and_types() -> None:
    table = generate_table(5000, 0)
    assert table.column_names == [
        "id",
        *NUMERIC,
        *CATEGORICAL,
        "is_active",
        "event_time",
        "label",
    ]
    schema = table.schema
    assert schema.field("id").type == pa.int64()
    for name in ["age", "tenure_months", "num_products", "credit_score"]:
        assert schema.field(name).type == pa.int64(), name
    for name in ["income", "balance"]:
        assert schema.field(name).type == pa.float64(), name
    for name in CATEGORICAL:
        assert schema.field(name).type == pa.string(), name
    assert schema.field("is_active").type == pa.bool_()
    assert schema.field("event_time").type == pa.timestamp("us")
    assert schema.field("label").type == pa.int64()
    assert set(table.column("label").to_pylist()) == {0, 1}
    assert len(set(table.column("country").to_pylist())) == 8
    assert len(set(table.column("plan").to_pylist())) == 4
    assert len(set(table.column("channel").to_pylist())) == 5
    times = table.column("event_time")
    assert pc.min(times).as_py() >= datetime(2024, 1, 1)
    assert pc.max(times).as_py() < datetime(2025, 1, 1)


def test_default_data_quality_faults() -> None:
    rows = 40_000
    table = generate_table(rows, 3)
    for name in ["age", "income", "credit_score"]:
        missing = table.column(name).null_count / rows
        assert 0.005 < missing < 0.03, (name, missing)
    assert table.column("balance").null_count == 0
    # ~0.5 % outliers: far outside what the distribution gives
    scores = column(table, "credit_score")
    assert 0.002 < np.mean((scores < 300) | (scores > 850)) < 0.01
    # ~0.5 % exact duplicates (all columns, id included); the rest unique by id
    df = table.to_pandas()
    assert df.duplicated().sum() == round(rows * 0.005)
    deduped = df.drop_duplicates()
    assert deduped["id"].is_unique
    assert len(deduped) == rows - round(rows * 0.005)
    positive = df["label"].mean()
    assert 0.15 < positive < 0.35


def test_a_gradient_boosted_model_can_learn_the_label() -> None:
    df = generate_table(20_000, 11).to_pandas()
    features = df[NUMERIC + CATEGORICAL + ["is_active"]].copy()
    for name in CATEGORICAL:
        features[name] = features[name].astype("category").cat.codes.replace(-1, np.nan)
    features["is_active"] = features["is_active"].astype(float)
    y = df["label"].to_numpy()
    train, test = slice(0, 15_000), slice(15_000, None)
    model = HistGradientBoostingClassifier(
        categorical_features=[features.columns.get_loc(c) for c in CATEGORICAL],
        random_state=0,
    )
    with threadpool_limits(1):  # OpenMP threads on a busy machine slow this down 20x
        model.fit(features[train], y[train])
    auc = roc_auc_score(y[test], model.predict_proba(features[test])[:, 1])
    assert auc > 0.75, auc
    assert auc < 0.97, auc  # noisy labels: not trivially separable


# -- determinism ----------------------------------------------------------------------------


def test_same_seed_same_table_different_seed_different(tmp_path: Path) -> None:
    a = generate_synthetic_data(tmp_path / "a.parquet", rows=3000, seed=5)
    b = generate_synthetic_data(tmp_path / "b.parquet", rows=3000, seed=5)
    c = generate_synthetic_data(tmp_path / "c.parquet", rows=3000, seed=6)
    assert a.sha256 == b.sha256 == sha256_file(tmp_path / "a.parquet")
    assert c.sha256 != a.sha256
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))
    assert not pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "c.parquet"))
    assert generate_table(3000, 5).equals(pq.read_table(tmp_path / "a.parquet"))


def test_result_metadata(tmp_path: Path) -> None:
    result = generate_synthetic_data(tmp_path / "out" / "dataset", rows=2000, seed=1)
    assert (result.rows, result.columns) == (2000, 13)
    assert result.uri == str(tmp_path / "out" / "dataset")
    assert result.bytes == (tmp_path / "out" / "dataset").stat().st_size
    assert result.duplicate_rows == 10
    assert result.drifted is False
    table = pq.read_table(tmp_path / "out" / "dataset")  # Parquet despite the missing suffix
    assert result.positive_rate == pytest.approx(pc.mean(table.column("label")).as_py())
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["dataset"]  # no temporaries
    meta = result.as_metadata()
    assert meta["column_names"][0] == "id" and meta["seed"] == 1


def test_write_to_s3(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/synth/demo.parquet"
    result = generate_synthetic_data(uri, rows=1000, seed=2, store=store)
    assert result.uri == uri
    store.get_file(uri, tmp_path / "back.parquet")
    assert sha256_file(tmp_path / "back.parquet") == result.sha256
    assert pq.read_table(tmp_path / "back.parquet").equals(generate_table(1000, 2))


def test_columns_have_independent_streams() -> None:
    """Changing one feature does not change the values of the others."""
    base = default_spec()
    numeric = [f.model_copy(update={"std": 99.0}) if f.name == "age" else f for f in base.numeric]
    changed = base.model_copy(update={"numeric": numeric})
    a = generate_table(2000, 4, base)
    b = generate_table(2000, 4, changed)
    assert not a.column("age").equals(b.column("age"))
    for name in ["income", "balance", "country", "is_active", "event_time"]:
        assert a.column(name).equals(b.column(name)), name


# -- custom specs ---------------------------------------------------------------------------


def test_custom_spec_from_a_dict_with_regression_and_regular_times() -> None:
    spec = {
        "id_column": "key",
        "numeric": [
            {"name": "x", "mean": 5, "std": 2, "distribution": "uniform"},
            {"name": "y", "mean": 10, "std": 1, "missing_rate": 0.1},
        ],
        "categorical": [{"name": "c", "categories": ["a", "b"], "weights": [3, 1]}],
        "boolean": [{"name": "flag", "p_true": 0.2}],
        "timestamp": {"name": "ts", "start": "2023-05-01T00:00:00", "freq_seconds": 60},
        "label": {"name": "y_class", "intercept": 0, "numeric_weights": {"x": 2}},
        "regression": {
            "name": "amount",
            "intercept": 100,
            "numeric_weights": {"x": 10},
            "categorical_effects": {"c": {"b": 50}},
            "noise_std": 0,
        },
    }
    table = generate_table(20_000, 0, spec)
    assert table.column_names == ["key", "x", "y", "c", "flag", "ts", "y_class", "amount"]
    x = column(table, "x")
    assert x.min() >= 5 - 2 * np.sqrt(3) and x.max() <= 5 + 2 * np.sqrt(3)
    assert abs(x.mean() - 5) < 0.05 and abs(x.std() - 2) < 0.05
    assert 0.08 < table.column("y").null_count / 20_000 < 0.12
    share_a = np.mean(np.asarray(table.column("c").to_pylist()) == "a")
    assert abs(share_a - 0.75) < 0.02
    assert abs(np.mean(table.column("flag").to_pylist()) - 0.2) < 0.02
    times = table.column("ts").to_pylist()
    assert times[0] == datetime(2023, 5, 1) and times[1] == datetime(2023, 5, 1, 0, 1)
    # exact regression rule (noise 0): 100 + 10 * z(x) + 50 * [c == b]
    z = (x - 5) / 2
    is_b = np.asarray(table.column("c").to_pylist()) == "b"
    np.testing.assert_allclose(column(table, "amount"), 100 + 10 * z + 50 * is_b)
    # the label follows x
    label = table.column("y_class").to_numpy()
    assert label[z > 1].mean() > 0.8 and label[z < -1].mean() < 0.2


def test_lognormal_matches_mean_and_std() -> None:
    spec = SynthSpec(
        numeric=[NumericFeature(name="v", mean=100, std=50, distribution="lognormal")],
        timestamp=None,
    )
    v = column(generate_table(100_000, 0, spec), "v")
    assert v.min() > 0
    assert abs(v.mean() - 100) < 1.5 and abs(v.std() - 50) < 2.5


# -- drift ----------------------------------------------------------------------------------


def test_mean_shift_moves_only_the_drifted_feature() -> None:
    rows = 50_000
    base = generate_table(rows, 8)
    drifted = generate_table(rows, 8, drift={"mean_shift_stds": {"credit_score": 1.5}})
    spec = {f.name: f for f in default_spec().numeric}
    # robust to outliers: compare medians in units of the feature's std
    moved = (
        np.median(column(drifted, "credit_score")) - np.median(column(base, "credit_score"))
    ) / spec["credit_score"].std
    assert 1.3 < moved < 1.6, moved  # clipping at 850 takes a little off
    for name in ["age", "income", "balance", "tenure_months", "num_products"]:
        shift = (np.median(column(drifted, name)) - np.median(column(base, name))) / spec[name].std
        assert abs(shift) < 0.05, (name, shift)


def test_category_mix_and_label_rule_drift() -> None:
    rows = 30_000
    base = generate_table(rows, 9)
    drift = DriftSpec(
        category_weights={"plan": [0.1, 0.1, 0.1, 0.7]},
        label={"intercept": 1.0},
    )
    drifted = generate_table(rows, 9, drift=drift)
    plans = np.asarray(drifted.column("plan").to_pylist())
    assert abs(np.mean(plans == "family") - 0.7) < 0.02
    assert np.asarray(base.column("country").to_pylist()).tolist() == (
        np.asarray(drifted.column("country").to_pylist()).tolist()
    )
    base_rate = pc.mean(base.column("label")).as_py()
    drifted_rate = pc.mean(drifted.column("label")).as_py()
    assert drifted_rate > base_rate + 0.15


def test_drift_result_is_flagged(tmp_path: Path) -> None:
    result = generate_synthetic_data(
        tmp_path / "d.parquet", rows=500, seed=0, drift={"mean_shift_stds": {"age": 1}}
    )
    assert result.drifted is True


# -- bad input ------------------------------------------------------------------------------


def test_unknown_key_in_spec_names_the_dotted_path(tmp_path: Path) -> None:
    spec = default_spec().model_dump()
    spec["numeric"][1]["stdev"] = 3
    with pytest.raises(ConfigError) as err:
        generate_synthetic_data(tmp_path / "out" / "t.parquet", rows=10, seed=0, spec=spec)
    assert err.value.field == "spec.numeric.1.stdev"
    assert "unknown key" in str(err.value)
    assert_no_output(tmp_path / "out")


@pytest.mark.parametrize("rows", [-5, 0, 2.5, True])
def test_bad_rows(tmp_path: Path, rows: object) -> None:
    with pytest.raises(ConfigError) as err:
        generate_synthetic_data(tmp_path / "out" / "t.parquet", rows=rows, seed=0)  # type: ignore[arg-type]
    assert err.value.field == "rows"
    assert repr(rows) in str(err.value)
    assert_no_output(tmp_path / "out")


def test_bad_seed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^seed: -1"):
        generate_synthetic_data(tmp_path / "out" / "t.parquet", rows=10, seed=-1)
    assert_no_output(tmp_path / "out")


def test_weights_not_matching_categories(tmp_path: Path) -> None:
    spec = {"categorical": [{"name": "c", "categories": ["a", "b", "c"], "weights": [1, 2]}]}
    with pytest.raises(ConfigError) as err:
        generate_synthetic_data(tmp_path / "out" / "t.parquet", rows=10, seed=0, spec=spec)
    assert err.value.field.startswith("spec.categorical.0")
    assert "weights has 2 values but categories has 3" in str(err.value)
    with pytest.raises(ConfigError) as err:
        generate_table(10, 0, drift={"category_weights": {"plan": [1, 1]}})
    assert err.value.field == "drift.category_weights.plan"
    assert "weights has 2 values but categories has 4" in str(err.value)
    assert_no_output(tmp_path / "out")


def test_drift_naming_a_feature_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        generate_synthetic_data(
            tmp_path / "out" / "t.parquet",
            rows=10,
            seed=0,
            drift={"mean_shift_stds": {"salary": 1.0}},
        )
    assert err.value.field == "drift.mean_shift_stds.salary"
    assert "'salary'" in str(err.value) and "income" in str(err.value)
    with pytest.raises(ConfigError) as err:
        generate_table(10, 0, drift={"mean_shift_stds": {"country": 1.0}})  # not numeric
    assert err.value.field == "drift.mean_shift_stds.country"
    with pytest.raises(ConfigError) as err:
        generate_table(10, 0, drift={"label": {"categorical_effects": {"plan": {"gold": 1}}}})
    assert err.value.field == "drift.label.categorical_effects.plan.gold"
    with pytest.raises(ConfigError) as err:
        generate_table(10, 0, drift={"mean_shift": {"age": 1}})
    assert err.value.field == "drift.mean_shift"
    assert_no_output(tmp_path / "out")


def test_label_rule_naming_unknown_features() -> None:
    spec = SynthSpec(
        numeric=[NumericFeature(name="x")],
        categorical=[CategoricalFeature(name="c", categories=["a"])],
        label=LabelRule(numeric_weights={"z": 1.0}),
    )
    with pytest.raises(ConfigError) as err:
        generate_table(10, 0, spec)
    assert err.value.field == "spec.label.numeric_weights.z"
    bad_category = spec.model_copy(
        update={"label": None, "regression": RegressionTarget(categorical_effects={"c": {"b": 1}})}
    )
    with pytest.raises(ConfigError) as err:
        generate_table(10, 0, bad_category)
    assert err.value.field == "spec.regression.categorical_effects.c.b"


def test_other_spec_errors() -> None:
    with pytest.raises(ConfigError) as err:
        generate_table(10, 0, {"numeric": [{"name": "x", "std": -1}]})
    assert err.value.field == "spec.numeric.0.std"
    with pytest.raises(ConfigError, match="lognormal feature needs mean > 0"):
        generate_table(10, 0, {"numeric": [{"name": "x", "distribution": "lognormal"}]})
    with pytest.raises(ConfigError, match="'x' is used twice"):
        generate_table(10, 0, {"numeric": [{"name": "x"}], "boolean": [{"name": "x"}]})
    with pytest.raises(ConfigError) as err:
        generate_table(10, 0, {"duplicate_rate": 0.9})
    assert err.value.field == "spec.duplicate_rate"
    with pytest.raises(ConfigError, match="^output_path"):
        generate_synthetic_data("s3://some-bucket/table.csv", rows=10, seed=0)


def test_empty_spec_dict_is_the_demo_and_spec_instances_work() -> None:
    assert generate_table(100, 0, {}).equals(generate_table(100, 0))
    minimal = SynthSpec(rows=7, seed=3, timestamp=TimestampColumn(freq_seconds=1))
    table = generate_table(spec=minimal)
    assert table.num_rows == 7 and table.column_names == ["id", "event_time"]
