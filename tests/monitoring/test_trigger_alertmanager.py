"""A real Alertmanager (Debian's prometheus-alertmanager) notifies the trigger: its webhook
payload, bearer token (``credentials_file``) and resolved notifications, end to end."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kfloop.local.process import free_port
from kfloop.serving.trigger import LocalStarter, RetrainingTrigger, TriggerConfig
from tests.monitoring.test_trigger import (
    decisions,
    of,
    release,
    serving,
    stand_in,
    token_file,
    wait_for,
)

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"

pytestmark = pytest.mark.skipif(
    not Path(ALERTMANAGER).exists(), reason="prometheus-alertmanager is not installed"
)

CONFIG = """\
route:
  receiver: trigger
  group_by: [alertname, model]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: trigger
    webhook_configs:
      - url: {url}/alerts
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials_file: {token}
"""


def _post_alert(port: int, ends_at: str | None = None) -> None:
    labels = {
        "alertname": "KfloopFeatureDrift",
        "model": "churn",
        "version": "v1",
        "kfloop_action": "retrain",
        "feature": "tenure",
    }
    alert: dict[str, object] = {"labels": labels, "startsAt": "2026-11-28T03:00:00Z"}
    if ends_at:
        alert["endsAt"] = ends_at
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v2/alerts",
        data=json.dumps([alert]).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_alertmanager_notification_starts_a_run_and_resolved_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    starter = LocalStarter([str(stand_in(tmp_path / "bin"))], state / "runs", poll_seconds=0.05)
    trigger = RetrainingTrigger(
        TriggerConfig(state_dir=state, params={"data_uri": "s3://data/x"}), starter
    )
    token = token_file(tmp_path, token="am-token-0123456789")
    am_port = free_port()

    async def scenario() -> None:
        async with serving(trigger, "am-token-0123456789") as url:
            config = tmp_path / "alertmanager.yml"
            config.write_text(CONFIG.format(url=url, token=token))
            log = (tmp_path / "alertmanager.log").open("wb")
            am = subprocess.Popen(
                [
                    ALERTMANAGER,
                    f"--config.file={config}",
                    f"--storage.path={tmp_path / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                await wait_for(lambda: _ready(am_port), "Alertmanager", every=0.2)
                _post_alert(am_port)
                started = await wait_for(
                    lambda: of(decisions(state), "started"), "the notification", every=0.2
                )
                assert started[0]["parameters"]["model_name"] == "churn"
                assert started[0]["parameters"]["drifted_version"] == "v1"
                # the alert's startsAt minus the default 1 h lookback
                assert started[0]["parameters"]["window_start"] == "2026-11-28T02:00:00Z"
                release(tmp_path, 0)
                await wait_for(lambda: of(decisions(state), "finished"), "the run's end")
                now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                _post_alert(am_port, ends_at=now)
                ignored = await wait_for(
                    lambda: of(decisions(state), "ignored"), "the resolved one", every=0.2
                )
                assert ignored[0]["reason"] == "resolved"
            finally:
                am.terminate()
                am.wait(timeout=30)
                log.close()

    asyncio.run(scenario())
    assert of(decisions(state), "rejected") == []
    assert len(of(decisions(state), "started")) == 1


def _ready(port: int) -> bool:
    from kfloop.local.loop import http_get

    return http_get(f"http://127.0.0.1:{port}/-/ready", timeout=1.0)[0] == 200
