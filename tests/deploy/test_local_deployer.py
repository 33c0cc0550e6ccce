"""The local deployer against a REAL ``kfloop serve`` (serving env) and a REAL SeaweedFS.

v1 serves; ``deploy_version`` has the predictor load v2 (another model: other predictions),
checks the probe row's answer equals ONNX Runtime's on v2's ``model.onnx``, then moves the
production pointer. A version the predictor cannot load, a predictor that does not answer
and a wrong admin token each fail with an error naming the URL and the HTTP status, and leave
the pointer where it was.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from kfloop.core.errors import ConfigError
from kfloop.core.objectstore import ObjectStore
from kfloop.deploy.local import (
    ServingError,
    check_serving,
    deploy_version,
    load_version,
    probe_request,
    probe_row,
    reference_prediction,
    render_report,
)
from kfloop.deploy.registry import promote, read_production
from kfloop.local.process import free_port
from tests.deploy.conftest import ADMIN_TOKEN, MODEL_NAME, Predictor, publish


def infer(server: Predictor, metadata: dict) -> float:
    body = json.dumps(probe_request(metadata, probe_row(metadata))).encode()
    request = urllib.request.Request(
        f"{server.url}/v2/models/{MODEL_NAME}/infer",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return float(json.loads(response.read())["outputs"][0]["data"][0])


def meta(package: Path) -> dict:
    return json.loads((package / "metadata.json").read_text(encoding="utf-8"))


@pytest.fixture
def root(bucket: str) -> str:
    return f"s3://{bucket}"


@pytest.fixture
def two_versions(
    store: ObjectStore, root: str, built_model: Path, second_package: Path
) -> tuple[str, str]:
    v1 = publish(store, built_model, root, MODEL_NAME, "v1")
    v2 = publish(store, second_package, root, MODEL_NAME, "v2")
    promote(store, root, MODEL_NAME, "v1", v1, reason="initial")
    return v1, v2


def test_the_two_versions_predict_differently(built_model: Path, second_package: Path) -> None:
    m1, m2 = meta(built_model), meta(second_package)
    row = probe_row(m1)
    assert (
        abs(
            reference_prediction(built_model / "model.onnx", m1, row)
            - reference_prediction(second_package / "model.onnx", m2, row)
        )
        > 1e-3
    )


def test_deploy_loads_v2_checks_it_serves_then_moves_the_pointer(
    store: ObjectStore,
    root: str,
    two_versions: tuple[str, str],
    second_package: Path,
    serve: Callable[[str], Predictor],
) -> None:
    v1, v2 = two_versions
    server = serve(v1)
    deployment = deploy_version(
        store,
        root,
        MODEL_NAME,
        v2,
        target="local",
        serving_url=server.url + "/",
        token=ADMIN_TOKEN,
        reason="test",
        retry_delay=0.2,
    )
    assert deployment.deployed and deployment.pointer_moved
    assert (deployment.version, deployment.previous_version, deployment.previous_uri) == (
        "v2",
        "v1",
        v1,
    )
    pointer = read_production(store, root, MODEL_NAME)
    assert pointer is not None and (pointer.version, pointer.uri) == ("v2", v2)
    # The predictor answers with v2's model, as ONNX Runtime computes it.
    m2 = meta(second_package)
    want = reference_prediction(second_package / "model.onnx", m2, probe_row(m2))
    assert abs(infer(server, m2) - want) <= 1e-4
    assert any("ONNX Runtime on version v2" in c for c in deployment.checks)
    report = render_report(deployment, serving_url=server.url)
    assert "`v2`" in report and "rollback target" in report and "`v1`" in report
    assert ADMIN_TOKEN not in report
    assert ADMIN_TOKEN not in server.log()


def test_a_version_the_predictor_cannot_load_leaves_production_unchanged(
    store: ObjectStore,
    root: str,
    two_versions: tuple[str, str],
    built_model: Path,
    serve: Callable[[str], Predictor],
) -> None:
    v1, _ = two_versions
    broken = publish(store, built_model, root, MODEL_NAME, "v3")
    store.put_bytes(b"not an onnx graph", f"{broken}model.onnx")  # sha256 no longer matches
    server = serve(v1)
    before = read_production(store, root, MODEL_NAME)
    with pytest.raises(ServingError) as info:
        deploy_version(
            store,
            root,
            MODEL_NAME,
            broken,
            target="local",
            serving_url=server.url,
            token=ADMIN_TOKEN,
            retry_delay=0.2,
        )
    error = info.value
    assert error.status == 400
    assert server.url in str(error) and "HTTP 400" in str(error)
    assert "SHA-256" in str(error)  # the predictor's own reason, passed on
    assert read_production(store, root, MODEL_NAME) == before
    # v1 keeps serving.
    m1 = meta(built_model)
    want = reference_prediction(built_model / "model.onnx", m1, probe_row(m1))
    assert abs(infer(server, m1) - want) <= 1e-4


def test_a_predictor_that_does_not_answer_leaves_production_unchanged(
    store: ObjectStore, root: str, two_versions: tuple[str, str]
) -> None:
    _, v2 = two_versions
    dead = f"http://127.0.0.1:{free_port()}"
    before = read_production(store, root, MODEL_NAME)
    with pytest.raises(ServingError) as info:
        deploy_version(
            store,
            root,
            MODEL_NAME,
            v2,
            target="local",
            serving_url=dead,
            token=ADMIN_TOKEN,
            retry_delay=0.05,
        )
    assert info.value.status == 0
    assert dead in str(info.value) and "did not answer" in str(info.value)
    assert read_production(store, root, MODEL_NAME) == before


def test_a_wrong_admin_token_is_refused_and_never_shown(
    store: ObjectStore,
    root: str,
    two_versions: tuple[str, str],
    serve: Callable[[str], Predictor],
) -> None:
    v1, v2 = two_versions
    server = serve(v1)
    wrong = "wrong-token-5d1e"
    status = urllib.request.Request(
        f"{server.url}/v2/repository/models/{MODEL_NAME}/load",
        data=json.dumps({"parameters": {"uri": v1}}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {wrong}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(status, timeout=120) as response:
            enforced = response.status != 200
    except urllib.error.HTTPError as exc:
        enforced = exc.code in (401, 403)
    if not enforced:
        pytest.skip("this kfloop serve does not check KFLOOP_SERVING_ADMIN_TOKEN yet")
    before = read_production(store, root, MODEL_NAME)
    with pytest.raises(ServingError) as info:
        deploy_version(
            store, root, MODEL_NAME, v2, target="local", serving_url=server.url, token=wrong
        )
    assert info.value.status in (401, 403)
    assert "KFLOOP_SERVING_ADMIN_TOKEN" in str(info.value)
    assert wrong not in str(info.value)
    assert read_production(store, root, MODEL_NAME) == before
    with pytest.raises(ServingError) as info:
        load_version(server.url, MODEL_NAME, v2, token="")
    assert info.value.status in (401, 403) and "no admin token was sent" in str(info.value)


def test_check_serving_sees_that_another_version_serves(
    store: ObjectStore,
    root: str,
    two_versions: tuple[str, str],
    second_package: Path,
    serve: Callable[[str], Predictor],
) -> None:
    v1, _ = two_versions
    server = serve(v1)  # v1 serves; check for v2
    m2 = meta(second_package)
    row = probe_row(m2)
    expected = reference_prediction(second_package / "model.onnx", m2, row)
    with pytest.raises(ServingError, match="another version is serving") as info:
        check_serving(server.url, MODEL_NAME, m2, expected=expected, attempts=2, retry_delay=0.1)
    assert f"{server.url}/v2/models/{MODEL_NAME}/infer" in str(info.value)
    with pytest.raises(ServingError, match="not ready") as info:
        check_serving(server.url, "no-such-model", m2, attempts=1)
    assert info.value.status == 404


def test_load_version_alone_swaps_the_served_model(
    store: ObjectStore,
    root: str,
    two_versions: tuple[str, str],
    built_model: Path,
    second_package: Path,
    serve: Callable[[str], Predictor],
) -> None:
    """The functions the demo calls, outside KFP: load, then check; no pointer involved."""
    v1, v2 = two_versions
    server = serve(v1)
    answer = load_version(server.url, MODEL_NAME, v2, ADMIN_TOKEN)
    assert answer == {"name": MODEL_NAME, "load": True}
    m2 = meta(second_package)
    row = probe_row(m2)
    result = check_serving(
        server.url,
        MODEL_NAME,
        m2,
        expected=reference_prediction(second_package / "model.onnx", m2, row),
    )
    assert result.version == "v2" and result.attempts >= 1 and len(result.checks) == 3
    assert read_production(store, root, MODEL_NAME).version == "v1"  # type: ignore[union-attr]


def test_pointer_only_targets_and_bad_arguments(
    store: ObjectStore, root: str, two_versions: tuple[str, str]
) -> None:
    v1, v2 = two_versions
    none = deploy_version(store, root, MODEL_NAME, v2, target="none")
    assert none.pointer_moved and none.previous_version == "v1"
    assert any("only the production pointer" in n for n in none.notes)
    local = deploy_version(store, root, MODEL_NAME, v1, target="local")
    assert local.pointer_moved and local.previous_version == "v2"
    assert any("no serving_url" in n for n in local.notes)
    again = deploy_version(store, root, MODEL_NAME, v1, target="none")
    assert any("already the production version" in n for n in again.notes)
    assert again.previous_version == "v2"  # still the rollback target
    assert len(read_production(store, root, MODEL_NAME).history) == 3  # type: ignore[union-attr]
    for kwargs, field in (
        ({"target": "k8s"}, "target"),
        ({"target": "local", "serving_url": "127.0.0.1:8080"}, "serving_url"),
        ({"target": "local", "canary_percent": 10}, "canary_percent"),
        ({"target": "kserve", "canary_percent": 101}, "canary_percent"),
        ({"target": "kserve"}, "namespace"),
    ):
        with pytest.raises(ConfigError) as info:
            deploy_version(store, root, MODEL_NAME, v2, **kwargs)  # type: ignore[arg-type]
        assert info.value.field == field, kwargs
    with pytest.raises(ConfigError) as info:
        deploy_version(store, root, "fraud", v2, target="none")
    assert info.value.field == "model_uri" and "fraud" in str(info.value)
    with pytest.raises(ConfigError) as info:
        deploy_version(store, root, MODEL_NAME, f"{root}/{MODEL_NAME}/v9/", target="none")
    assert info.value.field == "model_uri" and "not a published model version" in str(info.value)
    assert read_production(store, root, MODEL_NAME).version == "v1"  # type: ignore[union-attr]


class FakeApiServer:
    """The one faked part: a Kubernetes API server holding InferenceServices in a dict.

    ``api`` is an autospec ``ApiClient`` whose ``call_api`` stores what a server-side apply
    sends and answers reads with it, ``Ready`` (or raises ``refuse`` when set).
    """

    def __init__(self) -> None:
        from unittest import mock

        from kubernetes.client import ApiClient

        self.objects: dict[str, dict] = {}
        self.refuse: Exception | None = None
        self.api = mock.create_autospec(ApiClient, instance=True)
        self.api.call_api.side_effect = self._call

    def _call(self, path: str, method: str, **kwargs: object) -> dict:
        if self.refuse is not None:
            raise self.refuse
        if method == "PATCH":
            body = json.loads(json.dumps(kwargs["body"]))
            body["metadata"]["generation"] = 1
            self.objects[path] = body
        live = json.loads(json.dumps(self.objects[path]))
        live["status"] = {
            "observedGeneration": 1,
            "url": f"http://{live['metadata']['name']}.example",
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        return live


def test_kserve_target_applies_the_version_then_moves_the_pointer(
    store: ObjectStore, root: str, two_versions: tuple[str, str]
) -> None:
    from kubernetes.client.exceptions import ApiException

    from kfloop.deploy.kube import KubernetesError

    _, v2 = two_versions
    cluster = FakeApiServer()
    options = {"api": cluster.api, "poll_interval": 0.01, "timeout": 5.0}
    canary = deploy_version(
        store,
        root,
        MODEL_NAME,
        v2,
        target="kserve",
        namespace="ml",
        canary_percent=10,
        kserve_options=options,
    )
    (applied,) = cluster.objects.values()
    assert v2.rstrip("/") in json.dumps(applied)
    assert applied["spec"]["predictor"].get("canaryTrafficPercent") == 10
    assert not canary.pointer_moved and any("canary" in n for n in canary.notes)
    assert read_production(store, root, MODEL_NAME).version == "v1"  # type: ignore[union-attr]

    full = deploy_version(
        store, root, MODEL_NAME, v2, target="kserve", namespace="ml", kserve_options=options
    )
    assert full.pointer_moved and full.previous_version == "v1"
    assert any("InferenceService ml/" in c and "Ready" in c for c in full.checks)
    assert read_production(store, root, MODEL_NAME).version == "v2"  # type: ignore[union-attr]

    cluster.refuse = ApiException(status=403, reason="Forbidden")
    v1 = f"{root}/{MODEL_NAME}/v1/"
    with pytest.raises(KubernetesError, match="403"):
        deploy_version(
            store, root, MODEL_NAME, v1, target="kserve", namespace="ml", kserve_options=options
        )
    assert read_production(store, root, MODEL_NAME).version == "v2"  # type: ignore[union-attr]
