"""The deploy_model component under kfp.local: skips visibly, moves the pointer, loads locally.

Versions are published into the session's SeaweedFS models bucket. The ``local`` target with
a serving URL runs against a REAL ``kfloop serve`` (serving env) and a REAL packaged model.
"""

import json
import random
from pathlib import Path
from typing import NamedTuple

import pytest
from kfp import dsl
from kfp.dsl import Artifact, Markdown

from components.deploy_model.component import deploy_model
from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from kfloop.deploy.local import probe_row, reference_prediction
from kfloop.deploy.registry import pointer_uri, read_production
from tests.deploy.conftest import (
    MODEL_NAME,
    build_model,
    make_second_package,
    predictor_env,
    publish,
    start_predictor,
)


class Deployed(NamedTuple):
    report: Markdown
    uri: str


@dsl.pipeline(name="deploy-gate")
def deploy(
    model_uri: str,
    blessing_uri: str,
    acceptance_uri: str,
    model_name: str,
    target: str = "none",
    serving_url: str = "",
) -> Deployed:
    blessing = dsl.importer(artifact_uri=blessing_uri, artifact_class=Artifact, reimport=False)
    acceptance = dsl.importer(artifact_uri=acceptance_uri, artifact_class=Artifact, reimport=False)
    task = deploy_model(
        model_uri=model_uri,
        blessing=blessing.output,
        acceptance=acceptance.output,
        model_name=model_name,
        target=target,
        serving_url=serving_url,
    )
    return Deployed(task.outputs["report"], task.outputs["Output"])


@dsl.pipeline(name="deploy-no-gates")
def deploy_without_gates(model_uri: str, model_name: str) -> Deployed:
    task = deploy_model(model_uri=model_uri, model_name=model_name, target="none")
    return Deployed(task.outputs["report"], task.outputs["Output"])


def gates(tmp_path: Path, blessed: bool = True, passed: bool = True) -> dict[str, str]:
    b, a = tmp_path / "blessing.json", tmp_path / "acceptance.json"
    b.write_text(json.dumps({"blessed": blessed, "reasons": [] if blessed else ["auc 0.61"]}))
    a.write_text(json.dumps({"passed": passed, "reasons": [] if passed else ["p95 9 ms"]}))
    return {"blessing_uri": str(b), "acceptance_uri": str(a)}


def fake_version(store: ObjectStore, settings: Settings, model: str, version: str) -> str:
    """A published version as far as the pointer is concerned (metadata.json last)."""
    uri = f"s3://{settings.models_bucket}/{model}/{version}/"
    store.ensure_bucket(settings.models_bucket)
    store.put_bytes(b"onnx", f"{uri}model.onnx")
    store.put_bytes(json.dumps({"version": version}).encode(), f"{uri}metadata.json")
    return uri


def unique_model() -> str:
    return f"dep-{random.randrange(16**6):06x}"


def report_of(run: dsl.PipelineTask) -> str:
    return Path(run.outputs["report"].path).read_text(encoding="utf-8")


def test_blessed_version_becomes_production_and_the_report_names_the_rollback_target(
    kfp_local: Path, tmp_path: Path, settings: Settings, store: ObjectStore
) -> None:
    model = unique_model()
    root = f"s3://{settings.models_bucket}"
    v1, v2 = (fake_version(store, settings, model, v) for v in ("v1", "v2"))
    first = deploy(model_uri=v1, model_name=model, **gates(tmp_path))
    assert first.outputs["uri"] == v1
    assert "none: first deployment" in report_of(first)
    second = deploy(model_uri=v2, model_name=model, **gates(tmp_path))
    assert second.outputs["uri"] == v2
    report = report_of(second)
    assert "# Deployed" in report and "`v2`" in report
    assert f"`v1` (`{v1}`)" in report  # the rollback target
    assert "only the production pointer moved" in report
    assert second.outputs["report"].metadata["previous_version"] == "v1"
    pointer = read_production(store, root, model)
    assert pointer is not None and (pointer.version, pointer.uri) == ("v2", v2)
    assert pointer.previous is not None and pointer.previous["version"] == "v1"


