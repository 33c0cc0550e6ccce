"""Open Inference Protocol v2 binary-tensor bodies in payload-logging CloudEvents.

The bodies are built by ``tritonclient.http`` (``InferInput.set_data_from_numpy(...,
binary_data=True)`` and ``InferenceServerClient.generate_request_body``), the reference
client, as the KServe agent would log them raw; the logger runs as a REAL process and the
rows are read back from Parquet on the real SeaweedFS.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import tritonclient.http as triton_http

from kfloop.core.objectstore import ObjectStore
from kfloop.serving.events import (
    ARROW_ROWS,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    EventError,
    FeatureSchema,
    decode_request,
    decode_response,
    parse_cloudevent,
)
from kfloop.serving.signature import BYTES_ARROW_ROWS, BytesFramingError, split_bytes
from tests.serving.test_logger import (  # noqa: F401  (model_dir and start_logger: fixtures)
    MODEL,
    VERSION,
    base_args,
    feature_names,
    metric,
    model_dir,
    read_logs,
    start_logger,
    traffic,
)

SCHEMA = FeatureSchema(
    ("age", "income", "country"), {"age": "numeric", "income": "numeric", "country": "categorical"}
)


def ce_headers(eid: str, kind: str, **extra: str) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": eid,
        "ce-source": "http://predictor/",
        "ce-type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "ce-inferenceservicename": MODEL,
        "ce-endpoint": "default",
        "content-type": "application/octet-stream",
        **extra,
    }


def triton_request(columns: dict[str, np.ndarray], eid: str) -> tuple[bytes, int]:
    """(body, JSON header length) as tritonclient sends them, every input binary."""
    inputs = []
    for name, values in columns.items():
        datatype = (
            "BYTES" if values.dtype == object else triton_http.np_to_triton_dtype(values.dtype)
        )
        tensor = triton_http.InferInput(name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values, binary_data=True)
        inputs.append(tensor)
    body, header_length = triton_http.InferenceServerClient.generate_request_body(
        inputs, request_id=eid
    )
    assert header_length is not None and header_length < len(body)
    return body, header_length


def binary_response(predictions: np.ndarray, eid: str) -> tuple[bytes, int]:
    """A v2 response with a binary FP32 ``prediction`` output, laid out per the spec."""
    data = predictions.astype("<f4").tobytes()
    header = json.dumps(
        {
            "model_name": MODEL,
            "id": eid,
            "outputs": [
                {
                    "name": "prediction",
                    "shape": [len(predictions), 1],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
        }
    ).encode()
    return header + data, len(header)


COLUMNS = {
    "age": np.array([[31.0], [np.nan], [58.0]], dtype=np.float32),
    "income": np.array([[1000.5], [2.0], [3.25]], dtype=np.float64),
    "country": np.array([["DE"], [""], ["Österreich"]], dtype=object),
}
EXPECTED = [[31.0, 1000.5, "DE"], [None, 2.0, None], [58.0, 3.25, "Österreich"]]


@pytest.mark.parametrize("where", ["header", "metadata", "none"])
def test_binary_request_decodes_like_json(where: str) -> None:
    """The header length from the post's header, from ``ce-metadata`` (the agent's logged
    request headers) or, when neither is sent, from where the JSON header ends."""
    body, length = triton_request(COLUMNS, "b-1")
    extra = {
        "header": {"Inference-Header-Content-Length": str(length)},
        "metadata": {"ce-metadata": json.dumps({"Inference-Header-Content-Length": [str(length)]})},
        "none": {},
    }[where]
    event = parse_cloudevent(ce_headers("b-1", "request", **extra), body)
    decoded = decode_request(event.data, SCHEMA, event.id)
    assert decoded.rows == EXPECTED
    assert decoded.violations == []


def test_binary_request_with_one_nf_tensor_and_int_and_bool_types() -> None:
    matrix = np.array([[30, 1000], [40, 2000]], dtype=np.int64)
    body, _ = triton_request({"features": matrix}, "m")
    event = parse_cloudevent(ce_headers("m", "request"), body)
    schema = FeatureSchema(("age", "income"), {"age": "numeric", "income": "numeric"})
    assert decode_request(event.data, schema, "m").rows == [[30.0, 1000.0], [40.0, 2000.0]]
    flags = np.array([[True], [False]])
    body, _ = triton_request({"age": flags}, "f")
    event = parse_cloudevent(ce_headers("f", "request"), body)
    assert [r[0] for r in decode_request(event.data, schema, "f").rows] == [1.0, 0.0]


def test_binary_response_decodes_predictions() -> None:
    body, length = binary_response(np.array([0.25, 0.5, 0.75]), "r")
    headers = ce_headers("r", "response", **{"Inference-Header-Content-Length": str(length)})
    event = parse_cloudevent(headers, body)
    assert decode_response(event.data, "r").predictions == [0.25, 0.5, 0.75]
    again = parse_cloudevent(ce_headers("r", "response"), body).data  # header length found
    assert again["outputs"][0]["data"].tolist() == [0.25, 0.5, 0.75]


def _header(tensors: list[dict[str, Any]]) -> bytes:
    return json.dumps({"inputs": tensors}).encode()


@pytest.mark.parametrize("countries", [["DE", "FR", "SE"], ["DE", "", "Österreich", "GB"]])
@pytest.mark.parametrize("rows", [ARROW_ROWS - 1, ARROW_ROWS, BYTES_ARROW_ROWS + 3])
def test_a_large_binary_request_decodes_like_its_json(rows: int, countries: list[str]) -> None:
    """Long binary tensors are read straight into Arrow (BYTES of one length with no loop):
    the rows are those of the same request in JSON, NaN and "" missing."""
    ages = [float(i) if i % 7 else math.nan for i in range(rows)]
    names = [countries[i % len(countries)] for i in range(rows)]
    columns = {
        "age": np.array([[a] for a in ages], dtype=np.float32),
        "country": np.array([[c] for c in names], dtype=object),
    }
    body, length = triton_request(columns, "big")
    headers = ce_headers("big", "request", **{"Inference-Header-Content-Length": str(length)})
    tensors = parse_cloudevent(headers, body).data["inputs"]
    assert isinstance(tensors[1]["data"], pa.Array) == (rows >= BYTES_ARROW_ROWS)
    decoded = decode_request({"inputs": tensors}, SCHEMA, "big")
    missing = [None if math.isnan(a) else a for a in ages]  # JSON's missing value
    as_json = {
        "inputs": [
            {"name": "age", "shape": [rows, 1], "datatype": "FP32", "data": missing},
            {"name": "country", "shape": [rows, 1], "datatype": "BYTES", "data": names},
        ]
    }
    expected = [[a, None, c or None] for a, c in zip(missing, names, strict=True)]
    assert decoded.rows == expected
    assert decode_request(as_json, SCHEMA, "big").rows == expected
    assert decoded.violations == []


@pytest.mark.parametrize("width", ["one", "varied"])
@pytest.mark.parametrize("fault", ["past", "cut", "utf8"])
def test_a_large_bytes_tensor_with_bad_framing_names_the_element(width: str, fault: str) -> None:
    """The fast reading of long BYTES tensors says what the element-by-element one does."""
    values = [("DE" if width == "one" else "DE" * (1 + i % 3)).encode() for i in range(300)]
    good = b"".join(struct.pack("<I", len(v)) + v for v in values)
    bad = {
        "past": good + struct.pack("<I", 5) + b"DE",
        "cut": good + b"\x02\x00",
        "utf8": good + struct.pack("<I", 2) + b"\xff\xfe",
    }[fault]
    with pytest.raises(BytesFramingError) as expected:
        split_bytes(bad)
    header = _header(
        [
            {
                "name": "country",
                "shape": [301],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(bad)},
            }
        ]
    )
    headers = ce_headers("f", "request", **{"Inference-Header-Content-Length": str(len(header))})
    with pytest.raises(EventError, match="BYTES tensor 'country'") as got:
        parse_cloudevent(headers, header + bad)
    if fault == "cut":
        assert "ends inside a length prefix" in str(got.value)
    else:
        assert f"element {expected.value.index} " in str(got.value)
        assert expected.value.index == 300


def _fp32(name: str, values: list[float]) -> tuple[dict[str, Any], bytes]:
    data = np.array(values, dtype="<f4").tobytes()
    tensor = {
        "name": name,
        "shape": [len(values), 1],
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(data)},
    }
    return tensor, data


def _bytes_header(size: int) -> bytes:
    tensor = {"name": "country", "shape": [2], "datatype": "BYTES"}
    return _header([{**tensor, "parameters": {"binary_data_size": size}}])


@pytest.mark.parametrize(
    ("build", "match"),
    [
        # the binary part is longer than the tensors say
        (lambda: (_header([_fp32("age", [1.0])[0]]) + b"\0" * 8, None), "add up to 4"),
        # shorter
        (lambda: (_header([_fp32("age", [1.0, 2.0])[0]]) + b"\0" * 4, None), "'age' needs 8"),
        # header length past the end
        (lambda: (b"{}", 10), "past the end"),
        # header length that cuts the JSON
        (lambda: (_header([_fp32("age", [1.0])[0]]) + b"\0" * 4, 5), "not a JSON header"),
        # a size that is not a whole number of elements
        (
            lambda: (
                _header([{**_fp32("age", [1.0])[0], "parameters": {"binary_data_size": 3}}])
                + b"\0" * 3,
                None,
            ),
            "whole number",
        ),
        # an unknown datatype
        (
            lambda: (
                _header([{**_fp32("age", [1.0])[0], "datatype": "BF16"}]) + b"\0" * 4,
                None,
            ),
            "'BF16'",
        ),
        # a BYTES element running past its tensor
        (
            lambda: (
                _header(
                    [
                        {
                            "name": "country",
                            "shape": [1],
                            "datatype": "BYTES",
                            "parameters": {"binary_data_size": 6},
                        }
                    ]
                )
                + struct.pack("<I", 10)
                + b"DE",
                None,
            ),
            "'country': element 0 of 10 bytes runs past the tensor",
        ),
        # a BYTES length prefix cut short
        (
            lambda: (_bytes_header(6) + struct.pack("<I", 1) + b"D" + b"\0", None),
            "BYTES tensor 'country' ends inside a length prefix",
        ),
        # a BYTES element that is not UTF-8
        (
            lambda: (
                _bytes_header(10) + struct.pack("<I", 1) + b"D" + struct.pack("<I", 1) + b"\xff",
                None,
            ),
            "'country': element 1 is not UTF-8",
        ),
        # not JSON at all, and no header length
        (lambda: (b"\x00\x01binary", None), "not JSON"),
    ],
)
def test_bad_binary_bodies_are_400_naming_the_tensor(build: Any, match: str) -> None:
    body, length = build()
    extra = {} if length is None else {"Inference-Header-Content-Length": str(length)}
    with pytest.raises(EventError, match=match) as info:
        parse_cloudevent(ce_headers("bad", "request", **extra), body)
    assert info.value.reason == "bad_payload" and info.value.status == 400


def test_a_bad_header_length_value_is_named() -> None:
    with pytest.raises(EventError, match="Inference-Header-Content-Length 'x'"):
        parse_cloudevent(
            ce_headers("bad", "request", **{"Inference-Header-Content-Length": "x"}), b"{}"
        )


def test_binary_events_land_in_parquet(
    start_logger: Any,  # noqa: F811
    store: ObjectStore,
    bucket: str,
    model_dir: Path,  # noqa: F811
) -> None:
    """Raw binary request bodies (tritonclient) and binary responses, posted to a real logger
    over HTTP: the Parquet rows hold the values sent."""
    server = start_logger(*base_args(str(model_dir), f"s3://{bucket}/logs"))
    names = feature_names(model_dir)
    rows, preds = traffic(40, seed=40)
    sent: dict[str, dict[str, Any]] = {}
    for start in range(0, 40, 8):  # batches of 8 rows
        eid = f"bin-{start}"
        batch = rows[start : start + 8]
        columns = {}
        for name in names:
            values = [r[name] for r in batch]
            if any(isinstance(v, str) for v in values):
                columns[name] = np.array([[v or ""] for v in values], dtype=object)
            else:
                columns[name] = np.array(
                    [[np.nan if v is None else v] for v in values], dtype=np.float64
                )
        body, length = triton_request(columns, eid)
        # the agent logs the request headers it is told to (metadataHeaders) in ce-metadata
        metadata = json.dumps({"Inference-Header-Content-Length": [str(length)]})
        response = server.post((ce_headers(eid, "request", **{"ce-metadata": metadata}), body))
        assert response.status_code == 200, response.text
        out, out_length = binary_response(np.array(preds[start : start + 8]), eid)
        headers = ce_headers(
            eid, "response", **{"Inference-Header-Content-Length": str(out_length)}
        )
        assert server.post((headers, out)).status_code == 200
        for j, row in enumerate(batch):
            sent[f"{eid}:{j}"] = {**row, "prediction": preds[start + j]}
    text = server.metrics()
    assert math.isnan(metric(text, "kfloop_schema_violations_total"))
    assert server.terminate() == 0, server.log()

    table, _ = read_logs(store, f"s3://{bucket}/logs/{MODEL}/{VERSION}/")
    logged = {r["request_id"]: r for r in table.to_pylist()}
    assert sorted(logged) == sorted(sent)
    for rid, want in sent.items():
        got = logged[rid]
        assert got["prediction"] == pytest.approx(want["prediction"], rel=1e-6)  # FP32
        for name in names:
            value = want[name]
            if value is None or value == "":
                assert got[name] is None, (rid, name)
            elif isinstance(value, str):
                assert got[name] == value
            else:
                assert got[name] == pytest.approx(float(value)), (rid, name)
