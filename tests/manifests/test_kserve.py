"""kfloop.deploy.kserve: the InferenceService builder and deploy_inference_service.

Only the Kubernetes API is faked: an autospec'd kubernetes.client.ApiClient whose call_api
plays a tiny API server (it stores what is applied and reports a status).
"""

from __future__ import annotations

import copy
from typing import Any
from unittest import mock

import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from kfloop.core.errors import ConfigError
from kfloop.core.images import SERVING_IMAGE
from kfloop.deploy import kube
from kfloop.deploy.kserve import (
    deploy_inference_service,
    inference_service,
    logger_url,
    s3_secret_annotations,
    triton_repository_uri,
    with_canary_percent,
)

URI = "s3://kfloop-models/churn/v2/"
PATH = "/apis/serving.kserve.io/v1beta1/namespaces/team-a/inferenceservices/churn"


class FakeServer:
    """What the API server would answer: the applied object, then a status per GET."""

    def __init__(self, statuses: list[dict[str, Any]], apply_error: Exception | None = None):
        self.statuses = statuses
        self.apply_error = apply_error
        self.stored: dict[str, Any] | None = None
        self.gets = 0

    def __call__(self, path: str, method: str, **kwargs: Any) -> dict[str, Any]:
        assert path == PATH
        if method == "PATCH":
            if self.apply_error:
                raise self.apply_error
            assert kwargs["header_params"]["Content-Type"] == "application/apply-patch+yaml"
            assert dict(kwargs["query_params"]) == {"fieldManager": "kfloop", "force": True}
            self.stored = copy.deepcopy(kwargs["body"])
            self.stored["metadata"]["generation"] = 2
            return copy.deepcopy(self.stored)
        assert method == "GET"
        if self.stored is None:
            raise ApiException(status=404, reason="Not Found")
        status = self.statuses[min(self.gets, len(self.statuses) - 1)]
        self.gets += 1
        return {**copy.deepcopy(self.stored), "status": status}


def fake_api(server: FakeServer) -> Any:
    api = mock.create_autospec(ApiClient, instance=True)
    api.call_api.side_effect = server
    return api


READY = {
    "observedGeneration": 2,
    "url": "http://churn.team-a.example.com",
    "conditions": [{"type": "Ready", "status": "True"}],
}
NOT_READY = {
    "observedGeneration": 2,
    "conditions": [
        {
            "type": "Ready",
            "status": "False",
            "reason": "RevisionMissing",
            "message": "Revision churn-predictor-00002 failed: ImagePullBackOff",
        }
    ],
}


# -- builder ------------------------------------------------------------------------------


