"""The local deployer: make a published model version the production version.

The ``deploy_model`` component calls :func:`deploy_version`; the demo and people at a shell
call the same functions outside KFP. Three targets:

``none``
    Only the production pointer (:func:`kfloop.deploy.registry.promote`) moves.
``local``
    With a ``serving_url`` (a running ``kfloop serve``), first :func:`load_version` asks the
    predictor to load the version through the Open Inference Protocol repository extension
    (``POST {serving_url}/v2/repository/models/{model}/load`` with
    ``{"parameters": {"uri": ...}}`` and ``Authorization: Bearer $KFLOOP_SERVING_ADMIN_TOKEN``),
    then :func:`check_serving` checks that it serves it (the model is ready, its v2 metadata
    shows the version's inputs, and one v2 inference of a probe row built from
    ``metadata.json`` answers with ONNX Runtime's prediction for that row on the published
    ``model.onnx``), with bounded retries. Only then is the pointer written: a failed load or
    check leaves production unchanged and raises :class:`ServingError` naming the URL and the
    HTTP status and body. Without a ``serving_url`` only the pointer moves.
``kserve``
    :func:`kfloop.deploy.kserve.deploy_inference_service` applies the version's
    ``InferenceService`` and waits for ``Ready``; with ``canary_percent`` 0 the pointer then
    moves. A canary (1-99 %) leaves the pointer alone: the canary's promote step moves it.

The pointer is always written LAST. The admin token travels in the request header only: it
is never logged nor put into an error message or a report.

HTTP goes through the standard library (``urllib``) so this module imports in both
environments; ONNX Runtime (both environments hold it) is imported only to compute the
probe's expected prediction.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from kfloop.core.errors import ConfigError, DataError, KfloopError
from kfloop.core.objectstore import ObjectStore, S3Uri
from kfloop.deploy.registry import METADATA_FILE, ProductionPointer, promote, read_production

log = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = "KFLOOP_SERVING_ADMIN_TOKEN"
ONNX_FILE = "model.onnx"
TARGETS = ("none", "local", "kserve")
DEFAULT_LOAD_TIMEOUT_S = 300.0
DEFAULT_CHECK_ATTEMPTS = 10
DEFAULT_RETRY_DELAY_S = 1.0
DEFAULT_TOLERANCE = 1e-4
_BODY_LIMIT = 500
_ONNX_TO_V2 = {"tensor(float)": "FP32", "tensor(string)": "BYTES"}


class ServingError(KfloopError):
    """The predictor refused, failed or did not answer (the message names URL and status)."""

    def __init__(self, message: str, *, url: str = "", status: int = 0, body: str = "") -> None:
        self.url = url
        self.status = status
        self.body = body
        super().__init__(message)


@dataclass(frozen=True)
class ServingCheck:
    """What :func:`check_serving` verified on the running predictor.

    Attributes:
        url: The predictor's base URL.
        model_name: The endpoint's name.
        version: The version that was expected (from ``metadata.json``).
        prediction: What the predictor answered for the probe row.
        expected: ONNX Runtime's prediction for the same row (None: not compared).
        reported_versions: The versions the v2 metadata lists ([] when it lists none).
        attempts: Rounds of checks until everything passed.
        checks: One line per check that passed, for reports.
    """

    url: str
    model_name: str
    version: str
    prediction: float
    expected: float | None
    reported_versions: list[str]
    attempts: int
    checks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return asdict(self)


@dataclass(frozen=True)
class Deployment:
    """The outcome of :func:`deploy_version` (or of a visible skip).

    Attributes:
        deployed: True when the version was deployed (pointer moved, or the canary started).
        model_name: The model.
        version: The version (from the published ``metadata.json``; "" when skipped early).
        uri: The version's URI ("" when skipped).
        target: ``none``, ``local`` or ``kserve``.
        previous_version: The version that served before (the rollback target; "" if none).
        previous_uri: Its URI.
        pointer_moved: True when the production pointer now names this version.
        reasons: Why nothing was deployed (skips).
        checks: What was done and verified, one line each.
        notes: Other facts worth a line in the report.
    """

    deployed: bool
    model_name: str
    version: str
    uri: str
    target: str
    previous_version: str = ""
    previous_uri: str = ""
    pointer_moved: bool = False
    reasons: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON and artifact metadata."""
        return asdict(self)


