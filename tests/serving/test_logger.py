"""The payload logger as a REAL uvicorn server in a subprocess, writing to the real SeaweedFS.

Every test starts ``logger_main`` in its own process on a free loopback port, posts KServe
CloudEvents over HTTP, reads ``/metrics``, sends SIGTERM and reads the Parquet files back from
the store. The reference profile is computed by kfloop's own code
(:func:`kfloop.model.profile.compute_reference_profile`) on kfloop's synthetic demo data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from prometheus_client.parser import text_string_to_metric_families

from kfloop.core.arrowio import read_table
from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from kfloop.data.synth import generate_table
from kfloop.model.features import infer_feature_spec, numeric_values
from kfloop.model.profile import compute_reference_profile
from kfloop.serving.events import REQUEST_TYPE, RESPONSE_TYPE
from kfloop.serving.logger import logger_main

MODEL, VERSION = "demo", "v1"
FEATURES_EXCLUDED = ["id", "event_time", "label"]
REPO = Path(__file__).resolve().parents[2]


def predict(table: pa.Table) -> np.ndarray:
    """A stand-in model: a logistic function of credit_score (deterministic, drift-sensitive)."""
    z = np.nan_to_num(numeric_values(table["credit_score"]), nan=650.0)
    return 1.0 / (1.0 + np.exp(-(z - 650.0) / 60.0))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as the logger reads it: reference_profile.json + metadata.json inputs."""
    table = generate_table(rows=5000, seed=21)
    spec = infer_feature_spec(table, "label", exclude=["id", "event_time"])
    profile = compute_reference_profile(table, spec, predict(table))
    folder = tmp_path_factory.mktemp("logger-model")
    (folder / "reference_profile.json").write_text(json.dumps(profile))
    inputs = [{"name": f.name, "kind": f.kind} for f in spec.features]
    (folder / "metadata.json").write_text(json.dumps({"inputs": inputs}))
    return folder


def feature_names(model_dir: Path) -> list[str]:
    return [i["name"] for i in json.loads((model_dir / "metadata.json").read_text())["inputs"]]


def traffic(rows: int, seed: int, drift: Mapping[str, Any] | None = None) -> tuple[list, list]:
    """(feature rows as dicts, predictions) from the synthetic generator."""
    table = generate_table(rows=rows, seed=seed, drift=drift)
    preds = predict(table).tolist()
    features = table.drop_columns(FEATURES_EXCLUDED).to_pylist()
    return features, preds


# -- events ----------------------------------------------------------------------------------------


def v1_pair(eid: str, row: Mapping[str, Any], pred: float, mode: str = "binary") -> list:
    attrs = {"source": "http://predictor/", "inferenceservicename": MODEL, "endpoint": "default"}
    req = CloudEvent({"type": REQUEST_TYPE, "id": eid, **attrs}, {"instances": [dict(row)]})
    resp = CloudEvent({"type": RESPONSE_TYPE, "id": eid, **attrs}, {"predictions": [pred]})
    enc = to_binary if mode == "binary" else to_structured
    return [enc(req), enc(resp)]


def v2_pair(
    eid: str, rows: Sequence[Mapping[str, Any]], preds: Sequence[float], mode: str = "structured"
) -> list:
    names = list(rows[0])
    inputs = []
    for name in names:
        values = [r[name] for r in rows]
        is_text = any(isinstance(v, str) for v in values)
        inputs.append(
            {
                "name": name,
                "shape": [len(rows), 1],
                "datatype": "BYTES" if is_text else "FP64",
                "data": values,
            }
        )
    attrs = {"source": "http://predictor/", "inferenceservicename": MODEL, "endpoint": "canary"}
    req = CloudEvent({"type": REQUEST_TYPE, "id": eid, **attrs}, {"id": eid, "inputs": inputs})
    out = {"name": "prediction", "shape": [len(rows), 1], "datatype": "FP32", "data": list(preds)}
    resp = CloudEvent(
        {"type": RESPONSE_TYPE, "id": eid, **attrs},
        {"model_name": MODEL, "id": eid, "outputs": [out]},
    )
    enc = to_binary if mode == "binary" else to_structured
    return [enc(req), enc(resp)]


