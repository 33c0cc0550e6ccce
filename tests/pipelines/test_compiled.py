"""Checked-in compiled pipelines are current (kfp's read_write_test approach)."""

from __future__ import annotations

import pytest
import yaml

from kfloop.pipelines.compile import available, compiled_path, normalise, stale

NAMES = available()


def test_pipelines_exist() -> None:
    assert "training" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_compiled_yaml_is_current(name: str) -> None:
    diff = stale(name)
    assert not diff, f"pipelines/compiled/{name}.yaml is stale; run `make compile`:\n{diff}"


@pytest.mark.parametrize("name", NAMES)
def test_compiled_yaml_uses_our_image_and_no_runtime_installs(name: str) -> None:
    spec = yaml.safe_load(compiled_path(name).read_text(encoding="utf-8"))
    executors = spec["deploymentSpec"]["executors"]
    assert executors
    for executor in executors.values():
        if "container" not in executor:
            continue
        container = executor["container"]
        assert container["image"].startswith("ghcr.io/kfloop/kfloop-pipeline:")
        assert "pip install" not in " ".join(container.get("command", []))


def test_normalise_ignores_only_version_noise() -> None:
    a = "sdkVersion: kfp-2.13.0\nimage: x\n"
    b = "sdkVersion: kfp-2.17.3\nimage: x\n"
    assert normalise(a) == normalise(b)
    assert normalise(a) != normalise(a.replace("image: x", "image: y"))