# -- checks of arguments ---------------------------------------------------------------------------


def check_target(target: str, canary_percent: int = 0) -> str:
    """The target, checked (``none``, ``local`` or ``kserve``), and the canary percentage.

    Raises:
        ConfigError: naming ``target`` or ``canary_percent``.
    """
    if target not in TARGETS:
        raise ConfigError("target", f"{target!r} is not one of {', '.join(TARGETS)}")
    if isinstance(canary_percent, bool) or not isinstance(canary_percent, int):
        raise ConfigError("canary_percent", f"must be an integer, got {canary_percent!r}")
    if not 0 <= canary_percent <= 100:
        raise ConfigError("canary_percent", f"must be in [0, 100], got {canary_percent}")
    if canary_percent not in (0, 100) and target != "kserve":
        raise ConfigError(
            "canary_percent",
            f"{canary_percent}% needs target 'kserve' (traffic splitting is KServe's); "
            f"target {target!r} deploys all at once",
        )
    return target


def check_serving_url(serving_url: str) -> str:
    """``serving_url`` without a trailing ``/``, checked to be an http(s) URL with a host.

    Raises:
        ConfigError: naming ``serving_url``.
    """
    parts = urlsplit(serving_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            "serving_url",
            f"{serving_url!r} is not an http(s) URL of a running `kfloop serve` "
            "(e.g. http://127.0.0.1:8080)",
        )
    if parts.username or parts.password:
        raise ConfigError("serving_url", "must not carry credentials; the token goes in the env")
    return serving_url.rstrip("/")


def admin_token(token: str | None = None) -> str:
    """``token`` when given, else ``$KFLOOP_SERVING_ADMIN_TOKEN`` ("" when unset)."""
    return token if token is not None else os.environ.get(ADMIN_TOKEN_ENV, "")


# -- HTTP ------------------------------------------------------------------------------------------


