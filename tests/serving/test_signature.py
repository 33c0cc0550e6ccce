"""Pure logic, no server: signature checks, the dynamic batcher, the CloudEvents emitter.

No kserve import here (see test_clients.py: tritonclient.grpc shares this process).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfloop.core.errors import ConfigError
from kfloop.serving.batcher import DynamicBatcher
from kfloop.serving.payload_events import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    EventIdentity,
    PayloadEmitter,
    event_headers,
)
from kfloop.serving.signature import (
    BYTES_ARROW_ROWS,
    BytesFramingError,
    Signature,
    SignatureError,
    TensorHeader,
    check_v2_headers,
    decode_binary,
    split_bytes,
    v1_columns,
    v2_column,
)
from tests.serving.conftest import BuiltModel, EventReceiver, columns_of

METADATA = {
    "task": "binary_classification",
    "inputs": [
        {"name": "age", "onnx_type": "tensor(float)", "shape": ["N", 1], "kind": "numeric"},
        {"name": "plan", "onnx_type": "tensor(string)", "shape": ["N", 1], "kind": "categorical"},
    ],
    "outputs": [{"name": "prediction", "onnx_type": "tensor(float)", "shape": ["N", 1]}],
}
SIG = Signature.from_metadata(METADATA)


def test_signature_from_metadata() -> None:
    assert SIG.names == ["age", "plan"]
    assert [i.datatype for i in SIG.inputs] == ["FP32", "BYTES"]
    assert SIG.output == "prediction"


def test_signature_from_the_real_package(built_model: BuiltModel) -> None:
    sig = Signature.load(built_model.package / "metadata.json")
    assert sig.names == built_model.names


def test_v1_named_and_list_rows_give_the_same_columns() -> None:
    named = v1_columns(SIG, {"instances": [{"age": 3, "plan": "a"}, {"age": None, "plan": None}]})
    listed = v1_columns(SIG, {"instances": [[3, "a"], [None, None]]})
    for cols in (named, listed):
        assert cols["age"].dtype == np.float32 and cols["age"].shape == (2, 1)
        assert cols["age"][0, 0] == 3 and math.isnan(cols["age"][1, 0])
        assert cols["plan"].tolist() == [["a"], [""]]


def test_v1_bool_is_numeric() -> None:
    cols = v1_columns(SIG, {"instances": [[True, "a"], [False, "b"]]})
    assert cols["age"].reshape(-1).tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("payload", "name", "fragment"),
    [
        ({"instances": [{"plan": "a"}]}, "age", "missing"),
        ({"instances": [{"age": 1, "plan": "a", "zip": 1}]}, "zip", "not an input"),
        ({"instances": [{"age": "old", "plan": "a"}]}, "age", "expected a number"),
        ({"instances": [{"age": 1, "plan": 7}]}, "plan", "expected a string"),
        ({"instances": [[1]]}, "", "has 1 values"),
        ({"instances": "rows"}, "", "must be a list"),
        ({"rows": []}, "", 'no "instances"'),
        ({"instances": []}, "", "no rows"),
        ([1, 2], "", "JSON object"),
    ],
)
def test_v1_errors_name_the_input(payload: Any, name: str, fragment: str) -> None:
    with pytest.raises(SignatureError) as caught:
        v1_columns(SIG, payload)
    assert caught.value.input == name
    assert fragment in str(caught.value)
    if name:
        assert repr(name) in str(caught.value)


def test_row_limit() -> None:
    rows = [[1, "a"]] * 11
    with pytest.raises(SignatureError, match="11 rows, above the limit of 10"):
        v1_columns(SIG, {"instances": rows}, max_rows=10)
    assert v1_columns(SIG, {"instances": rows[:10]}, max_rows=10)["age"].shape == (10, 1)


def h(name: str, datatype: str, shape: list[int]) -> TensorHeader:
    return TensorHeader(name, datatype, shape)


def test_v2_headers_ok_and_rows() -> None:
    assert check_v2_headers(SIG, [h("age", "FP32", [3, 1]), h("plan", "BYTES", [3])]) == 3


@pytest.mark.parametrize(
    ("headers", "name", "fragment"),
    [
        ([h("age", "INT64", [1]), h("plan", "BYTES", [1])], "age", "datatype INT64"),
        ([h("age", "FP32", [1]), h("plan", "FP32", [1])], "plan", "takes BYTES"),
        ([h("age", "FP32", [1, 2]), h("plan", "BYTES", [1])], "age", "shape [1, 2]"),
        ([h("age", "FP32", [2]), h("plan", "BYTES", [3])], "plan", "has 3 rows"),
        ([h("age", "FP32", [1])], "plan", "missing"),
        ([h("age", "FP32", [1]), h("plan", "BYTES", [1]), h("x", "FP32", [1])], "x", "not an"),
        ([h("age", "FP32", [1]), h("age", "FP32", [1]), h("plan", "BYTES", [1])], "age", "twice"),
        ([h("age", "FP32", [2000]), h("plan", "BYTES", [2000])], "", "above the limit"),
    ],
)
def test_v2_header_errors(headers: list[TensorHeader], name: str, fragment: str) -> None:
    with pytest.raises(SignatureError) as caught:
        check_v2_headers(SIG, headers, max_rows=1024)
    assert caught.value.input == name
    assert fragment in str(caught.value)


def test_v2_columns_nan_allowed_inf_policy() -> None:
    age = SIG.inputs[0]
    col = v2_column(age, np.array([1.0, np.nan], dtype=np.float32), 2)
    assert math.isnan(col[1, 0])
    with pytest.raises(SignatureError, match=r"'age': infinite value at row 1"):
        v2_column(age, np.array([1.0, -np.inf], dtype=np.float32), 2)
    assert np.isinf(v2_column(age, [1.0, np.inf], 2, allow_inf=True)[1, 0])
    with pytest.raises(SignatureError, match="holds 2 values but its shape says 3 rows"):
        v2_column(age, [1.0, 2.0], 3)


def test_v2_bytes_columns() -> None:
    plan = SIG.inputs[1]
    col = v2_column(plan, np.array([b"a", "b", None], dtype=object), 3)
    assert col.reshape(-1).tolist() == ["a", "b", ""]
    with pytest.raises(SignatureError, match="'plan': row 0 is not valid UTF-8"):
        v2_column(plan, np.array([b"\xff"], dtype=object), 1)
    with pytest.raises(SignatureError, match="'plan': expected a string"):
        v2_column(plan, np.array([3], dtype=object), 1)


def _framed(*items: bytes) -> bytes:
    return b"".join(len(i).to_bytes(4, "little") + i for i in items)


def test_binary_bytes_tensors_decode_to_strings_and_name_the_bad_row() -> None:
    assert decode_binary("plan", "BYTES", _framed(b"a", "é".encode(), b"")) == ["a", "é", ""]
    with pytest.raises(SignatureError, match="'plan': row 1 is not valid UTF-8"):
        decode_binary("plan", "BYTES", _framed(b"a", b"\xff"))
    with pytest.raises(SignatureError, match="'plan': binary BYTES element 1 is cut short"):
        decode_binary("plan", "BYTES", _framed(b"a", b"bc")[:-1])
    with pytest.raises(SignatureError, match="cut short at byte 5"):
        decode_binary("plan", "BYTES", _framed(b"a") + b"\x01")
    column = v2_column(SIG.inputs[1], decode_binary("plan", "BYTES", _framed(b"x", b"")), 2)
    assert column.reshape(-1).tolist() == ["x", ""]


@pytest.mark.parametrize("extra", [-1, 0, 5])
@pytest.mark.parametrize(
    "words", [["DE", "FR", "IT"], ["basic", "premium", ""], ["Zürich", "東京", "a"]]
)
def test_a_large_binary_bytes_tensor_decodes_as_element_by_element(
    words: list[str], extra: int
) -> None:
    """From ``BYTES_ARROW_ROWS`` elements Arrow splits the tensor (one width: no loop at all):
    the model gets the same str column as from :func:`split_bytes`, and a fault is named as
    element by element."""
    n = BYTES_ARROW_ROWS + extra
    values = [words[i % len(words)] for i in range(n)]
    raw = _framed(*(v.encode() for v in values))
    column = v2_column(SIG.inputs[1], decode_binary("plan", "BYTES", raw), n)
    assert column.shape == (n, 1)
    assert column.reshape(-1).tolist() == split_bytes(raw) == values
    assert all(type(v) is str for v in column.reshape(-1))
    with pytest.raises(SignatureError, match=f"'plan': row {n - 1} is not valid UTF-8"):
        decode_binary("plan", "BYTES", raw[: -len(values[-1].encode()) - 4] + _framed(b"\xff"))
    with pytest.raises(SignatureError, match=f"binary BYTES element {n} is cut short"):
        decode_binary("plan", "BYTES", raw + _framed(b"ab")[:-1])


def _split_reference(raw: bytes) -> list[str]:
    """The framing rules, element by element: the general path of split_bytes."""
    items: list[str] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BytesFramingError(len(items), offset, None)
        length = int.from_bytes(raw[offset : offset + 4], "little")
        if offset + 4 + length > len(raw):
            raise BytesFramingError(len(items), offset, length)
        try:
            items.append(raw[offset + 4 : offset + 4 + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise BytesFramingError(len(items), offset, length, utf8=True) from None
        offset += 4 + length
    return items


def _outcome(raw: bytes) -> Any:
    try:
        return split_bytes(raw)
    except BytesFramingError as exc:
        return ("error", exc.index, exc.offset, exc.length, exc.utf8)


def _reference_outcome(raw: bytes) -> Any:
    try:
        return _split_reference(raw)
    except BytesFramingError as exc:
        return ("error", exc.index, exc.offset, exc.length, exc.utf8)


_ELEMENT = st.one_of(st.text(max_size=12), st.text(alphabet="abcDE01", max_size=300))


@settings(max_examples=400, deadline=None)
@given(
    elements=st.lists(_ELEMENT, max_size=12),
    cut=st.integers(min_value=0, max_value=4000),
    tail=st.binary(max_size=6),
    junk=st.binary(max_size=40),
)
def test_split_bytes_matches_the_element_by_element_rules(
    elements: list[str], cut: int, tail: bytes, junk: bytes
) -> None:
    framed = _framed(*(e.encode() for e in elements))
    assert split_bytes(framed) == elements
    # cut short, with bytes after, or not framed at all: the same elements or the same error
    # (index, offset, length, UTF-8) as the element-by-element rules, ASCII or not
    for raw in (framed[:cut], framed[:cut] + tail, junk, framed + junk):
        assert _outcome(raw) == _reference_outcome(raw)


# -- the dynamic batcher, on the real model --------------------------------------------------------


def ort_runner(built: BuiltModel) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(built.package / "model.onnx"), providers=["CPUExecutionProvider"]
    )

    def run(columns: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(session.run(["prediction"], columns)[0], dtype=np.float32)

    return run


def test_concurrent_requests_are_merged_and_each_gets_its_rows(
    built_model: BuiltModel, sample_rows: list[dict[str, Any]], reference: Any
) -> None:
    run = ort_runner(built_model)
    sizes = [1, 3, 2, 1, 5, 1, 4, 1]
    parts, start = [], 0
    for size in sizes:
        parts.append(sample_rows[start : start + size])
        start += size
    want = [reference(columns_of(built_model, p)) for p in parts]
    batcher = DynamicBatcher(run, max_batch_rows=1024, max_wait_ms=20)

    async def main() -> list[np.ndarray]:
        return list(
            await asyncio.gather(*(batcher.predict(columns_of(built_model, p)) for p in parts))
        )

    got = asyncio.run(main())
    assert batcher.stats.calls == 1  # eight requests, ONE ONNX Runtime call
    assert batcher.stats.requests == len(sizes)
    assert batcher.stats.rows == sum(sizes)
    for g, w, size in zip(got, want, sizes, strict=True):
        assert g.shape == (size, 1)
        assert np.max(np.abs(g.reshape(-1) - w)) <= 1e-6


def test_batches_respect_max_batch_rows(
    built_model: BuiltModel, sample_rows: list[dict[str, Any]]
) -> None:
    run = ort_runner(built_model)
    batcher = DynamicBatcher(run, max_batch_rows=4, max_wait_ms=5)
    parts = [sample_rows[i : i + 2] for i in range(0, 12, 2)] + [sample_rows[:9]]

    async def main() -> list[np.ndarray]:
        return list(
            await asyncio.gather(*(batcher.predict(columns_of(built_model, p)) for p in parts))
        )

    got = asyncio.run(main())
    assert [g.shape[0] for g in got] == [len(p) for p in parts]
    assert batcher.stats.largest_batch_rows == 9  # a big request runs alone, never split
    assert batcher.stats.calls == 4  # 6 two-row requests in pairs, then the 9-row one


def test_sequential_requests_do_not_wait(built_model: BuiltModel, sample_rows: list[Any]) -> None:
    batcher = DynamicBatcher(ort_runner(built_model), max_wait_ms=1000)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(5):
            await batcher.predict(columns_of(built_model, sample_rows[i : i + 1]))
        return loop.time() - started

    elapsed = asyncio.run(main())
    assert batcher.stats.calls == 5
    assert elapsed < 5.0  # 5 x the 1 s max wait would be 5 s (a bound, not a timing target)


def test_a_failing_run_fails_its_callers_only() -> None:
    def run(columns: dict[str, np.ndarray]) -> np.ndarray:
        raise RuntimeError("boom")

    batcher = DynamicBatcher(run, max_wait_ms=0)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.predict({"age": np.zeros((1, 1), np.float32)})

    asyncio.run(main())
    assert batcher.stats.failures == 1


def test_batcher_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="max_batch_rows"):
        DynamicBatcher(lambda c: c["x"], max_batch_rows=0)
    with pytest.raises(ConfigError, match="max_wait_ms"):
        DynamicBatcher(lambda c: c["x"], max_wait_ms=-1)


# -- CloudEvents emitter ---------------------------------------------------------------------------

IDENTITY = EventIdentity(inference_service="churn", namespace="ns", source="http://p:1/")


def test_event_headers_are_the_agents() -> None:
    headers = event_headers(IDENTITY, "id-1", REQUEST_TYPE)
    assert headers["ce-id"] == "id-1"
    assert headers["ce-type"] == "org.kubeflow.serving.inference.request"
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-inferenceservicename"] == "churn"
    assert headers["ce-namespace"] == "ns"
    assert headers["ce-component"] == "predictor"
    assert headers["ce-endpoint"] == "default"
    assert headers["ce-source"] == "http://p:1/"
    assert headers["content-type"] == "application/json"
    assert headers["ce-time"].endswith("Z")


def test_emitter_posts_request_and_response(event_receiver: EventReceiver) -> None:
    emitter = PayloadEmitter(event_receiver.url, IDENTITY)

    async def main() -> None:
        assert emitter.emit("pair-1", {"instances": [[1.0, "a"]]}, {"predictions": [0.5]})
        assert await emitter.flush(10)
        await emitter.close()

    asyncio.run(main())
    events = event_receiver.wait_for(lambda e: e.headers.get("ce-id") == "pair-1")
    assert sorted(e.headers["ce-type"] for e in events) == [REQUEST_TYPE, RESPONSE_TYPE]
    bodies = {e.headers["ce-type"]: json.loads(e.body) for e in events}
    assert bodies[RESPONSE_TYPE] == {"predictions": [0.5]}
    assert emitter.sent == 2 and emitter.dropped == 0


def test_emitter_drops_and_counts_when_full_never_blocks() -> None:
    # A port nothing listens on: posts fail (counted), the queue fills, emit never blocks.
    emitter = PayloadEmitter("http://127.0.0.1:9/", IDENTITY, queue_size=4, timeout=0.5)

    async def main() -> None:
        for i in range(10):
            emitter.emit(f"id-{i}", {"instances": []}, {"predictions": []})
        await emitter.close(timeout=5)

    asyncio.run(main())
    assert emitter.dropped == 16  # 2 pairs queued, 8 pairs (16 events) dropped at once
    assert emitter.failed + emitter.sent == 4


def test_emitter_off_and_bad_url() -> None:
    assert PayloadEmitter("", IDENTITY).emit("x", {}, {}) is None
    with pytest.raises(ConfigError, match="logger_url"):
        PayloadEmitter("ftp://x", IDENTITY)


def test_emitter_delivers_a_burst_completely_with_concurrent_senders(
    event_receiver: EventReceiver,
) -> None:
    # 1,000 inferences = 2,000 events emitted at once (no awaits between them), queue large
    # enough: every event reaches the loopback receiver, none dropped, none failed.
    pairs = 1000
    emitter = PayloadEmitter(event_receiver.url, IDENTITY, queue_size=2 * pairs, senders=6)
    response = np.array([0.25, 0.5], dtype=np.float32)

    async def main() -> bool:
        for i in range(pairs):
            body = {"instances": [[float(i), "a"]]}
            emitter.emit(f"burst-{i}", body, lambda: {"predictions": response.tolist()})
        done = await emitter.flush(120)
        await emitter.close()
        return done

    assert asyncio.run(main())
    events = event_receiver.wait_for(
        lambda e: e.headers.get("ce-id", "").startswith("burst-"), timeout=5
    )
    assert emitter.dropped == 0 and emitter.failed == 0
    assert emitter.sent == 2 * pairs
    assert len(events) == 2 * pairs
    assert len({(e.headers["ce-id"], e.headers["ce-type"]) for e in events}) == 2 * pairs
    by_key = {(e.headers["ce-id"], e.headers["ce-type"]): e for e in events}
    assert json.loads(by_key[("burst-7", REQUEST_TYPE)].body) == {"instances": [[7.0, "a"]]}
    assert json.loads(by_key[("burst-7", RESPONSE_TYPE)].body) == {"predictions": [0.25, 0.5]}
    assert by_key[("burst-7", REQUEST_TYPE)].headers["ce-namespace"] == "ns"


def test_emitter_counts_a_body_it_cannot_encode(event_receiver: EventReceiver) -> None:
    emitter = PayloadEmitter(event_receiver.url, IDENTITY)

    async def main() -> None:
        emitter.emit("bad-body", {"instances": [object()]}, {"predictions": [1.0]})
        assert await emitter.flush(10)
        await emitter.close()

    asyncio.run(main())
    assert emitter.dropped == 1 and emitter.sent == 1


def test_emitter_senders_option_is_checked() -> None:
    with pytest.raises(ConfigError, match="logger_senders"):
        PayloadEmitter("http://127.0.0.1:9/", IDENTITY, senders=0)


def test_small_batches_run_inline_large_ones_in_the_executor(
    built_model: BuiltModel, sample_rows: list[dict[str, Any]], reference: Any
) -> None:
    import threading

    threads: list[int] = []
    inner = ort_runner(built_model)

    def run(columns: dict[str, np.ndarray]) -> np.ndarray:
        threads.append(threading.get_ident())
        return inner(columns)

    batcher = DynamicBatcher(run, max_wait_ms=0, inline_max_rows=2)
    small, big = sample_rows[:2], sample_rows[:5]

    async def main() -> tuple[int, list[np.ndarray]]:
        got = [
            await batcher.predict(columns_of(built_model, small)),
            await batcher.predict(columns_of(built_model, big)),
        ]
        return threading.get_ident(), got

    loop_thread, got = asyncio.run(main())
    assert threads[0] == loop_thread and threads[1] != loop_thread
    for g, rows in zip(got, (small, big), strict=True):
        assert np.max(np.abs(g.reshape(-1) - reference(columns_of(built_model, rows)))) <= 1e-6


def test_batcher_inline_option_is_checked() -> None:
    with pytest.raises(ConfigError, match="inline_max_rows"):
        DynamicBatcher(lambda c: c["x"], inline_max_rows=-1)
