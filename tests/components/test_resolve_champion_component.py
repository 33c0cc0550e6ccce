"""resolve_champion against a real SeaweedFS: with and without a production version.

The library function (:func:`kfloop.deploy.champion.resolve_champion`) is tested directly for
each case, and the component once under kfp.local (with an importer for the reference).
"""

import json
import random
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Model

from components.resolve_champion.component import resolve_champion
from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from kfloop.deploy.champion import NO_CHAMPION_FILE, STATISTICS_FILE
from kfloop.deploy.champion import resolve_champion as resolve
from kfloop.deploy.registry import promote
from kfloop.model.evaluate import is_no_baseline

STATS = b"\x00fake-tfrecord-statistics"  # copied byte for byte; never parsed on this path


def _name(prefix: str) -> str:
    return f"{prefix}-{random.randrange(16**6):06x}"


def _reference(tmp_path: Path) -> Path:
    path = tmp_path / "reference.parquet"
    pq.write_table(
        pa.table({"x": [float(i % 7) for i in range(60)], "c": ["a", "b", "c"] * 20}), path
    )
    return path


def _publish(store: ObjectStore, root: str, model: str, version: str, stats: bool) -> str:
    uri = f"{root}/{model}/{version}/"
    store.put_bytes(b"onnx-bytes", f"{uri}model.onnx")
    if stats:
        store.put_bytes(STATS, f"{uri}{STATISTICS_FILE}")
    store.put_bytes(json.dumps({"version": version}).encode(), f"{uri}metadata.json")
    promote(store, root, model, version, uri)
    return uri


def test_champion_with_statistics_is_downloaded(
    store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    root = f"s3://{bucket}"
    uri = _publish(store, root, "churn", "v3", stats=True)
    found = resolve(store, root, "churn", tmp_path / "champion", tmp_path / "stats")
    assert found.present and found.version == "v3" and found.uri == uri
    assert found.statistics_source == "champion" and found.reason == ""
    assert (tmp_path / "champion" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert (tmp_path / "stats").read_bytes() == STATS
    assert not is_no_baseline(tmp_path / "champion")
    assert found.files == 3
    assert json.loads((tmp_path / "champion" / "CHAMPION.json").read_text())["version"] == "v3"


def test_no_production_version_writes_the_marker_and_reference_statistics(
    store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    from kfloop.data.validate import load_statistics

    found = resolve(
        store,
        f"s3://{bucket}",
        "churn",
        tmp_path / "champion",
        tmp_path / "stats",
        reference_dataset=_reference(tmp_path),
    )
    assert not found.present and found.version == ""
    assert found.statistics_source == "reference_dataset"
    assert "no production version" in found.reason
    assert json.loads((tmp_path / "champion" / NO_CHAMPION_FILE).read_text())["champion"] is False
    assert is_no_baseline(tmp_path / "champion")
    stats = load_statistics(str(tmp_path / "stats"))
    assert stats.datasets[0].num_examples == 60


def test_champion_without_statistics_needs_a_reference(
    store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    root = f"s3://{bucket}"
    _publish(store, root, "churn", "v1", stats=False)
    with pytest.raises(ConfigError) as info:
        resolve(store, root, "churn", tmp_path / "champion", tmp_path / "stats")
    assert info.value.field == "reference_dataset"
    assert "published without training statistics" in str(info.value)
    assert not (tmp_path / "stats").exists()


def test_pointer_to_an_incomplete_version_is_an_error(
    store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    root = f"s3://{bucket}"
    uri = _publish(store, root, "churn", "v2", stats=True)
    store.delete(f"{uri}model.onnx")  # the pointer now names a broken version
    with pytest.raises(DataError, match="no model.onnx"):
        resolve(store, root, "churn", tmp_path / "champion", tmp_path / "stats")
    assert not (tmp_path / "champion").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".champion")]


def test_bad_pointer_is_an_error(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    store.put_bytes(b"{not json", f"s3://{bucket}/churn/production.json")
    with pytest.raises(DataError, match="production.json: not JSON"):
        resolve(store, f"s3://{bucket}", "churn", tmp_path / "c", tmp_path / "s")


class Resolved(NamedTuple):
    champion: Model
    statistics: Artifact
    version: str


@dsl.pipeline(name="resolve-champion-test")
def resolve_pipeline(reference_uri: str, model_name: str) -> Resolved:
    reference = dsl.importer(artifact_uri=reference_uri, artifact_class=Dataset, reimport=False)
    task = resolve_champion(reference=reference.output, model_name=model_name)
    return Resolved(task.outputs["champion"], task.outputs["statistics"], task.outputs["Output"])


def test_component_outputs_the_champion(
    kfp_local: Path, settings: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    model = _name("champ")
    _publish(store, f"s3://{settings.models_bucket}", model, "v7", stats=True)
    outputs = resolve_pipeline(reference_uri=str(_reference(tmp_path)), model_name=model).outputs
    assert outputs["version"] == "v7"
    champion = outputs["champion"]
    assert Path(champion.path, "model.onnx").read_bytes() == b"onnx-bytes"
    assert champion.metadata["present"] is True and champion.metadata["version"] == "v7"
    assert Path(outputs["statistics"].path).read_bytes() == STATS
    assert outputs["statistics"].metadata["source"] == "champion"


def test_published_statistics_round_trip(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    """publish_model uploads the training statistics; resolve_champion hands them back."""
    from kfloop.model.package import publish_model

    package = tmp_path / "package"
    package.mkdir()
    (package / "model.onnx").write_bytes(b"onnx-bytes")
    (package / "metadata.json").write_text("{}")
    stats_dir = tmp_path / "validate-stats"
    stats_dir.mkdir()
    (stats_dir / STATISTICS_FILE).write_bytes(STATS)
    root = f"s3://{bucket}"
    with pytest.raises(ConfigError) as info:
        publish_model(
            package,
            root,
            "churn",
            "v1",
            store,
            blessed=True,
            accepted=True,
            statistics_path=tmp_path / "missing",
        )
    assert info.value.field == "statistics"
    assert not list(store.list_objects(f"{root}/churn/"))
    uri = publish_model(
        package, root, "churn", "v1", store, blessed=True, accepted=True, statistics_path=stats_dir
    )
    assert store.get_bytes(f"{uri}{STATISTICS_FILE}") == STATS
    promote(store, root, "churn", "v1", uri)
    found = resolve(store, root, "churn", tmp_path / "champion", tmp_path / "stats")
    assert found.statistics_source == "champion"
    assert (tmp_path / "stats").read_bytes() == STATS
