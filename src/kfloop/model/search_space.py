"""The declared hyperparameter search space, shared by the local search and the Katib manifest.

A search space is a mapping from a hyperparameter of
:class:`kfloop.model.train.Hyperparameters` to how it is searched::

    {
        "learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": true},
        "dropout": {"type": "float", "min": 0, "max": 0.5},
        "hidden_units": {"type": "choice", "values": [[64, 32], [128, 64], [32]]},
        "embedding_dim": {"type": "int", "min": 4, "max": 16},
        "batch_size": {"type": "choice", "values": [32, 64, 128]}
    }

* ``float``: a real number in ``[min, max]``; ``log: true`` samples uniformly in log space
  (then ``min`` must be > 0); an optional ``step`` makes it a grid.
* ``int``: an integer in ``[min, max]`` with ``step`` (default 1); ``log`` as above.
* ``choice``: one of ``values``. A list value (``hidden_units``) is encoded as the string of
  its comma-separated items (``"64,32"``), because keras-tuner's ``Choice`` and Katib's
  ``categorical`` parameters hold scalars only; :func:`decode_value` turns it back.

Hyperparameters not in the search space keep the :class:`~kfloop.model.train.Hyperparameters`
default. ``epochs`` is not searchable: the search sets it (``epochs_per_trial``; Hyperband
varies it itself). Every bound and every choice must itself be a valid value of the
hyperparameter (checked against ``Hyperparameters``), so a search can never propose a
configuration that training would reject.

Errors name the path: an unknown hyperparameter -> ``search_space.<name>``; ``min`` above
``max`` -> ``search_space.<name>``.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from kfloop.core.config import StrictModel, parse_config
from kfloop.core.errors import ConfigError

FIELD = "search_space"

# How each searchable hyperparameter is typed: the search types allowed for it follow.
# A test holds this against kfloop.model.train.Hyperparameters.
HYPERPARAMETER_KINDS: dict[str, Literal["int", "float", "int_list"]] = {
    "hidden_units": "int_list",
    "dropout": "float",
    "learning_rate": "float",
    "embedding_dim": "int",
    "batch_size": "int",
    "l2": "float",
}
# Hyperparameters that exist but the search sets itself.
NOT_SEARCHABLE: dict[str, str] = {
    "epochs": "the number of epochs per trial is set by epochs_per_trial (Hyperband varies it "
    "itself); remove it from the search space",
}
_ALLOWED_TYPES: dict[str, tuple[str, ...]] = {
    "int_list": ("choice",),
    "float": ("float", "choice"),
    "int": ("int", "choice"),
}


def _integral(value: Any) -> Any:
    """Integral floats as ints: KFP passes dict parameters as JSON, where 64 may become 64.0."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, got a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Integer = Annotated[StrictInt, BeforeValidator(_integral)]
Number = StrictInt | StrictFloat
ChoiceValue = StrictInt | StrictFloat | list[Integer]


class FloatRange(StrictModel):
    """A real number in ``[min, max]`` (``log``: log-uniform; ``step``: a grid)."""

    type: Literal["float"]
    min: Number
    max: Number
    log: StrictBool = False
    step: Number | None = None


class IntRange(StrictModel):
    """An integer in ``[min, max]`` by ``step`` (``log``: log-uniform)."""

    type: Literal["int"]
    min: Integer
    max: Integer
    step: Integer = 1
    log: StrictBool = False


class Choice(StrictModel):
    """One of ``values`` (numbers, or lists of integers for ``hidden_units``)."""

    type: Literal["choice"]
    values: list[ChoiceValue] = Field(min_length=1)


ParamSpec = Annotated[FloatRange | IntRange | Choice, Field(discriminator="type")]


def encode_value(value: Any) -> int | float | str:
    """A choice value as a scalar: lists become ``"64,32"``; numbers stay numbers."""
    if isinstance(value, list | tuple):
        return ",".join(str(int(v)) for v in value)
    return typing.cast(int | float | str, value)


def decode_value(name: str, value: Any) -> Any:
    """The hyperparameter value behind an encoded scalar (keras-tuner / Katib / CLI).

    ``hidden_units`` strings ``"64,32"`` become ``[64, 32]``; numeric strings become numbers of
    the hyperparameter's kind. Other values are returned as they are.

    Raises:
        ConfigError: naming ``name`` when a string cannot be decoded.
    """
    kind = HYPERPARAMETER_KINDS.get(name)
    if not isinstance(value, str) or kind is None:
        return value
    text = value.strip()
    try:
        if kind == "int_list":
            return [int(part) for part in text.split(",") if part.strip()]
        if kind == "int":
            as_float = float(text)
            if not as_float.is_integer():
                raise ValueError(text)
            return int(as_float)
        return float(text)
    except ValueError:
        what = "comma-separated integers like 64,32" if kind == "int_list" else f"an {kind}"
        raise ConfigError(name, f"{value!r} is not {what}") from None


def _check_value(name: str, value: Any, what: str) -> None:
    """Raise ValueError when ``value`` is not a valid ``Hyperparameters.<name>``."""
    from kfloop.model.train import Hyperparameters  # heavy (Keras): imported on use

    try:
        parse_config(Hyperparameters, {name: value}, "hyperparameters")
    except ConfigError as exc:
        raise ValueError(f"{what} {value!r} is not a valid {name}: {exc}") from None


