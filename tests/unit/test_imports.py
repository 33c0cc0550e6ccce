"""Every kfloop module imports in the environment it belongs to.

Modules under ``kfloop.serving`` belong to the serving environment, those under
``kfloop.data``, ``kfloop.model`` and ``kfloop.pipelines`` to the pipeline environment,
and all others (``kfloop.core``, ``kfloop.local``, the CLI, ...) to both.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import kfloop
from tests.conftest import ENVIRONMENT

PIPELINE_ONLY = ("kfloop.data", "kfloop.model", "kfloop.pipelines", "kfloop.components")
SERVING_ONLY = ("kfloop.serving",)


def owner(module: str) -> str:
    if module.startswith(PIPELINE_ONLY):
        return "pipeline"
    if module.startswith(SERVING_ONLY):
        return "serving"
    return "both"


ALL_MODULES = sorted(m.name for m in pkgutil.walk_packages(kfloop.__path__, "kfloop."))
MINE = [m for m in ALL_MODULES if owner(m) in ("both", ENVIRONMENT)]


def test_modules_found() -> None:
    assert "kfloop.core.settings" in ALL_MODULES
    assert "kfloop.cli" in ALL_MODULES


@pytest.mark.parametrize("module", MINE)
def test_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_shared_modules_pull_in_no_environment_specific_library() -> None:
    """Importing kfloop.core, kfloop.local and the CLI must not load TF, TFDV, kserve or kfp."""
    shared = [m for m in ALL_MODULES if owner(m) == "both"]
    code = (
        "import importlib, sys\n"
        f"for m in {shared!r}: importlib.import_module(m)\n"
        "heavy = {'tensorflow', 'tensorflow_data_validation', 'kserve', 'kfp', 'onnxruntime'}\n"
        "print(','.join(sorted(heavy & set(sys.modules))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
