"""CloudEvents batched content mode between kfloop's predictor and kfloop's logger.

The logger runs as a REAL ``kfloop logger`` subprocess writing to the real SeaweedFS (the
helpers of ``test_logger.py``); batches are posted over HTTP with
``Content-Type: application/cloudevents-batch+json`` (a JSON array of structured-mode events,
as ``cloudevents.conversion.to_structured`` writes each of them). The end-to-end test runs
``kfloop serve --logger-batch-events 64`` against the logger under concurrent traffic.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent

from kfloop.core.errors import ConfigError
from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from kfloop.serving.events import (
    BATCH_CONTENT_TYPE,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    EventError,
    InferenceEvent,
    parse_cloudevent,
    parse_cloudevent_batch,
)
from kfloop.serving.payload_events import BATCH_MAX_BYTES, EventIdentity, PayloadEmitter
from tests.serving.conftest import MODEL_NAME, BuiltModel, EventReceiver, start_predictor
from tests.serving.test_logger import (
    MODEL,
    VERSION,
    LoggerServer,
    base_args,
    metric,
    model_dir,  # noqa: F401 - the fixture
    read_logs,
    traffic,
    v1_pair,
    v2_pair,
)

BATCH_HEADERS = {"content-type": BATCH_CONTENT_TYPE}


@pytest.fixture
def start_logger(settings: Settings, tmp_path: Path) -> Iterator[Any]:
    servers: list[LoggerServer] = []

    def start(*args: str) -> LoggerServer:
        server = LoggerServer(args, settings.to_env(), tmp_path / f"logger-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


def batch_body(events: Sequence[tuple[dict[str, str], bytes]]) -> bytes:
    """A batch of structured-mode events (each as ``to_structured`` encodes it alone)."""
    return b"[" + b",".join(body for _, body in events) + b"]"


def post_batch(server: LoggerServer, body: bytes) -> httpx.Response:
    return server.client.post("/", headers=BATCH_HEADERS, content=body)


def pairs(prefix: str, n: int, seed: int) -> tuple[list[Any], dict[str, float]]:
    """Request + response events (structured) of ``n`` v1/v2 inferences, and id -> prediction."""
    rows, preds = traffic(n, seed=seed)
    events: list[Any] = []
    expected: dict[str, float] = {}
    for i in range(n):
        eid = f"{prefix}-{i:04d}"
        if i % 2:
            pair = v1_pair(eid, rows[i], preds[i], "structured")
        else:
            pair = v2_pair(eid, [rows[i]], [preds[i]], "structured")
        if i % 5 == 0:
            pair.reverse()  # the response first
        events += pair
        expected[eid] = preds[i]
    return events, expected


# -- parsing (pure) ---------------------------------------------------------------------------


def test_a_batch_element_decodes_as_the_same_event_posted_alone() -> None:
    rows, preds = traffic(3, seed=1)
    singles = [
        *v1_pair("a", rows[0], preds[0], "structured"),
        *v2_pair("b", rows[1:3], preds[1:3], "structured"),
    ]
    parsed = parse_cloudevent_batch(batch_body(singles))
    alone = [parse_cloudevent(h, b) for h, b in singles]
    assert parsed == alone
    assert [e.kind for e in alone if isinstance(e, InferenceEvent)] == ["request", "response"] * 2

    binary = CloudEvent(
        {"type": REQUEST_TYPE, "id": "c", "source": "s"},
        json.dumps({"instances": [rows[0]]}).encode(),
    )
    headers, body = to_structured(binary)
    assert "data_base64" in json.loads(body)  # bytes data: base64 in structured mode
    assert parse_cloudevent_batch(b"[" + body + b"]") == [parse_cloudevent(headers, body)]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"[{", "not JSON"),
        (b'{"specversion": "1.0"}', "must be a JSON array"),
        (b"[]", "empty"),
        (b'[{"id": "a"}, {"id": "b"}, 7]', "index 2 is a JSON int"),
    ],
)
def test_a_malformed_batch_is_an_error_naming_the_index(body: bytes, match: str) -> None:
    with pytest.raises(EventError, match=match) as caught:
        parse_cloudevent_batch(body)
    assert caught.value.reason == "bad_batch" and caught.value.status == 400


def test_bad_events_of_a_batch_come_back_in_their_place() -> None:
    good = v1_pair("g", {"age": 30}, 0.5, "structured")[0][1]
    no_id = json.dumps({"specversion": "1.0", "type": REQUEST_TYPE, "source": "s"}).encode()
    other = json.dumps({"specversion": "1.0", "id": "x", "type": "t", "source": "s"}).encode()
    out = parse_cloudevent_batch(b"[" + b",".join([good, no_id, other]) + b"]")
    assert isinstance(out[0], InferenceEvent) and out[0].id == "g"
    assert isinstance(out[1], EventError) and out[1].reason == "no_id"
    assert "batch index 1" in str(out[1])
    assert isinstance(out[2], EventError) and out[2].reason == "unknown_type"
    assert "batch index 2" in str(out[2])


def test_emitter_batch_option_is_checked() -> None:
    identity = EventIdentity("m")
    for bad in (0, 1001, True, 2.5):
        with pytest.raises(ConfigError, match="logger_batch_events"):
            PayloadEmitter("http://x/", identity, batch_max_events=bad)  # type: ignore[arg-type]
    assert PayloadEmitter("http://x/", identity, batch_max_events=64).batch_max_events == 64


# -- the logger ---------------------------------------------------------------------------------


def test_a_batch_of_n_events_gives_its_rows_in_parquet(
    start_logger: Any,
    store: ObjectStore,
    bucket: str,
    model_dir: Path,  # noqa: F811
) -> None:
    """One post of 2 x 60 events (v1 and v2, either order) plus a duplicated pair in the same
    batch and one pair that comes again in a later batch: exactly 60 rows, written once."""
    server = start_logger(*base_args(str(model_dir), f"s3://{bucket}/logs", "--flush-rows", "50"))
    events, expected = pairs("b", 60, seed=5)
    duplicated = events[:2]
    response = post_batch(server, batch_body(events + duplicated))
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 122, "rejected": []}
    again = post_batch(server, batch_body(events[2:4]))
    assert again.status_code == 200 and again.json()["accepted"] == 2

    text = server.metrics()
    assert metric(text, "kfloop_logger_events_received_total", type="request") == 62
    assert metric(text, "kfloop_logger_events_received_total", type="response") == 62
    assert metric(text, "kfloop_logger_events_dropped_total", reason="duplicate") == 4
    assert metric(text, "kfloop_logger_event_batches_total") == 2
    assert server.terminate() == 0, server.log()

    table, _ = read_logs(store, f"s3://{bucket}/logs/{MODEL}/{VERSION}/")
    assert table.num_rows == 60
    got = dict(zip(table["request_id"].to_pylist(), table["prediction"].to_pylist(), strict=True))
    assert got.keys() == expected.keys()
    for eid, pred in expected.items():
        assert got[eid] == pytest.approx(pred, rel=1e-6)
    assert table["credit_score"].null_count < 60  # features decoded, not only predictions


def test_malformed_and_partly_bad_batches(
    start_logger: Any,
    store: ObjectStore,
    bucket: str,
    model_dir: Path,  # noqa: F811
) -> None:
    server = start_logger(*base_args(str(model_dir), f"s3://{bucket}/logs"))
    events, expected = pairs("m", 4, seed=6)

    # Malformed: 400 naming the index, nothing of the batch accepted.
    body = b"[" + b",".join([events[0][1], events[1][1], b'"oops"', events[2][1]]) + b"]"
    malformed = post_batch(server, body)
    assert malformed.status_code == 400
    assert "index 2" in malformed.json()["error"]
    assert post_batch(server, b'{"not": "a list"}').status_code == 400
    text = server.metrics()
    assert nan_or_zero(metric(text, "kfloop_logger_events_received_total"))
    assert metric(text, "kfloop_logger_events_rejected_total", reason="bad_batch") == 2

    # Partly bad: the bad events are rejected with their reason, the others accepted.
    no_id = json.dumps(
        {"specversion": "1.0", "type": REQUEST_TYPE, "source": "s", "data": {"instances": []}}
    ).encode()
    bad_payload = json.dumps(
        {"specversion": "1.0", "id": "bp", "type": REQUEST_TYPE, "source": "s", "data": {"x": 1}}
    ).encode()
    mixed = [events[0][1], no_id, *(b for _, b in events[1:]), bad_payload]
    response = post_batch(server, b"[" + b",".join(mixed) + b"]")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 8
    assert [(r["index"], r["reason"]) for r in answer["rejected"]] == [
        (1, "no_id"),
        (9, "bad_payload"),
    ]
    assert "batch index 1" in answer["rejected"][0]["error"]
    assert "instances" in answer["rejected"][1]["error"]

    # Nothing acceptable: 400 with the same answer.
    none = post_batch(server, b"[" + no_id + b"]")
    assert none.status_code == 400
    assert none.json()["accepted"] == 0 and none.json()["rejected"][0]["reason"] == "no_id"

    text = server.metrics()
    assert metric(text, "kfloop_logger_events_rejected_total", reason="no_id") == 2
    assert metric(text, "kfloop_logger_events_rejected_total", reason="bad_payload") == 1
    assert server.terminate() == 0, server.log()
    table, _ = read_logs(store, f"s3://{bucket}/logs/{MODEL}/{VERSION}/")
    assert sorted(table["request_id"].to_pylist()) == sorted(expected)


def nan_or_zero(value: float) -> bool:
    return math.isnan(value) or value == 0


def test_overload_refuses_the_whole_batch_and_a_retry_delivers_it(
    start_logger: Any,
    store: ObjectStore,
    bucket: str,
    model_dir: Path,  # noqa: F811
) -> None:
    """10 complete pairs (10 rows buffered until the 2 s flush) and 10 requests waiting for
    their responses fill the 20-row buffer: the batch of the 10 responses is 429 as a whole,
    nothing of it taken; posted again after the flush, it is taken; every row is in Parquet."""
    server = start_logger(
        *base_args(
            str(model_dir), f"s3://{bucket}/logs",
            "--max-buffered-rows", "20", "--flush-rows", "20", "--flush-seconds", "2",
            "--hold-seconds", "600",
        )
    )  # fmt: skip
    events, expected = pairs("o", 20, seed=7)
    kinds = [json.loads(body)["type"] for _, body in events]
    tail = list(zip(events[20:], kinds[20:], strict=True))
    first = events[:20] + [e for e, k in tail if k == REQUEST_TYPE]
    later = [e for e, k in tail if k == RESPONSE_TYPE]
    assert len(first) == 30 and len(later) == 10
    response = post_batch(server, batch_body(first))
    assert response.status_code == 200 and response.json()["accepted"] == 30
    body = batch_body(later)
    refused = post_batch(server, body)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "1"
    text = server.metrics()
    assert metric(text, "kfloop_logger_events_received_total", type="response") == 10
    assert metric(text, "kfloop_logger_events_rejected_total", reason="overload") == 1

    statuses = [429]
    for _attempt in range(100):  # the sender's retry (kfloop's predictor retries 429 batches)
        time.sleep(0.1)
        statuses.append(post_batch(server, body).status_code)
        if statuses[-1] != 429:
            break
    assert statuses[-1] == 200, statuses
    assert server.terminate() == 0, server.log()
    table, _ = read_logs(store, f"s3://{bucket}/logs/{MODEL}/{VERSION}/")
    assert sorted(table["request_id"].to_pylist()) == sorted(expected)
    assert table["prediction"].null_count == 0  # every pair complete: nothing half-written


# -- predictor -> logger -------------------------------------------------------------------------


def test_predictor_batches_reach_the_logger_with_every_request_id(
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    store: ObjectStore,
    settings: Settings,
    bucket: str,
    start_logger: Any,
    tmp_path: Path,
) -> None:
    """``kfloop serve --logger-batch-events 64`` under 8 concurrent clients (v1, v2 JSON):
    the logger takes batches, and the Parquet holds exactly the request ids sent."""
    logger, predictor, logs_root = start_logged_predictor(
        built_model, store, settings, bucket, start_logger, tmp_path,
        "--logger-batch-events", "64",
    )  # fmt: skip
    full = [r for r in sample_rows if None not in r.values()]  # v2 JSON: no nulls
    rows = (full * (600 // len(full) + 1))[:600]
    ids = [f"e2e-{i:05d}" for i in range(len(rows))]

    def send(i: int) -> None:
        url, body = infer_request(predictor.base, built_model, rows[i : i + 1], ids[i], i % 2 == 1)
        response = session_post(url, body, ids[i])
        assert response.status_code == 200, response.text

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(len(rows))))
        text = wait_for_events(logger, 2 * len(rows))
        batches = metric(text, "kfloop_logger_event_batches_total")
        assert 0 < batches < 2 * len(rows)  # posted in batches, fewer posts than events
        print(f"e2e: {2 * len(rows)} events in {batches:.0f} batch posts")
    finally:
        predictor.stop()
    assert logger.terminate() == 0, logger.log()
    table, _ = read_logs(store, f"{logs_root}/{MODEL_NAME}/{VERSION}/")
    assert sorted(table["request_id"].to_pylist()) == ids
    assert table["prediction"].null_count == 0


def start_logged_predictor(
    built_model: BuiltModel,
    store: ObjectStore,
    settings: Settings,
    bucket: str,
    start_logger: Any,
    tmp_path: Path,
    *predictor_args: str,
) -> tuple[LoggerServer, Any, str]:
    """The model published to the store, a ``kfloop logger`` of it (flushing at 256 rows) and
    ``kfloop serve`` logging to it with ``predictor_args``: (logger, predictor, logs root)."""
    model_uri = f"s3://{bucket}/models/{MODEL_NAME}/{VERSION}/"
    store.put_dir(built_model.package, model_uri)
    logs_root = f"s3://{bucket}/logs"
    logger = start_logger(
        "--reference-profile", model_uri, "--model-name", MODEL_NAME, "--model-version", VERSION,
        "--output", logs_root, "--flush-rows", "256", "--flush-seconds", "300",
    )  # fmt: skip
    predictor = start_predictor(
        model_uri,
        tmp_path / "predictor.log",
        ["--logger-url", f"{logger.url}/", "--grpc-port", "0", *predictor_args],
        env={**os.environ, **settings.to_env()},
    )
    return logger, predictor, logs_root


def infer_request(
    base: str, built_model: BuiltModel, batch: Sequence[dict[str, Any]], rid: str, v1: bool
) -> tuple[str, dict[str, Any]]:
    """URL and JSON body of a v1 (``instances``) or v2 (one ``[N, 1]`` tensor per input)
    request of ``batch``."""
    if v1:
        return f"{base}/v1/models/{MODEL_NAME}:predict", {"instances": list(batch)}
    inputs = [
        {
            "name": name,
            "shape": [len(batch), 1],
            "datatype": "FP32" if name in built_model.numeric else "BYTES",
            "data": [r[name] for r in batch],
        }
        for name in built_model.names
    ]
    return f"{base}/v2/models/{MODEL_NAME}/infer", {"id": rid, "inputs": inputs}


def wait_for_events(logger: LoggerServer, expected: int, seconds: float = 60) -> str:
    """The logger's metrics once it has received ``expected`` events (asserted)."""
    deadline = time.monotonic() + seconds
    text = logger.metrics()
    while time.monotonic() < deadline:
        text = logger.metrics()
        if metric(text, "kfloop_logger_events_received_total") == expected:
            break
        time.sleep(0.2)
    assert metric(text, "kfloop_logger_events_received_total") == expected
    return text


