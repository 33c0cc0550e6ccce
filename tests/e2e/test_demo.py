"""End to end: `kfloop demo` (and with it `kfloop run training`) on a fresh local stack.

Runs the real command in a subprocess, as `make demo` does, on its own SeaweedFS, and checks
what a user would: a blessed, accepted, parity-checked ONNX model in the local registry,
every artifact on disk, no credential in the output, and the stack stopped afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from kfloop.core.objectstore import ObjectStore
from kfloop.local.stack import LocalStack
from tests.conftest import free_s3_port

KFLOOP = str(Path(sys.executable).parent / "kfloop")


@pytest.mark.slow
def test_demo_trains_and_publishes_a_parity_checked_onnx_model(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_s3_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "KFLOOP_"))}
    out = subprocess.run(
        [
            KFLOOP,
            "demo",
            "--home",
            str(home),
            "--s3-port",
            str(port),
            "--keep",
            "--rows",
            "6000",
            "--max-trials",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
    )
    stack = LocalStack(home=home, s3_port=port)
    try:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        published = next(
            line.split(": ", 1)[1].strip()
            for line in out.stdout.splitlines()
            if "published to the registry:" in line
        )
        settings = stack.settings()
        assert settings.secret_key.get() not in out.stdout + out.stderr
        store = ObjectStore(settings)
        names = sorted(o.uri.key.rsplit("/", 1)[-1] for o in store.list_objects(published))
        assert names == ["MODEL_CARD.md", "metadata.json", "model.onnx", "reference_profile.json"]
        metadata = json.loads(store.get_bytes(published + "metadata.json"))
        assert metadata["parity"]["max_abs_diff"] <= metadata["parity"]["tolerance"] <= 1e-5
        model = tmp_path / "model.onnx"
        store.get_file(published + "model.onnx", model)
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        kinds = {i.name: i.type for i in session.get_inputs()}
        assert kinds["country"] == "tensor(string)"  # raw strings go straight in
        assert kinds["income"] == "tensor(float)"
        # Every step left its artifacts under the pipeline root.
        root = home / "pipeline-root"
        steps = {p.name for run in root.iterdir() for p in run.iterdir() if p.is_dir()}
        for step in (
            "ingest-data",
            "validate-data",
            "clean-data",
            "label-data",
            "split-dataset",
            "tune-hyperparameters",
            "train-model",
            "evaluate-model",
            "package-onnx",
            "acceptance-test",
            "publish-model",
        ):
            assert step in steps, sorted(steps)
        blessing = next(root.glob("*/evaluate-model/blessing/blessing.json"))
        assert json.loads(blessing.read_text())["blessed"] is True
        acceptance = next(root.glob("*/acceptance-test/acceptance/acceptance.json"))
        assert json.loads(acceptance.read_text())["passed"] is True
    finally:
        stack.down()
