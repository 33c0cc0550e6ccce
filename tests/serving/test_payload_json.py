"""The logger's JSON payload reading (simdjson, numbers into Arrow) against orjson's."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfloop.serving.events import (
    EventError,
    _values,
    decode_request,
    decode_response,
    parse_cloudevent_batch,
)
from kfloop.serving.fastpath import plain_v2
from kfloop.serving.payload_json import (
    FAST_BYTES,
    MIN_ARRAY,
    load_envelopes,
    load_payload,
    load_request,
)
from kfloop.serving.signature import (
    CATEGORICAL,
    NUMERIC,
    InputSpec,
    Signature,
    SignatureError,
    TensorHeader,
    check_v2_headers,
    v2_column,
)
from tests.serving.test_events import SCHEMA  # age, income (numeric), country

PAD = {"pad": "x" * FAST_BYTES}  # makes any payload long enough to be read by simdjson


def _body(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _decoded(data: Any, kind: str = "request") -> Any:
    """What the logger makes of a payload: columns (values and their types) and violations,
    or the error."""
    try:
        if kind == "request":
            d = decode_request(data, SCHEMA)
            columns, violations = d.columns, d.violations
        else:
            r = decode_response(data)
            columns, violations = [r.predictions], r.violations
    except EventError as exc:
        return str(exc)
    values = [_values(c) for c in columns]
    return values, [[type(v) for v in c] for c in values], sorted(violations)


def _outcome(read: Any, raw: bytes) -> Any:
    try:
        return ("value", read(raw))
    except ValueError as exc:
        return ("error", type(exc), str(exc))


def test_a_large_v2_request_reads_its_numbers_into_arrow() -> None:
    n = 1024
    ages = [i / 7 for i in range(n)]
    incomes = [i * 10 for i in range(n)]  # integers, as a client may write an FP32 tensor
    countries = ["DE", "FR", ""] * (n // 3) + ["DE"] * (n % 3)
    payload = {
        "id": "r1",
        "parameters": {"content_type": "pd", **PAD},
        "inputs": [
            {"name": "age", "shape": [n, 1], "datatype": "FP32", "data": [[a] for a in ages]},
            {"name": "income", "shape": [n], "datatype": "INT64", "data": incomes},
            {"name": "country", "shape": [n, 1], "datatype": "BYTES", "data": countries},
        ],
    }
    raw = _body(payload)
    assert len(raw) >= FAST_BYTES
    tree = load_payload(raw)
    age, income, country = (t["data"] for t in tree["inputs"])
    assert isinstance(age, pa.Array) and age.type == pa.float64() and age.null_count == 0
    assert age.to_pylist() == ages  # nested [[a], ...] flattened, as the decoders flatten it
    # A flat tensor in a body where a list follows a comma (the nested one's) is walked.
    assert income == incomes
    assert country == countries  # strings stay what orjson gives
    assert tree["id"] == "r1" and tree["parameters"] == {"content_type": "pd", **PAD}
    assert [t["shape"] for t in tree["inputs"]] == [[n, 1], [n], [n, 1]]
    assert _decoded(tree) == _decoded(orjson.loads(raw))

    payload["inputs"][0]["data"] = ages  # every tensor flat: every number into Arrow
    raw = _body(payload)
    tree = load_payload(raw)
    age, income, country = (t["data"] for t in tree["inputs"])
    assert isinstance(age, pa.Array) and age.to_pylist() == ages
    assert isinstance(income, pa.Array) and income.to_pylist() == [float(v) for v in incomes]
    assert country == countries
    assert _decoded(tree) == _decoded(orjson.loads(raw))

    small = _body(
        {"inputs": [{"name": "age", "shape": [2, 1], "datatype": "FP32", "data": [1, 2]}]}
    )
    assert load_payload(small) == orjson.loads(small)  # short bodies: orjson alone


def test_a_large_v2_response_reads_its_predictions_into_arrow() -> None:
    preds = [i / 1000 for i in range(1000)]
    raw = _body(
        {"outputs": [{"name": "prediction", "shape": [1000, 1], "data": preds}], "parameters": PAD}
    )
    tree = load_payload(raw)
    assert isinstance(tree["outputs"][0]["data"], pa.Array)
    assert _decoded(tree, "response") == _decoded(orjson.loads(raw), "response")
    assert _decoded(tree, "response")[0] == [preds]


_NUMBER = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**64 - 1),
)
_VALUE = st.one_of(
    _NUMBER,
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.integers(2**64, 2**70),  # past 64 bits: neither reader takes it
    st.lists(_NUMBER, min_size=1, max_size=2),
)
_DATA = st.one_of(
    st.lists(_NUMBER, min_size=MIN_ARRAY, max_size=MIN_ARRAY + 20),
    st.lists(st.lists(_NUMBER, min_size=1, max_size=1), min_size=MIN_ARRAY, max_size=40),
    # numbers and lists of them in any order: flattened only when the first is a list
    st.lists(_NUMBER | st.lists(_NUMBER, max_size=2), min_size=MIN_ARRAY, max_size=40),
    st.lists(_VALUE, max_size=MIN_ARRAY + 20),
    st.lists(st.text(max_size=3), min_size=MIN_ARRAY, max_size=MIN_ARRAY + 4),
    _VALUE,
)


@settings(max_examples=300, deadline=None)
@given(
    ages=_DATA,
    countries=_DATA,
    shape=st.sampled_from(["n,1", "n", "none", "wrong"]),
    kind=st.sampled_from(["request", "response"]),
)
def test_payloads_decode_as_orjson_reads_them(
    ages: Any, countries: Any, shape: str, kind: str
) -> None:
    """Whatever the tensors hold (numbers, nested or not, nulls, booleans, strings, integers
    past 64 bits), the logger decodes a payload read by simdjson to the columns and violations
    (or the error) it decodes from orjson's reading; a body neither takes is orjson's error."""

    def tensor(name: str, data: Any) -> dict[str, Any]:
        t: dict[str, Any] = {"name": name, "datatype": "FP32", "data": data}
        size = len(data) if isinstance(data, list) else 1
        t["shape"] = {"n,1": [size, 1], "n": [size], "none": None, "wrong": [size + 1]}[shape]
        return t

    key = "inputs" if kind == "request" else "outputs"
    first = "age" if kind == "request" else "prediction"
    payload = {key: [tensor(first, ages), tensor("country", countries)], "parameters": PAD}
    raw = _body(payload)
    fast, slow = _outcome(load_payload, raw), _outcome(orjson.loads, raw)
    if slow[0] == "error":
        assert fast == slow
    else:
        assert fast[0] == "value"
        assert _decoded(fast[1], kind) == _decoded(slow[1], kind)


@pytest.mark.parametrize(
    "case",
    [
        '{"inputs":[{"name":"age","shape":[16],"data":%(numbers)s,"data":%(others)s}]%(pad)s}',
        '{"inputs":[{"name":"age","shape":[16],"data":%(numbers)s}],"inputs":[]%(pad)s}',
        '{"inputs":[{"name":"age","shape":[16],"data":%(numbers)s}]%(pad)s',  # truncated
        '{"inputs":[{"name":"age","shape":[1],"data":[NaN]}]%(pad)s}',
        '{"inputs":[{"name":"age","shape":[1],"data":[1e400]}]%(pad)s}',
        '{"inputs":[{"name":"age","shape":[1],"data":[123456789012345678901234567890]}]%(pad)s}',
        '{"inputs":[{"name":"country","shape":[1],"data":["\\ud800"]}]%(pad)s}',
        # flat, with lists further on whose flattening keeps the count: walked, not flattened
        '{"outputs":[{"name":"prediction","shape":[16],"data":%(lists)s}]%(pad)s}',
        "[%(numbers)s%(pad)s]",
        '"just a string%(pad)s"',
    ],
)
def test_what_simdjson_does_not_read_as_orjson_would_is_read_by_orjson(case: str) -> None:
    """A duplicated key (orjson keeps the last value), malformed JSON, NaN, a number out of
    range, an integer past 64 bits, a lone surrogate, a flat tensor with lists in it, a
    payload that is not an object: the same value or the same error as orjson's."""
    pad = ',"parameters":{"pad":"%s"}' % ("x" * FAST_BYTES)
    text = case % {
        "numbers": json.dumps(list(range(16))),
        "others": json.dumps(["a"] * 16),
        "lists": json.dumps([0.5] * 14 + [[], [0.5, 0.5]]),
        "pad": pad if case.startswith("{") else ("x" * FAST_BYTES if case[0] == '"' else ""),
    }
    if case.startswith("["):
        text = "[" + ",".join(["1"] * FAST_BYTES) + "]"
    raw = text.encode()
    assert len(raw) >= FAST_BYTES
    assert _outcome(load_payload, raw) == _outcome(orjson.loads, raw)
    assert _outcome(load_envelopes, raw) == _outcome(orjson.loads, raw)


