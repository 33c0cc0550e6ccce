"""Feature spec inference, raw model inputs, preprocessing layers and the reference profile."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from kfloop.core.errors import ConfigError, DataError
from kfloop.model.features import (
    FeatureSpec,
    build_vocabulary,
    infer_feature_spec,
    table_to_inputs,
)
from kfloop.model.layers import CategoricalIndex, NumericPreprocessing
from kfloop.model.profile import OTHER, bin_frequencies, compute_reference_profile
from tests.model.model_data import make_table


def test_infer_spec_kinds_stats_and_ignored_columns() -> None:
    table = make_table(500)
    spec = infer_feature_spec(table, "label", exclude=["id"])

    assert spec.task == "binary_classification"
    assert spec.names == ["x1", "x2", "color", "city", "flag"]
    assert [f.kind for f in spec.features] == [
        "numeric",
        "numeric",
        "categorical",
        "categorical",
        "numeric",
    ]
    assert "event_time" in spec.ignored and "timestamp" in spec.ignored["event_time"]
    x1 = np.array(table.column("x1").to_pylist(), dtype=np.float64)
    f = spec.feature("x1")
    assert f.mean == pytest.approx(np.nanmean(x1))
    assert f.std == pytest.approx(np.nanstd(x1))
    assert f.missing_rate == pytest.approx(np.isnan(x1).mean())
    assert spec.feature("flag").source_dtype == "bool"
    color = spec.feature("color")
    assert color.vocabulary is not None
    # Most frequent first; missing never in the vocabulary.
    assert color.vocabulary[0] == "red"
    assert sorted(color.vocabulary) == sorted(["red", "green", "blue", "yellow"])


def test_vocabulary_top_k_ties_and_min_count() -> None:
    values = ["b", "a", "a", "c", "c", "d", "", "b"]
    assert build_vocabulary(values) == ["a", "b", "c", "d"]
    assert build_vocabulary(values, max_size=2) == ["a", "b"]
    assert build_vocabulary(values, min_count=2) == ["a", "b", "c"]


def test_infer_spec_vocabulary_cap_applies_per_feature() -> None:
    spec = infer_feature_spec(make_table(400), "label", exclude=["id"], max_vocabulary=3)
    assert len(spec.feature("city").vocabulary or []) == 3
    assert len(spec.feature("color").vocabulary or []) == 3


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        (pa.array([True, False] * 10), "binary_classification"),
        (pa.array([0, 1] * 10), "binary_classification"),
        (pa.array(np.arange(20)), "regression"),
        (pa.array(np.linspace(0, 1, 20)), "regression"),
    ],
)
def test_task_inferred_from_label_type(label: pa.Array, expected: str) -> None:
    table = pa.table({"x": np.arange(20, dtype=np.float64), "y": label})
    assert infer_feature_spec(table, "y").task == expected


def test_task_override_and_bad_task() -> None:
    table = pa.table({"x": np.arange(20, dtype=np.float64), "y": pa.array([0, 1] * 10)})
    assert infer_feature_spec(table, "y", task="regression").task == "regression"
    with pytest.raises(ConfigError, match="task") as info:
        infer_feature_spec(table, "y", task="multiclass")
    assert "'multiclass'" in str(info.value)


def test_string_label_is_rejected_with_its_type() -> None:
    table = pa.table({"x": [1.0, 2.0], "y": ["a", "b"]})
    with pytest.raises(DataError, match=r"'y' has type string"):
        infer_feature_spec(table, "y")


def test_missing_label_names_label_and_lists_columns() -> None:
    table = make_table(30)
    with pytest.raises(ConfigError) as info:
        infer_feature_spec(table, "target")
    assert info.value.field == "label"
    assert "'target'" in str(info.value) and "x1, x2, color" in str(info.value)


def test_unknown_exclude_column_is_named() -> None:
    with pytest.raises(ConfigError, match="'nope'") as info:
        infer_feature_spec(make_table(30), "label", exclude=["nope"])
    assert info.value.field == "exclude"


def test_all_null_feature_is_an_error_naming_it() -> None:
    table = make_table(50).append_column("empty", pa.nulls(50, pa.float64()))
    table = table.append_column("blank", pa.array([None] * 50, type=pa.string()))
    with pytest.raises(DataError) as info:
        infer_feature_spec(table, "label")
    message = str(info.value)
    assert "'empty'" in message and "'blank'" in message and "all 50 rows" in message
    # Excluding them is the documented way out.
    spec = infer_feature_spec(table, "label", exclude=["empty", "blank"])
    assert "empty" not in spec.names


def test_bad_column_name_is_named() -> None:
    table = pa.table({"my col": [1.0, 2.0], "label": [0, 1]})
    with pytest.raises(DataError, match="'my col'"):
        infer_feature_spec(table, "label")


def test_table_to_inputs_shapes_dtypes_and_missing_values() -> None:
    table = make_table(100)
    spec = infer_feature_spec(table, "label", exclude=["id"])
    inputs = table_to_inputs(table, spec)
    assert set(inputs) == set(spec.names)
    x1 = inputs["x1"]
    assert x1.shape == (100, 1) and x1.dtype == np.float32
    assert np.isnan(x1).sum() == table.column("x1").null_count
    assert inputs["flag"].dtype == np.float32
    assert set(np.unique(inputs["flag"])) <= {0.0, 1.0}
    color = inputs["color"]
    assert color.shape == (100, 1) and color.dtype == object
    assert (color == "").sum() == table.column("color").null_count
    assert all(isinstance(v, str) for v in color.ravel())


def test_table_to_inputs_names_missing_and_mistyped_columns() -> None:
    table = make_table(40)
    spec = infer_feature_spec(table, "label", exclude=["id"])
    with pytest.raises(DataError, match="'city'"):
        table_to_inputs(table.drop(["city"]), spec, "serving batch")
    wrong = table.set_column(
        table.schema.get_field_index("x2"), "x2", pa.array(["a"] * 40, type=pa.string())
    )
    with pytest.raises(DataError, match=r"feature 'x2' must be numeric"):
        table_to_inputs(wrong, spec)


def test_dictionary_encoded_strings_are_categorical() -> None:
    table = pa.table({"c": pa.array(["a", "b", None, "a"]).dictionary_encode(), "y": [0, 1, 0, 1]})
    spec = infer_feature_spec(table, "y")
    assert spec.feature("c").kind == "categorical"
    assert table_to_inputs(table, spec)["c"].ravel().tolist() == ["a", "b", "", "a"]


def test_feature_spec_json_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = infer_feature_spec(make_table(100), "label", exclude=["id"])
    path = tmp_path / "feature_spec.json"
    spec.to_json(path)
    again = FeatureSpec.from_json(path)
    assert again == spec
    data = spec.to_dict()
    assert data["version"] == 1 and data["positive_class"] == 1
    assert "vocabulary" not in data["features"][0] and "mean" not in data["features"][2]
    with pytest.raises(DataError, match="missing key 'task'"):
        FeatureSpec.from_dict({"label": "y", "features": []})


def test_numeric_preprocessing_layer_imputes_flags_and_standardises() -> None:
    layer = NumericPreprocessing([1.0, 10.0], [2.0, 5.0])
    x = np.array([[3.0, np.nan], [np.inf, 20.0], [1.0, -np.inf]], dtype=np.float32)
    out = np.asarray(layer(x))
    np.testing.assert_allclose(
        out,
        [[1.0, 0.0, 0.0, 1.0], [0.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        atol=1e-6,
    )
    config = layer.get_config()
    assert NumericPreprocessing.from_config(config).means == [1.0, 10.0]


def test_categorical_index_layer_maps_out_of_range_to_zero() -> None:
    layer = CategoricalIndex(3)
    x = np.array([[0], [1], [3], [4], [-2]], dtype=np.int64)
    assert np.asarray(layer(x)).ravel().tolist() == [0, 1, 3, 0, 0]


def test_bin_frequencies_outer_bins_are_open_ended() -> None:
    edges = [0.0, 1.0, 2.0, 3.0]
    freqs = bin_frequencies(np.array([-5.0, 0.5, 1.0, 2.5, 99.0, np.nan]), edges)
    assert freqs == pytest.approx([0.4, 0.2, 0.4])


def test_discrete_features_get_one_bin_per_value() -> None:
    from kfloop.model.profile import quantile_edges

    flags = np.array([0.0] * 70 + [1.0] * 30)
    edges = quantile_edges(flags)
    assert edges == [0.0, 0.5, 1.0]
    assert bin_frequencies(flags, edges) == pytest.approx([0.7, 0.3])
    assert quantile_edges(np.array([2.0, 2.0, np.nan])) == [2.0, 2.0]
    assert quantile_edges(np.array([np.nan])) == []


def test_reference_profile_numeric_categorical_and_predictions() -> None:
    table = make_table(1000)
    spec = infer_feature_spec(table, "label", exclude=["id"])
    preds = np.linspace(0.0, 1.0, 1000)
    profile = compute_reference_profile(table, spec, preds, top_k=10)

    assert profile["rows"] == 1000 and profile["version"] == 1
    x1 = profile["numeric"]["x1"]
    assert len(x1["edges"]) == 11
    assert len(x1["frequencies"]) == 10
    assert sum(x1["frequencies"]) == pytest.approx(1.0)
    assert max(x1["frequencies"]) < 0.15  # quantile bins: about 10 % each
    assert x1["missing_rate"] == pytest.approx(table.column("x1").null_count / 1000)
    city = profile["categorical"]["city"]
    assert len(city["frequencies"]) == 11 and OTHER in city["frequencies"]
    assert sum(city["frequencies"].values()) == pytest.approx(1.0)
    color = profile["categorical"]["color"]
    assert OTHER not in color["frequencies"]
    assert color["missing_rate"] == pytest.approx(table.column("color").null_count / 1000)
    assert profile["prediction"]["frequencies"] == pytest.approx([0.1] * 10, abs=0.002)
    assert 0.0 < profile["label_distribution"]["positive_rate"] < 1.0
    flag = profile["numeric"]["flag"]
    assert flag["edges"] == [0.0, 0.5, 1.0]
    assert flag["frequencies"][1] == pytest.approx(np.mean(table.column("flag").to_pylist()))
