"""CloudEvents parsing (binary and structured, built with the SDK), payload decoding, pairing."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http
from hypothesis import given, settings
from hypothesis import strategies as st

from kfloop.serving.events import (
    ARROW_ROWS,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    EventError,
    EventPairer,
    FeatureSchema,
    InferenceEvent,
    Kind,
    _Checker,
    _values,
    binary_attributes,
    decode_request,
    decode_response,
    parse_cloudevent,
)

SCHEMA = FeatureSchema(
    ("age", "income", "country"), {"age": "numeric", "income": "numeric", "country": "categorical"}
)
AGENT_ATTRS = {
    "source": "http://localhost:9081/",
    "inferenceservicename": "demo",
    "namespace": "kfloop",
    "component": "predictor",
    "endpoint": "default",
    "metadata": "{}",
}


def _event(kind: str, eid: str, data: object, **extra: str) -> CloudEvent:
    ce_type = REQUEST_TYPE if kind == "request" else RESPONSE_TYPE
    return CloudEvent({"type": ce_type, "id": eid, **AGENT_ATTRS, **extra}, data)


# -- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_parse_both_modes(mode: str) -> None:
    ev = _event(
        "request", "abc-1", {"instances": [[30, 1000.0, "DE"]]}, time="2026-01-02T03:04:05Z"
    )
    headers, body = (to_binary if mode == "binary" else to_structured)(ev)
    parsed = parse_cloudevent(headers, body)
    assert parsed.id == "abc-1"
    assert parsed.kind == "request"
    assert parsed.source == "http://localhost:9081/"
    assert parsed.inference_service == "demo"
    assert parsed.namespace == "kfloop"
    assert parsed.component == "predictor"
    assert parsed.endpoint == "default"
    assert parsed.data == {"instances": [[30, 1000.0, "DE"]]}
    assert parsed.time is not None and parsed.time.hour == 3


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_fast_binary_parse_equals_the_sdk(mode: str) -> None:
    ev = _event("response", "id%20x", {"predictions": [0.5]}, time="2026-01-02T03:04:05Z")
    headers, body = (to_binary if mode == "binary" else to_structured)(ev)
    assert parse_cloudevent(headers, body) == parse_cloudevent(headers, body, use_sdk=True)


def test_binary_attributes_are_the_sdks() -> None:
    """The attributes read through to the ce-* headers are the SDK's, as a mapping."""
    ev = _event("request", "id-7", {"instances": []}, time="2026-01-02T03:04:05Z")
    headers, body = to_binary(ev)
    lower = {k.lower(): v for k, v in headers.items()}
    attrs = binary_attributes(lower)
    sdk = dict(from_http(lower, body).get_attributes())
    assert attrs == sdk
    assert dict(attrs) == sdk and len(attrs) == len(sdk) and set(attrs) == set(sdk)
    assert "namespace" in attrs and "content-type" not in attrs
    assert attrs.get("dataschema") is None and attrs["id"] == "id-7"


def test_parse_agent_style_binary_headers() -> None:
    """The headers exactly as the KServe agent (and kfloop's predictor) sends them."""
    headers = {
        "Ce-Specversion": "1.0",
        "Ce-Id": "r-9",
        "Ce-Type": RESPONSE_TYPE,
        "Ce-Source": "http://predictor/",
        "Ce-Inferenceservicename": "demo",
        "Ce-Endpoint": "canary",
        "Content-Type": "application/json",
    }
    parsed = parse_cloudevent(headers, b'{"predictions": [0.25]}')
    assert (parsed.kind, parsed.id, parsed.endpoint) == ("response", "r-9", "canary")
    assert parsed.data == {"predictions": [0.25]}