def test_invalid_utf8_is_orjson_s_error() -> None:
    raw = b'{"inputs":[{"name":"country","data":["\xff"]}],"p":"' + b"x" * FAST_BYTES + b'"}'
    assert _outcome(load_payload, raw) == _outcome(orjson.loads, raw)
    assert _outcome(load_payload, raw)[0] == "error"


def _envelope(eid: str, kind: str, data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": eid,
        "source": "http://predictor/",
        "type": f"org.kubeflow.serving.inference.{kind}",
        "datacontenttype": "application/json",
        "data": data,
    }


def test_a_batch_of_large_events_reads_their_tensors_into_arrow() -> None:
    n = 1000
    request = {
        "inputs": [
            {
                "name": "age",
                "shape": [n, 1],
                "datatype": "FP32",
                "data": [i % 90 for i in range(n)],
            },
            {"name": "country", "shape": [n, 1], "datatype": "BYTES", "data": ["DE"] * n},
        ],
        "parameters": PAD,
    }
    response = {
        "outputs": [{"name": "prediction", "shape": [n], "data": [0.5] * n}],
        "parameters": PAD,
    }
    events = [_envelope("a", "request", request), _envelope("a", "response", response)]
    raw = _body(events)
    assert len(raw) >= 2 * FAST_BYTES
    read = load_envelopes(raw)
    assert isinstance(read[0]["data"]["inputs"][0]["data"], pa.Array)
    assert isinstance(read[1]["data"]["outputs"][0]["data"], pa.Array)
    parsed = parse_cloudevent_batch(raw)
    assert [(e.id, e.kind) for e in parsed if not isinstance(e, EventError)] == [
        ("a", "request"),
        ("a", "response"),
    ]
    assert _decoded(parsed[0].data) == _decoded(request)  # type: ignore[union-attr]
    assert _decoded(parsed[1].data, "response") == _decoded(response, "response")  # type: ignore[union-attr]


