"""Hot swap through the Open Inference Protocol repository extension, on a REAL server.

``POST /v2/repository/models/<name>/load`` with ``{"parameters": {"uri": ...}}`` swaps in a
second model version (the demo model trained on another seed) while four client threads keep
sending requests: none fails, each answer is the old model's or the new model's prediction
(ONNX Runtime on that package), the old one before the load was sent and the new one after it
returned. A load from a URI that does not exist is a 400 naming the URI and the old version
keeps serving; unload makes inference a 404 and a body-less load brings the last URI back.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from tests.serving.conftest import (
    MODEL_NAME,
    PIPELINE_PYTHON,
    REPO,
    BuiltModel,
    PredictorProcess,
    columns_of,
    start_predictor,
)

SECOND_SEED = 11
WORKERS = 4
BEFORE_SWAP = 100  # requests answered before the load is sent
AFTER_SWAP = 300  # requests answered after the load returned
MAX_REQUESTS = 2000  # bound of the whole loop
MAX_SECONDS = 120.0
TOLERANCE = 1e-6
ADMIN_TOKEN = "hot-swap-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="session")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    """The demo model again, trained on another seed: a second version with other weights."""
    reuse = os.environ.get("KFLOOP_SERVING_TEST_MODEL_V2")
    if reuse and (Path(reuse) / "DONE").is_file():
        return BuiltModel(Path(reuse))
    if not PIPELINE_PYTHON.is_file():
        pytest.skip(f"{PIPELINE_PYTHON} is missing: run `make setup` to build the pipeline env")
    out = Path(reuse) if reuse else tmp_path_factory.mktemp("serving-model-v2") / "model"
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'tests/serving'); "
        f"import model_factory as m; m.SEED = {SECOND_SEED}; m.build(Path({str(out)!r}))"
    )
    result = subprocess.run(
        [str(PIPELINE_PYTHON), "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
    )
    if result.returncode != 0 or not (out / "DONE").is_file():
        raise RuntimeError(f"second model build failed ({result.returncode}):\n{result.stderr}")
    return BuiltModel(out)


def ort_predict(package: Path, columns: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(["prediction"], {k: v.reshape(-1, 1) for k, v in columns.items()})[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def infer_v1(session: requests.Session, server: PredictorProcess, row: dict[str, Any]) -> Any:
    return session.post(
        f"{server.base}/v1/models/{MODEL_NAME}:predict", json={"instances": [row]}, timeout=30
    )


def infer_v2(session: requests.Session, server: PredictorProcess, row: dict[str, Any]) -> Any:
    inputs = []
    for name, value in row.items():
        if name in _NUMERIC:
            inputs.append({"name": name, "shape": [1], "datatype": "FP32", "data": [float(value)]})
        else:
            inputs.append({"name": name, "shape": [1], "datatype": "BYTES", "data": [value]})
    return session.post(
        f"{server.base}/v2/models/{MODEL_NAME}/infer", json={"inputs": inputs}, timeout=30
    )


_NUMERIC: set[str] = set()


def load(server: PredictorProcess, uri: str | None = None, body: Any = None) -> requests.Response:
    if body is None and uri is not None:
        body = {"parameters": {"uri": uri}}
    return requests.post(
        f"{server.base}/v2/repository/models/{MODEL_NAME}/load",
        data=b"" if body is None else json.dumps(body),
        headers={"content-type": "application/json", **ADMIN},
        timeout=300,
    )


@dataclass
class Answer:
    row: int
    sent: float
    done: float
    status: int
    prediction: float | None
    error: str = ""


class Traffic:
    """WORKERS threads sending one-row requests (v1 and v2 alternately) until told to stop."""

    def __init__(self, server: PredictorProcess, rows: list[dict[str, Any]]) -> None:
        self.server = server
        self.rows = rows
        self.answers: list[Answer] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sent = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(WORKERS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _next(self) -> int | None:
        with self.lock:
            if self.stop.is_set() or self.sent >= MAX_REQUESTS:
                return None
            self.sent += 1
            return self.sent - 1

    def _run(self) -> None:
        with requests.Session() as session:
            while (i := self._next()) is not None:
                row = i % len(self.rows)
                sent = time.monotonic()
                try:
                    # v2 JSON has no missing value (NaN); rows with one go as v1.
                    if i % 2 or None in self.rows[row].values():
                        response = infer_v1(session, self.server, self.rows[row])
                        ok = response.status_code == 200
                        pred = response.json()["predictions"][0] if ok else None
                    else:
                        response = infer_v2(session, self.server, self.rows[row])
                        ok = response.status_code == 200
                        pred = response.json()["outputs"][0]["data"][0] if ok else None
                    answer = Answer(
                        row, sent, time.monotonic(), response.status_code, pred, response.text[:300]
                    )
                except requests.RequestException as exc:
                    answer = Answer(row, sent, time.monotonic(), 0, None, repr(exc))
                with self.lock:
                    self.answers.append(answer)

    def wait_answers(self, count: int) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.answers) >= count or self.sent >= MAX_REQUESTS:
                    return
            time.sleep(0.01)

    def finish(self) -> list[Answer]:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        with self.lock:
            return list(self.answers)


def test_load_swaps_versions_without_a_failed_request(
    built_model: BuiltModel,
    second_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    store: ObjectStore,
    settings: Settings,
    bucket: str,
    tmp_path: Path,
) -> None:
    _NUMERIC.update(built_model.numeric)
    v1_uri, v2_uri = f"s3://{bucket}/churn/v1/", f"s3://{bucket}/churn/v2/"
    store.put_dir(built_model.package, v1_uri)
    store.put_dir(second_model.package, v2_uri)
    rows = sample_rows[:40]
    columns = columns_of(built_model, rows)
    old = ort_predict(built_model.package, columns)
    new = ort_predict(second_model.package, columns)
    assert np.all(np.abs(old - new) > 10 * TOLERANCE), "the two versions must differ"

    env = {**os.environ, **settings.to_env(), "KFLOOP_SERVING_ADMIN_TOKEN": ADMIN_TOKEN}
    server = start_predictor(v1_uri, tmp_path / "swap.log", ["--grpc-port", "0"], env=env)
    traffic = Traffic(server, rows)
    try:
        traffic.start()
        traffic.wait_answers(BEFORE_SWAP)
        load_sent = time.monotonic()
        response = load(server, v2_uri)
        load_done = time.monotonic()
        assert response.status_code == 200, response.text
        assert response.json() == {"name": MODEL_NAME, "load": True}
        with traffic.lock:
            answered_by_load = len(traffic.answers)
        traffic.wait_answers(answered_by_load + AFTER_SWAP)
        answers = traffic.finish()
    finally:
        traffic.stop.set()
        server.stop()

    during = [a for a in answers if a.sent < load_done and a.done > load_sent]
    print(
        f"hot swap: {len(answers)} requests, {len(during)} answered while the load ran "
        f"({load_done - load_sent:.2f} s)"
    )
    assert during, "the server must keep answering while a new version loads"
    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} failed requests during the swap, e.g. {failed[:3]}"
    before = [a for a in answers if a.done < load_sent]
    after = [a for a in answers if a.sent > load_done]
    assert len(before) >= BEFORE_SWAP and len(after) >= AFTER_SWAP, (len(before), len(after))
    for a in before:
        assert abs(a.prediction - old[a.row]) <= TOLERANCE, ("old", a)
    for a in after:
        assert abs(a.prediction - new[a.row]) <= TOLERANCE, ("new", a)
    for a in answers:  # during the swap: one version or the other, never anything else
        p = a.prediction
        assert p is not None and min(abs(p - old[a.row]), abs(p - new[a.row])) <= TOLERANCE


def test_failed_load_keeps_the_old_version_then_unload_and_reload(
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    store: ObjectStore,
    settings: Settings,
    bucket: str,
    reference: Any,
    tmp_path: Path,
) -> None:
    _NUMERIC.update(built_model.numeric)
    env = {**os.environ, **settings.to_env(), "KFLOOP_SERVING_ADMIN_TOKEN": ADMIN_TOKEN}
    server = start_predictor(
        str(built_model.package), tmp_path / "fail.log", ["--grpc-port", "0"], env=env
    )
    rows = sample_rows[:5]
    want = reference(columns_of(built_model, rows))

    def served() -> requests.Response:
        return requests.post(
            f"{server.base}/v1/models/{MODEL_NAME}:predict", json={"instances": rows}, timeout=30
        )

    try:
        missing_dir = str(tmp_path / "no" / "such" / "version")
        missing_s3 = f"s3://{bucket}/churn/v9/"
        for uri in (missing_dir, missing_s3):
            response = load(server, uri)
            assert 400 <= response.status_code < 500, response.text
            assert uri in response.json()["error"]
            ok = served()
            assert ok.status_code == 200, ok.text
            assert np.max(np.abs(np.array(ok.json()["predictions"]) - want)) <= TOLERANCE

        for body, field in (
            ("not json", "not JSON"),
            ({"parameters": {"uri": 7}}, "parameters.uri"),
            ({"parameters": "x"}, "parameters"),
        ):
            response = requests.post(
                f"{server.base}/v2/repository/models/{MODEL_NAME}/load",
                data=body if isinstance(body, str) else json.dumps(body),
                headers=ADMIN,
                timeout=30,
            )
            assert response.status_code == 400 and field in response.json()["error"]

        unloaded = requests.post(
            f"{server.base}/v2/repository/models/{MODEL_NAME}/unload", headers=ADMIN, timeout=30
        )
        assert unloaded.status_code == 200, unloaded.text
        assert served().status_code == 404
        assert (
            requests.get(f"{server.base}/v2/models/{MODEL_NAME}/ready", timeout=30).status_code
            != 200
        )

        reloaded = load(server)  # no body: the URI it was last loaded from
        assert reloaded.status_code == 200, reloaded.text
        again = served()
        assert again.status_code == 200, again.text
        assert np.max(np.abs(np.array(again.json()["predictions"]) - want)) <= TOLERANCE

        metrics = requests.get(f"{server.base}/metrics", timeout=30).text
        assert 'kfloop_predictor_repository_loads_total{model="churn",outcome="failed"} 2.0' in (
            metrics
        )
    finally:
        server.stop()
