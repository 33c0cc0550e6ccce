"""kfloop.deploy.canary: the decision (pure, exhaustively) and the loop against a real HTTP
server speaking Prometheus's /api/v1/query, with an autospec'd Kubernetes ApiClient."""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes.client import ApiClient

from kfloop.core.errors import ConfigError
from kfloop.deploy.canary import (
    CanaryError,
    CanaryPolicy,
    Measurement,
    Prometheus,
    PrometheusError,
    decide,
    revisions,
    run_canary,
)
from kfloop.deploy.kserve import inference_service

POLICY = CanaryPolicy(
    window_seconds=600,
    min_requests=100,
    max_error_rate=0.01,
    max_error_rate_increase=0.005,
    max_p95_latency_seconds=0.5,
    max_latency_ratio=1.25,
    max_duration_seconds=3600,
)
STABLE = Measurement(requests=1000, errors=2, p95_seconds=0.100)
GOOD = Measurement(requests=200, errors=0, p95_seconds=0.110)


# -- the decision -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("canary", "stable", "elapsed", "action", "reason"),
    [
        # not enough canary traffic
        (Measurement(50, 0, 0.1), STABLE, 100, "wait", "fewer than min_requests=100"),
        (Measurement(0, 0, None), STABLE, 3599, "wait", "0 canary requests"),
        (Measurement(50, 0, 0.1), STABLE, 3600, "rollback", "not enough evidence"),
        # error rate: absolute bound, and relative to the stable revision
        (Measurement(200, 3, 0.1), STABLE, 100, "rollback", "above max_error_rate 1.00%"),
        (
            Measurement(1000, 8, 0.1),
            Measurement(1000, 1, 0.1),
            100,
            "rollback",
            "exceeds the stable 0.10% by more than 0.50%",
        ),
        (Measurement(1000, 8, 0.1), Measurement(1000, 5, 0.1), 700, "promote", "within bounds"),
        # latency: absolute bound, and relative to the stable revision
        (Measurement(200, 0, 0.6), STABLE, 100, "rollback", "above max_p95_latency_seconds 0.5"),
        (Measurement(200, 0, 0.130), STABLE, 100, "rollback", "more than 1.25x the stable 0.100"),
        (Measurement(200, 0, 0.125), STABLE, 700, "promote", "within bounds"),
        # within bounds: wait for the window, then promote
        (GOOD, STABLE, 599, "wait", "observed for 599 s of window_seconds=600"),
        (GOOD, STABLE, 600, "promote", "observed for 600 s"),
        # no stable traffic: absolute bounds only
        (GOOD, None, 600, "promote", "judged on the absolute bounds only"),
        (GOOD, Measurement(0, 0, None), 600, "promote", "judged on the absolute bounds only"),
        (Measurement(200, 0, None), STABLE, 600, "promote", "no latency measured"),
        # bad beats early: no need to wait for the window to roll back
        (Measurement(200, 100, 0.1), STABLE, 1, "rollback", "canary error rate 50.00%"),
    ],
)
def test_decide(
    canary: Measurement,
    stable: Measurement | None,
    elapsed: float,
    action: str,
    reason: str,
) -> None:
    decision = decide(canary, stable, POLICY, elapsed)
    assert decision.action == action
    assert reason in " | ".join(decision.reasons)
    assert decision.canary == canary and decision.stable == stable


def test_every_violated_bound_is_a_reason() -> None:
    decision = decide(Measurement(200, 20, 0.9), STABLE, POLICY, 10)
    assert decision.action == "rollback"
    assert len(decision.reasons) == 4


def test_decision_serialises_with_its_measurements() -> None:
    record = decide(GOOD, STABLE, POLICY, 600).to_dict()
    assert json.loads(json.dumps(record))["canary"] == {
        "requests": 200,
        "errors": 0,
        "p95_seconds": 0.11,
    }