def test_a_batch_of_small_events_is_read_by_orjson() -> None:
    """Events of a few values each cost more through simdjson's per-key calls than they save:
    a batch whose events average under FAST_BYTES is orjson's reading, exactly."""
    one = {"inputs": [{"name": "age", "shape": [1, 1], "datatype": "FP32", "data": [35.0]}]}
    raw = _body([_envelope(f"e{i}", "request", one) for i in range(400)])
    assert len(raw) >= FAST_BYTES  # long, but of many small events
    assert load_envelopes(raw) == orjson.loads(raw)


# -- the predictor's reading ---------------------------------------------------------------------

SIGNATURE = Signature(
    (
        InputSpec("age", NUMERIC, "tensor(float)"),
        InputSpec("country", CATEGORICAL, "tensor(string)"),
    ),
    "prediction",
)


def _served(read: Any, raw: bytes) -> Any:
    """What the predictor's fast path makes of a body: each input's model column, or the
    error it answers, or None when it leaves the body to KServe."""
    try:
        plain = plain_v2(read(raw))
    except ValueError:
        return "not JSON"
    if plain is None:
        return None
    try:
        headers = [TensorHeader(i["name"], i["datatype"], i["shape"]) for i in plain.inputs]
        rows = check_v2_headers(SIGNATURE, headers, max_rows=10_000)
        columns = {}
        for item in plain.inputs:
            spec = SIGNATURE.input(item["name"])
            assert spec is not None
            column = v2_column(spec, item["data"], rows)
            values = column[:, 0].tolist()
            columns[item["name"]] = (
                column.dtype.str,
                [None if isinstance(v, float) and math.isnan(v) else v for v in values],
            )
    except SignatureError as exc:
        return str(exc)
    return columns


def test_a_large_request_reads_the_numbers_of_its_numeric_inputs_into_numpy() -> None:
    n = 1024
    ages = [i / 7 for i in range(n)]
    payload = {
        "inputs": [
            {"name": "age", "shape": [n, 1], "datatype": "FP32", "data": ages},
            {"name": "country", "shape": [n, 1], "datatype": "BYTES", "data": ["DE"] * n},
            {"name": "other", "shape": [n], "datatype": "FP32", "data": ages},
        ],
        "parameters": {},
    }
    raw = json.dumps(payload).encode()  # ", " separators, as requests and most clients write
    assert len(raw) >= FAST_BYTES
    read = load_request(raw, SIGNATURE.numeric_names)
    age, country, other = (t["data"] for t in read["inputs"])
    assert isinstance(age, np.ndarray) and age.dtype == np.float64 and age.tolist() == ages
    assert country == ["DE"] * n and other == ages  # not a numeric input: as orjson reads it
    assert _served(lambda b: load_request(b, SIGNATURE.numeric_names), raw) == _served(
        orjson.loads, raw
    )
    nested = json.dumps(
        {**payload, "inputs": [{**payload["inputs"][0], "data": [[a] for a in ages]}]}
    )
    assert load_request(nested.encode(), SIGNATURE.numeric_names) == orjson.loads(nested)


@settings(max_examples=300, deadline=None)
@given(ages=_DATA, countries=_DATA, compact=st.booleans())
def test_requests_are_served_as_from_orjson_s_reading(
    ages: Any, countries: Any, compact: bool
) -> None:
    """Whatever a numeric input's data holds (numbers past float32 or 64 bits, nulls,
    booleans, strings, lists after a number), the predictor makes the same model columns, or
    answers the same error, as from orjson's reading."""

    def tensor(name: str, data: Any, datatype: str) -> dict[str, Any]:
        size = len(data) if isinstance(data, list) else 1
        return {"name": name, "shape": [size, 1], "datatype": datatype, "data": data}

    payload = {
        "inputs": [tensor("age", ages, "FP32"), tensor("country", countries, "BYTES")],
        "id": "x" * FAST_BYTES,
    }
    separators = (",", ":") if compact else (", ", ": ")
    raw = json.dumps(payload, separators=separators).encode()
    fast = _served(lambda b: load_request(b, SIGNATURE.numeric_names), raw)
    assert fast == _served(orjson.loads, raw)