_LOCAL = threading.local()


def session_post(url: str, body: dict[str, Any], rid: str) -> requests.Response:
    """POST with one keep-alive session per thread."""
    if not hasattr(_LOCAL, "session"):
        _LOCAL.session = requests.Session()
    session: requests.Session = _LOCAL.session
    return session.post(url, json=body, headers={"x-request-id": rid}, timeout=30)


def test_base64_is_reachable() -> None:
    """A ``data_base64`` that is not base64 is the event's error, not the batch's."""
    bad = {"specversion": "1.0", "id": "z", "type": REQUEST_TYPE, "source": "s"}
    out = parse_cloudevent_batch(json.dumps([{**bad, "data_base64": "!!"}]).encode())
    assert isinstance(out[0], EventError) and out[0].reason == "bad_event"
    good = base64.b64encode(b'{"instances": []}').decode()
    out = parse_cloudevent_batch(json.dumps([{**bad, "data_base64": good}]).encode())
    assert isinstance(out[0], InferenceEvent) and out[0].data == {"instances": []}


def test_the_emitter_posts_a_refused_batch_again(
    start_logger: Any,
    store: ObjectStore,
    bucket: str,
    model_dir: Path,  # noqa: F811
) -> None:
    """The predictor's sender (a real :class:`PayloadEmitter`, batch of 64) meets a full
    logger: 429, posted again after a wait; once the held half-pairs are written (hold 1 s),
    the batch is taken: every event sent, none failed, every pair in Parquet."""
    server = start_logger(
        *base_args(
            str(model_dir), f"s3://{bucket}/logs",
            "--max-buffered-rows", "10", "--flush-rows", "10", "--flush-seconds", "1",
            "--hold-seconds", "1",
        )
    )  # fmt: skip
    fill, _ = pairs("fill", 10, seed=8)
    requests_only = [e for e in fill if json.loads(e[1])["type"] == REQUEST_TYPE]
    assert post_batch(server, batch_body(requests_only)).status_code == 200
    rows, preds = traffic(5, seed=9)
    emitter = PayloadEmitter(server.url + "/", EventIdentity(MODEL), batch_max_events=64)

    async def emit_all() -> bool:
        for i in range(5):
            emitter.emit(f"r-{i}", {"instances": [rows[i]]}, {"predictions": [preds[i]]})
        delivered = await emitter.flush(timeout=30)
        await emitter.close()
        return delivered

    assert asyncio.run(emit_all())
    assert (emitter.sent, emitter.failed, emitter.dropped) == (10, 0, 0)
    text = server.metrics()
    assert metric(text, "kfloop_logger_events_rejected_total", reason="overload") >= 1
    assert server.terminate() == 0, server.log()
    table, _ = read_logs(store, f"s3://{bucket}/logs/{MODEL}/{VERSION}/")
    got = dict(zip(table["request_id"].to_pylist(), table["prediction"].to_pylist(), strict=True))
    for i in range(5):
        assert got[f"r-{i}"] == pytest.approx(preds[i], rel=1e-6)
    assert {f"fill-{i:04d}" for i in range(10)} <= got.keys()  # the orphans, written alone


