"""Arrow rows posts (``--logger-format arrow``) from kfloop's predictor to kfloop's logger.

Pure: the wire format read back, and each malformed post named. In process: the Parquet table
and the drift window a rows post gives, equal to what the same rows give as JSON events, and
a post spanning two hours split by hour. Real processes: a ``kfloop logger`` subprocess writing
to SeaweedFS takes rows posts over HTTP (duplicates once, bad posts refused whole, 429 at the
bound), and ``kfloop serve --logger-format arrow`` under concurrent v1/v2 traffic logs every
request id with the values sent.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from kfloop.core.errors import ConfigError
from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from kfloop.serving.events import RowBlock
from kfloop.serving.logger import LoggerConfig, PayloadLogger
from kfloop.serving.payload_events import ROWS_BODY_ROWS, EventIdentity, PayloadEmitter
from kfloop.serving.rows import (
    META_KEY,
    ROWS_CONTENT_TYPE,
    ROWS_TYPE,
    RowsError,
    RowsItem,
    decode_rows,
    encode_rows,
    feature_column,
)
from tests.serving.conftest import MODEL_NAME, BuiltModel, EventReceiver, start_predictor
from tests.serving.test_event_batches import (  # noqa: F401 - start_logger: the fixture
    infer_request,
    session_post,
    start_logged_predictor,
    start_logger,
    wait_for_events,
)
from tests.serving.test_logger import (
    MODEL,
    VERSION,
    base_args,
    metric,
    model_dir,  # noqa: F401 - the fixture
    read_logs,
    traffic,
    v2_pair,
)
from tests.serving.test_logger_table import PROFILE, T0

NAMES = ["age", "country"]
KINDS = {"age": "numeric", "country": "categorical"}


def item(
    eid: str, ages: list[float], countries: list[str], preds: list[float], at: float = 0.0
) -> RowsItem:
    return RowsItem(
        eid,
        {
            "age": np.array(ages, dtype=np.float32).reshape(-1, 1),
            "country": np.array(countries, dtype=object).reshape(-1, 1),
        },
        np.array(preds, dtype=np.float32).reshape(-1, 1),
        at or T0 / 1e6,
    )


def rows_headers(post_id: str | None = None) -> dict[str, str]:
    return {
        "content-type": ROWS_CONTENT_TYPE,
        "ce-specversion": "1.0",
        "ce-id": post_id or str(uuid.uuid4()),
        "ce-type": ROWS_TYPE,
        "ce-source": "http://predictor/",
        "ce-endpoint": "default",
    }


def ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def with_meta(columns: dict[str, pa.Array], meta: bytes | None) -> bytes:
    batch = pa.RecordBatch.from_pydict(columns)
    if meta is not None:
        batch = batch.replace_schema_metadata({META_KEY: meta})
    return ipc(batch)


# -- the wire format (pure) -------------------------------------------------------------------


def test_a_post_reads_back_as_the_rows_sent() -> None:
    items = [
        item("a", [31.0], ["DE"], [0.25], at=100.5),
        item("b", [1.0, float("nan"), 3.0], ["FR", "", "XX"], [0.5, 0.75, 1.0], at=101.25),
    ]
    rows = decode_rows(encode_rows(items), NAMES, KINDS)
    assert rows.ids == ["a", "b"]
    assert rows.counts.tolist() == [1, 3]
    assert rows.times_us.tolist() == [100_500_000, 101_250_000]
    assert rows.n == 4 and rows.violations == []
    batches = [rows.batch]
    assert feature_column(batches, "age", "numeric").to_pylist() == [31.0, 1.0, None, 3.0]
    assert feature_column(batches, "country", "categorical").to_pylist() == [
        "DE", "FR", None, "XX",
    ]  # fmt: skip
    assert feature_column(batches, "prediction", "numeric").to_pylist() == [0.25, 0.5, 0.75, 1.0]


def test_arrow_string_columns_go_in_a_post_beside_numpy_ones() -> None:
    """A large binary request's string tensor is an Arrow array (the predictor's split); a
    post joins it with other inferences' numpy columns, and its stream is the bytes Arrow's
    IPC stream writer writes."""
    arrow = RowsItem(
        "b",
        {
            "age": np.array([[1.0], [2.0], [3.0]], dtype=np.float32),
            "country": pa.array(["FR", "", "XX"], pa.string()),
        },
        np.array([[0.5], [0.75], [1.0]], dtype=np.float32),
        101.25,
    )
    items = [item("a", [31.0], ["DE"], [0.25], at=100.5), arrow, item("c", [4.0], [""], [0.0])]
    body = encode_rows(items)
    rows = decode_rows(body, NAMES, KINDS)
    assert rows.ids == ["a", "b", "c"] and rows.counts.tolist() == [1, 3, 1]
    assert feature_column([rows.batch], "country", "categorical").to_pylist() == [
        "DE", "FR", None, "XX", None,
    ]  # fmt: skip
    assert feature_column([rows.batch], "age", "numeric").to_pylist() == [31.0, 1, 2, 3, 4]
    assert encode_rows([arrow]) == ipc(pa.ipc.open_stream(encode_rows([arrow])).read_next_batch())
    assert body == ipc(rows.batch)


def test_unknown_and_missing_columns_are_violations_not_errors() -> None:
    meta = b'{"ids": ["x"], "rows": [2], "times_us": [1]}'
    body = with_meta({"country": pa.array(["DE", "FR"]), "colour": pa.array([1, 2])}, meta)
    rows = decode_rows(body, NAMES, KINDS)
    assert sorted(rows.violations) == [
        ("colour", "unknown_feature"),
        ("prediction", "no_prediction"),
    ]
    assert feature_column([rows.batch], "age", "numeric").to_pylist() == [None, None]
    assert feature_column([rows.batch], "prediction", "numeric").null_count == 2


GOOD_META = b'{"ids": ["x"], "rows": [1], "times_us": [1]}'


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not arrow at all", "not an Arrow IPC stream"),
        (with_meta({"age": pa.array([1.0])}, None), "no kfloop.inferences metadata"),
        (with_meta({"age": pa.array([1.0])}, b"{oops"), "metadata is not JSON"),
        (
            with_meta({"age": pa.array([1.0, 2.0])}, GOOD_META),
            "rows add up to 1 rows but the record batch has 2",
        ),
        (
            with_meta({"age": pa.array([1.0])}, b'{"ids": ["x"], "rows": [1], "times_us": []}'),
            r"times_us must be a non-empty list",
        ),
        (
            with_meta({"age": pa.array([1.0])}, b'{"ids": [7], "rows": [1], "times_us": [1]}'),
            r"ids\[0\] is 7, not a str",
        ),
        (
            with_meta(
                {"age": pa.array([1.0])}, b'{"ids": ["x", "y"], "rows": [1], "times_us": [1]}'
            ),
            "2 ids, 1 row counts and 1 times",
        ),
        (with_meta({"age": pa.array(["old"])}, GOOD_META), "column 'age' is string; feature"),
        (with_meta({"country": pa.array([3])}, GOOD_META), "column 'country' is int64; feature"),
        (
            with_meta({"prediction": pa.array(["yes"])}, GOOD_META),
            "column 'prediction' is string; the prediction is numeric",
        ),
    ],
)
def test_a_malformed_post_is_an_error_naming_what_is_wrong(body: bytes, match: str) -> None:
    with pytest.raises(RowsError, match=match) as info:
        decode_rows(body, NAMES, KINDS, where="rows post p1")
    assert str(info.value).startswith("rows post p1: ")


def test_the_emitter_format_option_is_checked() -> None:
    identity = EventIdentity("m", "ns", "predictor", "default", "http://x/")
    with pytest.raises(ConfigError, match="logger_format"):
        PayloadEmitter("http://logger/", identity, payload_format="protobuf")


# -- the logger, in process ------------------------------------------------------------------


def _logger(tmp_path: Path) -> PayloadLogger:
    return PayloadLogger(LoggerConfig("m", "v1", str(tmp_path)), PROFILE, NAMES)


def test_a_rows_post_gives_the_table_and_drift_of_the_same_rows_as_json_events(
    tmp_path: Path,
) -> None:
    """The same two inferences, as a rows post and as row blocks (what JSON events give):
    equal Parquet rows, equal drift windows and prediction histogram."""
    posted, evented = _logger(tmp_path / "a"), _logger(tmp_path / "b")
    at_a, at_b = T0 / 1e6, (T0 + 1) / 1e6
    items = [
        item("a", [31.0], ["DE"], [0.25], at=at_a),
        item("b", [1.0, float("nan"), 3.0], ["FR", "", "XX"], [0.5, 0.75, 1.0], at=at_b),
    ]
    status, _ = posted.handle_rows(rows_headers(), encode_rows(items))
    assert status == 200
    blocks = [
        RowBlock("a", T0, "default", 1, [[31.0], ["DE"]], [0.25]),
        RowBlock(
            "b", T0 + 1, "default", 3, [[1.0, None, 3.0], ["FR", None, "XX"]], [0.5, 0.75, 1.0]
        ),
    ]
    target_p, target_e = posted.target, evented.target
    assert target_p is not None and target_e is not None
    table = posted.to_table(target_p.buffer)
    assert table.to_pylist() == evented.to_table(blocks).to_pylist()
    assert table.column("request_id").to_pylist() == ["a", "b:0", "b:1", "b:2"]
    assert table.column("timestamp").to_pylist()[0] == datetime.fromtimestamp(T0 / 1e6, tz=UTC)

    target_e.drift_blocks = blocks
    evented.update_drift()
    posted.update_drift()
    for name in ("age", "country"):
        got, want = posted.drift.feature_drift()[name], evented.drift.feature_drift()[name]
        assert got == want
        assert got.rows == 4
    assert posted.drift.prediction_drift() == evented.drift.prediction_drift()


def test_a_post_across_an_hour_is_written_to_both_hours(tmp_path: Path) -> None:
    asyncio.run(_post_across_an_hour(tmp_path))


async def _post_across_an_hour(tmp_path: Path) -> None:
    logger = _logger(tmp_path)
    await logger.start()
    hour = 3_600
    start = (T0 // 1_000_000 // hour + 1) * hour  # an hour boundary
    items = [
        item("a", [31.0], ["DE"], [0.25], at=start - 0.5),
        item("b", [40.0, 41.0], ["FR", "DE"], [0.5, 0.75], at=start + 0.5),
        item("c", [50.0], ["DE"], [0.1], at=start - 0.25),  # late: the earlier hour
    ]
    assert logger.handle_rows(rows_headers(), encode_rows(items))[0] == 200
    await logger.close()
    files = sorted(tmp_path.rglob("*.parquet"))
    by_hour = {f.parent.name: pq.read_table(f) for f in files}
    early = datetime.fromtimestamp(start - 1, tz=UTC).strftime("hour=%H")
    late = datetime.fromtimestamp(start, tz=UTC).strftime("hour=%H")
    assert sorted(by_hour) == sorted([early, late])
    assert sorted(by_hour[early].column("request_id").to_pylist()) == ["a", "c"]
    assert by_hour[late].column("request_id").to_pylist() == ["b:0", "b:1"]


# -- the logger service, over HTTP ----------------------------------------------------------------


def _features(rows: list[dict[str, Any]], names: list[str], kinds: dict[str, str]) -> dict:
    return {
        n: np.array(
            [r[n] for r in rows], dtype=np.float32 if kinds[n] == "numeric" else object
        ).reshape(-1, 1)
        for n in names
    }


def input_kinds(folder: Path) -> dict[str, str]:
    """The model's inputs (``metadata.json``) and their kinds, in order."""
    meta = json.loads((folder / "metadata.json").read_text())
    return {i["name"]: i["kind"] for i in meta["inputs"]}


