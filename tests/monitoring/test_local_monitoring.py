"""Local Prometheus + Alertmanager (kfloop.local.monitoring) and the PromQL query helper,
against the real Debian binaries, a prometheus_client exporter and a loopback webhook."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from kfloop.core.errors import ConfigError, StackError
from kfloop.local.monitoring import (
    NULL_RECEIVER,
    RETRAIN_RECEIVER,
    LocalMonitoring,
    RetrainWebhook,
    alertmanager_config,
    find_binary,
)
from kfloop.local.process import LOOPBACK, free_port, pid_alive
from kfloop.monitoring import rules
from kfloop.monitoring.query import PrometheusClient, PrometheusQueryError

BINARIES = ("prometheus", "prometheus-alertmanager", "promtool", "amtool")
needs_binaries = pytest.mark.skipif(
    any(shutil.which(b) is None for b in BINARIES), reason="run `make setup` (Debian packages)"
)
FAST_FOR = {name: "2s" for name in rules.LOCAL_FOR}


def token_file(path: Path, token: str = "s3cr3t-webhook-token", mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    os.chmod(path, mode)
    return path


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    """Poll ``check`` until truthy; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"gave up waiting for {what}")


# -- configuration (no process) ---------------------------------------------------------------


def test_missing_binary_is_a_stack_error_naming_it_and_make_setup(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"`prometheus-alertmanager` not found.*make setup"):
        find_binary("prometheus-alertmanager", search_path=str(tmp_path))
    with pytest.raises(StackError, match=r"`prometheus` not found.*make setup"):
        find_binary("prometheus", search_path=str(tmp_path))


