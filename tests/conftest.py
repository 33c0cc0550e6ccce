"""Test set-up shared by both environments.

`make test` runs this suite twice: in `.venv` (pipeline extra) and in `.venv-serving`
(serving extra). Folders that need one environment's libraries are collected only there;
everything else runs in both.
"""

from __future__ import annotations

import importlib.util
import random
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio.deleteobjects import DeleteObject

from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from kfloop.local.process import port_in_use
from kfloop.local.seaweedfs import port_plan
from kfloop.local.stack import LocalStack


def current_environment() -> str:
    if importlib.util.find_spec("tensorflow_data_validation") is not None:
        return "pipeline"
    if importlib.util.find_spec("kserve") is not None:
        return "serving"
    raise RuntimeError("neither the pipeline nor the serving extra is installed; run `make setup`")


ENVIRONMENT = current_environment()
PIPELINE_ONLY = ["data", "model", "components", "pipelines", "deploy", "e2e"]
SERVING_ONLY = ["serving", "monitoring", "manifests"]

collect_ignore = [name for name in (SERVING_ONLY if ENVIRONMENT == "pipeline" else PIPELINE_ONLY)]


def pytest_report_header(config: pytest.Config) -> str:
    return f"kfloop test environment: {ENVIRONMENT}"


def free_s3_port() -> int:
    """An S3 port whose whole SeaweedFS port plan is free right now."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 40000, 5)
        if not any(port_in_use(p) for p in port_plan(port).values()):
            return port
    raise RuntimeError("no free port range for SeaweedFS")


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A real SeaweedFS for the whole session, in a temporary folder, on free ports."""
    home = tmp_path_factory.mktemp("kfloop-home")
    stack = LocalStack(home=home, s3_port=free_s3_port())
    stack.up()
    yield stack
    stack.down()


@pytest.fixture(scope="session")
def settings(local_stack: LocalStack) -> Settings:
    return local_stack.settings()


@pytest.fixture(scope="session")
def store(settings: Settings) -> ObjectStore:
    return ObjectStore(settings)


@pytest.fixture
def bucket(store: ObjectStore, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh bucket per test, named after the test."""
    raw = "t-" + request.node.name.lower()
    name = "".join(c if c.isalnum() else "-" for c in raw)[:50].strip("-")
    name = f"{name}-{random.randrange(16**6):06x}"
    store.ensure_bucket(name)
    yield name
    # SeaweedFS keeps one volume per bucket (a collection) and its volume count is bounded:
    # dropping the bucket after the test gives the volume back.
    try:
        client = store.client
        doomed = (DeleteObject(o.object_name) for o in client.list_objects(name, recursive=True))
        for error in client.remove_objects(name, doomed):
            warnings.warn(f"cleanup of bucket {name}: {error}", stacklevel=1)
        client.remove_bucket(name)
    except Exception as exc:  # cleanup must not fail the test
        warnings.warn(f"cleanup of bucket {name} failed: {exc}", stacklevel=1)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