def test_event_without_id_is_rejected_in_both_modes() -> None:
    headers, body = to_binary(_event("request", "x", {"instances": []}))
    del headers["ce-id"]
    with pytest.raises(EventError, match="ce-id") as info:
        parse_cloudevent(headers, body)
    assert (info.value.reason, info.value.status) == ("no_id", 400)

    headers, body = to_structured(_event("request", "x", {"instances": []}))
    envelope = json.loads(body)
    del envelope["id"]
    with pytest.raises(EventError, match="no 'id'") as info:
        parse_cloudevent(headers, json.dumps(envelope).encode())
    assert info.value.reason == "no_id"


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({"content-type": "application/json"}, b'{"instances": []}', "bad_event"),
        ({"content-type": "application/cloudevents+json"}, b"{not json", "bad_event"),
        (
            {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "other.type"},
            b"{}",
            "unknown_type",
        ),
        (
            {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": REQUEST_TYPE},
            b"{truncated",
            "bad_payload",
        ),
        ({"ce-specversion": "1.0", "ce-id": "1", "ce-type": REQUEST_TYPE}, b"{}", "bad_event"),
    ],
)
def test_bad_events_are_typed_errors(headers: dict, body: bytes, reason: str) -> None:
    with pytest.raises(EventError) as info:
        parse_cloudevent(headers, body)
    assert info.value.reason == reason
    assert info.value.status == 400


# -- decoding --------------------------------------------------------------------------------------


def test_decode_v1_rows_as_dicts_and_lists() -> None:
    data = {
        "instances": [
            {"age": 30, "income": [1000.5], "country": "DE"},
            [41, None, "FR"],
            {"age": True, "country": ""},
        ]
    }
    decoded = decode_request(data, SCHEMA)
    assert decoded.rows == [[30.0, 1000.5, "DE"], [41.0, None, "FR"], [1.0, None, None]]
    assert decoded.violations == []


def test_decode_v1_counts_schema_violations_and_keeps_the_row() -> None:
    data = {"instances": [{"age": "old", "income": 5, "country": 7, "colour": "red"}]}
    decoded = decode_request(data, SCHEMA)
    assert decoded.rows == [[None, 5.0, None]]
    assert sorted(decoded.violations) == [
        ("age", "wrong_type"),
        ("colour", "unknown_feature"),
        ("country", "wrong_type"),
    ]


def test_decode_v1_list_of_wrong_length_names_the_features() -> None:
    with pytest.raises(EventError, match="instance 0 has 2 values.*age") as info:
        decode_request({"instances": [[1, 2]]}, SCHEMA, "e1")
    assert info.value.reason == "bad_payload"


def test_decode_v1_columnar_inputs() -> None:
    decoded = decode_request({"inputs": {"age": [1, 2], "country": ["a", "b"]}}, SCHEMA)
    assert decoded.rows == [[1.0, None, "a"], [2.0, None, "b"]]


def test_decode_v2_tensor_per_feature_nested_and_flat() -> None:
    data = {
        "id": "x",
        "inputs": [
            {"name": "age", "shape": [2, 1], "datatype": "FP32", "data": [[30], [40]]},
            {"name": "income", "shape": [2], "datatype": "FP64", "data": [1.5, 2.5]},
            {"name": "country", "shape": [2, 1], "datatype": "BYTES", "data": ["DE", "FR"]},
        ],
    }
    assert decode_request(data, SCHEMA).rows == [[30.0, 1.5, "DE"], [40.0, 2.5, "FR"]]


def test_decode_v2_single_matrix_in_input_order() -> None:
    data = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [2, 3],
                "datatype": "BYTES",
                "data": [30, 1.5, "DE", 40, 2.5, "FR"],
            }
        ]
    }
    assert decode_request(data, SCHEMA).rows == [[30.0, 1.5, "DE"], [40.0, 2.5, "FR"]]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"inputs": [{"name": "age", "shape": [3, 1], "data": [1, 2]}]}, "3 values"),
        (
            {
                "inputs": [
                    {"name": "age", "shape": [2], "data": [1, 2]},
                    {"name": "income", "shape": [1], "data": [1]},
                ]
            },
            "has 1 rows",
        ),
        ({"inputs": [{"shape": [1], "data": [1]}]}, "name"),
        ({"something": 1}, "neither 'instances'"),
        ([1, 2], "JSON object"),
    ],
)
def test_decode_v2_bad_payloads(data: object, match: str) -> None:
    with pytest.raises(EventError, match=match):
        decode_request(data, SCHEMA)


