"""The KServe ``InferenceService`` of a published kfloop model, and deploying it.

:func:`inference_service` is the one pure builder of the ``serving.kserve.io/v1beta1``
``InferenceService`` that serves a model version: ``manifests/base/inferenceservice.yaml``
is its output for the default inputs (a test holds them equal), and
:func:`deploy_inference_service` applies it on a cluster. Two predictor runtimes:

``kfloop`` (default)
    The kfloop serving image running ``kfloop serve`` as a custom predictor container
    (``kserve-container``): the same ONNX predictor as the local stack, with signature
    checks, batching and the v1/v2 protocols. KServe's storage initializer copies
    ``storage_uri`` (the ``STORAGE_URI`` variable) to ``/mnt/models`` before it starts.
``triton``
    KServe's Triton runtime (``kserve-tritonserver``) for the plain ONNX model
    (``modelFormat: onnx``, ``protocolVersion: v2``). Triton reads a model *repository*:
    ``storage_uri`` must point at a folder holding ``<model>/1/model.onnx``.
    ``publish_model`` writes one inside every published version, ``<version>/triton/``
    (:func:`triton_repository_uri`); :func:`deploy_inference_service` given a version URI
    points Triton there.

Credentials never appear in the object: the predictor runs as ``service_account``
(default ``kfloop-predictor``), whose Secret ``kfloop-s3`` carries the S3 keys and KServe's
``serving.kserve.io/s3-*`` annotations (``manifests/base/s3-secret.yaml``, see
:func:`s3_secret_annotations`). Every request/response pair goes, through KServe's agent
sidecar (``logger``, mode ``all``), to the kfloop payload logger's Service.

Canary: with ``canary_percent`` between 1 and 99, KServe (serverless mode) routes that share
of traffic to the new revision and the rest to the last one rolled out;
:mod:`kfloop.deploy.canary` then promotes or rolls back.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from typing import Any

from kfloop.core.errors import ConfigError
from kfloop.core.images import SERVING_IMAGE
from kfloop.core.objectstore import S3Uri
from kfloop.deploy import kube

log = logging.getLogger(__name__)

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"

RUNTIME_KFLOOP = "kfloop"
RUNTIME_TRITON = "triton"
RUNTIMES = (RUNTIME_KFLOOP, RUNTIME_TRITON)
TRITON_RUNTIME_NAME = "kserve-tritonserver"
PREDICTOR_CONTAINER = "kserve-container"  # the name KServe requires for the model container
MODEL_MOUNT = "/mnt/models"  # where KServe's storage initializer puts storageUri
HTTP_PORT = 8080
GRPC_PORT = 8081

SERVICE_ACCOUNT = "kfloop-predictor"
S3_SECRET = "kfloop-s3"
LOGGER_SERVICE = "kfloop-logger"
LOGGER_MODES = ("all", "request", "response")

LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MODEL = "kfloop.io/model"
ANNOTATION_VERSION = "kfloop.io/model-version"
ANNOTATION_STORAGE = "kfloop.io/storage-uri"
ANNOTATION_RUNTIME = "kfloop.io/runtime"
# Canary traffic splitting needs KServe's serverless (Knative) mode.
ANNOTATION_DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
ANNOTATION_SCRAPE = "serving.kserve.io/enable-prometheus-scraping"

# KServe's S3 annotations on the storage Secret (read by its credential builder).
S3_ENDPOINT_ANNOTATION = "serving.kserve.io/s3-endpoint"
S3_USE_HTTPS_ANNOTATION = "serving.kserve.io/s3-usehttps"
S3_VERIFY_SSL_ANNOTATION = "serving.kserve.io/s3-verifyssl"
S3_REGION_ANNOTATION = "serving.kserve.io/s3-region"

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "500m", "memory": "512Mi"},
    "limits": {"cpu": "2", "memory": "2Gi"},
}

# A DNS-1035 label; Knative appends "-predictor-00001"-style suffixes, hence 45 characters.
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = 45
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # kfloop.model.package's rule
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _check_name(field: str, value: Any, max_length: int = MAX_NAME_LENGTH) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value) or len(value) > max_length:
        raise ConfigError(
            field,
            f"{value!r} cannot name an InferenceService: use at most {max_length} lower-case "
            "letters, digits and '-', starting with a letter and ending with a letter or digit",
        )
    return value


def _check_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace) or len(namespace) > 63:
        raise ConfigError("namespace", f"{namespace!r} is not a valid Kubernetes namespace")
    return namespace


def logger_url(namespace: str, service: str = LOGGER_SERVICE) -> str:
    """The in-cluster URL of the payload logger's Service (port 80)."""
    return f"http://{service}.{_check_namespace(namespace)}.svc.cluster.local"