# -- the server ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoggerServer:
    """``kfloop logger`` in a subprocess on a free loopback port."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        code = (
            "import sys; from kfloop.serving.logger import logger_main; "
            "sys.exit(logger_main(sys.argv[1:]))"
        )
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "--host", "127.0.0.1", "--port", str(self.port), *args],
            env={**os.environ, **env, "PYTHONPATH": str(REPO / "src")},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"logger exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"logger did not start in 60 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, event: tuple[dict[str, str], bytes]) -> httpx.Response:
        headers, body = event
        return self.client.post("/", headers=headers, content=body)

    def metrics(self) -> str:
        return self.client.get("/metrics").text

    def terminate(self, timeout: float = 90) -> int:
        """SIGTERM and wait: the clean shutdown that must lose nothing."""
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            self._log.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.client.close()
        self._log.close()


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


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (nan when none)."""
    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
                found = True
    return total if found else math.nan


def read_logs(store: ObjectStore, prefix: str) -> tuple[pa.Table, list[str]]:
    uris = sorted(str(o.uri) for o in store.list_objects(prefix) if str(o.uri).endswith(".parquet"))
    tables = [read_table(u, store) for u in uris]
    return (pa.concat_tables(tables) if tables else pa.table({})), uris


def base_args(model_ref: str, output: str, *extra: str) -> list[str]:
    return [
        "--reference-profile", model_ref, "--model-name", MODEL, "--model-version", VERSION,
        "--output", output, *extra,
    ]  # fmt: skip


# -- tests -----------------------------------------------------------------------------------------


def test_every_accepted_event_is_in_parquet_after_sigterm(
    start_logger: Any, store: ObjectStore, bucket: str, model_dir: Path
) -> None:
    """v1 + v2, binary + structured, either order, retries: exactly one row per request."""
    model_uri = f"s3://{bucket}/models/{MODEL}/{VERSION}"
    store.put_dir(model_dir, model_uri)
    server = start_logger(
        *base_args(model_uri, f"s3://{bucket}/logs", "--flush-rows", "64", "--flush-seconds", "300")
    )
    rows, preds = traffic(203, seed=3)
    expected: dict[str, float] = {}
    duplicates = 0
    for i in range(200):
        eid = f"req-{i:04d}"
        if i % 2:
            events = v1_pair(eid, rows[i], preds[i], "binary" if i % 4 == 1 else "structured")
        else:
            events = v2_pair(eid, [rows[i]], [preds[i]], "structured" if i % 4 else "binary")
        if i % 10 == 0:
            events.reverse()  # the response can arrive first
        if i % 20 == 0:
            events = events + events  # agent retries: both halves sent twice
            duplicates += 2
        for ev in events:
            response = server.post(ev)
            assert response.status_code == 200, response.text
        expected[eid] = preds[i]
    batch_rows, batch_preds = rows[200:203], preds[200:203]  # one v2 batch of 3 rows
    for ev in v2_pair("batch", batch_rows, batch_preds):
        assert server.post(ev).status_code == 200
    expected.update({f"batch:{j}": batch_preds[j] for j in range(3)})

    text = server.metrics()
    assert (
        metric(text, "kfloop_logger_events_received_total", type="request") == 201 + duplicates / 2
    )
    assert metric(text, "kfloop_logger_events_dropped_total", reason="duplicate") == duplicates
    deadline = time.monotonic() + 30  # size-triggered flushes, written in the background
    while metric(text, "kfloop_logger_rows_written_total") < 192 and time.monotonic() < deadline:
        time.sleep(0.2)
        text = server.metrics()
    assert metric(text, "kfloop_logger_rows_written_total") == 192
    assert metric(text, "kfloop_logger_write_seconds_count") == 3
    assert metric(text, "kfloop_logger_unflushed_rows") == 203 - 192

    assert server.terminate() == 0, server.log()

    table, uris = read_logs(store, f"s3://{bucket}/logs/{MODEL}/{VERSION}/")
    assert table.num_rows == len(expected) == 203  # zero loss, duplicates written once
    ids = table["request_id"].to_pylist()
    assert sorted(ids) == sorted(expected)
    names = feature_names(model_dir)
    assert table.column_names == [
        "request_id", "model_name", "model_version", "timestamp", "endpoint",
        *names, "prediction",
    ]  # fmt: skip
    assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert set(table["model_name"].to_pylist()) == {MODEL}
    assert set(table["endpoint"].to_pylist()) == {"default", "canary"}
    by_id = {r["request_id"]: r for r in table.to_pylist()}
    for eid, pred in expected.items():
        assert by_id[eid]["prediction"] == pytest.approx(pred, rel=1e-6)
    row7 = by_id["req-0007"]
    for name in names:
        sent = rows[7][name]
        if sent is None:
            assert row7[name] is None
        else:
            assert row7[name] == (float(sent) if not isinstance(sent, str) else sent)
    assert all("/date=" in u and "/hour=" in u for u in uris)
    assert len(uris) >= 4  # three by size, the rest at shutdown


