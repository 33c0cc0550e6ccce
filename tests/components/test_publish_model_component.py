"""The publish_model gate under kfp.local: publishes only blessed and accepted models."""

import json
import random
from pathlib import Path
from typing import NamedTuple

import pytest
from kfp import dsl
from kfp.dsl import Artifact, Markdown, Model

from components.publish_model.component import publish_model
from kfloop.core.objectstore import ObjectStore, S3Uri
from kfloop.core.settings import Settings
from kfloop.local.process import free_port
from kfloop.model.package import package_onnx
from kfloop.model.train import train_model
from tests.model.model_data import FAST_HP, make_splits


class Published(NamedTuple):
    release: Markdown
    uri: str


@dsl.pipeline(name="publish-gate")
def gate(package_uri: str, blessing_uri: str, acceptance_uri: str, model_name: str) -> Published:
    package = dsl.importer(artifact_uri=package_uri, artifact_class=Model, reimport=False)
    blessing = dsl.importer(artifact_uri=blessing_uri, artifact_class=Artifact, reimport=False)
    acceptance = dsl.importer(artifact_uri=acceptance_uri, artifact_class=Artifact, reimport=False)
    task = publish_model(
        onnx_model=package.output,
        blessing=blessing.output,
        acceptance=acceptance.output,
        model_name=model_name,
    )
    return Published(task.outputs["release"], task.outputs["Output"])


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    splits = make_splits(tmp_path_factory.mktemp("splits"), sizes=(400, 120, 100))
    trained = train_model(
        splits["train"],
        splits["validation"],
        tmp_path_factory.mktemp("models") / "model",
        label="label",
        hyperparameters=FAST_HP,
        epochs=2,
        exclude=["id"],
    )
    out = tmp_path_factory.mktemp("package") / "onnx"
    package_onnx(trained.model_dir, splits["test"], out, model_name="churn", version="v7")
    return out


def gate_file(path: Path, **content: object) -> str:
    path.write_text(json.dumps(content))
    return str(path)


def names(store: ObjectStore, uri: str) -> list[str]:
    """Keys under ``uri``, relative to it."""
    prefix = S3Uri.parse(uri).key
    return sorted(o.uri.key.removeprefix(prefix) for o in store.list_objects(S3Uri.parse(uri)))


def test_blessed_and_accepted_model_is_published(
    kfp_local: Path, tmp_path: Path, packaged: Path, settings: Settings, store: ObjectStore
) -> None:
    name = f"gate-{random.randrange(16**6):06x}"
    run = gate(
        package_uri=str(packaged),
        blessing_uri=gate_file(tmp_path / "b.json", blessed=True, reasons=[]),
        acceptance_uri=gate_file(tmp_path / "a.json", passed=True, reasons=[]),
        model_name=name,
    )
    uri = run.outputs["uri"]
    assert uri == f"s3://{settings.models_bucket}/{name}/v7/"  # the version package_onnx recorded
    assert names(store, uri) == [
        "MODEL_CARD.md",
        "metadata.json",
        "model.onnx",
        "reference_profile.json",
        f"triton/{name}/1/model.onnx",  # the same file as a Triton model repository
    ]
    assert uri in Path(run.outputs["release"].path).read_text()


def test_model_that_failed_acceptance_is_not_published_and_the_report_says_why(
    kfp_local: Path, tmp_path: Path, packaged: Path, settings: Settings, store: ObjectStore
) -> None:
    name = f"gate-{random.randrange(16**6):06x}"
    run = gate(
        package_uri=str(packaged),
        blessing_uri=gate_file(tmp_path / "b.json", blessed=True, reasons=[]),
        acceptance_uri=gate_file(
            tmp_path / "a.json", passed=False, reasons=["latency_ms_p95 9.1 > 5.0"]
        ),
        model_name=name,
    )
    assert run.outputs["uri"] == ""
    report = Path(run.outputs["release"].path).read_text()
    assert "Not published" in report
    assert "latency_ms_p95 9.1 > 5.0" in report
    assert names(store, f"s3://{settings.models_bucket}/{name}/") == []


def test_unreachable_registry_fails_the_step_naming_the_endpoint(
    kfp_local: Path,
    tmp_path: Path,
    packaged: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    settings: Settings,
    store: ObjectStore,
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("S3_ENDPOINT", dead)
    monkeypatch.setenv("KFLOOP_S3_RETRIES", "1")
    name = f"gate-{random.randrange(16**6):06x}"
    with pytest.raises(RuntimeError):
        gate(
            package_uri=str(packaged),
            blessing_uri=gate_file(tmp_path / "b.json", blessed=True, reasons=[]),
            acceptance_uri=gate_file(tmp_path / "a.json", passed=True, reasons=[]),
            model_name=name,
        )
    logs = capfd.readouterr()
    text = logs.out + logs.err
    assert "ObjectStoreUnavailable" in text
    assert f"http://{dead}" in text
    assert settings.secret_key.get() not in text
    assert names(store, f"s3://{settings.models_bucket}/{name}/") == []
