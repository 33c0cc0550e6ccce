"""Reference clients against the predictor: tritonclient gRPC (here) and kserve's REST client.

``kserve`` and ``tritonclient.grpc`` cannot share a process (both register the protobuf package
``inference``). pytest runs every test file in one process, so the rule is: NO test module
imports kserve; tritonclient.grpc is imported here; kserve's own client runs in a subprocess
of the serving env (``KSERVE_CLIENT_SCRIPT``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.serving.conftest import MODEL_NAME, REPO, BuiltModel, PredictorProcess, columns_of

TOLERANCE = 1e-6


def grpc_inputs(built: BuiltModel, columns: dict[str, np.ndarray]) -> list[Any]:
    inputs = []
    for name in built.names:
        column = columns[name]
        datatype = "FP32" if name in built.numeric else "BYTES"
        tensor = triton_grpc.InferInput(name, list(column.shape), datatype)
        tensor.set_data_from_numpy(
            column.astype(np.float32) if datatype == "FP32" else column.astype(object)
        )
        inputs.append(tensor)
    return inputs


def test_grpc_tritonclient_equals_onnxruntime(
    predictor: PredictorProcess,
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    reference: Any,
) -> None:
    rows = sample_rows[:300]
    columns = columns_of(built_model, rows)
    client = triton_grpc.InferenceServerClient(predictor.grpc_url)
    try:
        assert client.is_server_live()
        assert client.is_model_ready(MODEL_NAME)
        result = client.infer(MODEL_NAME, grpc_inputs(built_model, columns), request_id="g-1")
    finally:
        client.close()
    output = result.as_numpy("prediction")
    assert output is not None and output.shape == (len(rows), 1)
    got = output.astype(np.float64).reshape(-1)
    assert np.max(np.abs(got - reference(columns))) <= TOLERANCE


def test_grpc_bad_input_is_invalid_argument_naming_it(
    predictor: PredictorProcess, built_model: BuiltModel, sample_rows: list[dict[str, Any]]
) -> None:
    columns = columns_of(built_model, sample_rows[:2])
    inputs = grpc_inputs(built_model, columns)[:-1]  # drop the last feature
    client = triton_grpc.InferenceServerClient(predictor.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL_NAME, inputs)
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert repr(built_model.names[-1]) in caught.value.message()

        with pytest.raises(InferenceServerException) as caught:
            client.infer("no-such-model", grpc_inputs(built_model, columns))
        assert caught.value.status() == "StatusCode.NOT_FOUND"
    finally:
        client.close()


KSERVE_CLIENT_SCRIPT = r"""
import asyncio, json, sys
import numpy as np
from kserve import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest

spec = json.loads(sys.stdin.read())

async def main():
    out = {}
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=30))
    res = await v1.infer(spec["base"], {"instances": spec["rows"]}, model_name=spec["model"])
    out["v1"] = res["predictions"]
    await v1.close()
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    inputs = []
    for name in spec["names"]:
        values = [r[name] for r in spec["rows"]]
        if name in spec["numeric"]:
            arr = np.array([[np.nan if v is None else float(v)] for v in values], np.float32)
            dtype = "FP32"
        else:
            arr = np.array([["" if v is None else v] for v in values], dtype=object)
            dtype = "BYTES"
        tensor = InferInput(name=name, shape=list(arr.shape), datatype=dtype)
        tensor.set_data_from_numpy(arr, binary_data=False)
        inputs.append(tensor)
    request = InferRequest(model_name=spec["model"], infer_inputs=inputs, request_id="k-1")
    res = await v2.infer(spec["base"], request, model_name=spec["model"])
    out["v2"] = res.outputs[0].as_numpy().reshape(-1).tolist()
    await v2.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_kserve_rest_client_v1_and_v2(
    predictor: PredictorProcess,
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    reference: Any,
) -> None:
    rows = sample_rows[:20]
    spec = {
        "base": predictor.base,
        "model": MODEL_NAME,
        "rows": rows,
        "names": built_model.names,
        "numeric": sorted(built_model.numeric),
    }
    result = subprocess.run(
        [sys.executable, "-c", KSERVE_CLIENT_SCRIPT],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    want = reference(columns_of(built_model, rows))
    for key in ("v1", "v2"):
        assert np.max(np.abs(np.asarray(got[key], dtype=np.float64) - want)) <= TOLERANCE