def test_large_json_requests_are_in_parquet_value_for_value(
    start_logger: Any, store: ObjectStore, bucket: str, model_dir: Path
) -> None:
    """1,000-row v2 JSON requests, whose numbers the logger reads straight into Arrow
    (:mod:`kfloop.serving.payload_json`): alone and in a batch, with missing values (read as
    before) and without, every row is in Parquet with the values sent."""
    model_uri = f"s3://{bucket}/models/{MODEL}/{VERSION}"
    store.put_dir(model_dir, model_uri)
    server = start_logger(*base_args(model_uri, f"s3://{bucket}/large", "--flush-seconds", "300"))
    inputs = json.loads((model_dir / "metadata.json").read_text())["inputs"]
    kinds = {i["name"]: i["kind"] for i in inputs}
    rows, preds = traffic(3000, seed=8)
    assert any(v is None for r in rows[:1000] for v in r.values())  # the generator's gaps
    filled = [
        {k: (1.5 if kinds[k] == "numeric" else "zz") if v is None else v for k, v in r.items()}
        for r in rows
    ]
    starts = {"big-a": 0, "big-b": 1000, "big-c": 2000}
    sent = {"big-a": rows[:1000], "big-b": filled[1000:2000], "big-c": filled[2000:]}
    for eid in ("big-a", "big-b"):
        request, response = v2_pair(eid, sent[eid], preds[starts[eid] :][:1000], "binary")
        assert len(request[1]) > 32 * 1024  # read through simdjson
        for event in (request, response):
            answer = server.post(event)
            assert answer.status_code == 200, answer.text
    events = v2_pair("big-c", sent["big-c"], preds[2000:])  # structured, for a batch
    batch = b"[" + b",".join(body for _, body in events) + b"]"
    answer = server.post(({"content-type": "application/cloudevents-batch+json"}, batch))
    assert answer.status_code == 200 and answer.json()["accepted"] == 2, answer.text
    assert server.terminate() == 0, server.log()

    table, _ = read_logs(store, f"s3://{bucket}/large/{MODEL}/{VERSION}/")
    by_id = {r["request_id"]: r for r in table.to_pylist()}
    assert len(by_id) == table.num_rows == 3000
    for eid, start in starts.items():
        for j, row in enumerate(sent[eid]):
            logged = by_id[f"{eid}:{j}"]
            assert logged["prediction"] == pytest.approx(preds[start + j], rel=1e-6), (eid, j)
            for name, value in row.items():
                want = value if value is None or isinstance(value, str) else float(value)
                assert logged[name] == (want or None if isinstance(want, str) else want), (
                    eid,
                    j,
                    name,
                )


def test_bad_events_are_refused_with_a_reason(
    start_logger: Any, tmp_path: Path, model_dir: Path
) -> None:
    server = start_logger(
        *base_args(str(model_dir), str(tmp_path / "logs"), "--max-body-bytes", "100000")
    )
    headers, body = v1_pair("x", {"age": 1}, 0.5)[0]
    no_id = {k: v for k, v in headers.items() if k.lower() != "ce-id"}
    response = server.post((no_id, body))
    assert response.status_code == 400
    assert "ce-id" in response.json()["error"]

    bad_payload = server.post((headers, b'{"neither": 1}'))
    assert bad_payload.status_code == 400
    assert "instances" in bad_payload.json()["error"]

    plain = server.client.post("/", json={"instances": []})
    assert plain.status_code == 400  # not a CloudEvent

    big = server.post((headers, b"{" + b" " * 200_000 + b"}"))
    assert big.status_code == 413

    def chunks() -> Iterator[bytes]:  # no content-length: the limit holds while reading
        yield b"{"
        for _ in range(30):
            yield b" " * 10_000

    streamed = server.client.post("/", headers=headers, content=chunks())
    assert streamed.status_code == 413
    assert "limit of 100000 bytes" in streamed.json()["error"]
    not_a_post = server.client.get("/")
    assert (not_a_post.status_code, not_a_post.headers["allow"]) == (405, "POST")

    wrong_type = {"instances": [{"age": "old", "colour": "red"}]}
    h2, b2 = to_binary(CloudEvent({"type": REQUEST_TYPE, "id": "w", "source": "s"}, wrong_type))
    assert server.post((h2, b2)).status_code == 200  # logged; the values are flagged

    text = server.metrics()
    assert metric(text, "kfloop_logger_events_rejected_total", reason="no_id") == 1
    assert metric(text, "kfloop_logger_events_rejected_total", reason="bad_payload") == 1
    assert metric(text, "kfloop_logger_events_rejected_total", reason="bad_event") == 1
    assert metric(text, "kfloop_logger_events_rejected_total", reason="too_large") == 2
    assert metric(text, "kfloop_schema_violations_total", feature="colour") == 1
    assert metric(text, "kfloop_schema_violations_total", feature="age", reason="wrong_type") == 1
    assert server.terminate() == 0, server.log()