def test_batches_stop_growing_at_the_byte_limit(event_receiver: EventReceiver) -> None:
    """Big events: each post holds at most ``BATCH_MAX_BYTES`` of bodies (one bigger event
    goes alone), and every event is posted once, in order, as structured-mode JSON."""
    big = {"instances": [{"note": "x" * (BATCH_MAX_BYTES // 3)}]}  # 3 do not fit in a post
    emitter = PayloadEmitter(
        event_receiver.url, EventIdentity(MODEL), batch_max_events=64, senders=1
    )

    async def emit_all() -> bool:
        for i in range(4):
            emitter.emit(f"size-{i}", big, {"predictions": [0.5]})
        delivered = await emitter.flush(timeout=30)
        await emitter.close()
        return delivered

    assert asyncio.run(emit_all())
    posts = event_receiver.wait_for(lambda e: b'"size-' in e.body)
    assert all(p.headers["content-type"] == BATCH_CONTENT_TYPE for p in posts)
    assert all(len(p.body) <= BATCH_MAX_BYTES + 4096 for p in posts)
    events = [e for p in posts for e in json.loads(p.body)]
    assert [(e["id"], e["type"]) for e in events] == [
        (f"size-{i}", kind) for i in range(4) for kind in (REQUEST_TYPE, RESPONSE_TYPE)
    ]
    # a third of the limit and a bit: two big bodies (and their small responses) per post
    assert [len(json.loads(p.body)) for p in posts] == [4, 4]
    assert events[0]["data"] == big and events[1]["data"] == {"predictions": [0.5]}


@pytest.mark.parametrize("batch", [1, 64])
def test_the_emitter_delivers_on_uvloop(event_receiver: EventReceiver, batch: int) -> None:
    """``kfloop serve`` runs on uvloop, whose transports are not ``asyncio.Transport``
    subclasses: every event still arrives, in either mode."""
    import uvloop

    emitter = PayloadEmitter(
        event_receiver.url, EventIdentity(MODEL), batch_max_events=batch, senders=1
    )

    async def emit_all() -> bool:
        for i in range(5):
            emitter.emit(f"uv{batch}-{i}", {"instances": [[i]]}, {"predictions": [0.5]})
        delivered = await emitter.flush(timeout=30)
        await emitter.close()
        return delivered

    assert uvloop.run(emit_all())
    assert (emitter.sent, emitter.failed) == (10, 0)
    tag = f"uv{batch}-"
    posts = event_receiver.wait_for(
        lambda e: tag.encode() in e.body or e.headers.get("ce-id", "").startswith(tag)
    )
    if batch == 1:
        ids = [p.headers["ce-id"] for p in posts]
    else:
        ids = [e["id"] for p in posts for e in json.loads(p.body)]
    assert sorted(ids) == sorted([f"{tag}{i}" for i in range(5)] * 2)


def test_a_sender_outlives_an_unexpected_error(
    event_receiver: EventReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in posting costs the events of that post, counted as failed, and the next
    events are still delivered (the sender task used to die silently)."""
    from kfloop.serving import payload_events

    real_post = payload_events._Poster.post_many
    calls = {"n": 0}

    async def flaky_post(self: Any, messages: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")
        return await real_post(self, messages)

    monkeypatch.setattr(payload_events._Poster, "post_many", flaky_post)
    emitter = PayloadEmitter(event_receiver.url, EventIdentity(MODEL), senders=1)

    async def emit_all() -> bool:
        delivered = True
        for i in range(3):  # one inference (two events, one pipelined post) at a time
            emitter.emit(f"bug-{i}", {"instances": [[i]]}, {"predictions": [0.5]})
            delivered &= await emitter.flush(timeout=30)
        await emitter.close()
        return delivered

    assert asyncio.run(emit_all())
    assert (emitter.sent, emitter.failed) == (4, 2)
    got = event_receiver.wait_for(lambda e: e.headers.get("ce-id", "").startswith("bug-"))
    assert sorted(e.headers["ce-id"] for e in got) == ["bug-1", "bug-1", "bug-2", "bug-2"]


def test_a_batch_carries_any_id_as_valid_json(event_receiver: EventReceiver) -> None:
    """Batched events are built as bytes: an id with quotes, backslashes, non-ASCII and a
    control character still gives valid JSON, with the id a binary-mode post would carry."""
    emitter = PayloadEmitter(
        event_receiver.url, EventIdentity(MODEL), batch_max_events=64, senders=1
    )
    ids = ['jsonid-q"uote', "jsonid-back\\slash", "jsonid-ünï", "jsonid-ctl\n"]

    async def emit_all() -> bool:
        for rid in ids:
            emitter.emit(rid, {"instances": [[1]]}, b'{"predictions":[0.5]}')
        delivered = await emitter.flush(timeout=30)
        await emitter.close()
        return delivered

    assert asyncio.run(emit_all())
    posts = event_receiver.wait_for(lambda e: b"jsonid-" in e.body)
    events = [e for p in posts for e in json.loads(p.body)]
    want = ['jsonid-q"uote', "jsonid-back\\slash", "jsonid-ünï", "jsonid-ctl_"]
    assert [e["id"] for e in events] == [rid for rid in want for _ in (0, 1)]
    assert {e["specversion"] for e in events} == {"1.0"}
    assert [e["data"] for e in events[:2]] == [{"instances": [[1]]}, {"predictions": [0.5]}]
    assert all(e["time"].endswith("Z") and len(e["time"]) == 27 for e in events)


def _binary_request(tag: str) -> tuple[bytes, int]:
    """A v2 binary-extension body: one FP32 tensor with a NaN, one BYTES tensor."""
    import struct

    floats = struct.pack("<3f", 1.5, float("nan"), 3.0)
    texts = b"".join(len(t).to_bytes(4, "little") + t for t in (b"DE", b"", "ü".encode()))
    header = json.dumps(
        {
            "id": tag,
            "inputs": [
                {"name": "age", "shape": [3, 1], "datatype": "FP32",
                 "parameters": {"binary_data_size": len(floats)}},
                {"name": "country", "shape": [3, 1], "datatype": "BYTES",
                 "parameters": {"binary_data_size": len(texts)}},
            ],
        }
    ).encode()  # fmt: skip
    return header + floats + texts, len(header)


@pytest.mark.parametrize("batch", [1, 64])
def test_a_binary_request_is_logged_as_it_arrived(
    event_receiver: EventReceiver, batch: int
) -> None:
    """A binary-tensor request is posted as its own bytes, with its header length where the
    agent puts it (header and ce-metadata; in a batch, data_base64 and metadata), and the
    logger's parser reads back the values that were sent."""
    from kfloop.serving.payload_events import BinaryBody

    tag = f"binlog{batch}-{time.time_ns()}"
    raw, header_length = _binary_request(tag)
    emitter = PayloadEmitter(
        event_receiver.url, EventIdentity(MODEL), batch_max_events=batch, senders=1
    )

    async def emit() -> bool:
        emitter.emit(tag, BinaryBody(raw, header_length), {"predictions": [0.1, 0.2, 0.3]})
        delivered = await emitter.flush(timeout=30)
        await emitter.close()
        return delivered

    assert asyncio.run(emit())
    posts = event_receiver.wait_for(
        lambda e: tag.encode() in e.body or e.headers.get("ce-id") == tag
    )
    if batch == 1:
        (post,) = [p for p in posts if p.headers["ce-type"] == REQUEST_TYPE]
        assert post.body == raw
        assert post.headers["content-type"] == "application/octet-stream"
        assert post.headers["inference-header-content-length"] == str(header_length)
        meta = json.loads(post.headers["ce-metadata"])
        assert meta == {"Inference-Header-Content-Length": [str(header_length)]}
        del post.headers["inference-header-content-length"]  # the metadata alone suffices
        event = parse_cloudevent(post.headers, post.body)
    else:
        (post,) = posts
        elements = json.loads(post.body)
        request = next(e for e in elements if e["type"] == REQUEST_TYPE)
        assert base64.b64decode(request["data_base64"]) == raw
        assert request["datacontenttype"] == "application/octet-stream"
        parsed = parse_cloudevent_batch(post.body)
        event = next(e for e in parsed if isinstance(e, InferenceEvent) and e.kind == "request")
    assert event.id == tag
    tensors = {t["name"]: t["data"] for t in event.data["inputs"]}
    assert tensors["country"] == ["DE", "", "ü"]
    age = tensors["age"].tolist()  # numbers as an array, NaN = missing
    assert age[0] == 1.5 and math.isnan(age[1]) and age[2] == 3.0


def test_a_large_binary_request_goes_alone_among_batches(event_receiver: EventReceiver) -> None:
    """With batches on, a binary-tensor request of ``BATCH_BINARY_ALONE_BYTES`` or more is
    posted as it came (binary mode, no base64), and the small inferences queued around it
    still go in batches: every event arrives once."""
    from kfloop.serving.payload_events import BATCH_BINARY_ALONE_BYTES, BinaryBody

    tag = f"alone-{time.time_ns()}"
    small_raw, small_length = _binary_request(f"{tag}-small")
    pad = b"\x00" * BATCH_BINARY_ALONE_BYTES  # tensors' bytes after a 3-row request's
    big_raw, big_length = small_raw + pad, small_length
    emitter = PayloadEmitter(
        event_receiver.url, EventIdentity(MODEL), batch_max_events=64, senders=1
    )

    async def emit_all() -> bool:
        for i in range(6):
            emitter.emit(f"{tag}-{i}", {"instances": [[i]]}, {"predictions": [0.5]})
            if i in (2, 4):
                emitter.emit(f"{tag}-big{i}", BinaryBody(big_raw, big_length), b"{}")
        emitter.emit(f"{tag}-small", BinaryBody(small_raw, small_length), b"{}")
        delivered = await emitter.flush(timeout=30)
        await emitter.close()
        return delivered

    assert asyncio.run(emit_all())
    assert (emitter.sent, emitter.failed) == (18, 0)
    posts = event_receiver.wait_for(
        lambda e: tag.encode() in e.body or e.headers.get("ce-id", "").startswith(tag)
    )
    alone = [p for p in posts if p.headers.get("content-type") != BATCH_CONTENT_TYPE]
    batched = [e for p in posts if p not in alone for e in json.loads(p.body)]
    assert sorted((p.headers["ce-id"], p.headers["ce-type"]) for p in alone) == sorted(
        (f"{tag}-big{i}", kind) for i in (2, 4) for kind in (REQUEST_TYPE, RESPONSE_TYPE)
    )
    for post in alone:
        if post.headers["ce-type"] == REQUEST_TYPE:
            assert post.body == big_raw
            assert post.headers["inference-header-content-length"] == str(big_length)
    assert sorted((e["id"], e["type"]) for e in batched) == sorted(
        (f"{tag}-{i}", kind)
        for i in [*map(str, range(6)), "small"]
        for kind in (REQUEST_TYPE, RESPONSE_TYPE)
    )
    small = next(e for e in batched if e["id"] == f"{tag}-small" and e["type"] == REQUEST_TYPE)
    assert base64.b64decode(small["data_base64"]) == small_raw
