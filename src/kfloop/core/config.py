"""Declarative configs (cleaning rules, label rules, schema hints, ...) as strict pydantic models.

Every config model forbids unknown keys. :func:`parse_config` turns pydantic's
``ValidationError`` into one :class:`~kfloop.core.errors.ConfigError` whose ``field`` is the
dotted path of the first bad key (``clean_config.impute.0.strategy``), listing every problem.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from kfloop.core.errors import ConfigError


class StrictModel(BaseModel):
    """Base for kfloop config models: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


def _loc(parts: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in parts)


def parse_config(model: type[M], value: Mapping[str, Any] | str | M | None, field: str) -> M:
    """Validate ``value`` (a dict, a JSON string or an instance) as ``model``.

    Raises:
        ConfigError: naming ``field`` plus the path of the first bad key, with all problems.
    """
    if isinstance(value, model):
        return value
    if value is None:
        value = {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(field, f"is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise ConfigError(field, f"must be a mapping, got {type(value).__name__}")
    try:
        return model.model_validate(dict(value))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = _loc(tuple(err["loc"]))
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where}: {msg}" if where else msg)
        first = _loc(tuple(exc.errors()[0]["loc"]))
        name = f"{field}.{first}" if first else field
        raise ConfigError(name, "; ".join(problems)) from None
