"""The retraining trigger against a KFP API server: the real ``kfp.Client`` talking to a small
fake server (real HTTP) that implements the v2beta1 endpoints it calls for
``create_run_from_pipeline_package`` and ``get_run``: healthz, list/create experiments, create
and get runs. Also: the API down (a closed port), 5xx answers, a 4xx, a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from kfloop.local.process import free_port
from kfloop.serving.trigger import (
    KfpStarter,
    RetrainingTrigger,
    TriggerConfig,
    parse_webhook,
    pipeline_inputs,
)
from tests.monitoring.test_trigger import (
    alert,
    decisions,
    metric,
    of,
    post,
    serving,
    wait_for,
    webhook,
)

API = "/apis/v2beta1"


class FakeKfp:
    """Just enough of the KFP v2beta1 REST API for kfp.Client's run creation and polling."""

    def __init__(self) -> None:
        self.experiments: list[dict[str, Any]] = []
        self.runs: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.unavailable = 0  # answer this many run creations with 503
        self.refuse = False  # answer run creations with 400

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(f"{API}/healthz", self.healthz)
        app.router.add_get(f"{API}/experiments", self.list_experiments)
        app.router.add_post(f"{API}/experiments", self.create_experiment)
        app.router.add_post(f"{API}/runs", self.create_run)
        app.router.add_get(f"{API}/runs/{{run_id}}", self.get_run)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"multi_user": False})

    async def list_experiments(self, request: web.Request) -> web.Response:
        wanted = json.loads(request.query.get("filter", "{}")).get("predicates", [{}])
        name = wanted[0].get("stringValue") or wanted[0].get("string_value")
        found = [e for e in self.experiments if name is None or e["display_name"] == name]
        return web.json_response({"experiments": found} if found else {})

    async def create_experiment(self, request: web.Request) -> web.Response:
        body = await request.json()
        experiment = {"experiment_id": f"exp-{len(self.experiments)}", **body}
        self.experiments.append(experiment)
        return web.json_response(experiment)

    async def create_run(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.unavailable > 0:
            self.unavailable -= 1
            return web.json_response({"error": "unavailable"}, status=503)
        if self.refuse:
            return web.json_response({"error": "invalid pipeline spec"}, status=400)
        run_id = uuid.uuid4().hex
        self.created.append(body)
        self.runs[run_id] = {"run_id": run_id, "display_name": body["display_name"]}
        self.runs[run_id]["state"] = "PENDING"
        return web.json_response(self.runs[run_id])

    async def get_run(self, request: web.Request) -> web.Response:
        run = self.runs.get(request.match_info["run_id"])
        if run is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(run)

    def set_state(self, state: str) -> None:
        for run in self.runs.values():
            run["state"] = state


@contextlib.asynccontextmanager
async def fake_kfp(fake: FakeKfp, port: int = 0) -> AsyncIterator[str]:
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{bound}"
    finally:
        await runner.cleanup()


@pytest.fixture
def package(tmp_path: Path, repo_root: Path) -> Path:
    """The compiled training pipeline with the retraining pipeline's alert parameters added
    (the compiled retraining pipeline may not exist yet)."""
    doc = yaml.safe_load((repo_root / "pipelines" / "compiled" / "training.yaml").read_text())
    params = doc["root"]["inputDefinitions"]["parameters"]
    for name in ("drifted_version", "window_start", "window_end"):
        params[name] = {"parameterType": "STRING", "isOptional": True, "defaultValue": ""}
    path = tmp_path / "retraining.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def kfp_trigger(
    state: Path, package: Path, host: str, attempts: int = 3, cooldown: float = 600.0
) -> RetrainingTrigger:
    starter = KfpStarter(host, package, attempts=attempts, backoff_seconds=0.01, poll_seconds=0.05)
    config = TriggerConfig(
        state_dir=state,
        params={"data_uri": "s3://data/churn/", "max_trials": 1},
        cooldown_seconds=cooldown,
        inputs=pipeline_inputs(package),
    )
    return RetrainingTrigger(config, starter)


def test_run_started_with_the_alert_parameters_and_followed_to_its_end(
    tmp_path: Path, package: Path
) -> None:
    fake = FakeKfp()
    state = tmp_path / "state"

    async def scenario() -> RetrainingTrigger:
        async with fake_kfp(fake) as host:
            trigger = kfp_trigger(state, package, host)
            async with serving(trigger) as url, aiohttp.ClientSession() as session:
                status, answer = await post(session, url, webhook(alert(version="v3")))
                assert status == 200 and answer["decisions"][0]["decision"] == "started"
                fake.set_state("RUNNING")
                _, answer = await post(session, url, webhook(alert(fingerprint="other")))
                assert answer["decisions"][0]["decision"] == "in_flight"
                assert metric(trigger, "kfloop_trigger_runs_in_flight", model="churn") == 1
                fake.set_state("SUCCEEDED")
                await wait_for(lambda: of(decisions(state), "finished"), "the run's end")
                assert metric(trigger, "kfloop_trigger_runs_in_flight", model="churn") == 0
            return trigger

    trigger = asyncio.run(scenario())
    records = decisions(state)
    started, finished = of(records, "started")[0], of(records, "finished")[0]
    assert started["run_id"] == finished["run_id"] == next(iter(fake.runs))
    assert (started["starter"], started["attempts"]) == ("kfp", 1)
    assert finished["state"] == "SUCCEEDED"
    sent = fake.created[0]["runtime_config"]["parameters"]
    assert sent["model_name"] == "churn" and sent["drifted_version"] == "v3"
    assert sent["window_start"] == "2026-11-28T02:00:00Z"  # startsAt minus the 1 h lookback
    assert datetime.fromisoformat(sent["window_end"]) <= datetime.now(UTC)
    assert sent["data_uri"] == "s3://data/churn/" and sent["max_trials"] == 1
    assert started["parameters"] == sent
    assert [e["display_name"] for e in fake.experiments] == ["kfloop"]
    last = metric(trigger, "kfloop_trigger_last_run_timestamp_seconds", model="churn")
    # the metric holds the record's time, so a restart, which restores the metric from the
    # record, does not move it
    assert last == started["time"]


