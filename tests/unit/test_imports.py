"""Every kfloop module imports in the environment it belongs to.

Modules under ``kfloop.serving`` belong to the serving environment, those under
``kfloop.data``, ``kfloop.model`` and ``kfloop.pipelines`` to the pipeline environment,
and all others (``kfloop.core``, ``kfloop.local``, the CLI, ...) to both.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

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


def test_every_module_of_this_environment_imports() -> None:
    """Import each module in a fresh interpreter of this environment.

    A fresh process: kserve and tritonclient.grpc register the same protobuf package
    (``inference``), so importing the predictor in a pytest process that already holds the
    gRPC client (the serving client tests) would fail for a reason users never meet.
    """
    code = (
        "import importlib, sys, traceback\n"
        f"mods = {MINE!r}\n"
        "bad = []\n"
        "for m in mods:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as exc:\n"
        "        bad.append(f'{m}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"modules that fail to import here:\n{out.stdout}"
    assert len(MINE) > 10


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
