"""The few Kubernetes API calls kfloop makes: server-side apply, read, wait for ``Ready``.

Everything kfloop puts on a cluster is built by pure functions (:mod:`kfloop.deploy.kserve`,
:mod:`kfloop.model.katib`); this module only sends those objects. It talks to the API server
through :class:`kubernetes.client.ApiClient` (the official Python client) so that one object,
which tests replace with ``mock.create_autospec(ApiClient, instance=True)``, carries every
call:

- :func:`apply` is a server-side apply (``PATCH`` with ``application/apply-patch+yaml``,
  field manager :data:`FIELD_MANAGER`, ``force=true`` so that kfloop re-acquires fields a
  person changed by hand). The client's typed ``patch_namespaced_custom_object`` always
  sends ``merge-patch+json``, hence the generic ``call_api``.
- :func:`get` reads one object (``None`` when it does not exist).
- :func:`wait_ready` polls until the object's ``Ready`` condition is ``True`` for its
  current generation, or raises :class:`ReadyTimeout` naming the object and the
  condition's last reason and message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kfloop.core.errors import ConfigError, KfloopError

FIELD_MANAGER = "kfloop"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"


class KubernetesError(KfloopError):
    """The Kubernetes API refused or failed a request (the message names the object)."""


class ReadyTimeout(KubernetesError):
    """An object did not become ``Ready`` in time."""


@dataclass(frozen=True)
class ResourceRef:
    """Where a namespaced object lives in the API: ``/apis/<group>/<version>/...``."""

    group: str
    version: str
    plural: str
    kind: str
    namespace: str
    name: str

    @property
    def path(self) -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{prefix}/namespaces/{self.namespace}/{self.plural}/{self.name}"

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def ref_of(obj: Mapping[str, Any], plural: str) -> ResourceRef:
    """The :class:`ResourceRef` of a manifest (``apiVersion``, ``kind``, ``metadata``)."""
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    meta = obj.get("metadata") or {}
    if not isinstance(api_version, str) or not api_version:
        raise ConfigError("apiVersion", f"missing in the object to apply: {obj!r:.200}")
    if not isinstance(kind, str) or not kind:
        raise ConfigError("kind", "missing in the object to apply")
    name, namespace = meta.get("name"), meta.get("namespace")
    if not name or not namespace:
        raise ConfigError("metadata", f"{kind} needs metadata.name and metadata.namespace")
    group, _, version = api_version.rpartition("/")
    return ResourceRef(group, version, plural, kind, namespace, name)


def default_api_client() -> Any:
    """An ``ApiClient`` from the in-cluster service account, else from ``~/.kube/config``.

    Raises:
        ConfigError: neither configuration is available (field ``kubeconfig``).
    """
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise ConfigError(
                "kubeconfig",
                f"no Kubernetes configuration: not in a pod and no usable kubeconfig ({exc}); "
                "set KUBECONFIG or run inside the cluster",
            ) from None
    return client.ApiClient()


def _api_error(action: str, ref: ResourceRef, exc: Exception) -> KubernetesError:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or type(exc).__name__
    message = ""
    body = getattr(exc, "body", None)
    if body:
        try:
            message = str(json.loads(body).get("message", ""))
        except (ValueError, AttributeError, TypeError):
            message = str(body)[:500]
    detail = f"HTTP {status} {reason}" if status else str(exc)
    hint = ""
    if status == 403:
        hint = f"; the service account needs 'patch' and 'get' on {ref.plural}.{ref.group}"
    elif status == 404:
        hint = f"; is the {ref.kind} CRD ({ref.plural}.{ref.group}) installed?"
    return KubernetesError(
        f"{action} {ref} failed: {detail}{': ' + message if message else ''}{hint}"
    )


def apply(api: Any, obj: Mapping[str, Any], plural: str) -> dict[str, Any]:
    """Server-side apply ``obj`` (field manager ``kfloop``, conflicts forced); the live object.

    Raises:
        KubernetesError: the API server refused (the message names the object and says why).
    """
    ref = ref_of(obj, plural)
    try:
        result = api.call_api(
            ref.path,
            "PATCH",
            path_params={},
            query_params=[("fieldManager", FIELD_MANAGER), ("force", True)],
            header_params={"Content-Type": APPLY_CONTENT_TYPE, "Accept": "application/json"},
            body=dict(obj),
            response_type="object",
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )
    except Exception as exc:
        raise _api_error("applying", ref, exc) from None
    return dict(result)


def get(api: Any, ref: ResourceRef) -> dict[str, Any] | None:
    """The live object, or ``None`` when it does not exist.

    Raises:
        KubernetesError: any other API failure.
    """
    try:
        result = api.call_api(
            ref.path,
            "GET",
            path_params={},
            query_params=[],
            header_params={"Accept": "application/json"},
            response_type="object",
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )
    except Exception as exc:
        if getattr(exc, "status", None) == 404:
            return None
        raise _api_error("reading", ref, exc) from None
    return dict(result)


def condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    """The status condition of type ``type_`` (``Ready``, ``PredictorReady``...), if any."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == type_:
            return cond
    return None


def is_ready(obj: Mapping[str, Any]) -> bool:
    """``Ready`` is ``True`` and the status describes the current spec (its generation)."""
    cond = condition(obj, "Ready")
    if cond is None or str(cond.get("status")) != "True":
        return False
    generation = (obj.get("metadata") or {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    return generation is None or observed is None or int(observed) >= int(generation)


def wait_ready(
    api: Any,
    ref: ResourceRef,
    *,
    timeout: float,
    poll_interval: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll ``ref`` until :func:`is_ready`; return the ready object.

    Raises:
        ReadyTimeout: not ready after ``timeout`` seconds; the message gives the ``Ready``
            condition's status, reason and message as last seen.
        KubernetesError: reading the object failed.
    """
    if timeout < 0:
        raise ConfigError("timeout", f"must be >= 0 seconds, got {timeout}")
    deadline = clock() + timeout
    last: dict[str, Any] | None = None
    while True:
        last = get(api, ref)
        if last is not None and is_ready(last):
            return last
        if clock() >= deadline:
            break
        sleep(max(0.0, min(poll_interval, deadline - clock())))
    if last is None:
        raise ReadyTimeout(f"{ref} was not Ready after {timeout:g} s: it does not exist")
    cond = condition(last, "Ready")
    if cond is None:
        state = "no Ready condition reported yet (is the controller running?)"
    else:
        state = f"Ready={cond.get('status')}"
        if cond.get("reason"):
            state += f" ({cond['reason']})"
        if cond.get("message"):
            state += f": {cond['message']}"
        generation = (last.get("metadata") or {}).get("generation")
        observed = (last.get("status") or {}).get("observedGeneration")
        if str(cond.get("status")) == "True" and generation is not None and observed is not None:
            state += f" for generation {observed}, not yet for the applied generation {generation}"
    raise ReadyTimeout(f"{ref} was not Ready after {timeout:g} s: {state}")