def test_the_logger_takes_rows_posts_once_and_refuses_bad_ones_whole(
    start_logger: Any,  # noqa: F811
    store: ObjectStore,
    bucket: str,
    model_dir: Path,  # noqa: F811
) -> None:
    kinds = input_kinds(model_dir)
    names = list(kinds)
    server = start_logger(*base_args(str(model_dir), f"s3://{bucket}/logs", "--flush-rows", "50"))
    rows, preds = traffic(40, seed=9)
    full = [r for r in rows if None not in r.values()][:30]
    items = [
        RowsItem(
            f"r-{i:02d}",
            _features(full[i : i + 1], names, kinds),
            np.array([preds[i]], np.float32),
            time.time(),
        )
        for i in range(20)
    ] + [
        RowsItem("batch", _features(full[20:30], names, kinds), np.array(preds[20:30]), time.time())
    ]
    body = encode_rows(items)
    headers = rows_headers("post-1")
    first = server.client.post("/", headers=headers, content=body)
    assert first.status_code == 200, first.text
    again = server.client.post("/", headers=headers, content=body)  # a re-post after a timeout
    assert again.status_code == 200

    bad_type = _features(full[:1], names, kinds)
    bad_type["credit_score"] = np.array([["high"]], dtype=object)
    bad = encode_rows([RowsItem("bad", bad_type, np.array([0.5], np.float32), time.time())])
    refused = server.client.post("/", headers=rows_headers(), content=bad)
    assert refused.status_code == 400
    assert (
        "column 'credit_score' is string; feature 'credit_score' is numeric"
        in refused.json()["error"]
    )
    garbage = server.client.post("/", headers=rows_headers(), content=b"\x00" * 64)
    assert garbage.status_code == 400 and "not an Arrow IPC stream" in garbage.json()["error"]
    no_id = {k: v for k, v in rows_headers().items() if k != "ce-id"}
    assert server.client.post("/", headers=no_id, content=body).status_code == 400
    wrong_type = {**rows_headers(), "ce-type": "org.kubeflow.serving.inference.request"}
    answer = server.client.post("/", headers=wrong_type, content=body)
    assert answer.status_code == 400 and ROWS_TYPE in answer.json()["error"]

    text = server.metrics()
    assert metric(text, "kfloop_logger_events_received_total", type="request") == 21
    assert metric(text, "kfloop_logger_events_received_total", type="response") == 21
    assert metric(text, "kfloop_logger_events_dropped_total", reason="duplicate") == 1
    assert metric(text, "kfloop_logger_events_rejected_total", reason="bad_payload") == 2
    assert server.terminate() == 0, server.log()

    table, _ = read_logs(store, f"s3://{bucket}/logs/{MODEL}/{VERSION}/")
    assert table.num_rows == 30  # the re-post written once, the bad posts not at all
    ids = table.column("request_id").to_pylist()
    assert sorted(ids) == sorted(
        [f"r-{i:02d}" for i in range(20)] + [f"batch:{i}" for i in range(10)]
    )
    by_id = {r["request_id"]: r for r in table.to_pylist()}
    for i in range(20):
        got = by_id[f"r-{i:02d}"]
        assert got["credit_score"] == pytest.approx(full[i]["credit_score"], rel=1e-6)
        assert got["country"] == full[i]["country"]
        assert got["prediction"] == pytest.approx(preds[i], rel=1e-6)
    assert by_id["batch:9"]["age"] == pytest.approx(full[29]["age"], rel=1e-6)