def test_overload_answers_429_and_loses_nothing(
    start_logger: Any, store: ObjectStore, bucket: str, model_dir: Path
) -> None:
    """Requests whose responses never come fill the bounded buffer: 429, not unbounded growth."""
    server = start_logger(
        *base_args(
            str(model_dir), f"s3://{bucket}/logs",
            "--max-buffered-rows", "20", "--flush-rows", "10", "--hold-seconds", "600",
        )
    )  # fmt: skip
    rows, _ = traffic(25, seed=4)
    statuses = []
    for i, row in enumerate(rows):
        response = server.post(v1_pair(f"o-{i}", row, 0.0)[0])  # request only
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"
    assert statuses == [200] * 20 + [429] * 5
    text = server.metrics()
    assert metric(text, "kfloop_logger_events_rejected_total", reason="overload") == 5
    assert metric(text, "kfloop_logger_unflushed_rows") == 20
    assert metric(text, "kfloop_logger_pending_events") == 20

    assert server.terminate() == 0, server.log()
    table, _ = read_logs(store, f"s3://{bucket}/logs/{MODEL}/{VERSION}/")
    assert sorted(table["request_id"].to_pylist()) == sorted(f"o-{i}" for i in range(20))
    assert table["prediction"].null_count == 20  # requests written alone at shutdown


def test_response_without_request_is_an_orphan(
    start_logger: Any, store: ObjectStore, bucket: str, model_dir: Path
) -> None:
    server = start_logger(
        *base_args(str(model_dir), f"s3://{bucket}/logs", "--hold-seconds", "0.5")
    )
    rows, _ = traffic(1, seed=5)
    _, response_event = v1_pair("lonely", rows[0], 0.75)
    assert server.post(response_event).status_code == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = server.metrics()
        if metric(text, "kfloop_logger_orphans_total", kind="response") == 1:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no orphan counted:\n{text}")
    assert metric(text, "kfloop_logger_pending_events") == 0
    assert server.terminate() == 0, server.log()
    table, _ = read_logs(store, f"s3://{bucket}/logs/{MODEL}/{VERSION}/")
    (row,) = table.to_pylist()
    assert row["request_id"] == "lonely"
    assert row["prediction"] == 0.75
    assert all(row[name] is None for name in feature_names(model_dir))


def test_drift_gauges_rise_on_drifted_traffic(
    start_logger: Any, tmp_path: Path, model_dir: Path
) -> None:
    server = start_logger(
        *base_args(
            str(model_dir), str(tmp_path / "logs"),
            "--window-rows", "500", "--drift-every-rows", "100", "--flush-rows", "1000",
        )
    )  # fmt: skip

    def send(prefix: str, rows: list, preds: list) -> None:
        for i in range(0, len(rows), 10):  # v2 batches of 10 rows
            for ev in v2_pair(f"{prefix}-{i}", rows[i : i + 10], preds[i : i + 10], "binary"):
                assert server.post(ev).status_code == 200

    def metrics_once_counted(predictions: int) -> str:
        """/metrics after the drift update that saw ``predictions`` rows (at most a second or
        so after them: updates are at most once a second by default)."""
        deadline = time.monotonic() + 15
        while True:
            text = server.metrics()
            if metric(text, "kfloop_prediction_count") == predictions:
                return text
            assert time.monotonic() < deadline, text
            time.sleep(0.1)

    send("in", *traffic(500, seed=7))
    before = metrics_once_counted(500)
    psi_before = metric(before, "kfloop_feature_psi", feature="credit_score")
    assert psi_before < 0.1, before
    for name in feature_names(model_dir):
        assert metric(before, "kfloop_feature_psi", feature=name) < 0.1, name
        assert 0 <= metric(before, "kfloop_feature_js_divergence", feature=name) < 0.05
        assert not math.isnan(metric(before, "kfloop_feature_missing_rate", feature=name))
    assert metric(before, "kfloop_prediction_psi") < 0.1
    assert metric(before, "kfloop_drift_window_rows") == 500
    assert metric(before, "kfloop_prediction_count") == 500

    send("drift", *traffic(500, seed=8, drift={"mean_shift_stds": {"credit_score": 2.0}}))
    after = metrics_once_counted(1000)
    psi_after = metric(after, "kfloop_feature_psi", feature="credit_score")
    assert psi_after > 0.2, after
    assert metric(after, "kfloop_feature_js_divergence", feature="credit_score") > metric(
        before, "kfloop_feature_js_divergence", feature="credit_score"
    )
    assert metric(after, "kfloop_feature_psi", feature="age") < 0.1  # untouched feature
    assert metric(after, "kfloop_prediction_psi") > 0.2  # the model output moved too
    print(f"\ncredit_score PSI {psi_before:.4f} -> {psi_after:.4f}")
    assert server.terminate() == 0, server.log()