def test_decode_responses_v1_v2() -> None:
    assert decode_response({"predictions": [0.1, [0.2], None]}).predictions == [0.1, 0.2, None]
    v2 = {
        "model_name": "demo",
        "outputs": [
            {"name": "other", "shape": [2, 1], "datatype": "FP32", "data": [9, 9]},
            {"name": "prediction", "shape": [2, 1], "datatype": "FP32", "data": [0.3, 0.7]},
        ],
    }
    assert decode_response(v2).predictions == [0.3, 0.7]
    multi = decode_response({"outputs": [{"name": "p", "shape": [1, 3], "data": [1, 2, 3]}]})
    assert multi.predictions == [None]
    assert multi.violations == [("prediction", "wrong_shape")]
    error = decode_response({"error": "boom"})
    assert error.predictions == [] and error.violations == [("prediction", "no_prediction")]


# -- pairing ---------------------------------------------------------------------------------------


def _ie(kind: Kind, eid: str, data: object) -> InferenceEvent:
    return InferenceEvent(id=eid, kind=kind, source="s", time=None, data=data, endpoint="default")


REQ = {"instances": [[30, 1.5, "DE"]]}
RESP = {"predictions": [0.9]}


@pytest.mark.parametrize("first", ["request", "response"])
def test_pairs_in_either_order(first: str) -> None:
    pairer = EventPairer(SCHEMA, hold_seconds=10)
    halves: list[tuple[Kind, dict]] = [("request", REQ), ("response", RESP)]
    a, b = halves if first == "request" else halves[::-1]
    assert pairer.add(_ie(a[0], "1", a[1]), now=0, wall=1000.0).status == "pending"
    assert pairer.pending_rows == 1
    result = pairer.add(_ie(b[0], "1", b[1]), now=1, wall=1001.0)
    assert result.status == "paired"
    (row,) = result.rows
    assert (row.request_id, row.features, row.prediction) == ("1", [30.0, 1.5, "DE"], 0.9)
    request_wall = 1000 if first == "request" else 1001  # the row time is the request's
    assert row.timestamp_us == request_wall * 1_000_000
    assert pairer.pending_rows == 0


def test_duplicates_are_reported_once_paired_or_pending() -> None:
    pairer = EventPairer(SCHEMA, hold_seconds=10)
    pairer.add(_ie("request", "1", REQ), 0, 0)
    assert pairer.add(_ie("request", "1", REQ), 0, 0).status == "duplicate"
    assert pairer.add(_ie("response", "1", RESP), 0, 0).status == "paired"
    assert pairer.add(_ie("response", "1", RESP), 0, 0).status == "duplicate"
    assert pairer.add(_ie("request", "1", REQ), 0, 0).status == "duplicate"


def test_batch_rows_get_indexed_ids() -> None:
    pairer = EventPairer(SCHEMA, hold_seconds=10)
    pairer.add(_ie("request", "b", {"instances": [[1, 1, "a"], [2, 2, "b"]]}), 0, 0)
    rows = pairer.add(_ie("response", "b", {"predictions": [0.1, 0.2]}), 0, 0).rows
    assert [(r.request_id, r.prediction) for r in rows] == [("b:0", 0.1), ("b:1", 0.2)]


def test_orphans_expire_after_the_hold_time_and_late_halves_are_flagged() -> None:
    pairer = EventPairer(SCHEMA, hold_seconds=5)
    pairer.add(_ie("response", "lost-request", RESP), now=0, wall=0)
    pairer.add(_ie("request", "lost-response", REQ), now=3, wall=0)
    first = pairer.expire(now=5.5)
    assert (first.responses, first.requests) == (1, 0)
    (row,) = first.rows
    assert (row.request_id, row.features, row.prediction) == ("lost-request", None, 0.9)
    assert pairer.add(_ie("request", "lost-request", REQ), 6, 0).status == "late"
    everything = pairer.expire(now=6, everything=True)
    assert everything.requests == 1
    assert everything.rows[0].prediction is None
    assert everything.rows[0].features == [30.0, 1.5, "DE"]
    assert pairer.pending_events == 0