@pytest.mark.parametrize(
    ("published", "blessed", "passed", "reason"),
    [
        (False, True, True, "publish_model published nothing"),
        (True, False, True, "not blessed by evaluation: auc 0.61"),
        (True, True, False, "acceptance test failed: p95 9 ms"),
    ],
)
def test_nothing_published_or_not_blessed_or_not_accepted_is_a_visible_skip(
    kfp_local: Path,
    tmp_path: Path,
    settings: Settings,
    store: ObjectStore,
    published: bool,
    blessed: bool,
    passed: bool,
    reason: str,
) -> None:
    model = unique_model()
    uri = fake_version(store, settings, model, "v1") if published else ""
    run = deploy(model_uri=uri, model_name=model, **gates(tmp_path, blessed, passed))
    assert run.outputs["uri"] == ""
    report = report_of(run)
    assert "# Not deployed" in report and reason in report
    assert "Production is unchanged" in report
    assert run.outputs["report"].metadata["deployed"] is False
    assert not store.exists(pointer_uri(f"s3://{settings.models_bucket}", model))


def test_missing_gates_mean_not_deployed(
    kfp_local: Path, settings: Settings, store: ObjectStore
) -> None:
    model = unique_model()
    run = deploy_without_gates(
        model_uri=fake_version(store, settings, model, "v1"), model_name=model
    )
    assert run.outputs["uri"] == ""
    assert "no blessing" in report_of(run) and "no acceptance" in report_of(run)
    assert read_production(store, f"s3://{settings.models_bucket}", model) is None


def test_local_target_without_a_serving_url_moves_the_pointer_only_and_says_so(
    kfp_local: Path, tmp_path: Path, settings: Settings, store: ObjectStore
) -> None:
    model = unique_model()
    v1 = fake_version(store, settings, model, "v1")
    run = deploy(model_uri=v1, model_name=model, target="local", **gates(tmp_path))
    assert run.outputs["uri"] == v1
    assert "no serving_url: only the production pointer moved" in report_of(run)
    pointer = read_production(store, f"s3://{settings.models_bucket}", model)
    assert pointer is not None and pointer.version == "v1"


@pytest.mark.parametrize(
    ("target", "serving_url", "field"),
    [("k8s", "", "target"), ("local", "localhost:8080", "serving_url")],
)
def test_a_bad_target_or_url_fails_the_step_naming_it(
    kfp_local: Path,
    tmp_path: Path,
    settings: Settings,
    store: ObjectStore,
    capfd: pytest.CaptureFixture[str],
    target: str,
    serving_url: str,
    field: str,
) -> None:
    model = unique_model()
    v1 = fake_version(store, settings, model, "v1")
    with pytest.raises(RuntimeError):
        deploy(
            model_uri=v1,
            model_name=model,
            target=target,
            serving_url=serving_url,
            **gates(tmp_path),
        )
    logs = capfd.readouterr()
    assert f"ConfigError: {field}: " in logs.out + logs.err
    assert read_production(store, f"s3://{settings.models_bucket}", model) is None


def test_local_target_loads_the_version_into_a_running_predictor(
    kfp_local: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    settings: Settings,
    store: ObjectStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole local path: kfloop serve runs v1; the component deploys v2 into it."""
    v1_package = build_model(tmp_path_factory)
    v2_package = make_second_package(v1_package, tmp_path / "v2")
    root = f"s3://{settings.models_bucket}"
    store.ensure_bucket(settings.models_bucket)
    model = MODEL_NAME + f"-{random.randrange(16**6):06x}"
    v1 = publish(store, v1_package, root, model, "v1")
    v2 = publish(store, v2_package, root, model, "v2")
    env = predictor_env(settings)
    server = start_predictor(v1, tmp_path / "serve.log", env, model_name=model)
    monkeypatch.setenv("KFLOOP_SERVING_ADMIN_TOKEN", env["KFLOOP_SERVING_ADMIN_TOKEN"])
    try:
        run = deploy(
            model_uri=v2,
            model_name=model,
            target="local",
            serving_url=server.url,
            **gates(tmp_path),
        )
        report = report_of(run)
        assert run.outputs["uri"] == v2
        assert "ONNX Runtime on version v2" in report
        assert env["KFLOOP_SERVING_ADMIN_TOKEN"] not in report
        pointer = read_production(store, root, model)
        assert pointer is not None and pointer.version == "v2"
        # The predictor now answers with v2's model.
        meta = json.loads((v2_package / "metadata.json").read_text(encoding="utf-8"))
        want = reference_prediction(v2_package / "model.onnx", meta, probe_row(meta))
        assert f"({want:.6g})" in report
    finally:
        server.stop()
