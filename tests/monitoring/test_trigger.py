"""The retraining trigger over real HTTP: payload checks, authentication, decisions, an alert
storm, cooldown, local runs as real subprocesses, state across a restart, the entry point.

The helpers at the top (webhooks, a served trigger, waits) are shared with test_trigger_kfp.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from kfloop.core.errors import ConfigError
from kfloop.serving.trigger import (
    LocalStarter,
    RetrainingTrigger,
    TriggerConfig,
    WebhookError,
    create_app,
    parse_params,
    parse_webhook,
    pipeline_inputs,
    read_token,
)

TOKEN = "s3cr3t-webhook-token-for-tests"
GROUP_KEY = '{}/{kfloop_action="retrain"}:{alertname="KfloopFeatureDrift"}'


def alert(
    model: str = "churn",
    fingerprint: str = "f0",
    status: str = "firing",
    starts_at: str = "2026-11-28T03:00:00Z",
    version: str | None = "v1",
    action: str | None = "retrain",
) -> dict[str, Any]:
    labels = {"alertname": "KfloopFeatureDrift", "model": model, "feature": "tenure"}
    if version is not None:
        labels["version"] = version
    if action is not None:
        labels["kfloop_action"] = action
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "drift"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": fingerprint,
    }


def webhook(*alerts: dict[str, Any], group_key: str = GROUP_KEY) -> dict[str, Any]:
    """An Alertmanager version 4 notification (the fields Alertmanager 0.25 sends)."""
    alerts = alerts or (alert(),)
    return {
        "receiver": "kfloop-trigger",
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "alerts": list(alerts),
        "groupLabels": {"alertname": "KfloopFeatureDrift"},
        "commonLabels": {"alertname": "KfloopFeatureDrift"},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
    }


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def serving(trigger: RetrainingTrigger, token: str | None = TOKEN) -> AsyncIterator[str]:
    """The trigger's app on a real loopback port; yields its base URL."""
    await trigger.start()
    runner = web.AppRunner(create_app(trigger, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await trigger.close()


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` (JSON unless bytes) to ``url``/alerts; (status, JSON answer)."""
    hdrs = {"Content-Type": "application/json", **(auth() if headers is None else headers)}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(f"{url}/alerts", data=data, headers=hdrs) as response:
        return response.status, await response.json(content_type=None)


async def wait_for(
    check: Callable[[], Any], what: str, timeout: float = 60.0, every: float = 0.05
) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


def decisions(state_dir: Path) -> list[dict[str, Any]]:
    """The records of ``decisions.jsonl``."""
    path = state_dir / "decisions.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def of(records: list[dict[str, Any]], decision: str) -> list[dict[str, Any]]:
    return [r for r in records if r["decision"] == decision]


def metric(trigger: RetrainingTrigger, name: str, **labels: str) -> float | None:
    """A sample's value from the trigger's ``/metrics`` text, None when absent."""
    from prometheus_client.exposition import generate_latest

    text = generate_latest(trigger.metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def token_file(folder: Path, token: str = TOKEN, mode: int = 0o600) -> Path:
    path = folder / "trigger.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.chmod(path, mode)
    return path


# -- the stand-in for `kfloop` of the pipeline environment --------------------------------------

STAND_IN = """#!/bin/sh
# Stand-in for .venv/bin/kfloop: records its arguments and environment, waits for the test's
# "go" file, exits with the code written in it.
dir="$(dirname "$0")"
printf '%s\\n' "$@" > "$dir/args-$KFLOOP_TRIGGER_RUN_ID"
env > "$dir/env-$KFLOOP_TRIGGER_RUN_ID"
echo "retraining $KFLOOP_TRIGGER_RUN_ID"
model=""
for arg in "$@"; do case "$arg" in model_name=*) model="${arg#model_name=}";; esac; done
go="$dir/go"
while [ ! -e "$go" ]; do
  [ -e "$dir/go-$model" ] && go="$dir/go-$model" && break
  sleep 0.02
done
exit "$(cat "$go")"
"""


def stand_in(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "kfloop"
    script.write_text(STAND_IN)
    script.chmod(0o755)
    return script


def local_trigger(
    tmp_path: Path, cooldown: float = 600.0, clock: Callable[[], float] = time.time, **params: Any
) -> RetrainingTrigger:
    state = tmp_path / "state"
    starter = LocalStarter([str(stand_in(tmp_path / "bin"))], state / "runs", poll_seconds=0.05)
    config = TriggerConfig(
        state_dir=state, params={"data_uri": "s3://data/x", **params}, cooldown_seconds=cooldown
    )
    return RetrainingTrigger(config, starter, clock=clock)


def release(tmp_path: Path, code: int) -> None:
    (tmp_path / "bin" / "go").write_text(str(code))


def hold(tmp_path: Path) -> None:
    (tmp_path / "bin" / "go").unlink(missing_ok=True)


# -- payload ----------------------------------------------------------------------------------


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


def _alert_with(**changes: Any) -> dict[str, Any]:
    a = alert()
    for key, value in changes.items():
        if value is None:
            a.pop(key)
        else:
            a[key] = value
    return webhook(a)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (json.dumps({**webhook(), "version": "3"}).encode(), "version"),
        (json.dumps(_without(webhook(), "groupKey")).encode(), "groupKey"),
        (json.dumps({**webhook(), "alerts": []}).encode(), "alerts"),
        (json.dumps({**webhook(), "status": "sleeping"}).encode(), "status"),
        (json.dumps(_alert_with(fingerprint=None)).encode(), "alerts.0.fingerprint"),
        (json.dumps(_alert_with(startsAt="yesterday")).encode(), "alerts.0.startsAt"),
        (json.dumps(_alert_with(startsAt="2026-11-28T03:00:00")).encode(), "alerts.0.startsAt"),
        (json.dumps(_alert_with(labels={"model": 3})).encode(), "alerts.0.labels.model"),
    ],
)
def test_parse_webhook_names_the_bad_field(body: bytes, field: str) -> None:
    with pytest.raises(WebhookError) as info:
        parse_webhook(body)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_parse_webhook_reads_alertmanager_payload() -> None:
    hook = parse_webhook(json.dumps(webhook(alert(), alert(fingerprint="f1"))).encode())
    assert hook.groupKey == GROUP_KEY
    assert [a.fingerprint for a in hook.alerts] == ["f0", "f1"]
    assert hook.alerts[0].startsAt.year == 2026
    assert hook.alerts[0].endsAt is not None and hook.alerts[0].endsAt.year == 1


# -- configuration ----------------------------------------------------------------------------


def test_read_token_refuses_an_open_file_and_prefers_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="chmod 600"):
        read_token(token_file(tmp_path, mode=0o644))
    with pytest.raises(ConfigError, match="--token-file"):
        read_token(tmp_path / "missing")
    assert read_token(token_file(tmp_path), {"KFLOOP_TRIGGER_TOKEN": "env"}) == TOKEN
    assert read_token(None, {"KFLOOP_TRIGGER_TOKEN": "env"}) == "env"
    assert read_token(None, {}) is None


def test_parse_params_file_then_pairs(tmp_path: Path) -> None:
    params_file = tmp_path / "p.json"
    params_file.write_text('{"data_uri": "s3://a", "epochs_per_trial": 3}')
    params = parse_params(["epochs_per_trial=5", "label=y", 'objectives={"min": {}}'], params_file)
    assert params == {
        "data_uri": "s3://a",
        "epochs_per_trial": 5,
        "label": "y",
        "objectives": {"min": {}},
    }
    with pytest.raises(ConfigError, match="--param"):
        parse_params(["no-equals-sign"])
    params_file.write_text("[1]")
    with pytest.raises(ConfigError, match="--params-file"):
        parse_params([], params_file)


def test_static_params_are_checked_against_the_compiled_pipeline(
    tmp_path: Path, repo_root: Path
) -> None:
    inputs = pipeline_inputs(repo_root / "pipelines" / "compiled" / "training.yaml")
    assert inputs is not None and inputs["data_uri"] is False and inputs["seed"] is True
    with pytest.raises(ConfigError, match="--param data_uri") as info:
        TriggerConfig(state_dir=tmp_path, params={}, inputs=inputs)
    assert "required" in str(info.value)
    with pytest.raises(ConfigError, match="--param no_such_parameter"):
        TriggerConfig(
            state_dir=tmp_path, params={"data_uri": "x", "no_such_parameter": 1}, inputs=inputs
        )
    assert pipeline_inputs(tmp_path / "absent.yaml") is None
    (tmp_path / "bad.yaml").write_text("just: text\n")
    with pytest.raises(ConfigError, match="--pipeline-package"):
        pipeline_inputs(tmp_path / "bad.yaml")


# -- HTTP: refused requests -------------------------------------------------------------------


def test_refused_requests_name_the_reason_and_never_log_the_token(tmp_path: Path) -> None:
    trigger = local_trigger(tmp_path)
    trigger.config = TriggerConfig(
        state_dir=trigger.config.state_dir, params=trigger.config.params, max_body_bytes=4096
    )

    async def scenario() -> None:
        async with serving(trigger) as url, aiohttp.ClientSession() as session:
            status, answer = await post(session, url, webhook(), headers={})
            assert (status, answer["error"]) == (401, "no bearer token")
            status, answer = await post(session, url, webhook(), headers=auth("wrong"))
            assert (status, answer["error"]) == (401, "wrong bearer token")
            status, _ = await post(session, url, webhook(), headers={"Authorization": TOKEN})
            assert status == 401
            async with session.post(
                f"{url}/alerts", data=b"x", headers={**auth(), "Content-Type": "text/plain"}
            ) as response:
                assert response.status == 415
            big = webhook()
            big["commonAnnotations"] = {"description": "x" * 10_000}
            status, answer = await post(session, url, big)
            assert status == 413 and "4096" in answer["error"]
            status, answer = await post(session, url, b'{"version": "4"')
            assert (status, answer["field"]) == (400, "body")
            status, answer = await post(session, url, {**webhook(), "version": "5"})
            assert (status, answer["field"]) == (400, "version")
            assert "'4'" in answer["error"]

    asyncio.run(scenario())
    records = decisions(trigger.config.state_dir)
    assert [r["status"] for r in records] == [401, 401, 401, 415, 413, 400, 400]
    assert {r["decision"] for r in records} == {"rejected"}
    assert of(records, "started") == []
    assert TOKEN not in (trigger.config.state_dir / "decisions.jsonl").read_text()
    assert metric(trigger, "kfloop_trigger_decisions_total", decision="rejected") == 7


def test_alerts_not_for_retraining_are_ignored(tmp_path: Path) -> None:
    trigger = local_trigger(tmp_path)

    async def scenario() -> list[dict[str, Any]]:
        async with serving(trigger) as url, aiohttp.ClientSession() as session:
            status, answer = await post(
                session,
                url,
                webhook(
                    alert(status="resolved"),
                    alert(fingerprint="f1", action=None),
                    alert(fingerprint="f2", action="page"),
                    alert(fingerprint="f3", model=""),
                    alert(fingerprint="f4", model="../etc"),
                ),
            )
            assert status == 200
            return list(answer["decisions"])

    answer = asyncio.run(scenario())
    assert [d["decision"] for d in answer] == [
        "ignored",
        "ignored",
        "ignored",
        "ignored",
        "rejected",
    ]
    assert answer[0]["reason"] == "resolved"
    assert "kfloop_action" in answer[1]["reason"]
    assert answer[3]["reason"] == "no model label"
    assert "plain name" in answer[4]["reason"]
    assert not list((tmp_path / "bin").glob("args-*"))  # nothing was started
    assert metric(trigger, "kfloop_trigger_decisions_total", model="churn", decision="ignored") == 3


# -- storm, cooldown, local runs ----------------------------------------------------------------


def test_alert_storm_starts_exactly_one_local_run_and_its_exit_frees_the_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_ENDPOINT", "127.0.0.1:18333")
    monkeypatch.setenv("KFLOOP_TRIGGER_TOKEN", TOKEN)
    offset = [0.0]
    trigger = local_trigger(tmp_path, cooldown=600.0, clock=lambda: time.time() + offset[0])
    state = trigger.config.state_dir

    async def scenario() -> None:
        async with serving(trigger) as url, aiohttp.ClientSession() as session:
            storm = [
                post(session, url, webhook(alert(fingerprint=f"f{i}"), group_key=f"g{i}"))
                for i in range(200)
            ]
            answers = await asyncio.gather(*storm)
            assert {status for status, _ in answers} == {200}
            kinds = [a["decisions"][0]["decision"] for _, a in answers]
            assert kinds.count("started") == 1
            assert kinds.count("in_flight") == 199
            assert metric(trigger, "kfloop_trigger_runs_in_flight", model="churn") == 1
            async with session.get(f"{url}/runs") as response:
                runs = await response.json()
            started = of(decisions(state), "started")[0]
            assert runs["in_flight"] == {"churn": started["run_id"]}

            # the run fails (exit 3): the slot frees and the exit code is recorded
            release(tmp_path, 3)
            ended = await wait_for(lambda: of(decisions(state), "failed"), "the run's end")
            assert ended[0]["run_id"] == started["run_id"]
            assert (ended[0]["exit_code"], ended[0]["stage"]) == (3, "run")
            assert metric(trigger, "kfloop_trigger_runs_in_flight", model="churn") == 0
            hold(tmp_path)

            # a failed run sets the cooldown; the same alert is not deduplicated (it failed)
            _, answer = await post(session, url, webhook(alert(fingerprint="f7")))
            assert answer["decisions"][0]["decision"] == "cooling_down"

            # after the cooldown the same alert's next firing starts a run again
            offset[0] = 601.0
            _, answer = await post(session, url, webhook(alert(fingerprint="f7")))
            assert answer["decisions"][0]["decision"] == "started"
            release(tmp_path, 0)
            done = await wait_for(lambda: of(decisions(state), "finished"), "the second run")
            assert done[0]["exit_code"] == 0

            # a succeeded alert is deduplicated even once the cooldown is over
            offset[0] = 1300.0
            _status, answer = await post(session, url, webhook(alert(fingerprint="f7")))
            assert answer["decisions"][0]["decision"] == "deduplicated"
            async with session.get(f"{url}/metrics") as response:
                text = await response.text()
            assert 'kfloop_trigger_decisions_total{decision="started",model="churn"} 2.0' in text

    asyncio.run(scenario())
    records = decisions(state)
    assert len(of(records, "started")) == 2
    assert len(of(records, "in_flight")) == 199
    first = of(records, "started")[0]
    run_id = first["run_id"]
    log_text = Path(first["log"]).read_text()
    assert f"retraining {run_id}" in log_text
    args = (tmp_path / "bin" / f"args-{run_id}").read_text().splitlines()
    assert args[:2] == ["run", "retraining"]
    pairs = dict(a.split("=", 1) for a in args[2:] if a != "-p")
    assert pairs["model_name"] == "churn"
    assert pairs["drifted_version"] == "v1"
    assert (
        pairs["window_start"] == "2026-11-28T02:00:00Z"
    )  # startsAt minus the default 1 h lookback
    assert pairs["window_end"].endswith("Z") and pairs["window_end"] > pairs["window_start"]
    assert pairs["data_uri"] == "s3://data/x"
    env = (tmp_path / "bin" / f"env-{run_id}").read_text()
    assert "S3_ENDPOINT=127.0.0.1:18333" in env
    assert TOKEN not in env


def test_same_notification_repeated_is_deduplicated_by_group_key(tmp_path: Path) -> None:
    trigger = local_trigger(tmp_path)
    hook = webhook(alert(fingerprint="a"), alert(fingerprint="b", model="fraud"))

    async def scenario() -> list[list[str]]:
        async with serving(trigger) as url, aiohttp.ClientSession() as session:
            out = []
            for body in (hook, hook, webhook(alert(fingerprint="c"))):
                _, answer = await post(session, url, body)
                out.append([d["decision"] for d in answer["decisions"]])
            release(tmp_path, 0)
            await wait_for(
                lambda: len(of(decisions(trigger.config.state_dir), "finished")) == 2, "both runs"
            )
            return out

    assert asyncio.run(scenario()) == [
        ["started", "started"],
        ["deduplicated", "deduplicated"],
        ["in_flight"],
    ]
    reasons = [r["reason"] for r in of(decisions(trigger.config.state_dir), "deduplicated")]
    assert all("already started run local-" in r for r in reasons)


def test_a_failed_run_of_a_notification_is_retried_while_its_sibling_is_not(
    tmp_path: Path,
) -> None:
    trigger = local_trigger(tmp_path, cooldown=0)
    hook = webhook(alert(fingerprint="a"), alert(fingerprint="b", model="fraud"))
    state = trigger.config.state_dir

    async def scenario() -> list[str]:
        async with serving(trigger) as url, aiohttp.ClientSession() as session:
            _, answer = await post(session, url, hook)
            assert [d["decision"] for d in answer["decisions"]] == ["started", "started"]
            (tmp_path / "bin" / "go-churn").write_text("1")
            (tmp_path / "bin" / "go-fraud").write_text("0")
            await wait_for(
                lambda: of(decisions(state), "failed") and of(decisions(state), "finished"),
                "both runs",
            )
            (tmp_path / "bin" / "go-churn").unlink()
            _, answer = await post(session, url, hook)  # Alertmanager's repeat
            release(tmp_path, 0)
            await wait_for(lambda: len(of(decisions(state), "finished")) == 2, "the retry")
            return [d["decision"] for d in answer["decisions"]]

    assert asyncio.run(scenario()) == ["started", "deduplicated"]
    failed = of(decisions(state), "failed")[0]
    assert (failed["model"], failed["exit_code"]) == ("churn", 1)


def test_string_values_that_look_like_json_stay_strings(tmp_path: Path) -> None:
    assert LocalStarter.param_arg("model_name", "42") == 'model_name="42"'
    assert LocalStarter.param_arg("model_name", "churn") == "model_name=churn"
    assert LocalStarter.param_arg("epochs", 3) == "epochs=3"
    assert LocalStarter.param_arg("o", {"min": {"auc": 0.7}}) == 'o={"min": {"auc": 0.7}}'
    with pytest.raises(ConfigError, match="--kfloop-bin"):
        LocalStarter([str(tmp_path / "nope")], tmp_path)


def test_state_survives_a_restart_and_a_live_local_run_is_followed_again(tmp_path: Path) -> None:
    """The first trigger "crashes" (never closed) while its run goes on; the second reads the
    decisions back: the run is in flight, then its end is recorded, the cooldown holds."""
    first = local_trigger(tmp_path)

    async def before_crash() -> str:
        await first.start()
        hook = parse_webhook(json.dumps(webhook()).encode())
        started = (await first.handle(hook, datetime.now(UTC)))[0]
        assert started["decision"] == "started"
        return str(started["run_id"])

    run_id = asyncio.run(before_crash())
    if first._fd is not None:
        os.close(first._fd)
    second = local_trigger(tmp_path)

    async def after_restart() -> None:
        async with serving(second) as url, aiohttp.ClientSession() as session:
            async with session.get(f"{url}/runs") as response:
                runs = await response.json()
            assert runs["in_flight"] == {"churn": run_id}
            _, answer = await post(session, url, webhook(alert(fingerprint="new")))
            assert answer["decisions"][0]["decision"] == "in_flight"
            _, answer = await post(session, url, webhook())
            assert answer["decisions"][0]["decision"] == "deduplicated"
            release(tmp_path, 0)
            await wait_for(lambda: of(decisions(second.config.state_dir), "failed"), "the end")
            assert metric(second, "kfloop_trigger_runs_in_flight", model="churn") == 0
            _, answer = await post(session, url, webhook(alert(fingerprint="new")))
            assert answer["decisions"][0]["decision"] == "cooling_down"

    asyncio.run(after_restart())
    ended = of(decisions(second.config.state_dir), "failed")[0]
    assert ended["run_id"] == run_id and "exit code unknown" in ended["reason"]


def test_stopping_the_trigger_ends_its_local_runs_without_cooldown(tmp_path: Path) -> None:
    trigger = local_trigger(tmp_path)

    async def scenario() -> int:
        async with serving(trigger) as url, aiohttp.ClientSession() as session:
            _, answer = await post(session, url, webhook())
            assert answer["decisions"][0]["decision"] == "started"
            return int(of(decisions(trigger.config.state_dir), "started")[0]["pid"])

    pid = asyncio.run(scenario())
    from kfloop.local.process import pid_alive

    assert not pid_alive(pid)
    ended = of(decisions(trigger.config.state_dir), "failed")[0]
    assert ended["interrupted"] is True and ended["reason"] == "stopped with the trigger"
    restarted = local_trigger(tmp_path)

    async def retry() -> str:
        async with serving(restarted) as url, aiohttp.ClientSession() as session:
            _, answer = await post(session, url, webhook())
            return str(answer["decisions"][0]["decision"])

    assert asyncio.run(retry()) == "started"  # not cooling down, not deduplicated


# -- the entry point ----------------------------------------------------------------------------


def _free_port() -> int:
    from kfloop.local.process import free_port

    return free_port()


def _get(url: str) -> tuple[int, bytes]:
    from kfloop.local.loop import http_get

    return http_get(url, timeout=1.0)


def test_trigger_main_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KFLOOP_TRIGGER_TOKEN"}
    base = [sys.executable, "-m", "kfloop.serving.trigger", "--state-dir", str(tmp_path / "s")]
    base += ["--kfloop-bin", str(stand_in(tmp_path / "bin"))]
    result = subprocess.run(base, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no webhook token" in result.stderr
    open_file = token_file(tmp_path, mode=0o640)
    result = subprocess.run(
        [*base, "--token-file", str(open_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "chmod 600" in result.stderr
    assert TOKEN not in result.stderr


def test_trigger_main_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    argv = [
        sys.executable,
        "-m",
        "kfloop.serving.trigger",
        "--port",
        str(port),
        "--state-dir",
        str(tmp_path / "s"),
        "--kfloop-bin",
        str(stand_in(tmp_path / "bin")),
        "--token-file",
        str(token_file(tmp_path)),
        "--param",
        "data_uri=s3://data/x",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        asyncio.run(
            wait_for(
                lambda: _get(f"http://127.0.0.1:{port}/healthz")[0] == 200,
                "the trigger to listen",
                every=0.2,
            )
        )
        status, _ = _get(f"http://127.0.0.1:{port}/runs")
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "retraining trigger on http://127.0.0.1" in output
    assert TOKEN not in output
