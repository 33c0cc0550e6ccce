"""``kfloop logger --follow-production``: a REAL logger process following the production
pointer (:mod:`kfloop.deploy.registry`) on the real SeaweedFS.

v1's reference profile is kfloop's synthetic data; v2's is the same data drifted on
``credit_score`` (what a retraining on the drifted window publishes). Drifted traffic is high
drift against v1 and returns to normal against v2 once ``promote`` points production at v2.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kfloop.core.objectstore import ObjectStore
from kfloop.data.synth import generate_table
from kfloop.deploy.registry import pointer_uri, promote
from kfloop.model.features import infer_feature_spec
from kfloop.model.profile import compute_reference_profile
from kfloop.serving.logger import logger_main
from tests.serving.test_logger import (  # noqa: F401  (model_dir and start_logger: fixtures)
    MODEL,
    LoggerServer,
    metric,
    model_dir,
    predict,
    read_logs,
    start_logger,
    traffic,
    v1_pair,
    v2_pair,
)

DRIFT = {"mean_shift_stds": {"credit_score": 2.0}}
WAIT_S = 60.0


@pytest.fixture(scope="module")
def drifted_model_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:  # noqa: F811
    """v2: trained on the drifted window (its profile is the drifted distribution)."""
    table = generate_table(rows=5000, seed=22, drift=DRIFT)
    spec = infer_feature_spec(table, "label", exclude=["id", "event_time"])
    profile = compute_reference_profile(table, spec, predict(table))
    folder = tmp_path_factory.mktemp("logger-model-v2")
    (folder / "reference_profile.json").write_text(json.dumps(profile))
    (folder / "metadata.json").write_text((model_dir / "metadata.json").read_text())
    return folder


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def send_pairs(server: LoggerServer, prefix: str, rows: list, preds: list) -> list[str]:
    ids = []
    for i in range(0, len(rows), 10):  # v2 batches of 10 rows: ids <prefix>-<i>:<j>
        eid = f"{prefix}-{i}"
        for ev in v2_pair(eid, rows[i : i + 10], preds[i : i + 10], "binary"):
            response = server.post(ev)
            assert response.status_code == 200, response.text
        ids += [f"{eid}:{j}" for j in range(len(rows[i : i + 10]))]
    return ids


def test_logger_follows_the_production_version(
    start_logger: Any,  # noqa: F811
    store: ObjectStore,
    bucket: str,
    model_dir: Path,  # noqa: F811
    drifted_model_dir: Path,
) -> None:
    models_root = f"s3://{bucket}/models"
    v1_uri, v2_uri = f"{models_root}/{MODEL}/v1/", f"{models_root}/{MODEL}/v2/"
    store.put_dir(model_dir, v1_uri)
    store.put_dir(drifted_model_dir, v2_uri)
    logs = f"s3://{bucket}/logs"
    server = start_logger(
        "--follow-production", "--model-name", MODEL, "--models-root", models_root,
        "--output", logs, "--follow-seconds", "0.2", "--window-rows", "200",
        "--drift-every-rows", "50", "--flush-rows", "5000", "--flush-seconds", "300",
        "--hold-seconds", "600",
    )  # fmt: skip

    # 1. nothing deployed yet: alive, not ready, events refused with 503 (the sender retries)
    ready = server.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == f"no production version of {MODEL} yet"
    rows, preds = traffic(1, seed=30)
    refused = server.post(v1_pair("too-early", rows[0], preds[0])[0])
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "no production version" in refused.json()["error"]

    # 2. v1 deployed: the logger picks it up
    promote(store, models_root, MODEL, "v1", v1_uri, reason="first")
    wait_for("v1", lambda: server.client.get("/readyz").status_code == 200)
    assert server.client.get("/readyz").json()["version"] == "v1"
    text = server.metrics()
    assert metric(text, "kfloop_logger_model_info", version="v1") == 1

    # requests of v1 still waiting for their response when production moves on
    inflight_rows, inflight_preds = traffic(3, seed=31, drift=DRIFT)
    inflight = [f"inflight-{i}" for i in range(3)]
    for eid, row, pred in zip(inflight, inflight_rows, inflight_preds, strict=True):
        assert server.post(v1_pair(eid, row, pred)[0]).status_code == 200
    v1_ids = send_pairs(server, "v1", *traffic(200, seed=32, drift=DRIFT))
    wait_for(  # drift is published at most once a second
        "v1 drift", lambda: metric(server.metrics(), "kfloop_prediction_count", version="v1") == 200
    )
    text = server.metrics()
    psi_v1 = metric(text, "kfloop_feature_psi", version="v1", feature="credit_score")
    assert psi_v1 > 0.2, text

    # 3. a malformed pointer: logged with its URI and counted; v1 goes on
    pointer = pointer_uri(models_root, MODEL)
    good = store.get_bytes(pointer)
    store.put_bytes(b"{not json", pointer, "application/json")
    wait_for(
        "the pointer error",
        lambda: metric(server.metrics(), "kfloop_logger_production_pointer_errors_total") >= 1,
    )
    assert pointer in server.log()
    assert server.client.get("/readyz").json()["version"] == "v1"
    v1_ids += send_pairs(server, "v1b", *traffic(10, seed=33, drift=DRIFT))
    store.put_bytes(good, pointer, "application/json")

    # a published version without a reference profile: named in the log; v1 goes on
    v3_uri = f"{models_root}/{MODEL}/v3/"
    store.put_bytes((model_dir / "metadata.json").read_bytes(), f"{v3_uri}metadata.json")
    promote(store, models_root, MODEL, "v3", v3_uri, reason="broken")
    v3_error = f"{v3_uri}reference_profile.json: no such file"
    wait_for("the v3 error", lambda: v3_error in server.log())
    assert server.client.get("/readyz").json()["version"] == "v1"
    assert math.isnan(metric(server.metrics(), "kfloop_logger_model_info", version="v3"))

    # 4. v2 deployed (retrained on the drifted window)
    promote(store, models_root, MODEL, "v2", v2_uri, reason="drift")
    wait_for(
        "v2",
        lambda: metric(server.metrics(), "kfloop_logger_model_info", version="v2") == 1,
    )
    text = server.metrics()
    # only the serving version's gauges remain
    assert math.isnan(metric(text, "kfloop_logger_model_info", version="v1"))
    assert math.isnan(metric(text, "kfloop_feature_psi", version="v1"))
    assert math.isnan(metric(text, "kfloop_drift_window_rows", version="v1"))
    assert metric(text, "kfloop_drift_window_rows", version="v2") == 0  # a fresh window
    assert metric(text, "kfloop_logger_version_switches_total") == 1
    # v1's counters are totals and stay
    assert metric(text, "kfloop_logger_events_received_total", version="v1", type="request") == 24

    # the v1 requests' responses arrive after the switch: paired under v1
    for eid, row, pred in zip(inflight, inflight_rows, inflight_preds, strict=True):
        assert server.post(v1_pair(eid, row, pred)[1]).status_code == 200
    # an agent retry of an event v1 completed is still a duplicate
    retry = v2_pair("v1-0", inflight_rows[:1], inflight_preds[:1], "binary")[0]
    assert server.post(retry).status_code == 200
    v2_ids = send_pairs(server, "v2", *traffic(200, seed=34, drift=DRIFT))
    wait_for(
        "v2 drift", lambda: metric(server.metrics(), "kfloop_prediction_count", version="v2") == 200
    )
    text = server.metrics()
    psi_v2 = metric(text, "kfloop_feature_psi", version="v2", feature="credit_score")
    print(f"\ncredit_score PSI of drifted traffic: vs v1 {psi_v1:.3f}, vs v2 {psi_v2:.3f}")
    assert psi_v2 < 0.1, text  # drift back to normal against v2's reference
    assert metric(text, "kfloop_prediction_psi", version="v2") < 0.1
    assert metric(text, "kfloop_logger_events_dropped_total", reason="duplicate") == 1

    assert server.terminate() == 0, server.log()
    v1_table, _ = read_logs(store, f"{logs}/{MODEL}/v1/")
    v2_table, _ = read_logs(store, f"{logs}/{MODEL}/v2/")
    assert sorted(v1_table["request_id"].to_pylist()) == sorted(v1_ids + inflight)
    assert set(v1_table["model_version"].to_pylist()) == {"v1"}
    by_id = {r["request_id"]: r for r in v1_table.to_pylist()}
    for eid, pred in zip(inflight, inflight_preds, strict=True):
        assert by_id[eid]["prediction"] == pytest.approx(pred)  # paired, not orphans
        assert by_id[eid]["credit_score"] is not None
    assert sorted(v2_table["request_id"].to_pylist()) == sorted(v2_ids)
    assert set(v2_table["model_version"].to_pylist()) == {"v2"}


def test_follow_starts_with_the_given_version_until_a_pointer_exists(
    start_logger: Any,  # noqa: F811
    bucket: str,
    model_dir: Path,  # noqa: F811
) -> None:
    server = start_logger(
        "--follow-production", "--model-name", MODEL, "--models-root", f"s3://{bucket}/models",
        "--model-version", "v0", "--reference-profile", str(model_dir),
        "--output", f"s3://{bucket}/logs", "--follow-seconds", "0.2",
    )  # fmt: skip
    assert server.client.get("/readyz").json() == {"status": "ready", "version": "v0"}
    assert metric(server.metrics(), "kfloop_logger_model_info", version="v0") == 1
    assert server.terminate() == 0, server.log()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--model-name", MODEL, "--output", "x"], "--reference-profile"),
        (["--model-name", MODEL, "--reference-profile", "x", "--output", "x"], "--model-version"),
        (["--model-name", MODEL, "--follow-production", "--model-version", "v1"], "--reference"),
        (["--model-name", MODEL, "--follow-production", "--follow-seconds", "0"], "follow_sec"),
    ],
)
def test_bad_follow_arguments_are_named(
    args: list[str],
    flag: str,
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: Any,
) -> None:
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    caplog.set_level(logging.ERROR)
    assert logger_main([*args, "--port", "0"]) == 2
    assert flag in caplog.text


def test_a_malformed_pointer_at_start_waits_and_names_it(
    start_logger: Any,  # noqa: F811
    store: ObjectStore,
    bucket: str,
) -> None:
    """A pointer that is not a pointer at start: not ready (503), no crash, URI logged."""
    models_root = f"s3://{bucket}/models"
    pointer = pointer_uri(models_root, MODEL)
    store.put_bytes(b'{"model": "demo"}', pointer, "application/json")
    server = start_logger(
        "--follow-production", "--model-name", MODEL, "--models-root", models_root,
        "--output", f"s3://{bucket}/logs", "--follow-seconds", "0.2",
    )  # fmt: skip
    wait_for(
        "the pointer error",
        lambda: metric(server.metrics(), "kfloop_logger_production_pointer_errors_total") >= 2,
    )
    response = httpx.get(f"{server.url}/readyz")
    assert response.status_code == 503
    assert MODEL in response.json()["status"]
    assert server.proc.poll() is None
    assert f"{pointer}: production pointer lacks version, uri" in server.log()
    assert server.log().count("lacks version") == 1  # logged once, not at every poll
    assert server.terminate() == 0, server.log()
