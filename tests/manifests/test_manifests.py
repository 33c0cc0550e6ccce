"""manifests/: every base, component and overlay renders and validates against real schemas.

Built-in kinds: kubernetes-validate --strict (unknown fields fail). InferenceService: a round
trip through the kserve SDK's generated models (an unknown field is dropped and shows up as a
difference). PrometheusRule: promtool check rules. The InferenceService of every rendering
equals the one kfloop.deploy.kserve builds for the same inputs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kfloop.core.images import PIPELINE_IMAGE, REGISTRY, SERVING_IMAGE, VERSION
from kfloop.deploy.canary import CanaryPolicy
from kfloop.deploy.kserve import inference_service, triton_repository_uri
from kfloop.model.katib import katib_experiment

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
KUBECTL = Path(sys.executable).parent / "kubectl"
K8S_VERSION = "1.33.0"
BASES = ["base", "overlays/local", "overlays/dev", "overlays/prod"]
COMPONENTS = sorted(p.parent.name for p in (MANIFESTS / "components").glob("*/kustomization.yaml"))
STORAGE_URI = "s3://kfloop-models/churn/v1/"
ZERO_DIGEST = "sha256:" + "0" * 64


def kustomize(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def with_component(component: str, tmp_path: Path) -> list[dict[str, Any]]:
    """The base plus one component (components render only inside a kustomization)."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes relative paths only
                "resources": [os.path.relpath(MANIFESTS / "base", tmp_path)],
                "components": [os.path.relpath(MANIFESTS / "components" / component, tmp_path)],
            }
        )
    )
    return kustomize(tmp_path)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(MANIFESTS / name) for name in BASES}


def all_renderings(
    rendered: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[dict[str, Any]]]:
    out = dict(rendered)
    for component in COMPONENTS:
        out[f"components/{component}"] = with_component(
            component, tmp_path_factory.mktemp(component)
        )
    return out


@pytest.fixture(scope="module")
def everything(
    rendered: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[dict[str, Any]]]:
    return all_renderings(rendered, tmp_path_factory)


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


# -- rendering and schemas -------------------------------------------------------------------


def test_components_exist() -> None:
    assert set(COMPONENTS) >= {"canary", "katib", "triton"}


@pytest.mark.parametrize("name", BASES)
def test_renders_with_core_kinds(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    kinds = {d["kind"] for d in rendered[name]}
    assert {
        "InferenceService",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "AlertmanagerConfig",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
    } <= kinds


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_renders(component: str, tmp_path: Path) -> None:
    docs = with_component(component, tmp_path)
    assert of_kind(docs, "InferenceService")


def test_overlays_set_their_namespace(rendered: dict[str, list[dict[str, Any]]]) -> None:
    expected = {"overlays/local": "kfloop", "overlays/dev": "kfloop-dev", "overlays/prod": "kfloop"}
    for name, namespace in expected.items():
        for doc in rendered[name]:
            assert doc["metadata"].get("namespace") == namespace, (name, doc["kind"])
        isvc = of_kind(rendered[name], "InferenceService")[0]
        assert isvc["spec"]["predictor"]["logger"]["url"] == (
            f"http://kfloop-logger.{namespace}.svc.cluster.local"
        )
        amc = of_kind(rendered[name], "AlertmanagerConfig")[0]
        url = amc["spec"]["receivers"][0]["webhookConfigs"][0]["url"]
        assert url == f"http://kfloop-trigger.{namespace}.svc.cluster.local:8080/alerts"


def test_builtin_kinds_validate_strict(everything: dict[str, list[dict[str, Any]]]) -> None:
    checked: set[str] = set()
    unknown: set[str] = set()
    for name, docs in everything.items():
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.utils.SchemaNotFoundError:
                unknown.add(doc["kind"])
                continue
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc}")
            checked.add(doc["kind"])
    assert {"Deployment", "Service", "NetworkPolicy", "Role", "Secret"} <= checked
    # Only CRDs are left to the other checks.
    assert unknown <= {
        "InferenceService",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "AlertmanagerConfig",
        "Experiment",
    }