def _http(
    method: str,
    url: str,
    *,
    body: Any = None,
    token: str = "",
    timeout: float = 30.0,
) -> tuple[int, str]:
    """One request: (status, body text); status 0 and the reason when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return 0, f"no answer ({reason})"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _BODY_LIMIT else text[:_BODY_LIMIT] + "..."


def _redact(text: str, token: str) -> str:
    return text.replace(token, "********") if token else text


def load_version(
    serving_url: str,
    model_name: str,
    uri: str,
    token: str | None = None,
    *,
    attempts: int = 3,
    retry_delay: float = DEFAULT_RETRY_DELAY_S,
    timeout: float = DEFAULT_LOAD_TIMEOUT_S,
) -> dict[str, Any]:
    """Ask the running ``kfloop serve`` at ``serving_url`` to load ``uri`` as ``model_name``.

    ``POST {serving_url}/v2/repository/models/{model_name}/load`` with
    ``{"parameters": {"uri": uri}}`` and, when there is a token (argument, else
    ``$KFLOOP_SERVING_ADMIN_TOKEN``), ``Authorization: Bearer <token>``. The predictor swaps
    the version in without failing a request, or keeps the old one when the load fails.
    No answer or a 5xx is retried (``attempts`` in all); a 4xx is final.

    Returns:
        The predictor's JSON answer (``{"name": ..., "load": true}``).

    Raises:
        ConfigError: a bad ``serving_url`` or ``model_name``.
        ServingError: the load failed: names the URL, the HTTP status and the body (401/403:
            the admin token is missing or wrong; 400: the predictor could not load the URI).
    """
    base = check_serving_url(serving_url)
    if not model_name or "/" in model_name:
        raise ConfigError("model_name", f"{model_name!r} is not a model endpoint name")
    secret = admin_token(token)
    url = f"{base}/v2/repository/models/{quote(model_name, safe='')}/load"
    status, text = 0, ""
    for attempt in range(1, max(1, attempts) + 1):
        status, text = _http(
            "POST", url, body={"parameters": {"uri": uri}}, token=secret, timeout=timeout
        )
        if status == 200:
            try:
                answer = json.loads(text)
            except ValueError:
                answer = {"raw": _short(text)}
            log.info("%s loaded %s as %s", base, uri, model_name)
            return answer if isinstance(answer, dict) else {"answer": answer}
        if 0 < status < 500:
            break
        if attempt < attempts:
            log.warning(
                "load %s at %s: %s (attempt %d of %d); retrying",
                uri,
                url,
                status or "no answer",
                attempt,
                attempts,
            )
            time.sleep(retry_delay * attempt)
    body = _redact(_short(text), secret)
    if status in (401, 403):
        hint = (
            f"the predictor refused the admin token; set {ADMIN_TOKEN_ENV} to the token "
            "`kfloop serve` was started with"
            if secret
            else f"no admin token was sent; set {ADMIN_TOKEN_ENV}"
        )
        message = f"load {uri} at {url}: HTTP {status} ({hint}): {body}"
    elif status == 0:
        message = f"load {uri} at {url}: the predictor did not answer: {body}"
    else:
        message = f"load {uri} at {url}: HTTP {status}: {body}"
    raise ServingError(message, url=url, status=status, body=body)


# -- probe row and expected prediction -------------------------------------------------------------


def _inputs(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = metadata.get("inputs")
    if not isinstance(raw, list) or not raw:
        raise DataError("metadata.json: 'inputs' must be a non-empty list (the model signature)")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise DataError(f"metadata.json: inputs[{i}] must be an object with a 'name'")
        if item.get("onnx_type") not in _ONNX_TO_V2:
            raise DataError(
                f"metadata.json: inputs[{i}] ({item['name']!r}) has onnx_type "
                f"{item.get('onnx_type')!r}; expected one of {sorted(_ONNX_TO_V2)}"
            )
        out.append(dict(item))
    return out


def probe_row(metadata: Mapping[str, Any]) -> dict[str, float | str]:
    """A typical row for the model of ``metadata`` (a ``metadata.json`` dict).

    Numeric inputs take the training mean recorded in ``feature_spec`` (0.0 when none is
    recorded), categorical inputs the first vocabulary value ("" = missing when none).

    Raises:
        DataError: ``inputs`` is missing or malformed.
    """
    spec = metadata.get("feature_spec")
    features = spec.get("features") if isinstance(spec, Mapping) else None
    by_name = {f.get("name"): f for f in features or [] if isinstance(f, Mapping) and f.get("name")}
    row: dict[str, float | str] = {}
    for item in _inputs(metadata):
        feature = by_name.get(item["name"], {})
        if item["onnx_type"] == "tensor(float)":
            mean = feature.get("mean")
            if isinstance(mean, int | float) and not isinstance(mean, bool) and math.isfinite(mean):
                row[item["name"]] = float(mean)
            else:
                row[item["name"]] = 0.0
        else:
            vocabulary = feature.get("vocabulary") or []
            row[item["name"]] = str(vocabulary[0]) if vocabulary else ""
    return row


def probe_request(metadata: Mapping[str, Any], row: Mapping[str, float | str]) -> dict[str, Any]:
    """The v2 (Open Inference Protocol) JSON request of one row."""
    inputs = []
    for item in _inputs(metadata):
        datatype = _ONNX_TO_V2[item["onnx_type"]]
        value = row[item["name"]]
        inputs.append(
            {"name": item["name"], "shape": [1, 1], "datatype": datatype, "data": [value]}
        )
    return {"id": "kfloop-deploy-probe", "inputs": inputs}


def reference_prediction(
    onnx_path: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    row: Mapping[str, float | str],
) -> float:
    """ONNX Runtime's prediction for ``row`` on ``onnx_path`` (what the predictor must answer)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed: dict[str, Any] = {}
    for item in _inputs(metadata):
        value = row[item["name"]]
        if item["onnx_type"] == "tensor(float)":
            feed[item["name"]] = np.array([[value]], dtype=np.float32)
        else:
            feed[item["name"]] = np.array([[value]], dtype=object)
    outputs = metadata.get("outputs") or [{}]
    name = str(outputs[0].get("name", "prediction")) if isinstance(outputs[0], Mapping) else ""
    result = session.run([name or "prediction"], feed)[0]
    return float(np.asarray(result, dtype=np.float64).reshape(-1)[0])


