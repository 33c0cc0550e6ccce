"""package_onnx: one raw-input ONNX graph, parity with Keras, metadata, card; publish_model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import ObjectInfo, ObjectStore, S3Uri
from kfloop.model.features import table_to_inputs
from kfloop.model.package import (
    ML_OPSET,
    OPSET,
    PackageResult,
    ParityError,
    VersionExistsError,
    decide_release,
    package_onnx,
    publish_model,
)
from kfloop.model.predict import load_trained_model
from kfloop.model.train import TrainResult, train_model
from tests.model.model_data import FAST_HP, leftovers, make_splits, make_table


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_splits(tmp_path_factory.mktemp("splits"), sizes=(600, 200, 150))


@pytest.fixture(scope="module")
def trained(splits: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train_model(
        splits["train"],
        splits["validation"],
        tmp_path_factory.mktemp("models") / "model",
        label="label",
        hyperparameters=FAST_HP,
        epochs=4,
        exclude=["id"],
    )


@pytest.fixture(scope="module")
def packaged(
    trained: TrainResult, splits: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> PackageResult:
    return package_onnx(
        trained.model_dir,
        splits["test"],
        tmp_path_factory.mktemp("packages") / "onnx",
        metrics={"auc": 0.91, "slices": {"color=red": {"auc": 0.88}}},
        fingerprints={"source_sha256": "ab" * 32},
        lineage={"pipeline_run_id": "run-123", "source_uri": "s3://data/raw.csv"},
        model_name="churn",
        version="v1",
    )


def test_package_folder_and_valid_graph(packaged: PackageResult) -> None:
    folder = Path(packaged.output_dir)
    assert {p.name for p in folder.iterdir()} == {
        "model.onnx",
        "metadata.json",
        "MODEL_CARD.md",
        "reference_profile.json",
    }
    assert leftovers(folder.parent) == []
    model = onnx.load(folder / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets[""] == OPSET == 17 and opsets["ai.onnx.ml"] == ML_OPSET
    encoders = [n for n in model.graph.node if n.op_type == "LabelEncoder"]
    assert sorted(n.input[0] for n in encoders) == ["city", "color"]
    assert all(n.domain == "ai.onnx.ml" for n in encoders)


def test_graph_inputs_are_the_raw_features(packaged: PackageResult) -> None:
    session = ort.InferenceSession(packaged.onnx_path, providers=["CPUExecutionProvider"])
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert inputs == {
        "x1": ("tensor(float)", ["N", 1]),
        "x2": ("tensor(float)", ["N", 1]),
        "color": ("tensor(string)", ["N", 1]),
        "city": ("tensor(string)", ["N", 1]),
        "flag": ("tensor(float)", ["N", 1]),
    }
    (output,) = session.get_outputs()
    assert (output.name, output.type, output.shape) == ("prediction", "tensor(float)", ["N", 1])


def test_onnx_matches_keras_on_unseen_categories_and_missing_values(
    trained: TrainResult, packaged: PackageResult
) -> None:
    model = load_trained_model(trained.model_dir)
    table = make_table(40, seed=11)
    raw = table_to_inputs(table, model.spec)
    raw["color"][:5, 0] = ["purple", "", "red", "Red", "blue"]  # unseen, missing, known, case
    raw["city"][:5, 0] = ["atlantis", "city_03", "", "city_99", "city_24"]
    raw["x1"][:5, 0] = [np.nan, 0.5, np.nan, np.inf, -3.0]
    raw["x2"][:5, 0] = [np.nan, np.nan, 10.0, 1e6, -np.inf]
    session = ort.InferenceSession(packaged.onnx_path, providers=["CPUExecutionProvider"])
    feed = {k: (v.astype(object) if v.dtype == object else v) for k, v in raw.items()}
    got = session.run(["prediction"], feed)[0].reshape(-1)
    want = model.predict_inputs(raw)
    assert np.all(np.isfinite(got))
    assert np.max(np.abs(got - want)) <= 1e-5
    # Unseen and missing categories really take the out-of-vocabulary path: same output.
    oov = {k: v[:1].copy() for k, v in raw.items()}
    oov_missing = {k: v.copy() for k, v in oov.items()}
    oov_missing["color"][0, 0] = ""
    a = session.run(["prediction"], oov)[0]
    b = session.run(["prediction"], oov_missing)[0]
    assert a == pytest.approx(b, abs=0)


def test_single_row_request(packaged: PackageResult) -> None:
    session = ort.InferenceSession(packaged.onnx_path, providers=["CPUExecutionProvider"])
    row = {
        "x1": np.array([[0.3]], dtype=np.float32),
        "x2": np.array([[12.0]], dtype=np.float32),
        "color": np.array([["green"]], dtype=object),
        "city": np.array([["city_01"]], dtype=object),
        "flag": np.array([[1.0]], dtype=np.float32),
    }
    (out,) = session.run(None, row)
    assert out.shape == (1, 1) and 0.0 <= float(out[0, 0]) <= 1.0


def test_metadata_records_signature_metrics_fingerprints_lineage_parity(
    packaged: PackageResult, trained: TrainResult
) -> None:
    meta = json.loads((Path(packaged.output_dir) / "metadata.json").read_text())
    assert meta == packaged.metadata
    assert [i["name"] for i in meta["inputs"]] == ["x1", "x2", "color", "city", "flag"]
    assert meta["inputs"][2] == {
        "name": "color",
        "onnx_type": "tensor(string)",
        "shape": ["N", 1],
        "kind": "categorical",
        "source_dtype": "string",
        "missing_value": "",
    }
    assert meta["inputs"][0]["onnx_type"] == "tensor(float)"
    assert meta["outputs"] == [
        {
            "name": "prediction",
            "onnx_type": "tensor(float)",
            "shape": ["N", 1],
            "meaning": "probability of class 1",
        }
    ]
    assert meta["feature_spec"]["label"] == "label"
    assert meta["metrics"]["auc"] == 0.91
    prints = meta["fingerprints"]
    assert prints["train_parquet_sha256"] == trained.fingerprints["train"]
    assert len(prints["test_parquet_sha256"]) == 64
    assert prints["source_sha256"] == "ab" * 32
    assert meta["lineage"]["pipeline_run_id"] == "run-123"
    parity = meta["parity"]
    assert parity["passed"] and parity["max_abs_diff"] <= parity["tolerance"] == 1e-5
    assert parity["rows"] == 150 + parity["probe_rows"] and parity["probe_rows"] >= 4
    assert meta["opset"] == {"ai.onnx": 17, "ai.onnx.ml": ML_OPSET}
    assert set(meta["versions"]) >= {"kfloop", "tensorflow", "tf2onnx", "onnx", "onnxruntime"}
    assert meta["sha256"] == packaged.onnx_sha256
    assert (meta["model_name"], meta["version"]) == ("churn", "v1")


def test_model_card_sections(packaged: PackageResult) -> None:
    card = (Path(packaged.output_dir) / "MODEL_CARD.md").read_text()
    for heading in (
        "## Intended use",
        "## Task",
        "## Features",
        "## Training data",
        "## Metrics",
        "## ONNX/Keras parity",
        "## Limitations",
        "## Release",
    ):
        assert heading in card
    assert "| `color` | categorical | tensor(string)" in card
    assert packaged.metadata["fingerprints"]["train_parquet_sha256"] in card
    assert "| auc | 0.91 |" in card and "| slices.color=red.auc | 0.88 |" in card
    assert "PASS" in card


def test_parity_failure_raises_and_writes_nothing(
    trained: TrainResult, splits: dict[str, Path], tmp_path: Path
) -> None:
    """A core.keras whose weights differ from model.keras: ONNX no longer matches Keras."""
    broken = tmp_path / "broken-model"
    shutil.copytree(trained.model_dir, broken)
    core = keras.saving.load_model(broken / "core.keras", compile=False)
    layer = core.get_layer("dense_0")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel + 0.05, bias])
    core.save(broken / "core.keras")
    out = tmp_path / "onnx"
    with pytest.raises(ParityError) as info:
        package_onnx(broken, splits["test"], out)
    assert "parity_tolerance=1e-05" in str(info.value) and "differ by" in str(info.value)
    assert not out.exists() and leftovers(tmp_path) == []


def test_tolerance_is_the_boundary(
    trained: TrainResult, splits: dict[str, Path], packaged: PackageResult, tmp_path: Path
) -> None:
    """Conversion is deterministic: the same diff passes at itself and fails just below."""
    diff = packaged.parity.max_abs_diff
    if diff == 0.0:
        pytest.skip("ONNX and Keras agree bit for bit on this platform")
    same = package_onnx(trained.model_dir, splits["test"], tmp_path / "a", parity_tolerance=diff)
    assert same.parity.max_abs_diff == diff and same.parity.passed
    out = tmp_path / "b"
    with pytest.raises(ParityError) as info:
        package_onnx(trained.model_dir, splits["test"], out, parity_tolerance=diff / 2)
    assert f"parity_tolerance={diff / 2:g}" in str(info.value)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"parity_tolerance": -1.0}, "parity_tolerance"),
        ({"parity_tolerance": float("nan")}, "parity_tolerance"),
        ({"parity_rows": 0}, "parity_rows"),
        ({"metrics": ["auc"]}, "metrics"),
        ({"lineage": {"when": object()}}, "lineage"),
    ],
)
def test_bad_parameters_are_named(
    trained: TrainResult,
    splits: dict[str, Path],
    tmp_path: Path,
    kwargs: dict[str, Any],
    field: str,
) -> None:
    out = tmp_path / "onnx"
    with pytest.raises(ConfigError) as info:
        package_onnx(trained.model_dir, splits["test"], out, **kwargs)
    assert info.value.field == field
    assert not out.exists()


def test_test_split_without_a_feature_is_named(
    trained: TrainResult, tmp_path: Path, splits: dict[str, Path]
) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(splits["test"] / "data.parquet").drop(["city"])
    bad = tmp_path / "test.parquet"
    pq.write_table(table, bad)
    out = tmp_path / "onnx"
    with pytest.raises(DataError, match="'city'"):
        package_onnx(trained.model_dir, bad, out)
    assert not out.exists()


def test_regression_model_packages_with_parity(tmp_path: Path) -> None:
    splits = make_splits(tmp_path / "s", regression=True, sizes=(300, 100, 50))
    result = train_model(
        splits["train"],
        splits["validation"],
        tmp_path / "m",
        label="label",
        hyperparameters=FAST_HP,
        epochs=3,
        exclude=["id"],
    )
    packaged = package_onnx(result.model_dir, splits["test"], tmp_path / "onnx")
    assert packaged.metadata["task"] == "regression"
    # Label units: relative tolerance matters more than absolute for large values.
    assert packaged.parity.max_abs_diff <= 1e-5 * max(1.0, abs(20.0))
    assert "label units" in packaged.metadata["outputs"][0]["meaning"]


# -- release gate -------------------------------------------------------------------------------


def test_decide_release_reads_files_and_folders(tmp_path: Path) -> None:
    blessing = tmp_path / "blessing.json"
    blessing.write_text(json.dumps({"blessed": True, "reasons": []}))
    acc_dir = tmp_path / "acceptance"
    acc_dir.mkdir()
    (acc_dir / "acceptance.json").write_text(json.dumps({"passed": True, "reasons": []}))
    go = decide_release(blessing, acc_dir)
    assert go.publish and go.blessed and go.accepted and go.reasons == ()

    missing = decide_release(None, acc_dir)
    assert not missing.publish and "no blessing" in missing.reasons[0]

    blessing.write_text(json.dumps({"blessed": False, "reasons": ["auc 0.6 < 0.8"]}))
    no = decide_release(blessing, acc_dir)
    assert not no.publish and "auc 0.6 < 0.8" in no.summary()

    blessing.write_text(json.dumps({"blessed": True}))
    off = decide_release(blessing, acc_dir / "acceptance.json", publish=False)
    assert off.blessed and off.accepted and not off.publish
    assert "publish=False" in off.summary()
    later = decide_release(None, None, publish=False)
    assert len(later.reasons) == 1 and "a later step decides" in later.reasons[0]


def test_decide_release_rejects_malformed_files(tmp_path: Path) -> None:
    bad = tmp_path / "blessing.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=str(bad)):
        decide_release(bad, None)
    bad.write_text(json.dumps({"blessed": "yes"}))
    with pytest.raises(DataError, match="boolean 'blessed'"):
        decide_release(bad, None)


# -- publishing (real SeaweedFS) --------------------------------------------------------------


class RecordingStore(ObjectStore):
    """The real store, remembering the order of uploads."""

    def __init__(self, store: ObjectStore) -> None:
        super().__init__(store.settings)
        self.uploads: list[str] = []

    def put_file(self, path: Any, uri: Any, *args: Any, **kwargs: Any) -> ObjectInfo:
        info = super().put_file(path, uri, *args, **kwargs)
        self.uploads.append(info.uri.key)
        return info


def test_publish_uploads_complete_version_metadata_last(
    packaged: PackageResult, store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    recording = RecordingStore(store)
    uri = publish_model(
        packaged.output_dir,
        f"s3://{bucket}/models",
        "churn",
        "v1",
        recording,
        blessed=True,
        accepted=True,
    )
    assert uri == f"s3://{bucket}/models/churn/v1/"
    assert recording.uploads[-1] == "models/churn/v1/metadata.json"
    keys = sorted(o.uri.key for o in store.list_objects(S3Uri.parse(uri)))
    assert keys == [
        "models/churn/v1/MODEL_CARD.md",
        "models/churn/v1/metadata.json",
        "models/churn/v1/model.onnx",
        "models/churn/v1/reference_profile.json",
        "models/churn/v1/triton/churn/1/model.onnx",  # a Triton model repository
    ]
    store.get_file(f"{uri}model.onnx", tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx").read_bytes() == Path(packaged.onnx_path).read_bytes()
    store.get_file(f"{uri}triton/churn/1/model.onnx", tmp_path / "triton.onnx")
    assert (tmp_path / "triton.onnx").read_bytes() == Path(packaged.onnx_path).read_bytes()


def test_publish_refuses_to_overwrite_a_version(
    packaged: PackageResult, store: ObjectStore, bucket: str
) -> None:
    root = f"s3://{bucket}"
    publish_model(packaged.output_dir, root, "churn", "v7", store, blessed=True, accepted=True)
    before = {o.uri.key: o.etag for o in store.list_objects(S3Uri(bucket, "churn/v7/"))}
    with pytest.raises(VersionExistsError) as info:
        publish_model(packaged.output_dir, root, "churn", "v7", store, blessed=True, accepted=True)
    assert f"s3://{bucket}/churn/v7/" in str(info.value)
    assert info.value.field == "version"
    after = {o.uri.key: o.etag for o in store.list_objects(S3Uri(bucket, "churn/v7/"))}
    assert after == before


@pytest.mark.parametrize(("blessed", "accepted"), [(False, True), (True, False), (False, False)])
def test_publish_skips_unblessed_or_unaccepted_models(
    packaged: PackageResult, store: ObjectStore, bucket: str, blessed: bool, accepted: bool
) -> None:
    uri = publish_model(
        packaged.output_dir,
        f"s3://{bucket}",
        "churn",
        "v1",
        store,
        blessed=blessed,
        accepted=accepted,
    )
    assert uri == ""
    assert list(store.list_objects(S3Uri(bucket, ""))) == []


@pytest.mark.parametrize(
    ("name", "version", "field"),
    [("Churn Model", "v1", "model_name"), ("churn", "../v1", "version"), ("churn", "", "version")],
)
def test_publish_validates_name_and_version(
    packaged: PackageResult, store: ObjectStore, bucket: str, name: str, version: str, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        publish_model(
            packaged.output_dir, f"s3://{bucket}", name, version, store, blessed=True, accepted=True
        )
    assert info.value.field == field
    assert list(store.list_objects(S3Uri(bucket, ""))) == []