def s3_secret_annotations(
    endpoint: str, *, use_https: bool, verify_ssl: bool = True, region: str = "us-east-1"
) -> dict[str, str]:
    """KServe's annotations for the storage Secret (the keys themselves stay in the Secret)."""
    if not endpoint or "://" in endpoint or "/" in endpoint:
        raise ConfigError("endpoint", f"{endpoint!r} is not host:port (no scheme, no path)")
    return {
        S3_ENDPOINT_ANNOTATION: endpoint,
        S3_USE_HTTPS_ANNOTATION: "1" if use_https else "0",
        S3_VERIFY_SSL_ANNOTATION: "1" if verify_ssl else "0",
        S3_REGION_ANNOTATION: region,
    }


def _check_resources(resources: Any) -> dict[str, Any]:
    if not isinstance(resources, Mapping):
        raise ConfigError("resources", f"must be a mapping of requests/limits, got {resources!r}")
    unknown = sorted(set(resources) - {"requests", "limits"})
    if unknown:
        raise ConfigError("resources", f"unknown keys {unknown}; use requests and limits")
    for key, value in resources.items():
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str | int) for k, v in value.items()
        ):
            raise ConfigError(
                f"resources.{key}", f"must map resource names to quantities: {value!r}"
            )
    return {k: {n: str(q) for n, q in v.items()} for k, v in resources.items()}