def test_row_count_mismatch_is_a_violation() -> None:
    pairer = EventPairer(SCHEMA, hold_seconds=10)
    pairer.add(_ie("request", "m", {"instances": [[1, 1, "a"], [2, 2, "b"]]}), 0, 0)
    result = pairer.add(_ie("response", "m", {"predictions": [0.1]}), 0, 0)
    assert ("prediction", "row_count_mismatch") in result.violations
    assert [r.prediction for r in result.rows] == [0.1, None]


def test_schema_from_profile_uses_model_input_order() -> None:
    profile: dict[str, dict[str, dict]] = {"numeric": {"a": {}, "b": {}}, "categorical": {"c": {}}}
    assert FeatureSchema.from_profile(profile).names == ("a", "b", "c")
    assert FeatureSchema.from_profile(profile, ["c", "a", "b"]).names == ("c", "a", "b")
    with pytest.raises(Exception, match="not in the reference profile"):
        FeatureSchema.from_profile(profile, ["zzz"])


# -- the column fast path ------------------------------------------------------------------------

_VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(-(2**40), 2**40),
    st.booleans(),
    st.text(max_size=4),
    st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(
    age=st.one_of(
        st.lists(_VALUES, min_size=2, max_size=6),
        st.lists(_VALUES, min_size=ARROW_ROWS - 1, max_size=ARROW_ROWS + 8),
        st.lists(st.floats(allow_nan=False, width=32) | st.none(), min_size=ARROW_ROWS),
    ),
    country=st.data(),
)
def test_columns_decode_exactly_as_value_by_value(
    age: list[object], country: st.DataObject
) -> None:
    """Whatever the mix of types, a column decodes to what checking each value gives, with the
    same violations: the set-of-types fast path and, from ``ARROW_ROWS`` values, the typed
    Arrow conversion only skip work."""
    n = len(age)
    countries = country.draw(
        st.one_of(
            st.lists(_VALUES, min_size=n, max_size=n),
            st.lists(st.sampled_from(["DE", "", None]), min_size=n, max_size=n),
        )
    )
    as_lists = country.draw(st.booleans())
    instances = [
        [a, None, c] if as_lists else {"age": a, "country": c}
        for a, c in zip(age, countries, strict=True)
    ]
    data = {"instances": instances}
    decoded = decode_request(data, SCHEMA)
    checker = _Checker(SCHEMA)
    expected_age = [checker.value(0, v) for v in age]
    expected_country = [checker.value(2, v) for v in countries]
    columns = [_values(c) for c in decoded.columns]
    assert columns == [expected_age, [None] * n, expected_country]
    assert [type(v) for v in columns[0]] == [type(v) for v in expected_age]
    assert all(isinstance(c, pa.Array) == (n >= ARROW_ROWS) for c in decoded.columns)
    assert sorted(decoded.violations) == sorted(checker.violations)
    assert decoded.rows == [
        [a, None, c] for a, c in zip(expected_age, expected_country, strict=True)
    ]


def test_a_block_reads_back_row_by_row_with_indexed_ids() -> None:
    pairer = EventPairer(SCHEMA, hold_seconds=10)
    pairer.add(_ie("request", "b", {"instances": [[1, 2.5, ""], [3, None, "FR"]]}), 0, 0)
    result = pairer.add(_ie("response", "b", {"predictions": [0.25]}), 0, 0)
    assert result.block is not None and result.block.n == 2
    assert result.block.columns == [[1.0, 3.0], [2.5, None], [None, "FR"]]
    assert result.block.predictions == [0.25, None]  # one prediction for two rows: padded
    assert [(r.request_id, r.features, r.prediction) for r in result.rows] == [
        ("b:0", [1.0, 2.5, None], 0.25),
        ("b:1", [3.0, None, "FR"], None),
    ]
    assert ("prediction", "row_count_mismatch") in result.violations