def test_kfloop_runtime_serves_the_storage_uri_with_the_serving_image() -> None:
    isvc = inference_service("churn", URI, "v2", namespace="team-a", canary_percent=10)
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["image"] == SERVING_IMAGE
    assert container["name"] == "kserve-container"
    assert container["args"][:3] == ["serve", "--host=0.0.0.0", "--model-uri=/mnt/models"]
    assert {"name": "STORAGE_URI", "value": URI} in container["env"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["serviceAccountName"] == "kfloop-predictor"
    assert predictor["logger"] == {
        "mode": "all",
        "url": "http://kfloop-logger.team-a.svc.cluster.local",
    }
    assert isvc["metadata"]["labels"]["kfloop.io/model"] == "churn"
    assert isvc["metadata"]["annotations"]["kfloop.io/model-version"] == "v2"
    # No credential anywhere in the object.
    assert "AWS" not in repr(isvc)


def test_triton_runtime_uses_the_onnx_model_format() -> None:
    isvc = inference_service("churn", URI, "v2", namespace="team-a", runtime="triton")
    assert "containers" not in isvc["spec"]["predictor"]
    assert isvc["spec"]["predictor"]["model"] == {
        "modelFormat": {"name": "onnx"},
        "protocolVersion": "v2",
        "runtime": "kserve-tritonserver",
        "storageUri": URI,
        "resources": isvc["spec"]["predictor"]["model"]["resources"],
    }


def test_full_rollout_has_no_canary_field_and_logger_can_be_off() -> None:
    for percent in (0, 100):
        isvc = inference_service("churn", URI, "v2", namespace="a", canary_percent=percent)
        assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    isvc = inference_service("churn", URI, "v2", namespace="a", logger=None)
    assert "logger" not in isvc["spec"]["predictor"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model_name": "Churn"}, "model_name"),
        ({"model_name": "x" * 46}, "model_name"),
        ({"name": "bad_name"}, "name"),
        ({"storage_uri": "/local/path"}, "storage_uri"),
        ({"storage_uri": "gs://bucket/x"}, "storage_uri"),
        ({"version": "../v1"}, "version"),
        ({"version": ""}, "version"),
        ({"namespace": "Team A"}, "namespace"),
        ({"runtime": "torchserve"}, "runtime"),
        ({"canary_percent": 101}, "canary_percent"),
        ({"canary_percent": True}, "canary_percent"),
        ({"logger_mode": "everything"}, "logger_mode"),
        ({"min_replicas": -1}, "min_replicas"),
        ({"min_replicas": 4, "max_replicas": 3}, "max_replicas"),
        ({"resources": {"requests": {"cpu": 1}, "limit": {}}}, "resources"),
        ({"resources": {"requests": ["cpu"]}}, "resources.requests"),
        ({"image": "has space:1"}, "image"),
        ({"service_account": "Bad"}, "service_account"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    args = {"model_name": "churn", "storage_uri": URI, "version": "v2", "namespace": "team-a"}
    args.update(kwargs)
    model_name, storage_uri, version = (
        args.pop("model_name"),
        args.pop("storage_uri"),
        args.pop("version"),
    )
    with pytest.raises(ConfigError) as info:
        inference_service(model_name, storage_uri, version, **args)
    assert info.value.field == field


def test_helpers() -> None:
    assert logger_url("x") == "http://kfloop-logger.x.svc.cluster.local"
    assert s3_secret_annotations("seaweedfs.kubeflow:8333", use_https=False) == {
        "serving.kserve.io/s3-endpoint": "seaweedfs.kubeflow:8333",
        "serving.kserve.io/s3-usehttps": "0",
        "serving.kserve.io/s3-verifyssl": "1",
        "serving.kserve.io/s3-region": "us-east-1",
    }
    with pytest.raises(ConfigError, match="endpoint"):
        s3_secret_annotations("http://seaweedfs:8333", use_https=False)
    isvc = inference_service("churn", URI, "v2", namespace="a", canary_percent=10)
    promoted = with_canary_percent(isvc, 100)
    assert promoted["spec"]["predictor"]["canaryTrafficPercent"] == 100
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10  # a copy
    assert "canaryTrafficPercent" not in with_canary_percent(isvc, None)["spec"]["predictor"]
    with pytest.raises(ConfigError):
        with_canary_percent(isvc, 150)


# -- deploy_inference_service --------------------------------------------------------------


def test_deploy_applies_the_built_object_and_waits_for_ready() -> None:
    server = FakeServer([NOT_READY, NOT_READY, READY])
    api = fake_api(server)
    result = deploy_inference_service(
        "churn", URI, "v2", namespace="team-a", canary_percent=20, api=api, poll_interval=0
    )
    expected = inference_service("churn", URI, "v2", namespace="team-a", canary_percent=20)
    assert server.stored is not None
    sent = {k: v for k, v in server.stored.items()}
    sent["metadata"] = {k: v for k, v in sent["metadata"].items() if k != "generation"}
    assert sent == expected
    assert result == {
        "name": "churn",
        "namespace": "team-a",
        "version": "v2",
        "storage_uri": URI,
        "runtime": "kfloop",
        "canary_percent": 20,
        "url": "http://churn.team-a.example.com",
        "ready": True,
        "applied": expected,
    }
    assert server.gets == 3


def test_triton_deploy_serves_the_repository_publish_model_writes() -> None:
    server = FakeServer([READY])
    result = deploy_inference_service(
        "churn",
        URI,
        "v2",
        namespace="team-a",
        runtime="triton",
        api=fake_api(server),
        poll_interval=0,
    )
    assert server.stored is not None
    model = server.stored["spec"]["predictor"]["model"]
    assert model["storageUri"] == URI.rstrip("/") + "/triton/" == result["storage_uri"]
    assert triton_repository_uri(model["storageUri"]) == model["storageUri"]  # idempotent


def test_ready_for_an_older_generation_is_not_ready() -> None:
    stale = {**READY, "observedGeneration": 1}
    server = FakeServer([stale, READY])
    result = deploy_inference_service(
        "churn", URI, "v2", namespace="team-a", api=fake_api(server), poll_interval=0
    )
    assert result["ready"] is True
    assert server.gets == 2


def test_ready_timeout_names_the_service_and_the_condition() -> None:
    server = FakeServer([NOT_READY])
    with pytest.raises(kube.ReadyTimeout) as info:
        deploy_inference_service(
            "churn",
            URI,
            "v2",
            namespace="team-a",
            api=fake_api(server),
            timeout=0.05,
            poll_interval=0.01,
        )
    message = str(info.value)
    assert "InferenceService team-a/churn was not Ready after 0.05 s" in message
    assert "Ready=False (RevisionMissing): Revision churn-predictor-00002 failed" in message
    assert server.gets >= 2


def test_timeout_without_any_condition_says_so() -> None:
    server = FakeServer([{}])
    with pytest.raises(kube.ReadyTimeout, match="no Ready condition reported yet"):
        deploy_inference_service(
            "churn", URI, "v2", namespace="team-a", api=fake_api(server), timeout=0
        )


def test_refused_apply_names_the_service_and_the_reason() -> None:
    refused = ApiException(status=403, reason="Forbidden")
    refused.body = (
        '{"message": "inferenceservices.serving.kserve.io is forbidden: User cannot patch"}'
    )
    server = FakeServer([READY], apply_error=refused)
    with pytest.raises(kube.KubernetesError) as info:
        deploy_inference_service("churn", URI, "v2", namespace="team-a", api=fake_api(server))
    message = str(info.value)
    assert message.startswith("applying InferenceService team-a/churn failed: HTTP 403 Forbidden")
    assert "User cannot patch" in message
    assert "needs 'patch' and 'get' on inferenceservices.serving.kserve.io" in message
    assert server.stored is None


def test_bad_argument_applies_nothing() -> None:
    server = FakeServer([READY])
    api = fake_api(server)
    with pytest.raises(ConfigError) as info:
        deploy_inference_service("churn", "not-s3", "v2", namespace="team-a", api=api)
    assert info.value.field == "storage_uri"
    assert server.stored is None


def test_no_wait_returns_after_the_apply() -> None:
    server = FakeServer([NOT_READY])
    result = deploy_inference_service(
        "churn", URI, "v2", namespace="team-a", api=fake_api(server), wait=False
    )
    assert result["ready"] is False
    assert server.gets == 0
