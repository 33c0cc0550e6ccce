"""Issue 5's "Done when", end to end on the real store: predictor -> logger -> Parquet + drift.

The published model folder (``package_onnx``'s output, with ``reference_profile.json``) is
uploaded to SeaweedFS; ``kfloop logger`` runs from it (reference profile) and ``kfloop serve``
from its ``s3://`` URI with ``--logger-url`` pointing at the logger. In-distribution rows from
the synthetic generator go in through v2 REST (``tritonclient.http``, binary tensors) and v1
REST, each with an explicit request id; the PSI gauge of ``income`` stays below 0.1. Then
rows drifted by two standard deviations on ``income``: its PSI rises above 0.2. After SIGTERM
to both, the Parquet under ``s3://<logs>/<model>/<version>/`` holds exactly one row per
request sent, with the ids that were sent.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import requests
import tritonclient.http as triton_http

from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from kfloop.data.synth import generate_table
from tests.serving.conftest import MODEL_NAME, BuiltModel, start_predictor
from tests.serving.test_logger import LoggerServer, metric, read_logs

VERSION = "v1"
FEATURE = "income"  # the drifted feature
ROWS_PER_PHASE = 400
WINDOW_ROWS = 300
WAIT_S = 120.0


@pytest.fixture
def start_logger(settings: Settings, tmp_path: Path) -> Any:
    servers: list[LoggerServer] = []

    def start(*args: str) -> LoggerServer:
        server = LoggerServer(args, settings.to_env(), tmp_path / f"logger-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


def generated_rows(built: BuiltModel, seed: int, drift: dict[str, Any] | None) -> list[dict]:
    """Model-input rows from the synthetic generator (None = missing)."""
    table = generate_table(rows=ROWS_PER_PHASE, seed=seed, drift=drift).select(built.names)
    rows = table.to_pylist()
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and math.isnan(value):
                row[key] = None
    return rows


def send(
    built: BuiltModel,
    base: str,
    client: triton_http.InferenceServerClient,
    rows: list[dict[str, Any]],
    prefix: str,
) -> list[str]:
    """One request per row, v2 binary (tritonclient) and v1 alternately; returns the ids."""
    ids = []
    with requests.Session() as session:
        for i, row in enumerate(rows):
            rid = f"{prefix}-{i:05d}"
            if i % 2:
                response = session.post(
                    f"{base}/v1/models/{MODEL_NAME}:predict",
                    json={"instances": [row]},
                    headers={"x-request-id": rid},
                    timeout=30,
                )
                assert response.status_code == 200, response.text
            else:
                inputs = []
                for name in built.names:
                    value = row[name]
                    if name in built.numeric:
                        tensor = triton_http.InferInput(name, [1, 1], "FP32")
                        number = np.nan if value is None else float(value)
                        tensor.set_data_from_numpy(np.array([[number]], dtype=np.float32))
                    else:
                        tensor = triton_http.InferInput(name, [1, 1], "BYTES")
                        text = "" if value is None else value
                        tensor.set_data_from_numpy(np.array([[text]], dtype=object))
                    inputs.append(tensor)
                result = client.infer(MODEL_NAME, inputs, request_id=rid)
                assert result.get_response()["id"] == rid
            ids.append(rid)
    return ids


def wait_received(logger: LoggerServer, requests_sent: int) -> str:
    """/metrics once the logger received the request AND response event of every request and
    published the drift of them (drift updates are at most once a second)."""
    deadline = time.monotonic() + WAIT_S
    text = ""
    while time.monotonic() < deadline:
        text = logger.metrics()
        got = [
            metric(text, "kfloop_logger_events_received_total", type=kind)
            for kind in ("request", "response")
        ] + [metric(text, "kfloop_prediction_count")]
        if all(g == requests_sent for g in got):
            return text
        time.sleep(0.2)
    raise AssertionError(f"logger did not receive {requests_sent} pairs in time:\n{text[-3000:]}")


def test_served_traffic_lands_in_parquet_and_moves_drift(
    built_model: BuiltModel,
    store: ObjectStore,
    settings: Settings,
    bucket: str,
    start_logger: Any,
    tmp_path: Path,
) -> None:
    assert FEATURE in built_model.numeric
    model_uri = f"s3://{bucket}/models/{MODEL_NAME}/{VERSION}/"
    store.put_dir(built_model.package, model_uri)
    logs_root = f"s3://{bucket}/logs"
    logger = start_logger(
        "--reference-profile", model_uri, "--model-name", MODEL_NAME, "--model-version", VERSION,
        "--output", logs_root, "--window-rows", str(WINDOW_ROWS), "--drift-every-rows", "50",
        "--flush-rows", "256", "--flush-seconds", "300",
    )  # fmt: skip
    env = {**os.environ, **settings.to_env()}
    predictor = start_predictor(
        model_uri,
        tmp_path / "predictor.log",
        ["--logger-url", f"{logger.url}/", "--grpc-port", "0"],
        env=env,
    )
    client = triton_http.InferenceServerClient(predictor.http_url)
    labels = {"model": MODEL_NAME, "version": VERSION, "feature": FEATURE}
    try:
        steady = generated_rows(built_model, seed=101, drift=None)
        sent = send(built_model, predictor.base, client, steady, "steady")
        text = wait_received(logger, len(sent))
        psi_steady = metric(text, "kfloop_feature_psi", **labels)
        assert psi_steady < 0.1, psi_steady

        drifted = generated_rows(built_model, seed=102, drift={"mean_shift_stds": {FEATURE: 2.0}})
        sent += send(built_model, predictor.base, client, drifted, "drift")
        text = wait_received(logger, len(sent))
        psi_drift = metric(text, "kfloop_feature_psi", **labels)
        assert psi_drift > 0.2, psi_drift
        untouched = metric(text, "kfloop_feature_psi", **{**labels, "feature": "age"})
        print(f"e2e PSI {FEATURE}: {psi_steady:.4f} -> {psi_drift:.4f}; age {untouched:.4f}")
        assert untouched < 0.1, untouched
    finally:
        client.close()
        predictor.stop()
    assert logger.terminate() == 0, logger.log()

    table, files = read_logs(store, f"{logs_root}/{MODEL_NAME}/{VERSION}/")
    assert files and all("/date=" in f and "/hour=" in f for f in files)
    assert table.num_rows == len(sent)
    ids = table.column("request_id").to_pylist()
    assert sorted(ids) == sorted(sent)
    assert table.column("prediction").null_count == 0
    assert set(table.column("model_version").to_pylist()) == {VERSION}
    # The logged features are the ones sent (the drifted phase too).
    by_id = dict(zip(ids, table.column(FEATURE).to_pylist(), strict=True))
    for rid, row in zip(sent, steady + drifted, strict=True):
        want = row[FEATURE]
        got = by_id[rid]
        assert (want is None and got is None) or abs(got - want) <= 1e-3 * max(1.0, abs(want))
    assert isinstance(table, pa.Table)
