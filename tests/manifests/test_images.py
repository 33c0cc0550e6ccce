"""images/: what can be proved without a Docker engine.

- each Dockerfile installs from uv.lock (--frozen, its extra, no dev tools), runs as a
  non-root numeric user, has the `kfloop` entrypoint and a base pinned by digest;
- the Dockerfile's own `uv sync` steps, replayed in a clean folder (offline, from the uv
  cache that `make setup` filled), give an environment where the image's code imports;
- one version: the Dockerfiles, pyproject, kfloop.__version__ and kfloop.core.images agree.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import kfloop
from kfloop.core.images import PIPELINE_IMAGE, SERVING_IMAGE, VERSION

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"pipeline": PIPELINE_IMAGE, "serving": SERVING_IMAGE}
# What each image must be able to import (its entry points).
IMPORTS = {
    "serving": "import kfloop.serving.predictor, kfloop.serving.logger, kfloop.deploy.kserve",
    "pipeline": "import kfp, kfloop.model.package, kfloop.data.validate, kfloop.model.tune_trial",
}


def dockerfile(extra: str) -> str:
    return (ROOT / "images" / extra / "Dockerfile").read_text()


def run_lines(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def uv_sync_steps(text: str) -> list[list[str]]:
    """The arguments of every `uv sync` the Dockerfile runs, in order."""
    steps = []
    for instruction in run_lines(text):
        if instruction.startswith("RUN") and "uv sync" in instruction:
            command = instruction[instruction.index("uv sync") :]
            steps.append(shlex.split(command)[2:])
    return steps


@pytest.mark.parametrize("extra", sorted(IMAGES))
def test_dockerfile_builds_from_the_lock_as_non_root(extra: str) -> None:
    text = dockerfile(extra)
    instructions = run_lines(text)
    steps = uv_sync_steps(text)
    assert len(steps) == 2
    for args in steps:
        assert "--frozen" in args and "--no-dev" in args
        assert args[args.index("--extra") + 1] == extra
    assert "--no-install-project" in steps[0] and "--no-editable" in steps[1]
    base = re.search(r"^ARG PYTHON_BASE=(\S+)$", text, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11-slim\S*@sha256:[0-9a-f]{64}", base.group(1))
    assert "digest" in text.lower() and "release job" in text
    users = [i for i in instructions if i.startswith("USER ")]
    assert users and re.fullmatch(r"USER [1-9][0-9]{3,}:[1-9][0-9]{3,}", users[-1])
    assert instructions[-2:] == ['ENTRYPOINT ["kfloop"]', 'CMD ["--help"]']


def test_one_version_everywhere() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == VERSION == kfloop.__version__
    for extra, image in IMAGES.items():
        assert image.endswith(f"/kfloop-{extra}:{VERSION}")
        text = dockerfile(extra)
        assert re.search(rf"^ARG KFLOOP_VERSION={re.escape(VERSION)}$", text, re.MULTILINE)
        assert f"-t {image} ." in text  # the documented build command tags the one version


def _uv() -> list[str]:
    found = shutil.which("uv")
    if found:
        return [found]
    probe = subprocess.run([sys.executable, "-m", "uv", "--version"], capture_output=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "uv"]
    pytest.skip("uv is not installed (make setup installs it)")


@pytest.mark.parametrize("extra", ["serving", pytest.param("pipeline", marks=pytest.mark.slow)])
def test_lock_installs_into_a_clean_environment_as_the_dockerfile_does(
    extra: str, tmp_path: Path
) -> None:
    """Replays the Dockerfile's steps: copy the lock files, sync without the project, copy
    src/, sync again; offline from the uv cache (~5 s serving, ~20 s pipeline here)."""
    uv = _uv()
    project = tmp_path / "src-copy"
    project.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    venv = tmp_path / "venv"
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_OFFLINE": "1",
        # Link from the cache, as `make` does (a copy is 2.8 GB for the pipeline).
        "UV_LINK_MODE": "hardlink",
    }
    env.pop("VIRTUAL_ENV", None)
    first, second = uv_sync_steps(dockerfile(extra))
    for args in (first, second):
        if args is second:
            shutil.copytree(ROOT / "src", project / "src")
        result = subprocess.run(
            [*uv, "sync", *args, "--quiet"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    python = venv / "bin" / "python"
    check = subprocess.run(
        [str(python), "-c", f"{IMPORTS[extra]}; import kfloop; print(kfloop.__file__)"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    # The project is installed into the environment (not a link back to this checkout).
    assert str(venv) in check.stdout
    # No dev tool came along.
    assert not (venv / "bin" / "pytest").exists()
    assert not (venv / "bin" / "ruff").exists()