# -- serving check ---------------------------------------------------------------------------------


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _check_once(
    base: str,
    model_name: str,
    metadata: Mapping[str, Any],
    row: Mapping[str, float | str],
    expected: float | None,
    tolerance: float,
    timeout: float,
) -> tuple[str, ServingCheck | None, tuple[str, int, str]]:
    """One round of checks: ("", check, _) when all passed, else (problem, None, failing).

    ``failing`` is the (url, status, body) of the request that showed the problem.
    """
    name = quote(model_name, safe="")
    version = str(metadata.get("version", ""))
    checks: list[str] = []

    url = f"{base}/v2/models/{name}/ready"
    status, text = _http("GET", url, timeout=timeout)
    answer = _json(text)
    if status != 200 or not isinstance(answer, dict) or answer.get("ready") is not True:
        return "the model is not ready", None, (url, status, text)
    checks.append(f"GET {url}: ready")

    url = f"{base}/v2/models/{name}"
    status, text = _http("GET", url, timeout=timeout)
    answer = _json(text)
    if status != 200 or not isinstance(answer, dict):
        return "no model metadata", None, (url, status, text)
    served = {
        str(i.get("name")): str(i.get("datatype"))
        for i in answer.get("inputs") or []
        if isinstance(i, dict)
    }
    want = {i["name"]: _ONNX_TO_V2[i["onnx_type"]] for i in _inputs(metadata)}
    if served != want:
        return (
            f"the served inputs {served} are not the version's {want}",
            None,
            (url, status, text),
        )
    reported = [str(v) for v in answer.get("versions") or []]
    if reported and version not in reported:
        return f"the server reports versions {reported}, not {version}", None, (url, status, text)
    checks.append(
        f"GET {url}: {len(want)} inputs match metadata.json"
        + (f"; versions {reported}" if reported else "")
    )

    url = f"{base}/v2/models/{name}/infer"
    status, text = _http("POST", url, body=probe_request(metadata, row), timeout=timeout)
    answer = _json(text)
    try:
        prediction = float(answer["outputs"][0]["data"][0])
    except (TypeError, KeyError, IndexError, ValueError):
        return "the probe inference failed", None, (url, status, text)
    if status != 200 or not math.isfinite(prediction):
        return "the probe inference failed", None, (url, status, text)
    answered_by = answer.get("model_version")
    if answered_by and str(answered_by) != version:
        return f"the answer came from version {answered_by}", None, (url, status, text)
    if expected is not None:
        if abs(prediction - expected) > tolerance:
            return (
                f"the probe row's prediction {prediction:.6g} is not version {version}'s "
                f"{expected:.6g} (ONNX Runtime on its model.onnx; tolerance {tolerance:g}): "
                "another version is serving",
                None,
                (url, status, text),
            )
        checks.append(
            f"POST {url}: probe row -> {prediction:.6g}, = ONNX Runtime on version "
            f"{version}'s model.onnx ({expected:.6g})"
        )
    else:
        checks.append(f"POST {url}: probe row -> {prediction:.6g}")
    return (
        "",
        ServingCheck(
            url=base,
            model_name=model_name,
            version=version,
            prediction=prediction,
            expected=expected,
            reported_versions=reported,
            attempts=0,
            checks=checks,
        ),
        ("", 0, ""),
    )