def _normalise_choices(name: str, kind: str, values: list[Any]) -> list[Any]:
    """Choices of one type: floats for a float hyperparameter, ints for an int one."""
    out: list[Any] = []
    for v in values:
        if kind == "int_list":
            if not isinstance(v, list):
                raise ValueError(f"each choice of {name} must be a list of integers, got {v!r}")
            out.append(list(v))
        elif isinstance(v, list):
            raise ValueError(f"each choice of {name} must be a number, got {v!r}")
        elif kind == "float":
            out.append(float(v))
        elif isinstance(v, float):
            if not v.is_integer():
                raise ValueError(f"each choice of {name} must be an integer, got {v!r}")
            out.append(int(v))
        else:
            out.append(v)
    return out


class SearchSpace(StrictModel):
    """Per searchable hyperparameter, how to search it; ``None`` keeps the default value."""

    hidden_units: ParamSpec | None = None
    dropout: ParamSpec | None = None
    learning_rate: ParamSpec | None = None
    embedding_dim: ParamSpec | None = None
    batch_size: ParamSpec | None = None
    l2: ParamSpec | None = None

    @field_validator("*")
    @classmethod
    def _check_param(cls, spec: Any, info: ValidationInfo) -> Any:
        if spec is None:
            return spec
        name = str(info.field_name)
        kind = HYPERPARAMETER_KINDS[name]
        allowed = _ALLOWED_TYPES[kind]
        if spec.type not in allowed:
            raise ValueError(
                f"type {spec.type!r} does not fit {name} ({kind}); use {' or '.join(allowed)}"
            )
        if isinstance(spec, Choice):
            values = _normalise_choices(name, kind, spec.values)
            encoded = [encode_value(v) for v in values]
            if len(set(encoded)) != len(encoded):
                raise ValueError(f"choice values repeat: {spec.values!r}")
            for v in values:
                _check_value(name, v, "choice")
            return spec.model_copy(update={"values": values})
        if spec.min > spec.max:
            raise ValueError(f"min {spec.min} is greater than max {spec.max}")
        for bound in (spec.min, spec.max):
            if not math.isfinite(bound):
                raise ValueError(f"bounds must be finite numbers, got {bound}")
        if spec.log and spec.min <= 0:
            raise ValueError(f"log sampling needs min > 0, got {spec.min}")
        if spec.step is not None and spec.step <= 0:
            raise ValueError(f"step must be > 0, got {spec.step}")
        _check_value(name, spec.min, "min")
        _check_value(name, spec.max, "max")
        return spec

    def params(self) -> dict[str, FloatRange | IntRange | Choice]:
        """The searched hyperparameters, in declaration order."""
        return {
            name: spec
            for name in type(self).model_fields
            if (spec := getattr(self, name)) is not None
        }

    def max_value(self, name: str) -> Any:
        """The largest value the search may give hyperparameter ``name`` (None if not searched)."""
        spec = getattr(self, name)
        if spec is None:
            return None
        if isinstance(spec, Choice):
            return max(spec.values)
        return spec.max

    def to_dict(self) -> dict[str, Any]:
        """The searched hyperparameters as plain values (the config this was parsed from)."""
        return {
            name: spec.model_dump(exclude_defaults=False) for name, spec in self.params().items()
        }


def default_search_space() -> SearchSpace:
    """A small, sensible space for kfloop's MLP on tabular data.

    Learning rate log-uniform in [1e-4, 1e-2], dropout in [0, 0.5], three MLP shapes,
    embedding width 4-16, batch size 32/64/128 (so the training split needs >= 256 rows) and
    L2 in {0, 1e-5, 1e-4}.
    """
    return parse_search_space(
        {
            "learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True},
            "dropout": {"type": "float", "min": 0.0, "max": 0.5},
            "hidden_units": {"type": "choice", "values": [[64, 32], [128, 64], [32]]},
            "embedding_dim": {"type": "int", "min": 4, "max": 16},
            "batch_size": {"type": "choice", "values": [32, 64, 128]},
            "l2": {"type": "choice", "values": [0.0, 1e-5, 1e-4]},
        }
    )


def parse_search_space(
    value: Mapping[str, Any] | str | SearchSpace | None, field: str = FIELD
) -> SearchSpace:
    """Validate a search space (a mapping, JSON text or instance); empty/None -> the default.

    Raises:
        ConfigError: ``<field>.<name>`` for an unknown or unsearchable hyperparameter (listing
            the searchable ones), a type that does not fit it, ``min`` above ``max``, ``log``
            with ``min <= 0``, or a bound/choice that is not a valid value of it.
    """
    if isinstance(value, SearchSpace):
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except json.JSONDecodeError as exc:
            raise ConfigError(field, f"is not valid JSON: {exc}") from None
    if value is None or (isinstance(value, Mapping) and not value):
        return default_search_space()
    if isinstance(value, Mapping):
        searchable = ", ".join(HYPERPARAMETER_KINDS)
        for name in value:
            if name in NOT_SEARCHABLE:
                raise ConfigError(f"{field}.{name}", NOT_SEARCHABLE[name])
            if name not in HYPERPARAMETER_KINDS:
                raise ConfigError(
                    f"{field}.{name}",
                    f"unknown hyperparameter {name!r}; searchable ones are: {searchable}",
                )
    space = parse_config(SearchSpace, value, field)
    if not space.params():
        raise ConfigError(field, "declares no hyperparameter to search")
    return space
