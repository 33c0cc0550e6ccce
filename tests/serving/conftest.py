"""Fixtures for the serving tests: a REAL packaged model, reference predictions, a predictor.

The model comes from ``model_factory.py`` run with the PIPELINE env's Python (TensorFlow is
not in the serving env), once per session (set ``KFLOOP_SERVING_TEST_MODEL`` to a folder to
reuse a build across sessions). The predictor runs ``serve_main`` in its own process on free
ports: kserve is never imported in the test process, so ``tritonclient.grpc`` can be.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from kfloop.local.process import free_port

REPO = Path(__file__).resolve().parents[2]
PIPELINE_PYTHON = REPO / ".venv" / "bin" / "python"
SERVING_PYTHON = Path(sys.executable)
MODEL_NAME = "churn"
READY_TIMEOUT_S = 90.0


# -- the model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltModel:
    root: Path

    @property
    def package(self) -> Path:
        return self.root / "package"

    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads((self.package / "metadata.json").read_text(encoding="utf-8"))

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return list(self.metadata["inputs"])

    @property
    def names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    @property
    def numeric(self) -> set[str]:
        return {i["name"] for i in self.inputs if i["onnx_type"] == "tensor(float)"}


@pytest.fixture(scope="session")
def built_model(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    """Train + package the demo model once (pipeline env subprocess, ~30 s)."""
    reuse = os.environ.get("KFLOOP_SERVING_TEST_MODEL")
    if reuse and (Path(reuse) / "DONE").is_file():
        return BuiltModel(Path(reuse))
    if not PIPELINE_PYTHON.is_file():
        pytest.skip(f"{PIPELINE_PYTHON} is missing: run `make setup` to build the pipeline env")
    out = Path(reuse) if reuse else tmp_path_factory.mktemp("serving-model") / "model"
    result = subprocess.run(
        [str(PIPELINE_PYTHON), str(REPO / "tests" / "serving" / "model_factory.py"), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
    )
    if result.returncode != 0 or not (out / "DONE").is_file():
        raise RuntimeError(
            f"model_factory.py failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return BuiltModel(out)


@pytest.fixture(scope="session")
def sample_rows(built_model: BuiltModel) -> list[dict[str, Any]]:
    """Held-out rows as v1 instances (None = missing), features only."""
    table = pq.read_table(built_model.root / "sample.parquet", columns=built_model.names)
    rows = table.to_pylist()
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and math.isnan(value):
                row[key] = None
    return rows


def columns_of(built: BuiltModel, rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """v1-style rows as model columns: float32 (NaN = missing) and str ("" = missing)."""
    out: dict[str, np.ndarray] = {}
    for name in built.names:
        if name in built.numeric:
            out[name] = np.array(
                [[np.nan if r[name] is None else float(r[name])] for r in rows], dtype=np.float32
            )
        else:
            out[name] = np.array([["" if r[name] is None else r[name]] for r in rows], dtype=object)
    return out


@pytest.fixture(scope="session")
def reference(built_model: BuiltModel) -> Any:
    """ONNX Runtime run directly on the package: columns -> predictions (n,) float64."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(built_model.package / "model.onnx"), providers=["CPUExecutionProvider"]
    )

    def predict(columns: Mapping[str, np.ndarray]) -> np.ndarray:
        feed = {k: np.asarray(v).reshape(-1, 1) for k, v in columns.items()}
        out = session.run(["prediction"], feed)[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)

    return predict


# -- a payload-logger stand-in ------------------------------------------------------------------


@dataclass
class ReceivedEvent:
    headers: dict[str, str]
    body: bytes


@dataclass
class EventReceiver:
    """A loopback HTTP server that records every POST (headers lower-cased, body)."""

    url: str
    events: list[ReceivedEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, predicate: Any, timeout: float = 15.0) -> list[ReceivedEvent]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [e for e in self.events if predicate(e)]
            if found:
                return found
            time.sleep(0.05)
        return []


@pytest.fixture(scope="session")
def event_receiver() -> Iterator[EventReceiver]:
    receiver = EventReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            with receiver.lock:
                receiver.events.append(
                    ReceivedEvent({k.lower(): v for k, v in self.headers.items()}, body)
                )
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


# -- the predictor process ------------------------------------------------------------------------


@dataclass
class PredictorProcess:
    """``serve_main`` in a subprocess of the serving env."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path
    model_name: str = MODEL_NAME

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

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


def serve_command(args: Sequence[str]) -> list[str]:
    code = (
        "import sys; from kfloop.serving.predictor import serve_main; "
        f"sys.exit(serve_main({list(args)!r}))"
    )
    return [str(SERVING_PYTHON), "-c", code]


def start_predictor(
    model_uri: str,
    log_path: Path,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> PredictorProcess:
    """Start the predictor on free ports and wait until it is ready (or fail with its log)."""
    http_port, grpc_port = free_port(), free_port()
    args = [
        "--model-uri",
        model_uri,
        "--model-name",
        MODEL_NAME,
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        *extra,
    ]
    handle = log_path.open("wb")
    process = subprocess.Popen(
        serve_command(args),
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=dict(env) if env is not None else None,
    )
    handle.close()
    server = PredictorProcess(process, http_port, grpc_port, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"predictor exited with {process.returncode}:\n{server.log()}")
        try:
            if requests.get(f"{server.base}/v2/health/ready", timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"predictor not ready after {READY_TIMEOUT_S}s:\n{server.log()}")


@pytest.fixture(scope="session")
def predictor(
    built_model: BuiltModel,
    event_receiver: EventReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PredictorProcess]:
    """One predictor for the session: local folder, payload logging to ``event_receiver``."""
    log_path = tmp_path_factory.mktemp("predictor") / "predictor.log"
    server = start_predictor(
        str(built_model.package),
        log_path,
        ["--logger-url", event_receiver.url, "--namespace", "kfloop-test"],
    )
    yield server
    server.stop()
