"""The long-running services of the closed loop, run locally as managed processes.

``kfloop serve`` (predictor), ``kfloop logger`` (payload logger + drift metrics) and ``kfloop
trigger`` (retraining trigger) live in the serving environment (``.venv-serving``); the
retraining runs the trigger starts use the pipeline environment (``.venv``). Each service is a
:class:`~kfloop.local.process.ManagedProcess` with a pid file and a log under
``<stack home>/loop/``, so a run interrupted with Ctrl-C is cleaned up by the next start
(:meth:`LoopServices.stop_all` stops what the pid files name, and only processes whose
command line carries the service's marker).

Everything listens on 127.0.0.1. Tokens (the predictor's repository admin token and the
trigger's webhook token) are generated per run into 0600 files; the admin token reaches the
predictor and the retraining runs through their environment, the trigger and Alertmanager
read the webhook token from its file. Neither is ever on a command line (``ps`` shows
command lines to every user) nor in a log.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfloop.core.errors import StackError
from kfloop.core.settings import Settings
from kfloop.local.process import LOOPBACK, ManagedProcess, free_port

ADMIN_TOKEN_ENV = "KFLOOP_SERVING_ADMIN_TOKEN"
TRIGGER_TOKEN_ENV = "KFLOOP_TRIGGER_TOKEN"
SERVICES = ("predictor", "logger", "trigger")


def repo_python_bin(root: Path, env: str, name: str = "kfloop") -> Path:
    """``<root>/<env>/bin/<name>``, checked: a clear error naming ``make setup`` if absent."""
    path = root / env / "bin" / name
    if not path.exists():
        raise StackError(f"{path} does not exist: run `make setup` (it builds {env})")
    return path


def http_get(url: str, timeout: float = 2.0, token: str = "") -> tuple[int, bytes]:
    """GET ``url``: (status, body); status 0 when nothing answers."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (OSError, ValueError):
        return 0, b""


def http_json(url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` and parse JSON; None when it does not answer 200 with JSON."""
    status, body = http_get(url, timeout)
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _token_file(path: Path) -> str:
    """A fresh random token written to ``path`` (mode 0600); returns the token."""
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    os.chmod(path, 0o600)
    return token


@dataclass
class LoopServices:
    """Predictor, logger and trigger for one model on the local stack.

    Args:
        home: the stack folder; services keep their pid files and logs in ``home/loop``.
        root: the repository (holds ``.venv`` and ``.venv-serving``).
        settings: S3 settings of the local stack, passed to every service.
        model_name: the served model.
    """

    home: Path
    root: Path
    settings: Settings
    model_name: str
    ports: dict[str, int] = field(default_factory=dict)
    admin_token: str = ""
    trigger_token: str = ""

    def __post_init__(self) -> None:
        self.dir = self.home / "loop"
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("predictor", "predictor_grpc", "logger", "trigger"):
            self.ports.setdefault(name, free_port())

    # -- addresses ------------------------------------------------------------------------------

    def url(self, service: str) -> str:
        return f"http://{LOOPBACK}:{self.ports[service]}"

    @property
    def trigger_token_file(self) -> Path:
        return self.dir / "trigger.token"

    def new_tokens(self) -> None:
        """Generate this run's tokens (0600 files under ``home/loop``)."""
        self.admin_token = _token_file(self.dir / "admin.token")
        self.trigger_token = _token_file(self.trigger_token_file)

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            **self.settings.to_env(),
            "KFLOOP_HOME": str(self.home),
            "PYTHONUNBUFFERED": "1",
        }
        if self.admin_token:
            env[ADMIN_TOKEN_ENV] = self.admin_token
        env.update(extra or {})
        return env

    def _ready(self, url: str, ok: Sequence[int] = (200,)) -> Any:
        return lambda: http_get(url, timeout=1.0)[0] in ok

    # -- the services ---------------------------------------------------------------------------

    def predictor(self, model_uri: str) -> ManagedProcess:
        serving = repo_python_bin(self.root, ".venv-serving")
        argv = [
            str(serving),
            "serve",
            "--model-uri",
            model_uri,
            "--model-name",
            self.model_name,
            "--host",
            LOOPBACK,
            "--http-port",
            str(self.ports["predictor"]),
            "--grpc-port",
            str(self.ports["predictor_grpc"]),
            "--logger-url",
            self.url("logger") + "/",
            "--inference-service",
            self.model_name,
        ]
        return ManagedProcess(
            name="predictor",
            argv=argv,
            workdir=self.dir,
            ports={"http": self.ports["predictor"], "grpc": self.ports["predictor_grpc"]},
            ready=self._ready(self.url("predictor") + f"/v2/models/{self.model_name}/ready"),
            marker=MARKERS["predictor"],
            env=self._env(),
            start_timeout=120.0,
        )

    def logger(self, extra_args: Sequence[str] = ()) -> ManagedProcess:
        serving = repo_python_bin(self.root, ".venv-serving")
        argv = [
            str(serving),
            "logger",
            "--follow-production",
            "--model-name",
            self.model_name,
            "--host",
            LOOPBACK,
            "--port",
            str(self.ports["logger"]),
            *extra_args,
        ]
        return ManagedProcess(
            name="logger",
            argv=argv,
            workdir=self.dir,
            ports={"http": self.ports["logger"]},
            ready=self._ready(self.url("logger") + "/healthz"),
            marker=MARKERS["logger"],
            env=self._env(),
            start_timeout=60.0,
        )

    def trigger(self, params: Mapping[str, Any], extra_args: Sequence[str] = ()) -> ManagedProcess:
        serving = repo_python_bin(self.root, ".venv-serving")
        pipeline_kfloop = repo_python_bin(self.root, ".venv")
        argv = [
            str(serving),
            "trigger",
            "--host",
            LOOPBACK,
            "--port",
            str(self.ports["trigger"]),
            "--state-dir",
            str(self.dir / "trigger"),
            "--kfloop-bin",
            str(pipeline_kfloop),
            "--token-file",
            str(self.trigger_token_file),
            *extra_args,
        ]
        for key, value in params.items():
            text = value if isinstance(value, str) else json.dumps(value)
            argv += ["--param", f"{key}={text}"]
        return ManagedProcess(
            name="trigger",
            argv=argv,
            workdir=self.dir,
            ports={"http": self.ports["trigger"]},
            ready=self._ready(self.url("trigger") + "/healthz"),
            marker=MARKERS["trigger"],
            env=self._env(),
            start_timeout=60.0,
            stop_timeout=30.0,
        )

    def stop_all(self) -> list[str]:
        """Stop every service a pid file under ``home/loop`` names (idempotent)."""
        return stop_loop_services(self.home)


MARKERS = {
    "trigger": "bin/kfloop trigger ",
    "predictor": "bin/kfloop serve ",
    "logger": "bin/kfloop logger ",
}


def stop_loop_services(home: Path) -> list[str]:
    """Stop the loop's services recorded under ``home/loop`` (trigger first: it ends its runs).

    Works from the pid files alone (no environment needed), so ``kfloop stack down`` cleans up
    after a demo that was killed outright.
    """
    stopped = []
    for name, marker in MARKERS.items():
        service = ManagedProcess(
            name=name,
            argv=[],
            workdir=home / "loop",
            ports={},
            ready=lambda: False,
            marker=marker,
            stop_timeout=30.0 if name == "trigger" else 10.0,
        )
        if service.stop():
            stopped.append(name)
    return stopped