def test_policy_from_configmap_data() -> None:
    policy = CanaryPolicy.from_mapping({"canary_percent": "20", "window_seconds": "300"})
    assert policy.canary_percent == 20 and policy.window_seconds == 300


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"window_secs": "1"}, "window_secs"),
        ({"max_error_rate": "lots"}, "max_error_rate"),
        ({"max_error_rate": "2"}, "max_error_rate"),
        ({"canary_percent": "100"}, "canary_percent"),
        ({"canary_percent": "12.5"}, "canary_percent"),
        ({"min_requests": "-1"}, "min_requests"),
        ({"max_latency_ratio": "0.5"}, "max_latency_ratio"),
        ({"window_seconds": "nan"}, "window_seconds"),
        ({"window_seconds": "0"}, "window_seconds"),
        ({"max_duration_seconds": "60"}, "max_duration_seconds"),
    ],
)
def test_bad_policy_names_the_key(data: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        CanaryPolicy.from_mapping(data)
    assert info.value.field == field


# -- revisions from the status ---------------------------------------------------------------


def split_status(canary: str = "churn-predictor-00002", stable: str = "churn-predictor-00001"):
    return {
        "components": {
            "predictor": {
                "traffic": [
                    {"revisionName": canary, "percent": 10, "latestRevision": True},
                    {"revisionName": stable, "percent": 90, "latestRevision": False, "tag": "prev"},
                ]
            }
        }
    }


def test_revisions_from_the_traffic_split() -> None:
    assert revisions({"status": split_status()}) == (
        "churn-predictor-00002",
        "churn-predictor-00001",
    )
    with pytest.raises(CanaryError, match="no latest revision"):
        revisions({"metadata": {"name": "churn"}, "status": {}})


# -- a Prometheus that answers from a table ----------------------------------------------------


class PrometheusStub:
    """Answers instant queries: the revision in the query picks the row of ``table``."""

    def __init__(self) -> None:
        self.table: dict[str, Measurement] = {}
        self.queries: list[str] = []
        self.fail = False

    def answer(self, query: str) -> tuple[int, dict[str, Any]]:
        self.queries.append(query)
        if self.fail:
            return 422, {"status": "error", "errorType": "bad_data", "error": "parse error"}
        match = re.search(r'revision_name="([^"]+)"', query)
        row = self.table.get(match.group(1)) if match else None
        if row is None:
            value = None
        elif "histogram_quantile" in query:
            value = row.p95_seconds
        elif "5xx" in query:
            value = row.errors
        else:
            value = row.requests
        result = [] if value is None else [{"metric": {}, "value": [1.0, str(value)]}]
        return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture
def prometheus() -> Iterator[tuple[PrometheusStub, str]]:
    stub = PrometheusStub()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != "/api/v1/query":
                self.send_error(404)
                return
            status, body = stub.answer(parse_qs(parts.query)["query"][0])
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stub, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_prometheus_client_reads_values_and_reports_errors(
    prometheus: tuple[PrometheusStub, str],
) -> None:
    stub, url = prometheus
    stub.table["r1"] = Measurement(42, 1, 0.2)
    client = Prometheus(url)
    assert client.query('sum(x{revision_name="r1"})') == 42
    assert client.query('sum(x{revision_name="nothing"})') is None
    stub.fail = True
    with pytest.raises(PrometheusError, match="HTTP 422"):
        client.query("sum(")
    with pytest.raises(PrometheusError, match="failed"):
        Prometheus("http://127.0.0.1:9", timeout=2).query("up")
    with pytest.raises(ConfigError):
        Prometheus("localhost:9090")


# -- the loop ----------------------------------------------------------------------------------


class FakeKube:
    """The InferenceService as the API server would hold it; applied objects recorded."""

    def __init__(self, live: dict[str, Any]) -> None:
        self.live = live
        self.applied: list[dict[str, Any]] = []

    def __call__(self, path: str, method: str, **kwargs: Any) -> dict[str, Any]:
        if method == "PATCH":
            self.applied.append(copy.deepcopy(kwargs["body"]))
            return copy.deepcopy(kwargs["body"])
        return copy.deepcopy(self.live)


def canary_setup() -> tuple[dict[str, Any], dict[str, Any], FakeKube, Any]:
    previous = inference_service("churn", "s3://kfloop-models/churn/v1/", "v1", namespace="ns")
    new = inference_service(
        "churn", "s3://kfloop-models/churn/v2/", "v2", namespace="ns", canary_percent=10
    )
    fake = FakeKube({**new, "status": split_status()})
    api = mock.create_autospec(ApiClient, instance=True)
    api.call_api.side_effect = fake
    return previous, new, fake, api


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_loop_waits_then_promotes_and_records_every_decision(
    prometheus: tuple[PrometheusStub, str], tmp_path: Path
) -> None:
    stub, url = prometheus
    stub.table["churn-predictor-00002"] = GOOD
    stub.table["churn-predictor-00001"] = STABLE
    previous, new, fake, api = canary_setup()
    clock = Clock()
    record = tmp_path / "canary.jsonl"
    promoted_outcomes: list[Any] = []
    outcome = run_canary(
        new,
        previous,
        prometheus=Prometheus(url),
        api=api,
        policy=POLICY,
        interval_seconds=200,
        record_path=record,
        sleep=clock.sleep,
        clock=clock,
        on_promote=promoted_outcomes.append,
    )
    assert outcome.action == "promote"
    assert promoted_outcomes == [outcome]
    assert [d.action for d in outcome.decisions] == ["wait", "wait", "wait", "promote"]
    assert len(fake.applied) == 1
    promoted = fake.applied[0]
    assert promoted["spec"]["predictor"]["canaryTrafficPercent"] == 100
    assert promoted["metadata"]["annotations"]["kfloop.io/model-version"] == "v2"
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [line["action"] for line in lines] == ["wait", "wait", "wait", "promote"]
    assert lines[-1]["inference_service"] == "ns/churn"
    assert lines[-1]["canary"]["requests"] == 200
    # The queries name the namespace and both revisions, over the window.
    assert any('revision_name="churn-predictor-00001"' in q for q in stub.queries)
    assert all('namespace_name="ns"' in q for q in stub.queries)
    assert any("[600s]" in q for q in stub.queries)


def test_loop_rolls_back_to_the_previous_spec(prometheus: tuple[PrometheusStub, str]) -> None:
    stub, url = prometheus
    stub.table["churn-predictor-00002"] = Measurement(300, 30, 0.1)
    stub.table["churn-predictor-00001"] = STABLE
    previous, new, fake, api = canary_setup()
    clock = Clock()
    outcome = run_canary(
        new,
        previous,
        prometheus=Prometheus(url),
        api=api,
        policy=POLICY,
        sleep=clock.sleep,
        clock=clock,
    )
    assert outcome.action == "rollback"
    assert "above max_error_rate" in outcome.decisions[-1].reasons[0]
    assert len(outcome.decisions) == 1
    (applied,) = fake.applied
    assert applied == previous
    assert "canaryTrafficPercent" not in applied["spec"]["predictor"]


def test_loop_without_previous_spec_sends_no_traffic_to_the_canary(
    prometheus: tuple[PrometheusStub, str],
) -> None:
    stub, url = prometheus
    stub.table["churn-predictor-00002"] = Measurement(300, 0, 2.0)
    _, new, fake, api = canary_setup()
    clock = Clock()
    outcome = run_canary(
        new, None, prometheus=Prometheus(url), api=api, sleep=clock.sleep, clock=clock
    )
    assert outcome.action == "rollback"
    assert fake.applied[0]["spec"]["predictor"]["canaryTrafficPercent"] == 0


def test_loop_fails_clearly_when_prometheus_fails(prometheus: tuple[PrometheusStub, str]) -> None:
    stub, url = prometheus
    stub.fail = True
    _, new, fake, api = canary_setup()
    with pytest.raises(PrometheusError, match="parse error"):
        run_canary(new, None, prometheus=Prometheus(url), api=api)
    assert fake.applied == []
