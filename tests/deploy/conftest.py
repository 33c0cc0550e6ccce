"""Fixtures for the deployer tests: REAL packaged models and a REAL ``kfloop serve``.

- ``built_model``: ``tests/serving/model_factory.py`` run once per session with this (the
  pipeline) environment's Python (~1 min); set ``KFLOOP_SERVING_TEST_MODEL`` to a folder to
  reuse a build across sessions.
- ``second_package``: the same package with every float weight of the ONNX graph scaled by
  1.25, ``version`` ``v2`` and its ``sha256`` updated: a second model version with other
  predictions, built in a second instead of a minute.
- ``serve``: starts ``kfloop serve`` of the SERVING environment (``.venv-serving``) on a free
  port, no gRPC, with the S3 settings and an admin token in its environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from kfloop.local.process import free_port

REPO = Path(__file__).resolve().parents[2]
SERVING_PYTHON = REPO / ".venv-serving" / "bin" / "python"
MODEL_NAME = "churn"
ADMIN_TOKEN = "deploy-test-admin-token-3f9c"
READY_TIMEOUT_S = 120.0


_BUILT: list[Path] = []  # one build per test session, shared by tests/deploy and components


def build_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``package/`` folder of a real trained and packaged model (version ``v1``)."""
    if _BUILT:
        return _BUILT[0]
    reuse = os.environ.get("KFLOOP_SERVING_TEST_MODEL")
    if reuse and (Path(reuse) / "DONE").is_file():
        return Path(reuse) / "package"
    out = Path(reuse) if reuse else tmp_path_factory.mktemp("deploy-model") / "model"
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "serving" / "model_factory.py"), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0 or not (out / "DONE").is_file():
        raise RuntimeError(f"model_factory.py failed ({result.returncode}):\n{result.stderr}")
    _BUILT.append(out / "package")
    return _BUILT[0]


def make_second_package(package: Path, out: Path) -> Path:
    """Version ``v2`` of ``package``: its float weights scaled by 1.25 (other predictions)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    shutil.copytree(package, out)
    model = onnx.load(str(out / "model.onnx"))
    for i, init in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 1:
            scaled = numpy_helper.from_array((array * 1.25).astype(np.float32), init.name)
            model.graph.initializer[i].CopyFrom(scaled)
    onnx.save(model, str(out / "model.onnx"))
    data = (out / "model.onnx").read_bytes()
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    meta.update(version="v2", sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (out / "metadata.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def built_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """See :func:`build_model`."""
    return build_model(tmp_path_factory)


@pytest.fixture(scope="session")
def second_package(built_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """See :func:`make_second_package`."""
    return make_second_package(built_model, tmp_path_factory.mktemp("deploy-model-v2") / "pkg")


def publish(store: ObjectStore, package: Path, root: str, model: str, version: str) -> str:
    """Upload ``package`` as ``<root>/<model>/<version>/`` with metadata.json last."""
    uri = f"{root}/{model}/{version}/"
    meta = json.loads((package / "metadata.json").read_text(encoding="utf-8"))
    meta["version"] = version
    for path in sorted(package.iterdir()):
        if path.is_file() and path.name != "metadata.json":
            store.put_file(path, f"{uri}{path.name}")
    store.put_bytes(json.dumps(meta).encode(), f"{uri}metadata.json", "application/json")
    return uri


@dataclass
class Predictor:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def start_predictor(
    model_uri: str, log_path: Path, env: Mapping[str, str], model_name: str = MODEL_NAME
) -> Predictor:
    """``kfloop serve`` (serving env) on a free port; waits until ready or fails with its log."""
    if not SERVING_PYTHON.is_file():
        pytest.skip(f"{SERVING_PYTHON} is missing: run `make setup` to build the serving env")
    port = free_port()
    command = [
        str(SERVING_PYTHON),
        "-m",
        "kfloop.cli",
        "serve",
        "--model-uri",
        model_uri,
        "--model-name",
        model_name,
        "--http-port",
        str(port),
        "--grpc-port",
        "0",
    ]
    child_env = {k: v for k, v in env.items() if k != "VIRTUAL_ENV"}
    with log_path.open("wb") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=child_env
        )
    server = Predictor(process, port, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kfloop serve exited with {process.returncode}:\n{server.log()}")
        if _ready(server.url):
            return server
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"kfloop serve not ready after {READY_TIMEOUT_S}s:\n{server.log()}")


def predictor_env(settings: Settings) -> dict[str, str]:
    """The predictor's environment: this one, the S3 settings and the admin token."""
    return {**os.environ, **settings.to_env(), "KFLOOP_SERVING_ADMIN_TOKEN": ADMIN_TOKEN}


@pytest.fixture(scope="module")
def serve(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Predictor]]:
    """Start predictors (``serve(model_uri)``); all are stopped after the module."""
    started: list[Predictor] = []

    def start(model_uri: str) -> Predictor:
        log_path = tmp_path_factory.mktemp("predictor") / "serve.log"
        server = start_predictor(model_uri, log_path, predictor_env(settings))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