def test_wrong_credentials_fail_fast_without_leaking_them(
    settings: Settings, model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    secret = "not-the-real-secret-123"
    for key, value in settings.with_credentials("nobody", secret).to_env().items():
        monkeypatch.setenv(key, value)
    caplog.set_level(logging.ERROR)
    rc = logger_main(base_args(str(model_dir), "s3://kfloop-logs", "--port", "0"))
    assert rc == 2
    assert "credentials" in caplog.text
    assert secret not in caplog.text


def test_missing_reference_profile_is_named(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.ERROR)
    missing = tmp_path / "no-model"
    rc = logger_main(base_args(str(missing), str(tmp_path / "logs")))
    assert rc == 2
    assert "reference_profile.json" in caplog.text and str(missing) in caplog.text


# -- throughput (a measurement, not a timed assertion) ---------------------------------------------


def _raw_request(headers: Mapping[str, str], body: bytes) -> bytes:
    lines = ["POST / HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _drive(port: int, requests: list[list[bytes]], connections: int) -> dict[int, int]:
    """Send each connection's share of requests in order (keep-alive); count statuses."""
    statuses: dict[int, int] = {}

    async def worker(share: list[list[bytes]]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for pair in share:
            for raw in pair:
                for _attempt in range(200):  # bounded retry on 429, like the agent would
                    writer.write(raw)
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head.split(b" ", 2)[1])
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    if length:
                        await reader.readexactly(length)
                    statuses[status] = statuses.get(status, 0) + 1
                    if status != 429:
                        break
                    await asyncio.sleep(0.01)
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(worker(requests[i::connections]) for i in range(connections)))
    return statuses


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sustained_throughput_with_zero_loss_report(
    start_logger: Any, store: ObjectStore, bucket: str, model_dir: Path
) -> None:
    """Bounded loopback load (10,000 request/response pairs on 8 connections): events/s into
    Parquet on the local SeaweedFS and server CPU per event; printed, not asserted."""
    pairs = 10_000
    server = start_logger(
        *base_args(
            str(model_dir), f"s3://{bucket}/logs",
            "--flush-rows", "5000", "--max-buffered-rows", "50000", "--log-level", "warning",
        )
    )  # fmt: skip
    rows, preds = traffic(1000, seed=9)
    requests = []
    for i in range(pairs):
        mode = "binary"
        events = (v1_pair if i % 2 else lambda e, r, p, m: v2_pair(e, [r], [p], m))(
            f"t-{i}", rows[i % 1000], preds[i % 1000], mode
        )
        requests.append([_raw_request(h, b) for h, b in events])
    cpu0 = _cpu_seconds(server.proc.pid)
    t0 = time.perf_counter()
    statuses = asyncio.run(_drive(server.port, requests, connections=8))
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds(server.proc.pid) - cpu0
    text = server.metrics()
    assert server.terminate() == 0, server.log()
    t1 = time.perf_counter()
    table, uris = read_logs(store, f"s3://{bucket}/logs/{MODEL}/{VERSION}/")
    assert statuses.get(200) == 2 * pairs, statuses
    assert table.num_rows == pairs
    assert len(set(table["request_id"].to_pylist())) == pairs
    n_events = 2 * pairs
    print(
        f"\nlogger throughput: {n_events} events ({pairs} pairs, v1+v2 binary, 8 connections) in "
        f"{wall:.2f} s = {n_events / wall:,.0f} events/s; server CPU {cpu:.2f} s = "
        f"{cpu / n_events * 1e6:.0f} us/event ({n_events / cpu:,.0f} events per CPU-second); "
        f"429s: {statuses.get(429, 0)}; files: {len(uris)}; rows: {table.num_rows}; "
        f"time in Parquet writes: {metric(text, 'kfloop_logger_write_seconds_sum'):.2f} s; "
        f"read-back {time.perf_counter() - t1:.1f} s"
    )