def test_webhook_token_file_must_be_private_and_url_credential_free(tmp_path: Path) -> None:
    loose = token_file(tmp_path / "loose.token", mode=0o644)
    with pytest.raises(ConfigError, match="mode 644.*chmod 600"):
        alertmanager_config(RetrainWebhook("http://127.0.0.1:1/alerts", loose))
    good = token_file(tmp_path / "good.token")
    with pytest.raises(ConfigError, match="webhook.url: must not carry credentials"):
        alertmanager_config(RetrainWebhook("http://u:p@127.0.0.1:1/alerts", good))
    with pytest.raises(ConfigError, match="webhook.token_file.*cannot read"):
        alertmanager_config(RetrainWebhook("http://127.0.0.1:1/", tmp_path / "absent"))
    empty = token_file(tmp_path / "empty.token", token="")
    with pytest.raises(ConfigError, match="is empty"):
        alertmanager_config(RetrainWebhook("http://127.0.0.1:1/", empty))


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ({"logger": ["127.0.0.1"]}, r"targets\[logger\]: '127.0.0.1' is not host:port"),
        ({"logger": ["http://127.0.0.1:80/metrics"]}, r"targets\[logger\]"),
        ({"logger": "127.0.0.1:9000"}, "a list of host:port"),
        ({"": ["127.0.0.1:9000"]}, "job names"),
        ({"logger": ["127.0.0.1:99999"]}, "is not host:port"),
    ],
)
def test_bad_scrape_targets_are_named(
    tmp_path: Path, targets: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        LocalMonitoring(tmp_path, targets=targets)


@needs_binaries
def test_generated_configs_pass_promtool_and_amtool_and_route_only_retrain(
    tmp_path: Path,
) -> None:
    token = token_file(tmp_path / "trigger.token")
    mon = LocalMonitoring(
        tmp_path,
        targets={"logger": ["127.0.0.1:9101"], "predictor": ["127.0.0.1:9102"]},
        webhook=RetrainWebhook("http://127.0.0.1:9103/alerts", token),
    )
    mon.write_prometheus_config()
    mon.write_alertmanager_config()
    out = subprocess.run(
        ["promtool", "check", "config", str(mon.prometheus_yml)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    prom = yaml.safe_load(mon.prometheus_yml.read_text())
    assert prom["global"]["evaluation_interval"] == "2s"
    assert {j["job_name"] for j in prom["scrape_configs"]} == {"logger", "predictor"}
    local_rules = yaml.safe_load(mon.rule_file.read_text())
    assert local_rules == rules.render_groups(rules.load(), rules.LOCAL_FOR, "2s")

    out = subprocess.run(
        ["amtool", "check-config", str(mon.alertmanager_yml)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = mon.alertmanager_yml.read_text()
    assert "s3cr3t" not in text
    assert f"credentials_file: {token}" in text
    assert stat.S_IMODE(mon.alertmanager_yml.stat().st_mode) == 0o600

    def route(*labels: str) -> str:
        config = f"--config.file={mon.alertmanager_yml}"
        res = subprocess.run(
            ["amtool", "config", "routes", "test", config, *labels],
            capture_output=True,
            text=True,
        )
        return res.stdout.strip()

    assert route("alertname=KfloopFeatureDrift", "kfloop_action=retrain") == RETRAIN_RECEIVER
    assert route("alertname=KfloopPredictionShift", "kfloop_action=retrain") == RETRAIN_RECEIVER
    assert route("alertname=KfloopLoggerDropping", "model=churn") == NULL_RECEIVER
    assert route("alertname=KfloopFeatureDrift", "kfloop_action=other") == NULL_RECEIVER


# -- end to end -------------------------------------------------------------------------------


class Webhook:
    """A loopback HTTP server that records each POST (headers and JSON body)."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[dict[str, str], dict[str, Any]]] = queue.Queue()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.put((dict(self.headers), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def drain(self) -> list[tuple[dict[str, str], dict[str, Any]]]:
        items = []
        while not self.received.empty():
            items.append(self.received.get_nowait())
        return items

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def _last_evaluation(client: PrometheusClient, group: str) -> float:
    for item in client.rule_groups():
        if item["name"] == group:
            text = re.sub(r"\.(\d{6})\d*", r".\1", item["lastEvaluation"]).replace("Z", "+00:00")
            return datetime.fromisoformat(text).timestamp()
    return 0.0


@needs_binaries
def test_drift_alert_reaches_the_webhook_and_in_distribution_fires_nothing(
    tmp_path: Path, webhook: Webhook
) -> None:
    registry = CollectorRegistry()
    psi = Gauge("kfloop_feature_psi", "psi", ["model", "version", "feature"], registry=registry)
    rows = Gauge("kfloop_drift_window_rows", "rows", ["model", "version"], registry=registry)
    dropped = Counter(
        "kfloop_logger_events_dropped", "d", ["model", "version", "reason"], registry=registry
    )
    psi.labels("churn", "v1", "income").set(0.03)
    psi.labels("churn", "v1", "age").set(0.05)
    rows.labels("churn", "v1").set(1500)
    psi.labels("tiny", "v1", "income").set(4.0)  # huge PSI on a nearly empty window
    rows.labels("tiny", "v1").set(20)
    dropped.labels("churn", "v1", "duplicate").inc(3)  # benign
    exporter_port = free_port()
    server, _thread = start_http_server(exporter_port, addr=LOOPBACK, registry=registry)

    token = "bearer-" + os.urandom(8).hex()
    mon = LocalMonitoring(
        tmp_path,
        prometheus_port=free_port(),
        alertmanager_port=free_port(),
        webhook=RetrainWebhook(webhook.url, token_file(tmp_path / "trigger.token", token)),
        for_overrides=FAST_FOR,
        interval="1s",
    )
    client = PrometheusClient(mon.prometheus_url)
    try:
        mon.start()
        statuses = {s.name: s for s in mon.status()}
        assert statuses["prometheus"].ready and statuses["alertmanager"].ready
        pids = [s.pid for s in statuses.values()]
        listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        mine = [ln for ln in listening.splitlines() if any(f"pid={p}," in ln for p in pids)]
        assert len(mine) == 2 and all(f" {LOOPBACK}:" in ln for ln in mine), mine
        assert mon.start() is None  # idempotent

        # Targets arrive after start: written and reloaded.
        assert mon.set_targets({"logger": [f"{LOOPBACK}:{exporter_port}"]}) is True
        wait_for("the exporter's series", lambda: client.query('kfloop_feature_psi{model="tiny"}'))
        seen = time.time()
        # Rules evaluated past the `for` duration with the in-distribution data present:
        # anything that could fire would be pending or firing now.
        wait_for(
            "two rule evaluations after the `for` duration",
            lambda: _last_evaluation(client, "kfloop.alerts") > seen + 2 + 2,
        )
        assert client.alerts() == []
        assert webhook.drain() == []

        # Drift: churn's income goes far off its reference; a real loss on the logger too.
        psi.labels("churn", "v1", "income").set(0.8)
        dropped.labels("churn", "v1", "write_failed").inc(5)
        headers, payload = wait_for("the retrain webhook", lambda: webhook.drain())[0]
        assert headers["Authorization"] == f"Bearer {token}"
        assert payload["version"] == "4"
        assert payload["status"] == "firing"
        assert payload["receiver"] == RETRAIN_RECEIVER
        assert payload["groupLabels"] == {"alertname": "KfloopFeatureDrift", "model": "churn"}
        assert [a["labels"] for a in payload["alerts"]] == [
            {
                "alertname": "KfloopFeatureDrift",
                "model": "churn",
                "version": "v1",
                "feature": "income",
                "kfloop_action": "retrain",
                "severity": "warning",
            }
        ]
        assert payload["alerts"][0]["annotations"]["summary"].startswith(
            "Feature income of churn v1 drifted (PSI 0.800)"
        )
        firing = client.alerts(state="firing", alertname="KfloopFeatureDrift")
        assert [(a["labels"]["model"], a["labels"]["feature"]) for a in firing] == [
            ("churn", "income")
        ]

        # The logger loss alert reaches Alertmanager but is routed to no notifier.
        def dropping_group() -> list[dict[str, Any]]:
            from kfloop.local.monitoring import _http_ok

            code, body = _http_ok(f"{mon.alertmanager_url}/api/v2/alerts/groups")
            groups = json.loads(body) if code == 200 else []
            return [
                g
                for g in groups
                if any(a["labels"]["alertname"] == "KfloopLoggerDropping" for a in g["alerts"])
            ]

        group = wait_for("KfloopLoggerDropping in Alertmanager", dropping_group)[0]
        assert group["receiver"]["name"] == NULL_RECEIVER
        later = webhook.drain()
        assert all(
            a["labels"]["alertname"] != "KfloopLoggerDropping"
            for _, p in later
            for a in p["alerts"]
        )

        # The query helper, as the demo report uses it.
        samples = client.query('max by (model) (kfloop_feature_psi{model="churn"})')
        assert [(s.labels, s.value) for s in samples] == [({"model": "churn"}, 0.8)]
        now = time.time()
        series = client.query_range('kfloop_feature_psi{feature="income"}', seen - 5, now, 1)
        churn = next(s for s in series if s.labels["model"] == "churn")
        values = [v for _, v in churn.points]
        assert values[0] == pytest.approx(0.03) and values[-1] == pytest.approx(0.8)
        with pytest.raises(PrometheusQueryError, match="400"):
            client.query("max by (model (kfloop_feature_psi)")
    finally:
        stopped = mon.stop()
        server.shutdown()
    assert sorted(stopped) == ["alertmanager", "prometheus"]
    assert not any(pid_alive(p) for p in pids if p)
    assert mon.stop() == []
    with pytest.raises(PrometheusQueryError, match="did not answer"):
        client.query("up")


@needs_binaries
def test_a_bad_reload_is_reported_and_the_running_rules_kept(tmp_path: Path) -> None:
    mon = LocalMonitoring(tmp_path, prometheus_port=free_port(), alertmanager_port=free_port())
    client = PrometheusClient(mon.prometheus_url)
    try:
        mon.start()
        assert len(client.rule_groups()) == 2
        # A manifest kfloop's validator accepts but whose PromQL Prometheus cannot parse.
        doc = yaml.safe_load(rules.default_manifest().read_text())
        doc["spec"]["groups"][1]["rules"][0]["expr"] = "max by (model (kfloop_feature_psi)"
        mon.manifest = tmp_path / "bad-rule.yaml"
        mon.manifest.write_text(yaml.safe_dump(doc))
        with pytest.raises(StackError, match="prometheus refused its new configuration"):
            mon.reload_prometheus()
        assert client.ready()
        assert len(client.rule_groups()) == 2
    finally:
        mon.stop()


def test_without_the_binaries_start_names_them_and_stop_status_still_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    mon = LocalMonitoring(tmp_path, prometheus_port=free_port(), alertmanager_port=free_port())
    with pytest.raises(StackError, match=r"`prometheus-alertmanager` not found.*make setup"):
        mon.start()
    assert mon.stop() == []
    assert [(s.name, s.pid, s.ready) for s in mon.status()] == [
        ("prometheus", None, False),
        ("alertmanager", None, False),
    ]
    assert not (tmp_path / "monitoring" / "prometheus.yml").exists()


def test_query_range_refuses_a_bad_range_before_asking() -> None:
    client = PrometheusClient(f"http://{LOOPBACK}:{free_port()}")
    with pytest.raises(PrometheusQueryError, match="need step > 0 and end >= start"):
        client.query_range("up", 10.0, 5.0, 1.0)
    with pytest.raises(PrometheusQueryError, match="need step > 0"):
        client.query_range("up", 0.0, 5.0, 0.0)
    assert client.ready() is False
