"""The raw ASGI fast path for v2 JSON inference answers exactly what KServe's route answers.

A plain v2 JSON body goes through the fast path; the same body with request ``parameters``
goes through KServe's FastAPI route (the fast path leaves those to KServe). Both must give the
same status and body, and ``kfloop_predictor_fast_path_requests_total`` says which path ran.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import requests

from tests.serving.conftest import (
    MODEL_NAME,
    BuiltModel,
    EventReceiver,
    PredictorProcess,
    columns_of,
)
from tests.serving.test_predictor import assert_close, v2_body

JSON = {"content-type": "application/json"}


def _fast_count(server: PredictorProcess) -> float:
    total = 0.0
    for line in requests.get(f"{server.base}/metrics", timeout=10).text.splitlines():
        if line.startswith("kfloop_predictor_fast_path_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _post(
    server: PredictorProcess, body: Any, path: str = "", headers: dict[str, str] | None = None
) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body)
    url = f"{server.base}{path or f'/v2/models/{MODEL_NAME}/infer'}"
    return requests.post(url, data=data, headers={**JSON, **(headers or {})}, timeout=60)


def _both(
    server: PredictorProcess, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[requests.Response, requests.Response]:
    """(fast path answer, KServe route answer) for one body; checks which path ran."""
    before = _fast_count(server)
    fast = _post(server, body, headers=headers)
    middle = _fast_count(server)
    slow = _post(server, {**body, "parameters": {"kfloop-test": 1}}, headers=headers)
    after = _fast_count(server)
    assert (middle - before, after - middle) == (1, 0)
    return fast, slow


def _rows(sample_rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    full = [r for r in sample_rows if None not in r.values()]
    return [full[i % len(full)] for i in range(n)]


def test_fast_answers_equal_kserve_answers(
    predictor: PredictorProcess,
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    reference: Any,
) -> None:
    for n in (1, 7, 1024):
        rows = _rows(sample_rows, n)
        body = {"id": f"same-{n}", **v2_body(built_model, rows)}
        fast, slow = _both(predictor, body)
        assert fast.status_code == slow.status_code == 200, (fast.text, slow.text)
        assert fast.headers["content-type"] == slow.headers["content-type"]
        assert fast.content == slow.content
        assert_close(fast.json()["outputs"][0]["data"], reference(columns_of(built_model, rows)))


def test_request_id_order_as_kserve(
    predictor: PredictorProcess, built_model: BuiltModel, sample_rows: list[dict[str, Any]]
) -> None:
    plain = v2_body(built_model, _rows(sample_rows, 1))
    cases = [
        ({"id": "body-id", **plain}, {}, "body-id"),
        ({"id": "body-id", **plain}, {"x-request-id": "xr"}, "xr"),
        ({"id": "body-id", **plain}, {"x-request-id": "xr", "ce-id": "ce"}, "ce"),
    ]
    for body, headers, want in cases:
        fast, slow = _both(predictor, body, headers)
        assert fast.json()["id"] == slow.json()["id"] == want
    fast, slow = _both(predictor, plain)
    assert len(fast.json()["id"]) == 36  # a new UUID each, as KServe does


def test_bad_input_is_400_naming_the_input_on_both_paths(
    predictor: PredictorProcess, built_model: BuiltModel, sample_rows: list[dict[str, Any]]
) -> None:
    rows = _rows(sample_rows, 3)
    numeric = next(n for n in built_model.names if n in built_model.numeric)
    text = next(n for n in built_model.names if n not in built_model.numeric)

    def edited(name: str, **change: Any) -> dict[str, Any]:
        body = v2_body(built_model, rows)
        for item in body["inputs"]:
            if item["name"] == name:
                item.update(change)
        return body

    missing = v2_body(built_model, rows)
    missing["inputs"] = [i for i in missing["inputs"] if i["name"] != numeric]
    unknown = v2_body(built_model, rows)
    unknown["inputs"].append({"name": "nope", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]})
    cases = {
        "wrong datatype": (edited(numeric, datatype="INT64"), numeric),
        "BYTES as FP32": (edited(text, datatype="FP32"), text),
        "wrong shape": (edited(numeric, shape=[3, 2]), numeric),
        "fewer values": (edited(numeric, data=[1.0, 2.0]), numeric),
        "text in FP32": (edited(numeric, data=["a", "b", "c"]), numeric),
        "number in BYTES": (edited(text, data=[1, 2, 3]), text),
        "missing input": (missing, numeric),
        "unknown input": (unknown, "nope"),
    }
    for label, (body, name) in cases.items():
        fast, slow = _both(predictor, body)
        assert fast.status_code == slow.status_code == 400, (label, fast.text, slow.text)
        assert repr(name) in fast.json()["error"], (label, fast.text)
        assert repr(name) in slow.json()["error"], (label, slow.text)
    too_many = v2_body(built_model, _rows(sample_rows, 1025))
    fast, slow = _both(predictor, too_many)
    assert fast.status_code == slow.status_code == 400
    assert fast.json() == slow.json()
    assert "1025 rows" in fast.json()["error"]


def test_large_json_bodies_answer_as_kserve_answers(
    predictor: PredictorProcess, built_model: BuiltModel, sample_rows: list[dict[str, Any]]
) -> None:
    """1,024-row JSON bodies, whose numbers the fast path reads straight into numpy
    (:func:`kfloop.serving.payload_json.load_request`): the same answer as KServe's route,
    valid or not, however the numbers are written."""
    rows = _rows(sample_rows, 1024)
    name = next(n for n in built_model.names if n in built_model.numeric)

    def body(label: str, change: Any) -> dict[str, Any]:
        out = {"id": label, **v2_body(built_model, rows)}
        for item in out["inputs"]:
            if item["name"] == name:
                item["data"] = change(list(item["data"]))
        return out

    def at_700(value: Any) -> Any:
        return lambda data: [*data[:700], value, *data[701:]]

    cases = {
        "as sent": (lambda data: data, 200),
        "integers": (lambda data: [round(v) for v in data], 200),
        "nested": (lambda data: [[v] for v in data], 200),
        "null at row 700": (at_700(None), 200),
        "text at row 700": (at_700("a"), 400),
        "list at row 700": (at_700([1.0, 2.0]), 400),
        "float32 overflow at row 700": (at_700(1e39), 400),
    }
    for label, (change, status) in cases.items():
        fast, slow = _both(predictor, body(label, change))
        assert fast.status_code == slow.status_code == status, (label, fast.text, slow.text)
        if status == 200:
            assert fast.content == slow.content, label
        else:
            assert repr(name) in fast.json()["error"], (label, fast.text)
            assert repr(name) in slow.json()["error"], (label, slow.text)


def test_what_the_fast_path_leaves_to_kserve(
    predictor: PredictorProcess, built_model: BuiltModel, sample_rows: list[dict[str, Any]]
) -> None:
    body = v2_body(built_model, _rows(sample_rows, 2))
    before = _fast_count(predictor)
    malformed = _post(predictor, b"{not json")
    assert malformed.status_code == 400 and "error" in malformed.json()
    unknown = _post(predictor, body, path="/v2/models/no-such-model/infer")
    assert unknown.status_code == 404
    other_version = _post(predictor, body, path=f"/v2/models/{MODEL_NAME}/versions/v9/infer")
    assert other_version.status_code == 501
    not_v2 = _post(predictor, {"inputs": "x"})
    assert not_v2.status_code == 400
    cloud_event = _post(
        predictor,
        body,
        headers={"ce-specversion": "1.0", "ce-source": "t", "ce-type": "t", "ce-id": "ce-1"},
    )
    assert cloud_event.status_code == 200, cloud_event.text
    assert _fast_count(predictor) == before
    # A binary answer asked for by a JSON request is the fast path's (same bytes as KServe's:
    # test_binary_tensors_fast_equal_kserve).
    binary_out = _post(
        predictor,
        {**body, "outputs": [{"name": "prediction", "parameters": {"binary_data": True}}]},
    )
    assert binary_out.status_code == 200
    assert "inference-header-content-length" in binary_out.headers
    wrong_output = _post(predictor, {**body, "outputs": [{"name": "nope"}]})
    assert wrong_output.status_code == 400 and "'nope'" in wrong_output.json()["error"]
    before += 2
    # The served version is answered by the fast path, with its version in the answer.
    version = built_model.metadata["version"]
    served = _post(predictor, body, path=f"/v2/models/{MODEL_NAME}/versions/{version}/infer")
    assert served.status_code == 200, served.text
    assert served.json()["model_version"] == version
    assert _fast_count(predictor) == before + 1


def test_fast_path_payload_events(
    predictor: PredictorProcess,
    event_receiver: EventReceiver,
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
) -> None:
    rows = _rows(sample_rows, 4)
    request_id = f"fast-evt-{time.time_ns()}"
    response = _post(predictor, {"id": request_id, **v2_body(built_model, rows)})
    assert response.status_code == 200
    deadline = time.monotonic() + 15
    events = []
    while len(events) < 2 and time.monotonic() < deadline:
        events = event_receiver.wait_for(lambda e: e.headers.get("ce-id") == request_id)
    by_type = {e.headers["ce-type"].rsplit(".", 1)[-1]: json.loads(e.body) for e in events}
    assert set(by_type) == {"request", "response"}
    sent = {i["name"]: i["data"] for i in v2_body(built_model, rows)["inputs"]}
    logged = {i["name"]: i["data"] for i in by_type["request"]["inputs"]}
    assert set(logged) == set(sent)
    for name in built_model.numeric:
        assert np.allclose(np.array(logged[name], dtype=float), np.array(sent[name], dtype=float))
    assert by_type["response"]["outputs"][0]["data"] == response.json()["outputs"][0]["data"]


def _binary_body(
    built: BuiltModel, rows: list[dict[str, Any]], params: Any, outputs: Any
) -> tuple[bytes, int]:
    """A v2 binary tensor extension body as tritonclient builds it (JSON header + raw)."""
    from tritonclient.http import InferInput
    from tritonclient.http._utils import _get_inference_request

    columns = columns_of(built, rows)
    tensors = []
    for name in built.names:
        datatype = "FP32" if name in built.numeric else "BYTES"
        tensor = InferInput(name, list(columns[name].shape), datatype)
        tensor.set_data_from_numpy(columns[name], binary_data=True)
        tensors.append(tensor)
    body, size = _get_inference_request(
        inputs=tensors,
        request_id="bin-1",
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=params,
    )
    return bytes(body), int(size)


def test_binary_tensors_fast_equal_kserve(
    predictor: PredictorProcess,
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    reference: Any,
) -> None:
    from tritonclient.http import InferRequestedOutput

    rows = sample_rows[:300]  # with missing values: NaN and "" travel in binary
    want = reference(columns_of(built_model, rows))
    for outputs in (None, [InferRequestedOutput("prediction", binary_data=False)]):
        answers = []
        for params in (None, {"kfloop-test": 1}):  # fast path, then KServe's route
            body, size = _binary_body(built_model, rows, params, outputs)
            before = _fast_count(predictor)
            answers.append(
                requests.post(
                    f"{predictor.base}/v2/models/{MODEL_NAME}/infer",
                    data=body,
                    headers={
                        "Inference-Header-Content-Length": str(size),
                        "content-type": "application/octet-stream",
                    },
                    timeout=60,
                )
            )
            assert _fast_count(predictor) - before == (1 if params is None else 0)
        fast, slow = answers
        assert fast.status_code == slow.status_code == 200, (fast.text, slow.text)
        assert fast.content == slow.content
        for header in ("inference-header-content-length", "content-type"):
            assert fast.headers.get(header) == slow.headers.get(header), header
        if outputs is None:
            json_size = int(fast.headers["inference-header-content-length"])
            got = np.frombuffer(fast.content[json_size:], dtype="<f4")
        else:
            got = np.array(fast.json()["outputs"][0]["data"])
        assert_close(got, want)


def test_binary_bad_input_names_it(
    predictor: PredictorProcess, built_model: BuiltModel, sample_rows: list[dict[str, Any]]
) -> None:
    rows = _rows(sample_rows, 2)
    body, size = _binary_body(built_model, rows, None, None)
    header = json.loads(body[:size])
    first = header["inputs"][0]
    assert first["datatype"] == "FP32"
    # Say the first tensor is 3 rows while its bytes hold 2: a 400 naming it. (KServe's own
    # route answers this one with a 500 "cannot reshape array": its decoder fails first.)
    first["shape"] = [3, 1]
    for case in ("shape", "bytes"):
        if case == "bytes":  # right shape, bytes cut short: a BYTES tensor's length prefix lies
            first["shape"] = [2, 1]
            text = next(i for i in header["inputs"] if i["datatype"] == "BYTES")
            text["parameters"]["binary_data_size"] -= 1
            raw = body[size:]
            offset = sum(
                i["parameters"]["binary_data_size"]
                for i in header["inputs"][: header["inputs"].index(text)]
            )
            end = offset + text["parameters"]["binary_data_size"] + 1
            raw = raw[: end - 1] + raw[end:]
        else:
            raw = body[size:]
            text = first
        new_header = json.dumps(header).encode()
        before = _fast_count(predictor)
        response = requests.post(
            f"{predictor.base}/v2/models/{MODEL_NAME}/infer",
            data=new_header + raw,
            headers={"Inference-Header-Content-Length": str(len(new_header))},
            timeout=60,
        )
        assert _fast_count(predictor) == before + 1
        assert response.status_code == 400, (case, response.text)
        assert repr(text["name"]) in response.json()["error"], case


def test_binary_request_is_payload_logged_as_it_arrived(
    predictor: PredictorProcess,
    event_receiver: EventReceiver,
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
) -> None:
    """As the KServe agent: the logged request event of a binary-tensor request is the body
    that arrived, with its header length; the logger's parser reads the sent values back."""
    from kfloop.serving.events import parse_cloudevent

    rows = sample_rows[:5]
    body, size = _binary_body(built_model, rows, None, None)
    request_id = f"fast-bin-{time.time_ns()}"
    response = requests.post(
        f"{predictor.base}/v2/models/{MODEL_NAME}/infer",
        data=body,
        headers={
            "Inference-Header-Content-Length": str(size),
            "content-type": "application/octet-stream",
            "x-request-id": request_id,
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    events = event_receiver.wait_for(
        lambda e: e.headers.get("ce-id") == request_id and e.headers["ce-type"].endswith("request")
    )
    assert [e.body for e in events] == [body]
    assert events[0].headers["inference-header-content-length"] == str(size)
    logged = parse_cloudevent(events[0].headers, events[0].body)
    tensors = {t["name"]: t["data"] for t in logged.data["inputs"]}
    columns = columns_of(built_model, rows)
    for name in built_model.numeric:
        sent = columns[name].reshape(-1).astype(float)
        got = np.array([np.nan if v is None else v for v in tensors[name]], dtype=float)
        assert np.allclose(got, sent, equal_nan=True), name
    for name in set(built_model.names) - set(built_model.numeric):
        assert tensors[name] == [str(v) for v in columns[name].reshape(-1)], name