def inference_service(
    model_name: str,
    storage_uri: str,
    version: str,
    *,
    namespace: str,
    runtime: str = RUNTIME_KFLOOP,
    name: str | None = None,
    image: str = SERVING_IMAGE,
    service_account: str = SERVICE_ACCOUNT,
    logger: str | None = "",
    logger_mode: str = "all",
    canary_percent: int = 0,
    resources: Mapping[str, Any] | None = None,
    min_replicas: int = 1,
    max_replicas: int = 3,
) -> dict[str, Any]:
    """The ``InferenceService`` that serves ``version`` of ``model_name`` from ``storage_uri``.

    Args:
        model_name: The model's name (registry folder, v2 endpoint ``/v2/models/<name>``).
        storage_uri: ``s3://`` folder of the published version (``kfloop``) or of a Triton
            model repository (``triton``).
        version: The published version (annotation ``kfloop.io/model-version``).
        namespace: Kubernetes namespace of the service (and of the logger).
        runtime: ``kfloop`` (the kfloop predictor image) or ``triton`` (KServe's Triton).
        name: The InferenceService's name; default ``model_name``.
        image: The kfloop serving image (``kfloop`` runtime only).
        service_account: The predictor's service account (its Secret holds the S3 keys).
        logger: Payload logger URL; ``""`` for the kfloop logger in ``namespace``,
            ``None`` for no payload logging.
        logger_mode: What the agent sends: ``all``, ``request`` or ``response``.
        canary_percent: 0 (or 100) to roll out fully; 1-99 to send that share of traffic to
            this version and the rest to the version rolled out before it.
        resources: The predictor container's requests/limits (default
            :data:`DEFAULT_RESOURCES`).
        min_replicas: Minimum replicas (0 lets Knative scale to zero).
        max_replicas: Maximum replicas.

    Returns:
        The manifest as a plain dict (``yaml.safe_dump`` works).

    Raises:
        ConfigError: naming the argument with a bad value.
    """
    isvc_name = _check_name("name" if name else "model_name", name or model_name)
    if not isinstance(model_name, str) or not model_name or "/" in model_name:
        raise ConfigError("model_name", f"{model_name!r} is not a model name")
    if not _LABEL_VALUE_RE.match(model_name):
        raise ConfigError("model_name", f"{model_name!r} is not usable as a label value")
    _check_namespace(namespace)
    S3Uri.parse(storage_uri, "storage_uri")
    if not isinstance(version, str) or not _VERSION_RE.match(version) or ".." in version:
        raise ConfigError(
            "version", f"{version!r} is not a model version (letters, digits, '.', '_', '-')"
        )
    if runtime not in RUNTIMES:
        raise ConfigError("runtime", f"unknown runtime {runtime!r}; use one of {RUNTIMES}")
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise ConfigError("image", f"{image!r} is not an image reference")
    _check_name("service_account", service_account, max_length=253)
    if logger_mode not in LOGGER_MODES:
        raise ConfigError("logger_mode", f"{logger_mode!r}; use one of {LOGGER_MODES}")
    if isinstance(canary_percent, bool) or not isinstance(canary_percent, int):
        raise ConfigError("canary_percent", f"must be an integer, got {canary_percent!r}")
    if not 0 <= canary_percent <= 100:
        raise ConfigError("canary_percent", f"{canary_percent} is not a percentage (0-100)")
    for field, value in (("min_replicas", min_replicas), ("max_replicas", max_replicas)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(field, f"must be an integer >= 0, got {value!r}")
    if max_replicas < max(1, min_replicas):
        raise ConfigError(
            "max_replicas", f"{max_replicas} is below min_replicas={min_replicas} (or 0)"
        )
    container_resources = _check_resources(DEFAULT_RESOURCES if resources is None else resources)

    predictor: dict[str, Any] = {
        "serviceAccountName": service_account,
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
    }
    if logger is not None:
        predictor["logger"] = {"mode": logger_mode, "url": logger or logger_url(namespace)}
    if 0 < canary_percent < 100:
        predictor["canaryTrafficPercent"] = canary_percent

    if runtime == RUNTIME_KFLOOP:
        predictor["containers"] = [
            {
                "name": PREDICTOR_CONTAINER,
                "image": image,
                "args": [
                    "serve",
                    # kfloop serve binds 127.0.0.1 unless told; the pod must answer its probes.
                    "--host=0.0.0.0",
                    f"--model-uri={MODEL_MOUNT}",
                    f"--model-name={model_name}",
                    f"--http-port={HTTP_PORT}",
                    f"--grpc-port={GRPC_PORT}",
                ],
                # KServe's storage initializer downloads STORAGE_URI to /mnt/models.
                "env": [{"name": "STORAGE_URI", "value": storage_uri}],
                "ports": [{"containerPort": HTTP_PORT, "protocol": "TCP"}],
                "readinessProbe": {
                    "httpGet": {"path": f"/v2/models/{model_name}/ready", "port": HTTP_PORT},
                    "periodSeconds": 5,
                    "failureThreshold": 3,
                },
                "resources": container_resources,
                "securityContext": {
                    "runAsNonRoot": True,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ]
    else:
        predictor["model"] = {
            "modelFormat": {"name": "onnx"},
            "protocolVersion": "v2",
            "runtime": TRITON_RUNTIME_NAME,
            "storageUri": storage_uri,
            "resources": container_resources,
        }

    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": isvc_name,
            "namespace": namespace,
            "labels": {
                LABEL_PART_OF: "kfloop",
                LABEL_COMPONENT: "predictor",
                LABEL_MODEL: model_name,
            },
            "annotations": {
                ANNOTATION_VERSION: version,
                ANNOTATION_STORAGE: storage_uri,
                ANNOTATION_RUNTIME: runtime,
                ANNOTATION_DEPLOYMENT_MODE: "Serverless",
                ANNOTATION_SCRAPE: "true",
            },
        },
        "spec": {"predictor": predictor},
    }


def with_canary_percent(isvc: Mapping[str, Any], percent: int | None) -> dict[str, Any]:
    """A copy of ``isvc`` with ``canaryTrafficPercent`` set (``None``: removed)."""
    result = copy.deepcopy(dict(isvc))
    predictor = result.setdefault("spec", {}).setdefault("predictor", {})
    if percent is None:
        predictor.pop("canaryTrafficPercent", None)
    else:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ConfigError("canary_percent", f"{percent!r} is not a percentage (0-100)")
        predictor["canaryTrafficPercent"] = percent
    return result


def triton_repository_uri(version_uri: str) -> str:
    """The Triton model repository inside a published version: ``<version_uri>/triton/``
    (``publish_model`` uploads ``triton/<model>/1/model.onnx`` there). A URI that already
    ends in ``/triton`` is returned as it is."""
    base = version_uri.rstrip("/")
    return base + "/" if base.endswith("/triton") else base + "/triton/"


def isvc_ref(name: str, namespace: str) -> kube.ResourceRef:
    """Where the InferenceService ``namespace/name`` lives in the API."""
    return kube.ResourceRef(GROUP, VERSION, PLURAL, KIND, namespace, name)


def deploy_inference_service(
    model_name: str,
    storage_uri: str,
    version: str,
    *,
    namespace: str,
    canary_percent: int = 0,
    api: Any = None,
    runtime: str = RUNTIME_KFLOOP,
    timeout: float = 600.0,
    poll_interval: float = 5.0,
    wait: bool = True,
    **builder_options: Any,
) -> dict[str, Any]:
    """Apply the InferenceService of ``version`` and wait until it is ``Ready``.

    Server-side apply with field manager ``kfloop`` (conflicts forced: kfloop owns the
    fields it sets). With ``canary_percent`` 1-99 KServe splits traffic between this version
    and the previous one; :func:`kfloop.deploy.canary.run_canary` decides what happens next.

    Args:
        model_name, storage_uri, version, namespace, canary_percent, runtime: as for
            :func:`inference_service`; ``builder_options`` passes its other arguments.
        api: A ``kubernetes.client.ApiClient``; default: in-cluster config, else kubeconfig.
        timeout: Seconds to wait for ``Ready``.
        poll_interval: Seconds between status reads.
        wait: False returns right after the apply.

    Returns:
        ``{"name", "namespace", "version", "storage_uri", "runtime", "canary_percent",
        "url", "ready", "applied"}``: ``applied`` is the object sent, ``url`` the service's
        URL from its status (``""`` when not reported).

    Raises:
        ConfigError: a bad argument (nothing is applied).
        KubernetesError: the API server refused the object.
        ReadyTimeout: not ``Ready`` within ``timeout``; names the InferenceService and the
            ``Ready`` condition's reason and message.
    """
    if runtime == RUNTIME_TRITON:
        storage_uri = triton_repository_uri(storage_uri)
    isvc = inference_service(
        model_name,
        storage_uri,
        version,
        namespace=namespace,
        runtime=runtime,
        canary_percent=canary_percent,
        **builder_options,
    )
    if api is None:
        api = kube.default_api_client()
    ref = isvc_ref(isvc["metadata"]["name"], namespace)
    log.info(
        "applying %s: %s %s from %s (%s runtime, canary %s%%)",
        ref,
        model_name,
        version,
        storage_uri,
        runtime,
        canary_percent or 100,
    )
    live = kube.apply(api, isvc, PLURAL)
    if wait:
        live = kube.wait_ready(api, ref, timeout=timeout, poll_interval=poll_interval)
    status = live.get("status") or {}
    return {
        "name": ref.name,
        "namespace": namespace,
        "version": version,
        "storage_uri": storage_uri,
        "runtime": runtime,
        "canary_percent": isvc["spec"]["predictor"].get("canaryTrafficPercent", 100),
        "url": str(status.get("url") or ""),
        "ready": kube.is_ready(live),
        "applied": isvc,
    }
