"""The predictor as an operator runs it: bind address, admin token, drain on SIGTERM, options.

Each test starts ``kfloop serve`` (``serve_main``) in its own process, as ``conftest`` does; no
kserve import here (``tritonclient.grpc`` is imported, see ``test_clients``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.serving.conftest import (
    MODEL_NAME,
    REPO,
    BuiltModel,
    PredictorProcess,
    serve_command,
    start_predictor,
)
from tests.serving.test_predictor import v2_body

TOKEN = "ops-admin-token-5f2b9c1e8d"
TOKEN_ENV = "KFLOOP_SERVING_ADMIN_TOKEN"
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env.update(extra)
    return env


def _listening(pid: int) -> list[str]:
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if f"pid={pid}," in line]


def _non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback (None if it has none)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))  # no packet is sent: picks the outgoing interface
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def _load(server: PredictorProcess, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(
        f"{server.base}/v2/repository/models/{MODEL_NAME}/load", headers=headers, timeout=120
    )


def _infer(server: PredictorProcess, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{server.base}/v2/models/{MODEL_NAME}/infer", data=json.dumps(body), timeout=30
    )


# -- 1 + 2: loopback by default, admin token ------------------------------------------------


@pytest.fixture(scope="module")
def guarded(
    built_model: BuiltModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PredictorProcess]:
    """Default host, admin token from --admin-token-file, gRPC on."""
    root = tmp_path_factory.mktemp("guarded")
    token_file = root / "admin-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    server = start_predictor(
        str(built_model.package),
        root / "guarded.log",
        ["--admin-token-file", str(token_file)],
        env=_env(),
    )
    yield server
    server.stop()


def test_default_bind_is_loopback_for_rest_and_grpc(guarded: PredictorProcess) -> None:
    lines = _listening(guarded.process.pid)
    ports = {f":{guarded.http_port} ", f":{guarded.grpc_port} "}
    assert {p for p in ports if any(p in line for line in lines)} == ports, lines
    for line in lines:
        local = line.split()[3]
        assert local.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]"), line
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    assert not _connects(address, guarded.http_port)
    assert not _connects(address, guarded.grpc_port)
    assert _connects("127.0.0.1", guarded.http_port)


def test_host_0000_listens_on_every_interface(
    built_model: BuiltModel, built_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    server = start_predictor(
        str(built_model.package),
        tmp_path / "any.log",
        ["--host", "0.0.0.0", "--allow-unauthenticated-admin"],
        env=_env(),
    )
    try:
        assert _connects(address, server.http_port)
        assert _connects(address, server.grpc_port)
        answer = requests.post(
            f"http://{address}:{server.http_port}/v2/models/{MODEL_NAME}/infer",
            data=json.dumps(v2_body(built_model, built_rows[:2])),
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        # No token and --allow-unauthenticated-admin: the repository is open.
        assert _load(server).status_code == 200
    finally:
        server.stop()


def test_repository_needs_the_bearer_token(
    guarded: PredictorProcess, built_model: BuiltModel, built_rows: list[dict[str, Any]]
) -> None:
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for action in ("load", "unload"):
            response = requests.post(
                f"{guarded.base}/v2/repository/models/{MODEL_NAME}/{action}",
                headers=headers,
                timeout=30,
            )
            assert response.status_code == 401, (headers, action, response.text)
            assert TOKEN_ENV in response.json()["error"]
            assert response.headers["www-authenticate"] == "Bearer"
    # Refused calls changed nothing: the model still serves; inference needs no token.
    assert _infer(guarded, v2_body(built_model, built_rows[:3])).status_code == 200
    assert (
        requests.get(f"{guarded.base}/v2/models/{MODEL_NAME}/ready", timeout=10).status_code == 200
    )
    ok = _load(guarded, {"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"name": MODEL_NAME, "load": True}
    assert _infer(guarded, v2_body(built_model, built_rows[:3])).status_code == 200
    metrics = requests.get(f"{guarded.base}/metrics", timeout=10).text
    assert 'kfloop_predictor_repository_loads_total{model="churn",outcome="ok"} 2.0' in metrics


def test_grpc_repository_needs_the_token(guarded: PredictorProcess) -> None:
    client = triton_grpc.InferenceServerClient(guarded.grpc_url)
    try:
        for headers in (None, {"authorization": "Bearer nope"}):
            with pytest.raises(InferenceServerException) as caught:
                client.unload_model(MODEL_NAME, headers=headers)
            assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
            assert TOKEN_ENV in caught.value.message()
        assert client.is_model_ready(MODEL_NAME)  # the refused unload did nothing
        client.load_model(MODEL_NAME, headers={"authorization": f"Bearer {TOKEN}"})
        assert client.is_model_ready(MODEL_NAME)
    finally:
        client.close()


def test_the_token_is_never_logged(guarded: PredictorProcess) -> None:
    _load(guarded, {"Authorization": "Bearer wrong"})
    _load(guarded, {"Authorization": f"Bearer {TOKEN}"})
    log = guarded.log()
    assert "repository load/unload: token" in log
    assert TOKEN not in log


def test_without_a_token_the_repository_is_refused(predictor: PredictorProcess) -> None:
    """The session predictor has no token and no --allow-unauthenticated-admin."""
    for action in ("load", "unload"):
        response = requests.post(
            f"{predictor.base}/v2/repository/models/{MODEL_NAME}/{action}",
            headers={"Authorization": "Bearer anything"},
            timeout=30,
        )
        assert response.status_code == 403, response.text
        assert TOKEN_ENV in response.json()["error"]
        assert "--allow-unauthenticated-admin" in response.json()["error"]
    assert requests.get(f"{predictor.base}/v2/models/{MODEL_NAME}/ready", timeout=10).ok


def test_the_token_from_the_environment(
    built_model: BuiltModel, tmp_path: Path, built_rows: list[dict[str, Any]]
) -> None:
    server = start_predictor(
        str(built_model.package),
        tmp_path / "env.log",
        ["--grpc-port", "0"],
        env=_env(**{TOKEN_ENV: TOKEN}),
    )
    try:
        assert _load(server).status_code == 401
        assert _load(server, {"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert TOKEN not in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--admin-token-file", "{tmp}/empty"], {}, "admin_token_file"),
        (["--admin-token-file", "{tmp}/missing"], {}, "admin_token_file"),
        ([], {TOKEN_ENV: "  "}, TOKEN_ENV),
        (["--logger-senders", "0"], {}, "logger_senders"),
        (["--logger-pipeline-events", "0"], {}, "logger_pipeline_events"),
        (["--inline-max-rows", "-1"], {}, "inline_max_rows"),
        (["--logger-drain-seconds", "-1"], {}, "logger_drain_seconds"),
        (["--logger-linger-seconds", "nan"], {}, "logger_linger_seconds"),
    ],
    ids=[
        "empty-file",
        "missing-file",
        "blank-env",
        "senders",
        "pipeline",
        "inline",
        "drain",
        "linger",
    ],
)
def test_bad_options_exit_1_naming_them(
    built_model: BuiltModel, tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    (tmp_path / "empty").write_text("\n")
    argv = ["--model-uri", str(built_model.package), "--http-port", "0"]
    argv += [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = subprocess.run(
        serve_command(argv),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(**env),
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_operator_options() -> None:
    result = subprocess.run(
        [*serve_command(["--help"])], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    for option in (
        "--host",
        "--admin-token-file",
        "--allow-unauthenticated-admin",
        "--logger-senders",
        "--logger-drain-seconds",
        "--inline-max-rows",
    ):
        assert option in result.stdout, option


# -- 3: payload events drained on SIGTERM ---------------------------------------------------------


@dataclass
class SlowSink:
    """A payload-logger stand-in that takes ``delay`` seconds per event."""

    delay: float
    url: str = ""
    events: list[tuple[str, str]] = field(default_factory=list)  # (ce-type, ce-id)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def slow_sink() -> Iterator[SlowSink]:
    sink = SlowSink(delay=0.02)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            time.sleep(sink.delay)
            with sink.lock:
                sink.events.append((self.headers["ce-type"], self.headers["ce-id"]))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sink
    server.shutdown()
    server.server_close()


def _queued(server: PredictorProcess) -> float:
    for line in requests.get(f"{server.base}/metrics", timeout=10).text.splitlines():
        if line.startswith("kfloop_payload_events_queued "):
            return float(line.split()[1])
    return 0.0


def _send_then_sigterm(
    server: PredictorProcess, built_model: BuiltModel, rows: list[dict[str, Any]], n: int
) -> tuple[set[str], float]:
    ids = set()
    with requests.Session() as session:
        for i in range(n):
            request_id = f"drain-{i}"
            body = {**v2_body(built_model, [rows[i % len(rows)]]), "id": request_id}
            if i % 3 == 0:  # some through KServe's route (binary output), most on the fast path
                body["parameters"] = {"binary_data_output": False}
            response = session.post(
                f"{server.base}/v2/models/{MODEL_NAME}/infer", data=json.dumps(body), timeout=30
            )
            assert response.status_code == 200, response.text
            ids.add(request_id)
    queued = _queued(server)
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=120)
    return ids, queued


def test_sigterm_delivers_every_queued_event(
    built_model: BuiltModel,
    built_rows: list[dict[str, Any]],
    slow_sink: SlowSink,
    tmp_path: Path,
) -> None:
    server = start_predictor(
        str(built_model.package),
        tmp_path / "drain.log",
        ["--logger-url", slow_sink.url, "--logger-senders", "1", "--logger-drain-seconds", "60"],
        env=_env(),
    )
    try:
        ids, queued = _send_then_sigterm(server, built_model, built_rows, 150)
    finally:
        server.stop()
    # The sink takes 20 ms per event, one sender: most events were still queued at SIGTERM.
    assert queued > 50, queued
    assert server.process.returncode == 0, server.log()[-3000:]
    with slow_sink.lock:
        events = list(slow_sink.events)
    requests_seen = [eid for kind, eid in events if kind == REQUEST_TYPE]
    responses_seen = [eid for kind, eid in events if kind == RESPONSE_TYPE]
    assert sorted(requests_seen) == sorted(ids)
    assert sorted(responses_seen) == sorted(ids)
    assert "queued payload events delivered" in server.log()


def test_sigterm_drain_is_bounded(
    built_model: BuiltModel,
    built_rows: list[dict[str, Any]],
    slow_sink: SlowSink,
    tmp_path: Path,
) -> None:
    slow_sink.delay = 0.5
    server = start_predictor(
        str(built_model.package),
        tmp_path / "bounded.log",
        [
            "--grpc-port",
            "0",
            "--logger-url",
            slow_sink.url,
            "--logger-senders",
            "1",
            "--logger-drain-seconds",
            "1",
        ],
        env=_env(),
    )
    try:
        ids, queued = _send_then_sigterm(server, built_model, built_rows, 40)
    finally:
        server.stop()
    assert queued > 10, queued
    assert server.process.returncode == 0, server.log()[-3000:]
    log = server.log()
    assert "not delivered to the logger within 1.0 s (--logger-drain-seconds)" in log
    with slow_sink.lock:
        delivered = len(slow_sink.events)
    assert delivered < 2 * len(ids)


@pytest.fixture(scope="module")
def built_rows(sample_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with no missing value (v2 JSON in these tests carries no NaN)."""
    return [r for r in sample_rows if None not in r.values()][:64]
