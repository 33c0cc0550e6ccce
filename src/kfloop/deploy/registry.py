"""The production pointer: which published version of a model serves traffic.

``s3://<models-bucket>/<model>/production.json`` names the production version of ``<model>``:

    {"model": "churn", "version": "v2", "uri": "s3://models/churn/v2/",
     "deployed_at": "2026-11-28T04:00:00Z", "reason": "...",
     "previous": {"version": "v1", "uri": "s3://models/churn/v1/", "deployed_at": "..."} | null,
     "history": [{"action": "promote"|"rollback", "version", "uri", "at", "reason"}, ...]}

It is one S3 object, written with a single PUT (an S3 PUT is atomic: a reader sees the old
pointer or the new one, never a mix). Only published versions (their ``metadata.json``
exists: ``publish_model`` uploads it last) can be promoted. The previous version is kept for
:func:`rollback`; ``history`` keeps the last :data:`HISTORY_LIMIT` decisions.

Who reads it: ``deploy_model`` (writes it), the retraining pipeline (the champion to beat),
``kfloop logger --follow-production`` (switches its reference profile when it changes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kfloop.core.errors import ConfigError, DataError, KfloopError, ObjectNotFound
from kfloop.core.objectstore import ObjectStore, S3Uri

POINTER_FILE = "production.json"
METADATA_FILE = "metadata.json"
HISTORY_LIMIT = 50


class NoProductionVersion(KfloopError):
    """The model has no production pointer yet (nothing deployed)."""


@dataclass(frozen=True)
class ProductionPointer:
    model: str
    version: str
    uri: str
    deployed_at: str
    reason: str = ""
    previous: dict[str, str] | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "uri": self.uri,
            "deployed_at": self.deployed_at,
            "reason": self.reason,
            "previous": self.previous,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str) -> ProductionPointer:
        if not isinstance(data, dict):
            raise DataError(f"{source}: not a production pointer (expected a JSON object)")
        missing = [k for k in ("model", "version", "uri") if not isinstance(data.get(k), str)]
        if missing:
            raise DataError(f"{source}: production pointer lacks {', '.join(missing)}")
        previous = data.get("previous")
        return cls(
            model=data["model"],
            version=data["version"],
            uri=data["uri"],
            deployed_at=str(data.get("deployed_at", "")),
            reason=str(data.get("reason", "")),
            previous=dict(previous) if isinstance(previous, dict) else None,
            history=[dict(h) for h in data.get("history") or [] if isinstance(h, dict)],
        )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_model(model: str) -> None:
    if not model or "/" in model or model in (".", ".."):
        raise ConfigError("model_name", f"{model!r} is not a model name")


def pointer_uri(models_root: str, model: str) -> str:
    """``<models_root>/<model>/production.json``."""
    _check_model(model)
    return str(S3Uri.parse(models_root, "models_root").join(model, POINTER_FILE))


def read_production(store: ObjectStore, models_root: str, model: str) -> ProductionPointer | None:
    """The production pointer of ``model``, or None when nothing was deployed yet."""
    uri = pointer_uri(models_root, model)
    try:
        raw = store.get_bytes(uri)
    except ObjectNotFound:
        return None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise DataError(f"{uri}: not JSON ({exc})") from None
    return ProductionPointer.from_dict(data, uri)


def _write(store: ObjectStore, models_root: str, pointer: ProductionPointer) -> None:
    body = json.dumps(pointer.to_dict(), indent=2).encode()
    store.put_bytes(body, pointer_uri(models_root, pointer.model), "application/json")


def _check_published(store: ObjectStore, uri: str) -> None:
    meta = str(S3Uri.parse(uri, "uri").join(METADATA_FILE))
    if not store.exists(meta):
        raise ConfigError(
            "uri", f"{uri} is not a published model version (no {METADATA_FILE} there)"
        )


def promote(
    store: ObjectStore,
    models_root: str,
    model: str,
    version: str,
    uri: str,
    *,
    reason: str = "",
) -> ProductionPointer:
    """Make ``version`` (published at ``uri``) the production version; keeps the previous one.

    Promoting the version that already serves is a no-op that returns the current pointer.

    Raises:
        ConfigError: bad model name or URI, or ``uri`` holds no published version.
        ObjectStoreError: the store failed (the old pointer is then unchanged).
    """
    if not version:
        raise ConfigError("version", "must not be empty")
    _check_published(store, uri)
    current = read_production(store, models_root, model)
    if current is not None and current.version == version and current.uri == uri:
        return current
    now = _now()
    history = list(current.history if current else [])
    history.append(
        {"action": "promote", "version": version, "uri": uri, "at": now, "reason": reason}
    )
    pointer = ProductionPointer(
        model=model,
        version=version,
        uri=uri,
        deployed_at=now,
        reason=reason,
        previous=(
            {"version": current.version, "uri": current.uri, "deployed_at": current.deployed_at}
            if current
            else None
        ),
        history=history[-HISTORY_LIMIT:],
    )
    _write(store, models_root, pointer)
    return pointer


def rollback(
    store: ObjectStore, models_root: str, model: str, *, reason: str = ""
) -> ProductionPointer:
    """Point production back at the previous version.

    Raises:
        NoProductionVersion: nothing deployed, or no previous version to go back to.
    """
    current = read_production(store, models_root, model)
    if current is None:
        raise NoProductionVersion(f"{pointer_uri(models_root, model)}: nothing is deployed")
    if not current.previous:
        raise NoProductionVersion(
            f"{model} {current.version} is the first deployed version: nothing to roll back to"
        )
    prev = current.previous
    _check_published(store, prev["uri"])
    now = _now()
    history = [
        *current.history,
        {
            "action": "rollback",
            "version": prev["version"],
            "uri": prev["uri"],
            "at": now,
            "reason": reason,
        },
    ]
    pointer = ProductionPointer(
        model=model,
        version=prev["version"],
        uri=prev["uri"],
        deployed_at=now,
        reason=reason,
        previous={
            "version": current.version,
            "uri": current.uri,
            "deployed_at": current.deployed_at,
        },
        history=history[-HISTORY_LIMIT:],
    )
    _write(store, models_root, pointer)
    return pointer
