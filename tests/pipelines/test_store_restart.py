"""The object store goes away during a pipeline run: the run fails cleanly, a rerun succeeds.

`kfloop run training` runs in a subprocess on its own stack folder. When the run reaches the
packaging step (training is done, publishing is still to come) SeaweedFS is stopped. The
publish step cannot reach the store: the run must fail with an error that names the
endpoint, leave nothing of the version in the registry and no production pointer. With
the store back (same data folder), the same command publishes and deploys the version.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kfloop.core.objectstore import ObjectStore
from kfloop.data.synth import generate_synthetic_data
from kfloop.deploy.registry import read_production
from kfloop.local.stack import LocalStack
from tests.conftest import free_s3_port

KFLOOP = str(Path(sys.executable).parent / "kfloop")


def _run_training(home: Path, data_uri: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "KFLOOP_"))}
    env["KFLOOP_S3_RETRIES"] = "1"  # fail fast once the store is gone
    return subprocess.Popen(
        [
            KFLOOP,
            "run",
            "training",
            "--home",
            str(home),
            "-p",
            f"data_uri={data_uri}",
            "-p",
            "version=v1",
            "-p",
            "max_trials=1",
            "-p",
            "epochs_per_trial=2",
            "-p",
            "deploy_target=none",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_store_restart_during_a_run_fails_cleanly_and_a_rerun_succeeds(tmp_path: Path) -> None:
    home = tmp_path / "home"
    stack = LocalStack(home=home, s3_port=free_s3_port())
    settings = stack.up()
    try:
        store = ObjectStore(settings)
        data_uri = f"s3://{settings.data_bucket}/restart/customers.parquet"
        generate_synthetic_data(data_uri, rows=3000, seed=1, store=store)
        version_prefix = f"s3://{settings.models_bucket}/churn/v1/"

        run = _run_training(home, data_uri)
        assert run.stdout is not None
        seen: list[str] = []
        for line in run.stdout:
            seen.append(line)
            if "Executing task" in line and "package-onnx" in line:
                stack.down()  # the store goes away mid-run
                break
        else:
            pytest.fail("the run never reached package-onnx:\n" + "".join(seen[-40:]))
        rest, _ = run.communicate(timeout=600)
        output = "".join(seen) + rest
        assert run.returncode != 0, output[-3000:]
        # The failure names the store it could not reach.
        assert f"127.0.0.1:{stack.s3_port}" in output
        assert "publish-model" in output and "FAILURE" in output

        started = time.monotonic()
        stack.up()  # same data folder: the store comes back with its data
        assert time.monotonic() - started < 120
        assert list(store.list_objects(version_prefix)) == []  # nothing half-published
        assert read_production(store, f"s3://{settings.models_bucket}", "churn") is None

        rerun = _run_training(home, data_uri)
        out, _ = rerun.communicate(timeout=900)
        assert rerun.returncode == 0, out[-8000:]
        names = sorted(o.uri.key.rsplit("/", 1)[-1] for o in store.list_objects(version_prefix))
        assert "model.onnx" in names and "metadata.json" in names
        pointer = read_production(store, f"s3://{settings.models_bucket}", "churn")
        assert pointer is not None and pointer.version == "v1"
    finally:
        stack.down()
