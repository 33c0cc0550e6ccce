from __future__ import annotations

from typing import Literal

import pytest

from kfloop.core.config import StrictModel, parse_config
from kfloop.core.errors import ConfigError


class Rule(StrictModel):
    column: str
    strategy: Literal["mean", "median"] = "mean"


class Cfg(StrictModel):
    rules: tuple[Rule, ...] = ()
    limit: int = 3


def test_parses_dicts_json_and_instances() -> None:
    assert parse_config(Cfg, {"limit": 5}, "cfg").limit == 5
    assert parse_config(Cfg, '{"rules": [{"column": "a"}]}', "cfg").rules[0].column == "a"
    cfg = Cfg(limit=1)
    assert parse_config(Cfg, cfg, "cfg") is cfg
    assert parse_config(Cfg, None, "cfg") == Cfg()


def test_unknown_key_is_named_with_its_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(Cfg, {"rules": [{"column": "a", "stratgy": "mean"}]}, "clean_config")
    assert err.value.field == "clean_config.rules.0.stratgy"
    assert "unknown key" in str(err.value)


def test_bad_value_and_bad_json() -> None:
    with pytest.raises(ConfigError, match="clean_config.rules.0.strategy"):
        parse_config(Cfg, {"rules": [{"column": "a", "strategy": "mode"}]}, "clean_config")
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_config(Cfg, "{nope", "clean_config")
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_config(Cfg, [1, 2], "clean_config")  # type: ignore[arg-type]