def test_strict_validation_catches_a_misspelt_field(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    deployment = copy.deepcopy(of_kind(rendered["base"], "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolice"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# -- InferenceService through the kserve SDK -------------------------------------------------


class _SdkProcess:
    """kserve_round_trip.py in its own interpreter (see that file for why)."""

    def __init__(self) -> None:
        script = Path(__file__).with_name("kserve_round_trip.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def round_trip(self, spec: dict[str, Any]) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the kserve SDK process ended (exit {self.proc.poll()})"
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def kserve_sdk() -> Any:
    """The kserve SDK's generated models, behind a pipe to a separate process."""
    sdk = _SdkProcess()
    yield sdk
    sdk.close()


def sdk_round_trip(sdk: Any, spec: dict[str, Any]) -> Any:
    return sdk.round_trip(spec)


def differences(original: Any, back: Any, path: str = "") -> list[str]:
    """Where ``original`` is not found in ``back`` (fields the SDK adds are ignored)."""
    if isinstance(original, dict):
        if not isinstance(back, dict):
            return [f"{path}: {original!r} came back as {back!r}"]
        out: list[str] = []
        for key, value in original.items():
            if key not in back:
                out.append(f"{path}.{key}: dropped by the SDK (unknown or misspelt field)")
            else:
                out += differences(value, back[key], f"{path}.{key}")
        return out
    if isinstance(original, list):
        if not isinstance(back, list) or len(back) != len(original):
            return [f"{path}: {original!r} came back as {back!r}"]
        return [d for i, o in enumerate(original) for d in differences(o, back[i], f"{path}[{i}]")]
    return [] if original == back or str(original) == str(back) else [f"{path}: {original!r}"]


def test_every_inference_service_survives_the_sdk_round_trip(
    everything: dict[str, list[dict[str, Any]]], kserve_sdk: Any
) -> None:
    seen = 0
    for name, docs in everything.items():
        for isvc in of_kind(docs, "InferenceService"):
            back = sdk_round_trip(kserve_sdk, isvc["spec"])
            assert differences(isvc["spec"], back) == [], name
            seen += 1
    assert seen == len(everything)


@pytest.mark.parametrize("runtime", ["kfloop", "triton"])
def test_builder_output_survives_the_sdk_round_trip(kserve_sdk: Any, runtime: str) -> None:
    isvc = inference_service(
        "churn", STORAGE_URI, "v1", namespace="kfloop", runtime=runtime, canary_percent=10
    )
    assert differences(isvc["spec"], sdk_round_trip(kserve_sdk, isvc["spec"])) == []


def test_round_trip_catches_a_misspelt_predictor_field(kserve_sdk: Any) -> None:
    spec = inference_service("churn", STORAGE_URI, "v1", namespace="kfloop")["spec"]
    spec["predictor"]["canaryTraficPercent"] = 10  # misspelt
    spec["predictor"]["containers"][0]["readinesProbe"] = {}  # misspelt, one level down
    found = sorted(differences(spec, sdk_round_trip(kserve_sdk, spec)))
    assert found == [
        ".predictor.canaryTraficPercent: dropped by the SDK (unknown or misspelt field)",
        ".predictor.containers[0].readinesProbe: dropped by the SDK (unknown or misspelt field)",
    ]


# -- the builder is the manifest ---------------------------------------------------------------


def without_namespace(obj: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(obj)
    result["metadata"].pop("namespace", None)
    return result


def test_base_inference_service_is_the_builders(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (isvc,) = of_kind(rendered["base"], "InferenceService")
    built = inference_service("churn", STORAGE_URI, "v1", namespace="kfloop")
    assert isvc == without_namespace(built)


def test_overlay_inference_services_are_the_builders(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    small = {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    expected = {
        "overlays/local": inference_service(
            "churn", STORAGE_URI, "v1", namespace="kfloop", resources=small, max_replicas=1
        ),
        "overlays/dev": inference_service(
            "churn", STORAGE_URI, "v1", namespace="kfloop-dev", canary_percent=10
        ),
        "overlays/prod": inference_service(
            "churn",
            STORAGE_URI,
            "v1",
            namespace="kfloop",
            canary_percent=10,
            min_replicas=2,
            max_replicas=10,
            image=f"{SERVING_IMAGE}@{ZERO_DIGEST}",
        ),
    }
    for name, built in expected.items():
        (isvc,) = of_kind(rendered[name], "InferenceService")
        assert isvc == built, name


def test_triton_component_is_the_builders_triton_variant(tmp_path: Path) -> None:
    (isvc,) = of_kind(with_component("triton", tmp_path), "InferenceService")
    repository = triton_repository_uri(STORAGE_URI)  # what publish_model writes for Triton
    assert repository == "s3://kfloop-models/churn/v1/triton/"
    built = inference_service("churn", repository, "v1", namespace="kfloop", runtime="triton")
    assert isvc == without_namespace(built)


def test_canary_component_policy_parses_and_matches_the_traffic_split(tmp_path: Path) -> None:
    docs = with_component("canary", tmp_path)
    (config,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == "kfloop-canary"]
    policy = CanaryPolicy.from_mapping(config["data"])
    (isvc,) = of_kind(docs, "InferenceService")
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == policy.canary_percent == 10
    assert of_kind(docs, "PodMonitor")


def test_katib_component_is_the_builders_experiment(tmp_path: Path) -> None:
    (experiment,) = of_kind(with_component("katib", tmp_path), "Experiment")
    built = katib_experiment(
        "kfloop-tune",
        "kfloop",
        None,
        train_uri="s3://kfloop-data/churn/splits/train/",
        validation_uri="s3://kfloop-data/churn/splits/validation/",
        label="churned",
        exclude=["customer_id"],
        s3_secret="kfloop-s3",
        active_deadline_seconds=3600,
        resources={
            "requests": {"cpu": "1", "memory": "2Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        },
    )
    container = built["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    container["envFrom"].append({"configMapRef": {"name": "kfloop-config"}})
    built["metadata"]["labels"]["app.kubernetes.io/part-of"] = "kfloop"
    assert experiment == without_namespace(built)


# -- alert rules -------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("promtool") is None, reason="Debian's prometheus not installed")
def test_prometheus_rules_pass_promtool(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    rules = of_kind(rendered["base"], "PrometheusRule")
    assert rules
    for rule in rules:
        path = tmp_path / f"{rule['metadata']['name']}.rules.yaml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        result = subprocess.run(
            ["promtool", "check", "rules", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


def test_alertmanager_routes_retrain_alerts_to_the_trigger_with_a_secret_token(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (amc,) = of_kind(rendered["base"], "AlertmanagerConfig")
    assert {"name": "kfloop_action", "value": "retrain"} in amc["spec"]["route"]["matchers"]
    hook = amc["spec"]["receivers"][0]["webhookConfigs"][0]
    assert hook["url"].endswith(":8080/alerts")
    assert hook["httpConfig"]["authorization"]["credentials"] == {
        "name": "kfloop-trigger-token",
        "key": "token",
    }
    (trigger,) = [
        d for d in of_kind(rendered["base"], "Deployment") if "trigger" in d["metadata"]["name"]
    ]
    env = trigger["spec"]["template"]["spec"]["containers"][0]["env"]
    token = next(e for e in env if e["name"] == "KFLOOP_TRIGGER_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "kfloop-trigger-token", "key": "token"}
    # Every alert routed to retraining exists in the PrometheusRule.
    (rule,) = of_kind(rendered["base"], "PrometheusRule")
    retrain = [
        r["alert"]
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if r.get("labels", {}).get("kfloop_action") == "retrain"
    ]
    assert retrain


# -- secrets, RBAC -------------------------------------------------------------------------------

# Names of variables that hold a credential (not *_PATH / *_FILE, which point at one).
_CREDENTIAL_NAME = re.compile(
    r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)(?!.*_(PATH|FILE)$)", re.IGNORECASE
)


def _literal_credentials(node: Any, path: str) -> list[str]:
    """Paths of ``{name: <credential-like>, value: ...}`` entries (env with a literal)."""
    out: list[str] = []
    if isinstance(node, dict):
        name = node.get("name")
        if isinstance(name, str) and "value" in node and _CREDENTIAL_NAME.search(name):
            out.append(f"{path}: env {name} has a literal value")
        for key, value in node.items():
            out += _literal_credentials(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out += _literal_credentials(item, f"{path}[{i}]")
    return out


def credential_literals(docs: list[dict[str, Any]]) -> list[str]:
    """Places where a manifest carries a credential value instead of a reference."""
    found: list[str] = []
    for doc in docs:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] == "Secret" and (doc.get("data") or doc.get("stringData")):
            found.append(f"{where}: has data")
        if doc["kind"] == "ConfigMap":
            found += [f"{where}: {k}" for k in doc.get("data", {}) if _CREDENTIAL_NAME.search(k)]

        found += [f"{where}{path}" for path in _literal_credentials(doc.get("spec"), "")]
    return found


def test_no_manifest_carries_a_credential(everything: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in everything.items():
        assert credential_literals(docs) == [], name
    # Also the raw files (patches and generators included).
    for path in MANIFESTS.rglob("*.yaml"):
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
        assert not re.search(r"(?im)^\s*(stringData|data):\s*$", text) or "Secret" not in text, path


def test_the_credential_scan_finds_a_literal_key(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = copy.deepcopy(rendered["base"])
    (secret,) = of_kind(docs, "Secret")
    secret["stringData"] = {"AWS_SECRET_ACCESS_KEY": "x"}
    logger = next(
        d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "kfloop-logger"
    )
    logger["spec"]["template"]["spec"]["containers"][0]["env"][0] = {
        "name": "AWS_ACCESS_KEY_ID",
        "value": "x",
    }
    assert len(credential_literals(docs)) == 2


def test_s3_keys_come_from_the_kubeflow_artifact_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (sa,) = [
        d
        for d in of_kind(rendered["base"], "ServiceAccount")
        if d["metadata"]["name"] == "kfloop-predictor"
    ]
    assert sa["secrets"] == [{"name": "kfloop-s3"}]
    (secret,) = of_kind(rendered["base"], "Secret")
    assert secret["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == (
        "seaweedfs.kubeflow:8333"
    )
    for deployment in of_kind(rendered["base"], "Deployment"):
        env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        if "AWS_ACCESS_KEY_ID" in env:
            assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
                "name": "mlpipeline-minio-artifact",
                "key": "accesskey",
            }
    launcher = next(
        d for d in of_kind(rendered["base"], "ConfigMap") if d["metadata"]["name"] == "kfp-launcher"
    )
    providers = yaml.safe_load(launcher["data"]["providers"])
    assert providers["s3"]["default"]["credentials"]["secretRef"]["secretName"] == (
        "mlpipeline-minio-artifact"
    )


def test_rbac_is_least_privilege(rendered: dict[str, list[dict[str, Any]]]) -> None:
    roles = {r["metadata"]["name"]: r["rules"] for r in of_kind(rendered["base"], "Role")}
    assert roles["kfloop-deployer"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "patch", "create"],
        }
    ]
    # The trigger: KFP's resources only, nothing of Kubernetes' own.
    assert {g for rule in roles["kfloop-trigger"] for g in rule["apiGroups"]} == {
        "pipelines.kubeflow.org"
    }
    for rules in roles.values():
        for rule in rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            assert not {"delete", "deletecollection", "escalate", "bind"} & set(rule["verbs"])
    assert not of_kind(rendered["base"], "ClusterRole")
    assert not of_kind(rendered["base"], "ClusterRoleBinding")
    for sa in of_kind(rendered["base"], "ServiceAccount"):
        if sa["metadata"]["name"] != "kfloop-deployer":
            assert sa.get("automountServiceAccountToken") is False, sa["metadata"]["name"]


# -- images: one version everywhere ------------------------------------------------------------

_IMAGE_RE = re.compile(
    rf"^{re.escape(REGISTRY)}/kfloop-(pipeline|serving):{re.escape(VERSION)}(@sha256:[0-9a-f]{{64}})?$"
)


def images_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "image" and isinstance(v, str)]
        return found + [i for v in node.values() for i in images_in(v)]
    if isinstance(node, list):
        return [i for v in node for i in images_in(v)]
    return []


def test_every_manifest_image_is_a_kfloop_image_of_the_one_version(
    everything: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in everything.items():
        images = images_in(docs)
        assert images, name
        for image in images:
            assert _IMAGE_RE.match(image), f"{name}: {image}"
    prod = images_in(everything["overlays/prod"])
    assert all("@sha256:" in image for image in prod)


def test_components_and_compiled_pipelines_use_the_pipeline_image() -> None:
    assert f"{REGISTRY}/kfloop-pipeline:{VERSION}" == PIPELINE_IMAGE
    assert f"{REGISTRY}/kfloop-serving:{VERSION}" == SERVING_IMAGE
    components = sorted((ROOT / "components").glob("*/component.py"))
    assert components
    for path in components:
        text = path.read_text()
        bases = re.findall(r"base_image\s*=\s*([^,)\s]+)", text)
        assert bases and set(bases) == {"PIPELINE_IMAGE"}, path
    compiled = sorted((ROOT / "pipelines" / "compiled").glob("*.yaml"))
    assert compiled
    for path in compiled:
        images = set(re.findall(r"^\s*image:\s*(\S+)", path.read_text(), re.MULTILINE))
        assert images == {PIPELINE_IMAGE}, path