def test_kfp_api_down_bounded_retries_then_failed_and_the_next_firing_retries(
    tmp_path: Path, package: Path
) -> None:
    port = free_port()  # nothing listens there
    state = tmp_path / "state"
    trigger = kfp_trigger(state, package, f"http://127.0.0.1:{port}", attempts=3)

    async def scenario() -> None:
        async with serving(trigger) as url, aiohttp.ClientSession() as session:
            for _ in range(2):  # the same alert, fired again: tried again, not deduplicated
                _, answer = await post(session, url, webhook())
                assert answer["decisions"][0]["decision"] == "failed"
                assert metric(trigger, "kfloop_trigger_runs_in_flight", model="churn") == 0
            fake = FakeKfp()
            async with fake_kfp(fake, port):
                _, answer = await post(session, url, webhook())
                assert answer["decisions"][0]["decision"] == "started"
                fake.set_state("FAILED")
                await wait_for(lambda: of(decisions(state), "failed")[2:], "the run to fail")

    asyncio.run(scenario())
    failed = of(decisions(state), "failed")
    for record in failed[:2]:
        assert (record["stage"], record["attempts"]) == ("start", 3)
        assert "unreachable after 3 attempts" in record["reason"]
        assert record["fingerprint"] == "f0"
    assert (failed[2]["stage"], failed[2]["state"]) == ("run", "FAILED")
    assert metric(trigger, "kfloop_trigger_decisions_total", decision="failed") == 3


def test_5xx_is_retried_and_a_4xx_fails_at_once(tmp_path: Path, package: Path) -> None:
    fake = FakeKfp()
    fake.unavailable = 2
    state = tmp_path / "state"

    async def scenario() -> None:
        async with fake_kfp(fake) as host:
            trigger = kfp_trigger(state, package, host, attempts=4, cooldown=0)
            await trigger.start()
            hook = parse_webhook(json.dumps(webhook()).encode())
            started = (await trigger.handle(hook, datetime.now(UTC)))[0]
            assert (started["decision"], started["attempts"]) == ("started", 3)
            fake.set_state("SUCCEEDED")
            await wait_for(lambda: of(decisions(state), "finished"), "the run's end")
            fake.refuse = True
            hook = parse_webhook(json.dumps(webhook(alert(fingerprint="f9"))).encode())
            refused = (await trigger.handle(hook, datetime.now(UTC)))[0]
            assert (refused["decision"], refused["attempts"]) == ("failed", 1)
            assert "HTTP 400" in refused["reason"]
            await trigger.close()

    asyncio.run(scenario())
    assert len(fake.created) == 1


def test_a_kfp_run_in_flight_is_followed_again_after_a_restart(
    tmp_path: Path, package: Path
) -> None:
    fake = FakeKfp()
    state = tmp_path / "state"

    async def scenario() -> None:
        async with fake_kfp(fake) as host:
            first = kfp_trigger(state, package, host)
            async with serving(first) as url, aiohttp.ClientSession() as session:
                _, answer = await post(session, url, webhook())
                assert answer["decisions"][0]["decision"] == "started"
                fake.set_state("RUNNING")
            # stopped: the KFP run goes on, nothing was recorded about its end
            assert of(decisions(state), "failed") == of(decisions(state), "finished") == []
            second = kfp_trigger(state, package, host)
            async with serving(second) as url, aiohttp.ClientSession() as session:
                async with session.get(f"{url}/runs") as response:
                    runs = await response.json()
                assert runs["in_flight"] == {"churn": next(iter(fake.runs))}
                assert "churn" in runs["cooldown_until"]
                _, answer = await post(session, url, webhook(alert(fingerprint="f5")))
                assert answer["decisions"][0]["decision"] == "in_flight"
                fake.set_state("CANCELED")
                await wait_for(lambda: of(decisions(state), "failed"), "the run's end")
                _, answer = await post(session, url, webhook(alert(fingerprint="f5")))
                assert answer["decisions"][0]["decision"] == "cooling_down"

    asyncio.run(scenario())
    assert of(decisions(state), "failed")[0]["state"] == "CANCELED"
    assert len(fake.created) == 1