def test_overload_refuses_a_rows_post_whole(
    start_logger: Any,  # noqa: F811
    store: ObjectStore,
    bucket: str,
    model_dir: Path,  # noqa: F811
) -> None:
    """A rows post of 10 rows (buffered until the 2 s flush) and 10 JSON requests waiting for
    their responses fill the 20-row buffer: the next rows post is 429 as a whole; posted
    again after the flush, it is taken; nothing is lost or written twice."""
    kinds = input_kinds(model_dir)
    server = start_logger(
        *base_args(
            str(model_dir), f"s3://{bucket}/logs",
            "--max-buffered-rows", "20", "--flush-rows", "20", "--flush-seconds", "2",
            "--hold-seconds", "600",
        )
    )  # fmt: skip
    rows, preds = traffic(60, seed=10)
    full = [r for r in rows if None not in r.values()][:40]

    def post(k: int, part: list[dict[str, Any]]) -> bytes:
        features = _features(part, list(kinds), kinds)
        one = RowsItem(f"o{k}", features, np.array(preds[: len(part)]), time.time())
        return encode_rows([one])

    assert (
        server.client.post("/", headers=rows_headers(), content=post(0, full[:10])).status_code
        == 200
    )
    for i in range(10):
        headers, body = v2_pair(f"wait-{i}", full[10 + i : 11 + i], preds[i : i + 1])[0]
        assert server.client.post("/", headers=headers, content=body).status_code == 200
    body = post(1, full[20:40])
    pid = "post-1"
    refused = server.client.post("/", headers=rows_headers(pid), content=body)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    statuses = [429]
    for _attempt in range(100):  # the predictor's sender re-posts 429s the same way
        time.sleep(0.1)
        statuses.append(
            server.client.post("/", headers=rows_headers(pid), content=body).status_code
        )
        if statuses[-1] != 429:
            break
    assert statuses[-1] == 200, statuses
    assert server.terminate() == 0, server.log()
    table, _ = read_logs(store, f"s3://{bucket}/logs/{MODEL}/{VERSION}/")
    ids = table.column("request_id").to_pylist()
    assert sorted(ids) == sorted(
        [f"o0:{i}" for i in range(10)]
        + [f"o1:{i}" for i in range(20)]
        + [f"wait-{i}" for i in range(10)]
    )


