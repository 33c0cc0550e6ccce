"""The predictor process end to end: v1 and v2 REST, bad input, metrics, payload events, S3.

No kserve import here (the server runs in its own process); tritonclient.http is the v2 client.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from tests.serving.conftest import (
    MODEL_NAME,
    REPO,
    BuiltModel,
    EventReceiver,
    PredictorProcess,
    columns_of,
    serve_command,
    start_predictor,
)

JSON = {"content-type": "application/json"}
TOLERANCE = 1e-6


def v1(server: PredictorProcess, body: Any, **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    headers = kwargs.pop("headers", JSON)
    return requests.post(
        f"{server.base}/v1/models/{MODEL_NAME}:predict",
        data=data,
        headers=headers,
        timeout=30,
        **kwargs,
    )


def triton_inputs(
    built: BuiltModel, columns: dict[str, np.ndarray], binary: bool
) -> list[triton_http.InferInput]:
    inputs = []
    for name in built.names:
        column = columns[name]
        if name in built.numeric:
            tensor = triton_http.InferInput(name, list(column.shape), "FP32")
            tensor.set_data_from_numpy(column.astype(np.float32), binary_data=binary)
        else:
            tensor = triton_http.InferInput(name, list(column.shape), "BYTES")
            tensor.set_data_from_numpy(column.astype(object), binary_data=binary)
        inputs.append(tensor)
    return inputs


def assert_close(got: Any, want: np.ndarray) -> None:
    got_arr = np.asarray(got, dtype=np.float64).reshape(-1)
    assert got_arr.shape == want.shape
    assert np.max(np.abs(got_arr - want)) <= TOLERANCE


# -- v1 ------------------------------------------------------------------------------------------


def test_v1_named_rows_equal_onnxruntime(
    predictor: PredictorProcess,
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    reference: Any,
) -> None:
    rows = sample_rows[:200]
    response = v1(predictor, {"instances": rows})
    assert response.status_code == 200, response.text
    assert_close(response.json()["predictions"], reference(columns_of(built_model, rows)))


def test_v1_list_rows_in_signature_order(
    predictor: PredictorProcess,
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    reference: Any,
) -> None:
    rows = sample_rows[:50]
    lists = [[row[name] for name in built_model.names] for row in rows]
    response = v1(predictor, {"instances": lists})
    assert response.status_code == 200, response.text
    assert_close(response.json()["predictions"], reference(columns_of(built_model, rows)))


def test_v1_concurrent_requests_each_get_their_own_rows(
    predictor: PredictorProcess,
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    reference: Any,
) -> None:
    rows = sample_rows[:64]
    want = reference(columns_of(built_model, rows))

    def one(i: int) -> float:
        response = v1(predictor, {"instances": [rows[i]]})
        assert response.status_code == 200, response.text
        return float(response.json()["predictions"][0])

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        got = list(pool.map(one, range(len(rows))))
    assert_close(got, want)


# -- v2 REST (tritonclient.http) -----------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_rest_tritonclient_equals_onnxruntime(
    predictor: PredictorProcess,
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    reference: Any,
    binary: bool,
) -> None:
    rows = sample_rows[:300]
    columns = columns_of(built_model, rows)
    client = triton_http.InferenceServerClient(predictor.http_url)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready(MODEL_NAME)
        result = client.infer(
            MODEL_NAME,
            triton_inputs(built_model, columns, binary),
            outputs=[triton_http.InferRequestedOutput("prediction", binary_data=binary)],
            request_id="triton-req-1",
        )
    finally:
        client.close()
    output = result.as_numpy("prediction")
    assert output is not None and output.shape == (len(rows), 1)
    assert output.dtype == np.float32
    assert_close(output, reference(columns))
    assert result.get_response()["id"] == "triton-req-1"


def test_v2_nan_is_missing(
    predictor: PredictorProcess,
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    reference: Any,
) -> None:
    rows = sample_rows[:5]
    columns = columns_of(built_model, rows)
    first_numeric = next(n for n in built_model.names if n in built_model.numeric)
    columns[first_numeric][:, 0] = np.nan
    client = triton_http.InferenceServerClient(predictor.http_url)
    try:
        result = client.infer(MODEL_NAME, triton_inputs(built_model, columns, True))
    finally:
        client.close()
    assert_close(result.as_numpy("prediction"), reference(columns))


def test_model_metadata_lists_the_signature(
    predictor: PredictorProcess, built_model: BuiltModel
) -> None:
    meta = requests.get(f"{predictor.base}/v2/models/{MODEL_NAME}", timeout=10).json()
    assert [i["name"] for i in meta["inputs"]] == built_model.names
    assert {i["datatype"] for i in meta["inputs"]} == {"FP32", "BYTES"}
    assert meta["outputs"][0]["name"] == "prediction"


# -- bad input -------------------------------------------------------------------------------------


def v2_body(built: BuiltModel, rows: list[dict[str, Any]]) -> dict[str, Any]:
    columns = columns_of(built, rows)
    inputs = []
    for name in built.names:
        values = columns[name].reshape(-1).tolist()
        numeric = name in built.numeric
        inputs.append(
            {
                "name": name,
                "shape": [len(rows), 1],
                "datatype": "FP32" if numeric else "BYTES",
                "data": [None if numeric and v != v else v for v in values],
            }
        )
    return {"inputs": inputs}


def v2(server: PredictorProcess, body: Any, headers: dict[str, str] = JSON) -> requests.Response:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return requests.post(
        f"{server.base}/v2/models/{MODEL_NAME}/infer", data=data, headers=headers, timeout=60
    )


def test_malformed_json_is_400(predictor: PredictorProcess) -> None:
    for response in (v1(predictor, b"{not json"), v2(predictor, b"{not json")):
        assert response.status_code == 400, response.text
        assert "error" in response.json()


def test_wrong_content_type_is_400(
    predictor: PredictorProcess, sample_rows: list[dict[str, Any]]
) -> None:
    body = json.dumps({"instances": sample_rows[:1]})
    response = v1(predictor, body, headers={"content-type": "text/csv"})
    assert response.status_code == 400
    assert "application/json" in response.json()["error"]


def test_unknown_model_is_404(predictor: PredictorProcess) -> None:
    response = requests.post(
        f"{predictor.base}/v1/models/no-such-model:predict",
        data=json.dumps({"instances": [[1]]}),
        headers=JSON,
        timeout=10,
    )
    assert response.status_code == 404
    response = requests.post(
        f"{predictor.base}/v2/models/no-such-model/infer",
        data=json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
        headers=JSON,
        timeout=10,
    )
    assert response.status_code == 404


def test_v1_missing_unknown_and_wrong_type_name_the_input(
    predictor: PredictorProcess, built_model: BuiltModel, sample_rows: list[dict[str, Any]]
) -> None:
    numeric = next(n for n in built_model.names if n in built_model.numeric)
    categorical = next(n for n in built_model.names if n not in built_model.numeric)
    row = dict(sample_rows[0])
    cases = {
        numeric: {k: v for k, v in row.items() if k != numeric},  # missing
        "not_a_feature": {**row, "not_a_feature": 1},  # unknown
        categorical: {**row, categorical: 3.5},  # number for a string
    }
    wrong_numeric = {**row, numeric: "forty"}
    for name, bad in [*cases.items(), (numeric, wrong_numeric)]:
        response = v1(predictor, {"instances": [row, bad]})
        assert response.status_code == 400, response.text
        assert repr(name) in response.json()["error"]


def test_v2_wrong_datatype_and_shape_name_the_input(
    predictor: PredictorProcess, built_model: BuiltModel, sample_rows: list[dict[str, Any]]
) -> None:
    body = v2_body(built_model, sample_rows[:3])
    numeric = next(i for i in body["inputs"] if i["datatype"] == "FP32")
    numeric["datatype"] = "INT64"
    numeric["data"] = [1, 2, 3]
    response = v2(predictor, body)
    assert response.status_code == 400
    assert repr(numeric["name"]) in response.json()["error"]
    assert "FP32" in response.json()["error"]

    body = v2_body(built_model, sample_rows[:3])
    body["inputs"][0]["shape"] = [3, 2]
    response = v2(predictor, body)
    assert response.status_code == 400
    assert repr(body["inputs"][0]["name"]) in response.json()["error"]

    body = v2_body(built_model, sample_rows[:3])
    text = next(i for i in body["inputs"] if i["datatype"] == "BYTES")
    text["datatype"] = "FP32"
    response = v2(predictor, body)
    assert response.status_code == 400
    assert repr(text["name"]) in response.json()["error"]


def test_v2_infinity_is_rejected_naming_the_input(
    predictor: PredictorProcess, built_model: BuiltModel, sample_rows: list[dict[str, Any]]
) -> None:
    columns = columns_of(built_model, sample_rows[:4])
    numeric = next(n for n in built_model.names if n in built_model.numeric)
    columns[numeric][2, 0] = np.inf
    client = triton_http.InferenceServerClient(predictor.http_url)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL_NAME, triton_inputs(built_model, columns, True))
    finally:
        client.close()
    assert caught.value.status() == "400"
    assert repr(numeric) in caught.value.message()
    assert "row 2" in caught.value.message()


def test_batch_over_the_row_limit_is_400(
    predictor: PredictorProcess, sample_rows: list[dict[str, Any]]
) -> None:
    rows = (sample_rows * 3)[:1025]
    response = v1(predictor, {"instances": rows})
    assert response.status_code == 400
    assert "1025 rows" in response.json()["error"]


def test_50mb_body_is_refused_not_a_500(predictor: PredictorProcess) -> None:
    body = b'{"instances": [' + b"1," * (25 * 1024 * 1024) + b"1]}"
    response = v1(predictor, body)
    assert response.status_code == 413
    assert "--max-body-bytes" in response.json()["error"]
    # Still serving afterwards.
    assert requests.get(f"{predictor.base}/v2/health/live", timeout=10).status_code == 200


# -- metrics and payload events -------------------------------------------------------------------


def test_metrics_count_requests_and_batches(
    predictor: PredictorProcess, sample_rows: list[dict[str, Any]]
) -> None:
    assert v1(predictor, {"instances": sample_rows[:3]}).status_code == 200
    text = requests.get(f"{predictor.base}/metrics", timeout=10).text
    assert 'kfloop_predictor_requests_total{model="churn",protocol="v1",status="ok"}' in text
    assert "kfloop_predictor_request_seconds_bucket" in text
    assert "kfloop_predictor_batch_rows_bucket" in text
    assert "kfloop_payload_events_dropped_total" in text or "kfloop_payload_events_queued" in text


def test_payload_events_match_the_kserve_agent(
    predictor: PredictorProcess,
    event_receiver: EventReceiver,
    sample_rows: list[dict[str, Any]],
) -> None:
    request_id = f"evt-{time.time_ns()}"
    body = {"instances": sample_rows[:2]}
    response = v1(predictor, body, headers={**JSON, "x-request-id": request_id})
    assert response.status_code == 200
    events = event_receiver.wait_for(lambda e: e.headers.get("ce-id") == request_id)
    deadline = time.monotonic() + 10
    while len(events) < 2 and time.monotonic() < deadline:
        events = event_receiver.wait_for(lambda e: e.headers.get("ce-id") == request_id)
    by_type = {e.headers["ce-type"]: e for e in events}
    assert set(by_type) == {
        "org.kubeflow.serving.inference.request",
        "org.kubeflow.serving.inference.response",
    }
    for event in by_type.values():
        headers = event.headers
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-inferenceservicename"] == MODEL_NAME
        assert headers["ce-namespace"] == "kfloop-test"
        assert headers["ce-component"] == "predictor"
        assert headers["ce-endpoint"] == "default"
        assert headers["ce-source"].startswith("http://")
        assert headers["content-type"] == "application/json"
    assert json.loads(by_type["org.kubeflow.serving.inference.request"].body) == body
    assert json.loads(by_type["org.kubeflow.serving.inference.response"].body) == response.json()


# -- loading: S3 and failures ----------------------------------------------------------------------


def run_serve(
    args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        serve_command(args), cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )


def test_missing_model_uri_exits_non_zero_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = run_serve(["--model-uri", str(missing), "--http-port", "0"])
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_serves_from_s3(
    built_model: BuiltModel,
    store: ObjectStore,
    settings: Settings,
    bucket: str,
    sample_rows: list[dict[str, Any]],
    reference: Any,
    tmp_path: Path,
) -> None:
    store.put_dir(built_model.package, f"s3://{bucket}/churn/v1/")
    env = {**_base_env(), **settings.to_env()}
    server = start_predictor(f"s3://{bucket}/churn/v1/", tmp_path / "s3.log", env=env)
    try:
        response = v1(server, {"instances": sample_rows[:10]})
        assert response.status_code == 200, response.text
        assert_close(
            response.json()["predictions"], reference(columns_of(built_model, sample_rows[:10]))
        )
    finally:
        server.stop()

    result = run_serve(["--model-uri", f"s3://{bucket}/no/such/version/"], env=env)
    assert result.returncode == 1
    assert f"s3://{bucket}/no/such/version/" in result.stderr


def test_wrong_s3_credentials_name_the_variables(
    built_model: BuiltModel, store: ObjectStore, settings: Settings, bucket: str
) -> None:
    store.put_dir(built_model.package, f"s3://{bucket}/churn/v1/")
    env = {
        **_base_env(),
        **settings.with_credentials("wrong-key", "wrong-secret").to_env(),
        "KFLOOP_S3_RETRIES": "0",
    }
    result = run_serve(["--model-uri", f"s3://{bucket}/churn/v1/"], env=env)
    assert result.returncode == 1
    assert "AWS_ACCESS_KEY_ID" in result.stderr and "AWS_SECRET_ACCESS_KEY" in result.stderr
    assert "wrong-secret" not in result.stderr


def test_s3_without_credentials_names_the_variable() -> None:
    env = {k: v for k, v in _base_env().items() if not k.startswith("AWS_")}
    result = run_serve(["--model-uri", "s3://kfloop-models/churn/v1/"], env=env)
    assert result.returncode == 1
    assert "AWS_ACCESS_KEY_ID" in result.stderr


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "KFLOOP_"))}


# -- latency (reported, not asserted) -------------------------------------------------------------


def test_single_request_latency_report(
    predictor: PredictorProcess,
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """500 sequential batch-1 requests per protocol over one keep-alive connection."""
    loops = 500
    figures: dict[str, dict[str, float]] = {}
    session = requests.Session()
    v1_body = json.dumps({"instances": sample_rows[:1]})
    v2_json = json.dumps(v2_body(built_model, sample_rows[:1]))
    targets = {
        "v1": (f"{predictor.base}/v1/models/{MODEL_NAME}:predict", v1_body),
        "v2": (f"{predictor.base}/v2/models/{MODEL_NAME}/infer", v2_json),
    }
    for label, (url, body) in targets.items():
        times = []
        for _ in range(loops):
            started = time.perf_counter()
            response = session.post(url, data=body, headers=JSON, timeout=30)
            times.append(time.perf_counter() - started)
            assert response.status_code == 200
        ms = np.array(times) * 1000
        figures[label] = {
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "requests": loops,
        }
    session.close()
    out = tmp_path_factory.mktemp("latency") / "latency.json"
    out.write_text(json.dumps(figures, indent=2))
    print(f"\nsingle-request latency ({out}): {json.dumps(figures)}")
