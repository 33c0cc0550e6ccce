"""Every component documents every input and output; the README's reference is current."""

from __future__ import annotations

import inspect

import pytest

from kfloop.core.images import PIPELINE_IMAGE
from kfloop.pipelines.docs import _arg_docs, update_readme
from kfloop.pipelines.registry import component_names, load_component, repo_root

NAMES = component_names()


def test_components_exist() -> None:
    assert NAMES, "no components found under components/"


@pytest.mark.parametrize("name", NAMES)
def test_every_input_and_output_is_documented(name: str) -> None:
    component = load_component(name)
    args, returns = _arg_docs(inspect.getdoc(component.python_func) or "")
    spec = component.component_spec
    undocumented = [
        k
        for k in list(spec.inputs or {}) + list(spec.outputs or {})
        if k != "Output" and not args.get(k)
    ]
    assert not undocumented, f"{name}: no Args: line for {undocumented}"
    if "Output" in (spec.outputs or {}):
        assert returns, f"{name}: returns a value but has no Returns: section"


@pytest.mark.parametrize("name", NAMES)
def test_component_uses_the_kfloop_image_without_runtime_installs(name: str) -> None:
    component = load_component(name)
    container = component.component_spec.implementation.container
    assert container.image == PIPELINE_IMAGE
    command = " ".join(container.command or [])
    assert "pip install" not in command, f"{name} installs packages at run time"


def test_readme_component_reference_is_current() -> None:
    stale = update_readme(repo_root() / "README.md", check=True)
    assert not stale, "README.md is stale: run `.venv/bin/python -m kfloop.pipelines.docs`"