# -- predictor -> logger ----------------------------------------------------------------------


def binary_infer(
    base: str, built_model: BuiltModel, batch: list[dict[str, Any]], rid: str
) -> requests.Response:
    """POST ``batch`` as a v2 binary-tensor request (every input in raw bytes)."""
    inputs, raws = [], []
    for name in built_model.names:
        values = [r[name] for r in batch]
        if name in built_model.numeric:
            raw = np.asarray(values, dtype="<f4").tobytes()
            datatype = "FP32"
        else:
            raw = b"".join(
                struct.pack("<I", len(v.encode())) + v.encode() for v in map(str, values)
            )
            datatype = "BYTES"
        inputs.append(
            {
                "name": name,
                "shape": [len(batch), 1],
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        raws.append(raw)
    header = json.dumps({"id": rid, "inputs": inputs}).encode()
    return requests.post(
        f"{base}/v2/models/{MODEL_NAME}/infer",
        data=header + b"".join(raws),
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
        timeout=30,
    )


def test_the_predictor_logs_every_request_as_rows(
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    store: ObjectStore,
    settings: Settings,
    bucket: str,
    start_logger: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``kfloop serve --logger-format arrow`` under 8 concurrent clients (v1, v2 JSON, one
    row and three rows; a few v2 requests of ``ROWS_BODY_ROWS`` rows and more: JSON ones go as
    their events, binary ones as rows with their Arrow-split strings): the logger takes rows
    posts of several inferences, and the Parquet holds exactly the request ids sent, with the
    values sent and the predictions answered."""
    logger, predictor, logs_root = start_logged_predictor(
        built_model, store, settings, bucket, start_logger, tmp_path,
        "--logger-format", "arrow", "--logger-batch-events", "128",
    )  # fmt: skip
    full = [r for r in sample_rows if None not in r.values()]
    rows = (full * (300 // len(full) + 1))[:300]
    ids = [f"rows-{i:05d}" for i in range(len(rows))]
    answers: dict[str, list[float]] = {}
    large = ROWS_BODY_ROWS + 44

    def batch_of(i: int) -> list[dict[str, Any]]:
        if i % 100 in (50, 51):  # large: 50, 150, 250 in JSON; 51, 151, 251 in binary
            return [rows[(i + k) % len(rows)] for k in range(large)]
        return rows[i : i + 3] if i % 3 == 0 else rows[i : i + 1]

    def send(i: int) -> None:
        batch = batch_of(i)
        if i % 100 == 51:
            response = binary_infer(predictor.base, built_model, batch, ids[i])
            assert response.status_code == 200, response.text
            answers[ids[i]] = response.json()["outputs"][0]["data"]
            return
        v1 = i % 2 == 1 and len(batch) < large
        url, body = infer_request(predictor.base, built_model, batch, ids[i], v1)
        response = session_post(url, body, ids[i])
        assert response.status_code == 200, response.text
        out = response.json()
        answers[ids[i]] = out["predictions"] if v1 else out["outputs"][0]["data"]

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(len(rows))))
        text = wait_for_events(logger, 2 * len(rows))
        posts = metric(text, "kfloop_logger_event_batches_total")
        assert 0 < posts < len(rows)  # several inferences per post
        print(f"e2e: {len(rows)} inferences in {posts:.0f} rows posts")
    finally:
        predictor.stop()
    assert logger.terminate() == 0, logger.log()
    table, _ = read_logs(store, f"{logs_root}/{MODEL_NAME}/{VERSION}/")
    expected_ids = []
    for i, rid in enumerate(ids):
        n = len(batch_of(i))
        expected_ids += [f"{rid}:{k}" for k in range(n)] if n > 1 else [rid]
    assert sorted(table.column("request_id").to_pylist()) == sorted(expected_ids)
    by_id = {r["request_id"]: r for r in table.to_pylist()}
    numeric = sorted(built_model.numeric)[0]
    categorical = next(n for n in built_model.names if n not in built_model.numeric)
    for i, rid in enumerate(ids):
        sent = batch_of(i)
        keys = [f"{rid}:{k}" for k in range(len(sent))] if len(sent) > 1 else [rid]
        for key, row, pred in zip(keys, sent, answers[rid], strict=True):
            got = by_id[key]
            assert got[numeric] == pytest.approx(row[numeric], rel=1e-6)
            assert got[categorical] == row[categorical]
            assert got["prediction"] == pytest.approx(pred, rel=1e-6)


def test_a_large_binary_request_goes_as_rows_and_a_large_json_one_as_its_events(
    built_model: BuiltModel,
    sample_rows: list[dict[str, Any]],
    event_receiver: EventReceiver,
    tmp_path: Path,
) -> None:
    """In the arrow format, a JSON request of ``ROWS_BODY_ROWS`` rows or more is posted as its
    two events, the body as it came; a binary-tensor one of the same size goes as a rows post
    (its string tensors as the predictor split them with Arrow) holding what was sent and
    answered."""
    tag = f"large-{time.time_ns()}"
    predictor = start_predictor(
        str(built_model.package),
        tmp_path / "predictor.log",
        ["--logger-url", event_receiver.url, "--logger-format", "arrow"],
    )
    full = [r for r in sample_rows if None not in r.values()]
    batch = (full * (ROWS_BODY_ROWS // len(full) + 2))[: ROWS_BODY_ROWS + 44]
    try:
        binary = binary_infer(predictor.base, built_model, batch, f"{tag}-bin")
        assert binary.status_code == 200, binary.text
        url, body = infer_request(predictor.base, built_model, batch, f"{tag}-json", False)
        answer = requests.post(url, json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        events = event_receiver.wait_for(lambda e: e.headers.get("ce-id") == f"{tag}-json")
        if len(events) < 2:  # the response event may come a moment after the request's
            time.sleep(1)
            events = event_receiver.wait_for(lambda e: e.headers.get("ce-id") == f"{tag}-json")
        posts = event_receiver.wait_for(
            lambda e: e.headers.get("content-type") == ROWS_CONTENT_TYPE and tag.encode() in e.body
        )
    finally:
        predictor.stop()
    assert sorted(e.headers["ce-type"] for e in events) == sorted(
        ["org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"]
    )
    request = next(e for e in events if e.headers["ce-type"].endswith(".request"))
    assert json.loads(request.body)["inputs"] == body["inputs"]
    assert not event_receiver.wait_for(lambda e: e.headers.get("ce-id") == f"{tag}-bin", 0.5)
    kinds = {n: "numeric" if n in built_model.numeric else "categorical" for n in built_model.names}
    assert len(posts) == 1
    rows = decode_rows(posts[0].body, built_model.names, kinds)
    assert rows.ids == [f"{tag}-bin"] and rows.counts.tolist() == [len(batch)]
    for name in built_model.names:
        got = feature_column([rows.batch], name, kinds[name]).to_pylist()
        if name in built_model.numeric:
            assert got == pytest.approx([float(r[name]) for r in batch], rel=1e-6)
        else:
            assert got == [r[name] or None for r in batch]
    predictions = feature_column([rows.batch], "prediction", "numeric").to_pylist()
    assert predictions == pytest.approx(binary.json()["outputs"][0]["data"], rel=1e-6)