class _Tensor(dict):  # type: ignore[type-arg]
    """A v2 input that is not exactly a ``dict``: decoded by the general path only."""


@settings(max_examples=300, deadline=None)
@given(
    ages=st.lists(_VALUES, min_size=1, max_size=3) | st.lists(_VALUES, min_size=ARROW_ROWS),
    countries=st.data(),
    nested=st.booleans(),
    shape=st.sampled_from(["n,1", "n", "n,True", "n+1,1", "1.0,1", "none"]),
)
def test_v2_tensors_decode_as_the_general_path_and_values_as_checked(
    ages: list[object], countries: st.DataObject, nested: bool, shape: str
) -> None:
    """The usual-tensor fast path and the one-row shortcut only skip work: any data and shape
    give the general path's columns and violations (or its error), and a one-row value is what
    checking it gives."""
    n = len(ages)
    country_values = countries.draw(st.lists(_VALUES, min_size=n, max_size=n))
    shapes = {
        "n,1": [n, 1], "n": [n], "n,True": [n, True], "n+1,1": [n + 1, 1], "1.0,1": [1.0, 1],
        "none": None,
    }  # fmt: skip

    def tensor(name: str, values: list[object]) -> dict[str, object]:
        t: dict[str, object] = {"name": name, "data": [[v] for v in values] if nested else values}
        if shapes[shape] is not None:
            t["shape"] = shapes[shape]
        return t

    def decode(kind: type) -> object:
        inputs = [kind(tensor("age", ages)), kind(tensor("country", country_values))]
        try:
            d = decode_request({"inputs": inputs}, SCHEMA)
        except EventError as exc:
            return str(exc)
        columns = [_values(c) for c in d.columns]
        return columns, sorted(d.violations), [[type(v) for v in c] for c in columns]

    fast = decode(dict)
    assert fast == decode(_Tensor)
    values = [*ages, *country_values]
    if n == 1 and not isinstance(fast, str) and not any(isinstance(v, list) for v in values):
        checker = _Checker(SCHEMA)
        expected = [[checker.value(0, ages[0])], [None], [checker.value(2, country_values[0])]]
        assert fast[0] == expected  # type: ignore[index]
        assert fast[1] == sorted(checker.violations)  # type: ignore[index]


@settings(max_examples=300, deadline=None)
@given(
    preds=st.lists(_VALUES, min_size=1, max_size=4)
    | st.lists(_VALUES, min_size=ARROW_ROWS - 1, max_size=ARROW_ROWS + 8)
    | st.lists(st.floats(allow_nan=False, width=32), min_size=ARROW_ROWS),
    v2=st.booleans(),
)
def test_predictions_decode_exactly_as_value_by_value(preds: list[object], v2: bool) -> None:
    """A response's predictions, however typed, are what reading each one gives (a number, a
    one-element list of one; else null and a violation), as a list or, from ``ARROW_ROWS``,
    an Arrow array."""
    violations: list[tuple[str, str]] = []
    expected: list[float | None] = []
    for p in preds:
        if isinstance(p, list) and len(p) == 1:
            p = p[0]
        if p is None:
            expected.append(None)
        elif isinstance(p, (int, float)):  # a bool too, as 0/1
            expected.append(float(p))
        else:
            reason = "wrong_shape" if isinstance(p, list) else "wrong_type"
            violations.append(("prediction", reason))
            expected.append(None)
    if v2:
        flat = all(not isinstance(p, list) for p in preds)
        data: dict[str, object] = {
            "outputs": [{"name": "prediction", "shape": [len(preds)], "data": preds}]
        }
        if not flat:  # nested data is flattened: not one value per row any more
            return
    else:
        data = {"predictions": preds}
    decoded = decode_response(data, "p")
    assert _values(decoded.predictions) == expected
    assert isinstance(decoded.predictions, pa.Array) == (len(preds) >= ARROW_ROWS)
    assert sorted(decoded.violations) == sorted(violations)