def check_serving(
    serving_url: str,
    model_name: str,
    metadata: Mapping[str, Any],
    *,
    expected: float | None = None,
    row: Mapping[str, float | str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    attempts: int = DEFAULT_CHECK_ATTEMPTS,
    retry_delay: float = DEFAULT_RETRY_DELAY_S,
    timeout: float = 30.0,
) -> ServingCheck:
    """Check that the predictor at ``serving_url`` serves the version of ``metadata``.

    Each round: ``GET /v2/models/{model}/ready`` says ready; ``GET /v2/models/{model}`` lists
    the version's inputs with their v2 datatypes (and the version, when the server reports
    versions); one v2 inference of ``row`` (default :func:`probe_row`) answers a finite
    prediction, equal within ``tolerance`` to ``expected`` when given (see
    :func:`reference_prediction`). Rounds repeat up to ``attempts`` times, ``retry_delay``
    seconds apart.

    Raises:
        ConfigError: a bad ``serving_url``.
        DataError: ``metadata`` has no usable ``inputs``.
        ServingError: a check still failed after the last round: names the URL, the HTTP
            status and the body of the failing request.
    """
    base = check_serving_url(serving_url)
    probe = dict(row) if row is not None else probe_row(metadata)
    problem, failing = "", ("", 0, "")
    for attempt in range(1, max(1, attempts) + 1):
        problem, result, failing = _check_once(
            base, model_name, metadata, probe, expected, tolerance, timeout
        )
        if result is not None:
            log.info(
                "%s serves %s %s (%d checks)", base, model_name, result.version, len(result.checks)
            )
            return ServingCheck(**{**result.to_dict(), "attempts": attempt})
        if attempt < attempts:
            time.sleep(retry_delay)
    url, status, text = failing
    version = metadata.get("version", "?")
    raise ServingError(
        f"{base} does not serve {model_name} {version} after {attempts} checks: {problem}; "
        f"last request {url}: HTTP {status or 'no answer'}: {_short(text)}",
        url=url,
        status=status,
        body=_short(text),
    )


# -- the deployer ----------------------------------------------------------------------------------


def read_version_metadata(store: ObjectStore, uri: str) -> dict[str, Any]:
    """The published ``metadata.json`` of the version at ``uri``.

    Raises:
        ConfigError: ``uri`` is not an s3:// URI or holds no published version.
        DataError: the file is not a JSON object with a ``version``.
    """
    meta_uri = S3Uri.parse(uri, "model_uri").join(METADATA_FILE)
    if not store.exists(meta_uri):
        raise ConfigError(
            "model_uri", f"{uri} is not a published model version (no {METADATA_FILE} there)"
        )
    try:
        metadata = json.loads(store.get_bytes(meta_uri))
    except ValueError as exc:
        raise DataError(f"{meta_uri}: not JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise DataError(f"{meta_uri}: must be a JSON object")
    version = metadata.get("version")
    if not isinstance(version, str) or not version:
        raise DataError(f"{meta_uri}: has no 'version' (publish_model writes one)")
    return metadata


def _check_location(models_root: str, model_name: str, uri: str, version: str) -> None:
    """``uri`` must be ``<models_root>/<model_name>/<version>/`` (where publish_model writes)."""
    want = str(S3Uri.parse(models_root, "models_root").join(model_name, version)) + "/"
    if uri.rstrip("/") + "/" != want:
        raise ConfigError(
            "model_uri",
            f"{uri} is not where {model_name!r} version {version!r} is published ({want}); "
            "check model_name against the publishing step's",
        )


def skipped(model_name: str, target: str, reasons: Sequence[str], uri: str = "") -> Deployment:
    """The :class:`Deployment` of a visible skip: nothing deployed, ``reasons`` say why."""
    log.warning("not deploying %s: %s", model_name, "; ".join(reasons))
    return Deployment(
        deployed=False,
        model_name=model_name,
        version="",
        uri=uri,
        target=target,
        reasons=list(reasons),
    )


def deploy_version(
    store: ObjectStore,
    models_root: str,
    model_name: str,
    uri: str,
    *,
    target: str = "local",
    serving_url: str = "",
    token: str | None = None,
    namespace: str = "",
    canary_percent: int = 0,
    reason: str = "",
    check_attempts: int = DEFAULT_CHECK_ATTEMPTS,
    retry_delay: float = DEFAULT_RETRY_DELAY_S,
    kserve_options: Mapping[str, Any] | None = None,
) -> Deployment:
    """Deploy the published version at ``uri`` to ``target``; the pointer is written last.

    See the module doc for the targets. Any failure before the pointer is written leaves
    production as it was.

    Raises:
        ConfigError: bad target, canary, serving URL, namespace, model name or URI (names it);
            target ``kserve`` without :mod:`kfloop.deploy.kserve`.
        DataError: the published ``metadata.json`` is malformed.
        ServingError: the predictor did not load or serve the version (``local``).
        KfloopError: the Kubernetes API failed (``kserve``); ObjectStoreError: the store.
    """
    check_target(target, canary_percent)
    base = check_serving_url(serving_url) if target == "local" and serving_url else ""
    metadata = read_version_metadata(store, uri)
    version = str(metadata["version"])
    _check_location(models_root, model_name, uri, version)
    current = read_production(store, models_root, model_name)
    previous = current
    checks: list[str] = [f"{uri}{METADATA_FILE} published: version {version}"]
    notes: list[str] = []
    if current is not None and current.uri.rstrip("/") == uri.rstrip("/"):
        notes.append(f"{version} was already the production version")
        previous = (
            ProductionPointer(model_name, current.previous["version"], current.previous["uri"], "")
            if current.previous
            else None
        )
    move_pointer = True

    if target == "local" and base:
        load_version(base, model_name, uri, token, retry_delay=retry_delay)
        checks.append(f"POST {base}/v2/repository/models/{model_name}/load: loaded {uri}")
        with tempfile.TemporaryDirectory(prefix="kfloop-deploy-") as tmp:
            onnx_path = Path(tmp) / ONNX_FILE
            store.get_file(S3Uri.parse(uri, "model_uri").join(ONNX_FILE), onnx_path)
            row = probe_row(metadata)
            expected = reference_prediction(onnx_path, metadata, row)
        served = check_serving(
            base,
            model_name,
            metadata,
            expected=expected,
            row=row,
            attempts=check_attempts,
            retry_delay=retry_delay,
        )
        checks += served.checks
    elif target == "local":
        notes.append(
            "no serving_url: only the production pointer moved; a running `kfloop serve` "
            "loads the new version on its next repository load (or restart)"
        )
    elif target == "none":
        notes.append("target 'none': only the production pointer moved")
    else:  # kserve
        if not namespace:
            raise ConfigError("namespace", "target 'kserve' needs the InferenceService namespace")
        try:
            from kfloop.deploy.kserve import deploy_inference_service
        except ImportError as exc:
            raise ConfigError(
                "target", f"'kserve' is not available here (kfloop.deploy.kserve: {exc})"
            ) from None
        result = deploy_inference_service(
            model_name,
            uri,
            version,
            namespace=namespace,
            canary_percent=canary_percent,
            **dict(kserve_options or {}),
        )
        checks.append(
            f"InferenceService {namespace}/{result.get('name', model_name)} applied and "
            f"{'Ready' if result.get('ready') else 'not yet Ready'}"
            + (f" at {result['url']}" if result.get("url") else "")
        )
        if 0 < canary_percent < 100:
            move_pointer = False
            notes.append(
                f"canary: {canary_percent}% of the traffic goes to {version}; the production "
                "pointer moves when the canary is promoted"
            )

    pointer_moved = False
    if move_pointer:
        pointer = promote(
            store, models_root, model_name, version, uri.rstrip("/") + "/", reason=reason
        )
        pointer_moved = pointer.version == version
        checks.append(f"production pointer of {model_name} -> {version}")
    return Deployment(
        deployed=True,
        model_name=model_name,
        version=version,
        uri=uri,
        target=target,
        previous_version=previous.version if previous else "",
        previous_uri=previous.uri if previous else "",
        pointer_moved=pointer_moved,
        checks=checks,
        notes=notes,
    )


def render_report(deployment: Deployment, *, serving_url: str = "") -> str:
    """The Markdown report of a deployment or a skip (no credential in it)."""
    d = deployment
    if not d.deployed:
        lines = [f"# Not deployed: `{d.model_name}`", "", "Reasons:", ""]
        lines += [f"- {r}" for r in d.reasons or ["no reason given"]]
        if d.uri:
            lines += ["", f"Version URI: `{d.uri}`"]
        lines += ["", f"Production is unchanged. Target: `{d.target}`."]
        return "\n".join(lines) + "\n"
    lines = [
        f"# Deployed `{d.model_name}` version `{d.version}`",
        "",
        "| | |",
        "|---|---|",
        f"| version | `{d.version}` |",
        f"| URI | `{d.uri}` |",
        f"| target | `{d.target}` |",
    ]
    if serving_url:
        lines.append(f"| serving URL | `{serving_url}` |")
    lines.append(
        f"| previous version (rollback target) | `{d.previous_version}` (`{d.previous_uri}`) |"
        if d.previous_version
        else "| previous version (rollback target) | none: first deployment |"
    )
    lines.append(f"| production pointer moved | {'yes' if d.pointer_moved else 'no'} |")
    lines += ["", "## Checks", ""]
    lines += [f"- {c}" for c in d.checks]
    if d.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in d.notes]
    if d.previous_version:
        lines += [
            "",
            "Roll back with `kfloop.deploy.registry.rollback(store, models_root, "
            f'"{d.model_name}")` (and, locally, a repository load of `{d.previous_uri}`).',
        ]
    return "\n".join(lines) + "\n"
