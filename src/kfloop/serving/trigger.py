"""The retraining trigger (``kfloop trigger``): Alertmanager webhooks in, retraining runs out.

An aiohttp service. ``POST /alerts`` takes Alertmanager webhook notifications (payload version
``"4"``), authenticated with a bearer token (``$KFLOOP_TRIGGER_TOKEN`` or ``--token-file``, a
0600 file; Alertmanager sends it with ``http_config.authorization.credentials_file``). Each
alert of a notification gets one decision:

- ``ignored``: resolved, or not labelled ``kfloop_action="retrain"``, or without a ``model``
  label;
- ``rejected``: a request refused before its alerts were read (401 no/wrong token, 415 not
  JSON, 413 too large, 400 malformed, naming the field), or a ``model`` label that is not a
  plain name;
- ``deduplicated``: the same alert (fingerprint and ``startsAt``) already started a run, or
  the same notification (``groupKey`` and its firing alerts) was already handled, and that run
  is in flight or succeeded;
- ``in_flight``: a run for the model is already running (at most one per model);
- ``cooling_down``: the model's last run started or ended less than ``--cooldown-seconds``
  ago;
- ``started``: a retraining run was started; then ``finished`` (it succeeded) or ``failed``
  (``stage`` ``run``: it failed; ``stage`` ``start``: it could not be started, after bounded
  retries). A failure frees the model's slot and forgets the alert, so the alert's next
  firing (Alertmanager's ``repeat_interval``) tries again; a failed start sets no cooldown.

Run parameters: the static ones (``--param k=v``, ``--params-file``) overlaid with the
alert's: ``model_name`` <- ``labels.model``, ``drifted_version`` <- ``labels.version``,
``window_start`` <- ``startsAt`` minus ``--window-lookback-seconds`` (the drift the alert saw
was measured over requests that came before it fired), ``window_end`` <- the notification's
arrival (ISO-8601 UTC).
When the compiled pipeline is readable, static keys it does not declare are a configuration
error and alert keys it does not declare are left out.

Two starters behind :class:`RunStarter`: :class:`KfpStarter` (a KFP API server, through
``kfp.Client``; run state polled with ``get_run``) and :class:`LocalStarter` (``kfloop run
retraining`` in the pipeline environment as a subprocess, its output in
``<state-dir>/runs/<run_id>.log``).

Every decision is one JSON line in ``<state-dir>/decisions.jsonl`` and counted in
``kfloop_trigger_decisions_total{model,decision}``; ``kfloop_trigger_runs_in_flight{model}``
and ``kfloop_trigger_last_run_timestamp_seconds{model}`` follow the runs. ``GET /runs`` shows
the recent decisions, the runs in flight and the cooldowns; ``GET /metrics``, ``/healthz``.
On start the trigger reads ``decisions.jsonl`` back: cooldowns, remembered alerts and runs in
flight (by run id: KFP runs are polled again, local runs still alive are watched again). On
SIGTERM/SIGINT it stops accepting, ends its local runs (recorded ``failed``, ``interrupted``:
no cooldown) and leaves KFP runs running (picked up at the next start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import stat
import sys
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from kfloop.core.errors import ConfigError, DataError, KfloopError

log = logging.getLogger(__name__)

TOKEN_ENV = "KFLOOP_TRIGGER_TOKEN"
RUN_ID_ENV = "KFLOOP_TRIGGER_RUN_ID"
DECISIONS_FILE = "decisions.jsonl"
DECISIONS = (
    "started",
    "deduplicated",
    "cooling_down",
    "in_flight",
    "ignored",
    "rejected",
    "failed",
    "finished",
)
ACTION_LABEL = "kfloop_action"
ACTION = "retrain"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_PACKAGE = REPO_ROOT / "pipelines" / "compiled" / "retraining.yaml"
# Rejected requests written to decisions.jsonl per minute (all are counted in the metrics):
# an unauthenticated flood must not fill the disk.
REJECTS_LOGGED_PER_MINUTE = 20
KFP_TERMINAL = {"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"}
KFP_SUCCESS = {"SUCCEEDED", "SKIPPED"}


# -- the webhook payload ----------------------------------------------------------------------


class WebhookError(DataError):
    """A webhook body that is not an Alertmanager version 4 notification; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class Alert(BaseModel):
    """One alert of a notification (the fields kfloop reads; others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: AwareDatetime
    endsAt: AwareDatetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1)


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook notification, payload version 4."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    groupKey: str = Field(min_length=1)
    truncatedAlerts: int = 0
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[Alert] = Field(min_length=1)


def parse_webhook(body: bytes) -> AlertmanagerWebhook:
    """Parse and validate a notification body.

    Raises:
        WebhookError: not JSON (field ``body``), or the first invalid field, by its path
            (``alerts.0.startsAt``).
    """
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise WebhookError("body", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WebhookError("body", f"expected a JSON object, got {type(data).__name__}")
    try:
        return AlertmanagerWebhook.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise WebhookError(where, f"{first['msg']}{more}") from None


def iso_utc(moment: datetime | float) -> str:
    """ISO-8601 in UTC with a ``Z``, to the second's microseconds when there are any."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- configuration ---------------------------------------------------------------------------


def read_token(token_file: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The webhook token: ``token_file`` (must not be readable by group or others) if given,
    else ``$KFLOOP_TRIGGER_TOKEN``; None when neither is set.

    Raises:
        ConfigError: the file is missing, too open, or empty.
    """
    if token_file is not None:
        try:
            mode = token_file.stat().st_mode
        except OSError as exc:
            raise ConfigError("--token-file", f"{token_file}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                "--token-file",
                f"{token_file} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                f"run `chmod 600 {token_file}`",
            )
        token = token_file.read_text(encoding="utf-8").strip()
        if not token:
            raise ConfigError("--token-file", f"{token_file} is empty")
        return token
    token = environ.get(TOKEN_ENV, "").strip()
    return token or None


def parse_params(pairs: Sequence[str], params_file: Path | None = None) -> dict[str, Any]:
    """Static run parameters: ``params_file`` (a JSON object), then ``key=value`` pairs (the
    value is JSON when it parses as JSON, else a string) over it.

    Raises:
        ConfigError: a pair without ``=``, an unreadable file, or a file that is not a JSON
            object.
    """
    params: dict[str, Any] = {}
    if params_file is not None:
        try:
            loaded = json.loads(params_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("--params-file", f"{params_file}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError("--params-file", f"{params_file}: not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError("--params-file", f"{params_file}: expected a JSON object")
        params.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("--param", f"{pair!r} is not key=value")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def pipeline_inputs(package: Path) -> dict[str, bool] | None:
    """The compiled pipeline's parameters: name -> optional; None when the file is absent.

    Raises:
        ConfigError: the file exists but is not a compiled KFP pipeline.
    """
    import yaml

    if not package.is_file():
        return None
    try:
        doc = yaml.safe_load(package.read_text(encoding="utf-8"))
        params = doc["root"].get("inputDefinitions", {}).get("parameters", {})
        return {name: bool(spec.get("isOptional", False)) for name, spec in params.items()}
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            "--pipeline-package", f"{package}: not a compiled KFP pipeline ({exc})"
        ) from None


ALERT_PARAMS = ("model_name", "drifted_version", "window_start", "window_end")


@dataclass(frozen=True)
class TriggerConfig:
    """Parameters of one trigger.

    Args:
        state_dir: Folder of ``decisions.jsonl`` and the local runs' logs.
        params: Static run parameters (the alert's overlay them).
        cooldown_seconds: A model's runs start at least this long after its last run started
            or ended.
        max_body_bytes: Largest accepted webhook body (413 above).
        recent: Decisions kept in memory for ``GET /runs``.
        remembered_alerts: Alerts (and notifications) remembered for deduplication.
        inputs: The pipeline's parameters (name -> optional), when known.
        window_lookback_seconds: ``window_start`` is the alert's ``startsAt`` minus this: the
            drift that made the alert fire was measured over earlier requests (the logger's
            sliding window), so they belong to the drifted window.
    """

    state_dir: Path
    params: Mapping[str, Any] = field(default_factory=dict)
    cooldown_seconds: float = 600.0
    max_body_bytes: int = 1 << 20
    recent: int = 500
    remembered_alerts: int = 10_000
    inputs: Mapping[str, bool] | None = None
    window_lookback_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if self.window_lookback_seconds < 0:
            raise ConfigError(
                "window_lookback_seconds", f"{self.window_lookback_seconds!r} must be >= 0"
            )
        if self.cooldown_seconds < 0:
            raise ConfigError("cooldown_seconds", f"{self.cooldown_seconds!r} must be >= 0")
        for name in ("max_body_bytes", "recent", "remembered_alerts"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"{getattr(self, name)!r} must be > 0")
        if self.inputs is not None:
            unknown = sorted(set(self.params) - set(self.inputs))
            if unknown:
                raise ConfigError(
                    f"--param {unknown[0]}",
                    f"is not a parameter of the pipeline; its parameters are {sorted(self.inputs)}",
                )
            given = set(self.params) | set(ALERT_PARAMS)
            missing = sorted(k for k, opt in self.inputs.items() if not opt and k not in given)
            if missing:
                raise ConfigError(
                    f"--param {missing[0]}",
                    "is a required pipeline parameter and no alert label provides it",
                )

    def run_parameters(self, alert: Alert, arrived: datetime) -> dict[str, Any]:
        """The static parameters overlaid with the alert's (only those the pipeline takes)."""
        from_alert: dict[str, Any] = {
            "model_name": alert.labels["model"],
            "window_start": iso_utc(
                alert.startsAt - timedelta(seconds=self.window_lookback_seconds)
            ),
            "window_end": iso_utc(arrived),
        }
        if alert.labels.get("version"):
            from_alert["drifted_version"] = alert.labels["version"]
        if self.inputs is not None:
            from_alert = {k: v for k, v in from_alert.items() if k in self.inputs}
        return {**self.params, **from_alert}


# -- starters -----------------------------------------------------------------------------------


class StartFailed(KfloopError):
    """A run could not be started (after ``attempts`` attempts)."""

    def __init__(self, message: str, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(message)


@dataclass
class RunHandle:
    """A started run. ``pid`` and ``log`` for local runs."""

    run_id: str
    pid: int | None = None
    log: str | None = None
    attempts: int = 1


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended. ``interrupted``: stopped with the trigger (no cooldown follows)."""

    succeeded: bool
    exit_code: int | None = None
    state: str | None = None
    reason: str = ""
    interrupted: bool = False


class RunStarter(Protocol):
    """Starts retraining runs and tells when they end."""

    kind: str

    async def start(self, model: str, parameters: Mapping[str, Any]) -> RunHandle:
        """Start a run; raises :class:`StartFailed`."""
        ...

    async def wait(self, handle: RunHandle) -> RunOutcome:
        """Wait for the run to end."""
        ...

    def adopt(self, record: Mapping[str, Any]) -> RunHandle | None:
        """A handle for a run a previous trigger process started (its ``started`` record), or
        None when it cannot be followed any more."""
        ...

    async def close(self) -> None:
        """Stop what the starter owns (local runs); KFP runs keep running."""
        ...


def _transient(exc: BaseException) -> bool:
    """Worth retrying: no connection, a timeout, or a 5xx from the API server."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    if isinstance(exc, ApiException):
        return exc.status in (0, None) or int(exc.status) >= 500
    return isinstance(exc, OSError | TimeoutError | urllib3.exceptions.HTTPError)


def _describe(exc: BaseException) -> str:
    from kfp_server_api.exceptions import ApiException

    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}".strip()
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


class KfpStarter:
    """Runs the compiled pipeline on a KFP API server.

    ``create_run_from_pipeline_package`` gets ``attempts`` tries with exponential backoff
    (``backoff_seconds``, doubling) on connection errors, timeouts and 5xx answers; other
    errors (4xx, a bad package) fail at once. Each call is bounded by ``request_seconds``. A
    timed-out create may still have created a run on the server: the next firing can then
    start a second one (KFP has no idempotency key).
    """

    kind = "kfp"

    def __init__(
        self,
        host: str,
        package: Path,
        experiment: str = "kfloop",
        namespace: str | None = None,
        attempts: int = 4,
        backoff_seconds: float = 1.0,
        request_seconds: float = 30.0,
        poll_seconds: float = 10.0,
    ) -> None:
        if not host.startswith(("http://", "https://")):
            raise ConfigError("--kfp-host", f"{host!r}: give a URL, e.g. http://localhost:8888")
        if not package.is_file():
            raise ConfigError("--pipeline-package", f"{package} does not exist; run `make compile`")
        if attempts < 1:
            raise ConfigError("--start-attempts", f"{attempts} must be >= 1")
        self.host = host.rstrip("/")
        self.package = package
        self.experiment = experiment
        self.namespace = namespace
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.request_seconds = request_seconds
        self.poll_seconds = poll_seconds
        self._client: Any = None

    def _new_client(self) -> Any:
        import kfp

        base: Any = kfp.Client

        class _Client(base):
            # kfp.Client's constructor asks /healthz up to 5 times, 5 s apart; one try is
            # enough here, the trigger retries the whole start.
            def get_kfp_healthz(self, sleep_duration: int = 0) -> Any:
                return self._healthz_api.healthz_service_get_healthz()

        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return _Client(host=self.host, namespace=self.namespace or "kubeflow")

    def _create(self, model: str, parameters: Mapping[str, Any]) -> str:
        if self._client is None:
            self._client = self._new_client()
        with contextlib.redirect_stdout(sys.stderr):  # kfp prints links on stdout
            result = self._client.create_run_from_pipeline_package(
                str(self.package),
                arguments=dict(parameters),
                run_name=f"retrain-{model}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}",
                experiment_name=self.experiment,
                namespace=self.namespace,
            )
        return str(result.run_id)

    async def _call(self, func: Callable[[], Any]) -> Any:
        async with asyncio.timeout(self.request_seconds):  # wait_for (3.11) can drop a cancel
            return await asyncio.to_thread(func)

    async def start(self, model: str, parameters: Mapping[str, Any]) -> RunHandle:
        for attempt in range(1, self.attempts + 1):
            try:
                run_id = await self._call(lambda: self._create(model, parameters))
                return RunHandle(run_id=run_id, attempts=attempt)
            except Exception as exc:
                if not _transient(exc):
                    raise StartFailed(
                        f"KFP API at {self.host} refused the run: {_describe(exc)}", attempt
                    ) from None
                self._client = None
                if attempt == self.attempts:
                    raise StartFailed(
                        f"KFP API at {self.host} unreachable after {attempt} attempts: "
                        f"{_describe(exc)}",
                        attempt,
                    ) from None
                delay = self.backoff_seconds * 2 ** (attempt - 1)
                log.warning(
                    "starting a run for %s: %s; retry %d/%d in %.1fs",
                    model,
                    _describe(exc),
                    attempt + 1,
                    self.attempts,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _state(self, run_id: str) -> tuple[str, str]:
        if self._client is None:
            self._client = self._new_client()
        run = self._client.get_run(run_id)
        error = getattr(run, "error", None)
        message = str(getattr(error, "message", "") or "") if error else ""
        return str(run.state or "RUNTIME_STATE_UNSPECIFIED"), message

    async def wait(self, handle: RunHandle) -> RunOutcome:
        errors = 0
        while True:
            try:
                state, message = await self._call(lambda: self._state(handle.run_id))
                errors = 0
            except Exception as exc:
                from kfp_server_api.exceptions import ApiException

                if isinstance(exc, ApiException) and exc.status == 404:
                    return RunOutcome(False, state="NOT_FOUND", reason="the run no longer exists")
                errors += 1
                if errors == 1 or errors % 30 == 0:
                    log.warning("polling run %s: %s", handle.run_id, _describe(exc))
                self._client = None if _transient(exc) else self._client
                await asyncio.sleep(min(self.poll_seconds * 2 ** min(errors, 4), 300.0))
                continue
            if state in KFP_TERMINAL:
                return RunOutcome(state in KFP_SUCCESS, state=state, reason=message)
            await asyncio.sleep(self.poll_seconds)

    def adopt(self, record: Mapping[str, Any]) -> RunHandle | None:
        run_id = record.get("run_id")
        return RunHandle(run_id=str(run_id)) if run_id else None

    async def close(self) -> None:
        return None


def _pid_runs(pid: int, run_id: str) -> bool:
    """True when ``pid`` is alive and is the local run ``run_id`` (its environment says so)."""
    from kfloop.local.process import pid_alive

    if not pid_alive(pid):
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{RUN_ID_ENV}={run_id}".encode() in environ


class LocalStarter:
    """Runs ``kfloop run retraining -p k=v ...`` in the pipeline environment.

    The subprocess gets this process's environment (the S3 settings) without the webhook
    token, plus ``KFLOOP_TRIGGER_RUN_ID``; it runs in its own process group, its output goes
    to ``<runs_dir>/<run_id>.log``. :meth:`close` ends the runs still going (SIGTERM to the
    group, SIGKILL after ``stop_seconds``).
    """

    kind = "local"

    def __init__(
        self,
        command: Sequence[str],
        runs_dir: Path,
        pipeline: str = "retraining",
        poll_seconds: float = 1.0,
        stop_seconds: float = 10.0,
    ) -> None:
        executable = Path(command[0])
        if not (executable.is_file() and os.access(executable, os.X_OK)):
            raise ConfigError(
                "--kfloop-bin",
                f"{executable} is not an executable file; run `make setup` (it builds .venv) "
                "or point --kfloop-bin / --pipeline-python at the pipeline environment",
            )
        self.command = list(command)
        self.runs_dir = runs_dir
        self.pipeline = pipeline
        self.poll_seconds = poll_seconds
        self.stop_seconds = stop_seconds
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._stopping = False

    @staticmethod
    def param_arg(key: str, value: Any) -> str:
        """``key=value`` that ``kfloop run -p`` reads back as ``value`` (strings that would
        parse as JSON are quoted)."""
        if isinstance(value, str):
            try:
                json.loads(value)
            except ValueError:
                return f"{key}={value}"
        return f"{key}={json.dumps(value)}"

    async def start(self, model: str, parameters: Mapping[str, Any]) -> RunHandle:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        run_id = f"local-{model}-{stamp}-{uuid.uuid4().hex[:8]}"
        argv = [*self.command, "run", self.pipeline]
        for key, value in parameters.items():
            argv += ["-p", self.param_arg(key, value)]
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        env[RUN_ID_ENV] = run_id
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.runs_dir / f"{run_id}.log"
        try:
            with log_path.open("ab") as out:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
        except OSError as exc:
            raise StartFailed(f"cannot run {argv[0]}: {exc.strerror or exc}", 1) from None
        self._procs[run_id] = proc
        return RunHandle(run_id=run_id, pid=proc.pid, log=str(log_path))

    async def wait(self, handle: RunHandle) -> RunOutcome:
        proc = self._procs.get(handle.run_id)
        try:
            if proc is not None:
                code = await proc.wait()
                if self._stopping:
                    return RunOutcome(
                        False, exit_code=code, reason="stopped with the trigger", interrupted=True
                    )
                reason = "" if code == 0 else f"exit code {code}; see {handle.log}"
                return RunOutcome(code == 0, exit_code=code, reason=reason)
            assert handle.pid is not None
            while _pid_runs(handle.pid, handle.run_id):
                await asyncio.sleep(self.poll_seconds)
            return RunOutcome(
                False,
                reason=f"ended while not watched (pid {handle.pid}); exit code unknown, "
                f"see {handle.log}",
            )
        finally:
            self._procs.pop(handle.run_id, None)

    def adopt(self, record: Mapping[str, Any]) -> RunHandle | None:
        pid, run_id = record.get("pid"), str(record.get("run_id") or "")
        if not isinstance(pid, int) or not run_id or not _pid_runs(pid, run_id):
            return None
        return RunHandle(run_id=run_id, pid=pid, log=record.get("log"))

    async def close(self) -> None:
        self._stopping = True
        procs = [p for p in self._procs.values() if p.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                async with asyncio.timeout(self.stop_seconds):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


# -- metrics ------------------------------------------------------------------------------------


class TriggerMetrics:
    """The trigger's Prometheus metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "kfloop_trigger_decisions",
            "Decisions on alerts and webhook requests, by model and decision (started, "
            "deduplicated, cooling_down, in_flight, ignored, rejected, failed, finished)",
            ["model", "decision"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "kfloop_trigger_runs_in_flight",
            "Retraining runs starting or running, by model (0 or 1)",
            ["model"],
            registry=self.registry,
        )
        self.last_run = Gauge(
            "kfloop_trigger_last_run_timestamp_seconds",
            "When the model's last retraining run was started (Unix time)",
            ["model"],
            registry=self.registry,
        )


# -- the trigger --------------------------------------------------------------------------------


@dataclass
class _Slot:
    """A model's run in flight (run_id None while it is starting)."""

    run_id: str | None
    keys: tuple[str, ...]
    record: dict[str, Any] = field(default_factory=dict)


class RetrainingTrigger:
    """Decides on alerts, starts runs through a :class:`RunStarter`, records every decision.

    Call :meth:`handle` from the event loop; :meth:`start` (read the state back, follow runs
    in flight) before, :meth:`close` after.
    """

    def __init__(
        self,
        config: TriggerConfig,
        starter: RunStarter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.starter = starter
        self.clock = clock
        self.metrics = TriggerMetrics()
        self.recent: deque[dict[str, Any]] = deque(maxlen=config.recent)
        self.slots: dict[str, _Slot] = {}
        self.cooldown_from: dict[str, float] = {}
        self.remembered: OrderedDict[str, str] = OrderedDict()  # alert/notification key -> run
        self._waiters: set[asyncio.Task[None]] = set()
        self._reject_minute = 0
        self._rejects_logged = 0
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = config.state_dir / DECISIONS_FILE
        self._fd: int | None = None

    # -- records ----------------------------------------------------------------------------

    def record(self, decision: str, model: str = "", **fields: Any) -> dict[str, Any]:
        """Write one decision (JSON line, metrics, recent list) and return it."""
        assert decision in DECISIONS, decision
        now = self.clock()
        entry: dict[str, Any] = {"at": iso_utc(now), "time": round(now, 6)}
        entry.update({"decision": decision, "model": model})
        entry.update({k: v for k, v in fields.items() if v is not None})
        self.metrics.decisions.labels(model=model, decision=decision).inc()
        self.recent.append(entry)
        if decision == "rejected" and not self._reject_allowed(now):
            return entry
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(self._fd, (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8"))
        log.info("%s %s %s", decision, model or "-", entry.get("reason") or entry.get("run_id", ""))
        return entry

    def _reject_allowed(self, now: float) -> bool:
        minute = int(now // 60)
        if minute != self._reject_minute:
            self._reject_minute, self._rejects_logged = minute, 0
        self._rejects_logged += 1
        return self._rejects_logged <= REJECTS_LOGGED_PER_MINUTE

    def reject(self, status: int, reason: str, model: str = "", **fields: Any) -> dict[str, Any]:
        """Record a refused request (or alert)."""
        return self.record("rejected", model, status=status, reason=reason, **fields)

    def _remember(self, key: str, run_id: str) -> None:
        self.remembered[key] = run_id
        self.remembered.move_to_end(key)
        while len(self.remembered) > self.config.remembered_alerts:
            self.remembered.popitem(last=False)

    def _forget(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.remembered.pop(key, None)

    def _set_slot(self, model: str, slot: _Slot | None) -> None:
        if slot is None:
            self.slots.pop(model, None)
        else:
            self.slots[model] = slot
        self.metrics.in_flight.labels(model=model).set(1 if slot is not None else 0)

    # -- state after a restart ----------------------------------------------------------------

    def load_state(self) -> list[dict[str, Any]]:
        """Read ``decisions.jsonl`` back; returns the ``started`` records of runs still open."""
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    entry = json.loads(line)
                    decision, model = entry["decision"], entry.get("model", "")
                    at = float(entry["time"])
                except (ValueError, KeyError, TypeError):
                    log.warning("%s line %d: not a decision record; skipped", self.path, number)
                    continue
                self.recent.append(entry)
                run_id = entry.get("run_id")
                if decision == "started" and run_id:
                    keys: tuple[str, ...] = tuple(entry.get("keys") or ())
                    self.slots[model] = _Slot(run_id, keys, entry)
                    self.cooldown_from[model] = at
                    self.metrics.last_run.labels(model=model).set(at)
                    for key in keys:
                        self._remember(key, run_id)
                elif decision in ("finished", "failed") and run_id:
                    slot = self.slots.get(model)
                    keys = ()
                    if slot is not None and slot.run_id == run_id:
                        keys = slot.keys
                        del self.slots[model]
                    if decision == "failed":
                        self._forget(
                            [*keys, *(k for k, v in self.remembered.items() if v == run_id)]
                        )
                    if entry.get("interrupted"):
                        self.cooldown_from.pop(model, None)
                    else:
                        self.cooldown_from[model] = at
        for model in self.slots:
            self.metrics.in_flight.labels(model=model).set(1)
        return [slot.record for slot in self.slots.values()]

    async def start(self) -> None:
        """Read the state back and follow the runs a previous process left in flight."""
        for started in self.load_state():
            model, run_id = started.get("model", ""), str(started["run_id"])
            if started.get("starter") != self.starter.kind:
                handle = None
                why = f"started by the {started.get('starter')} starter, this trigger is " + (
                    self.starter.kind
                )
            else:
                handle = self.starter.adopt(started)
                why = "it ended while the trigger was down; outcome unknown" + (
                    f", see {started['log']}" if started.get("log") else ""
                )
            slot = self.slots[model]
            if handle is None:
                self._end(model, slot, RunOutcome(False, reason=why))
                continue
            log.info("following run %s of %s again", run_id, model)
            self._follow(model, slot, handle)

    # -- decisions ----------------------------------------------------------------------------

    async def handle(self, hook: AlertmanagerWebhook, arrived: datetime) -> list[dict[str, Any]]:
        """Decide on every alert of a notification; returns the decisions, in alert order.

        Everything up to the starts runs without awaiting, so concurrent notifications see
        each other's reservations: an alert storm starts one run per model.
        """
        firing = sorted(
            f"{a.fingerprint}@{iso_utc(a.startsAt)}" for a in hook.alerts if a.status == "firing"
        )
        notification = (
            "n:" + hashlib.sha256(json.dumps([hook.groupKey, firing]).encode()).hexdigest()[:32]
        )
        # the notification's own alerts must not deduplicate each other
        seen = self.remembered.get(notification)
        decisions: list[dict[str, Any] | None] = []
        starts: list[tuple[int, str, Alert, _Slot]] = []
        now = self.clock()
        for alert in hook.alerts:
            labels = alert.labels
            model = labels.get("model", "")
            about: dict[str, Any] = {
                "alertname": labels.get("alertname"),
                "fingerprint": alert.fingerprint,
                "starts_at": iso_utc(alert.startsAt),
                "group_key": hook.groupKey,
            }
            if alert.status != "firing":
                decisions.append(self.record("ignored", model, reason="resolved", **about))
                continue
            if labels.get(ACTION_LABEL) != ACTION:
                reason = f'no {ACTION_LABEL}="{ACTION}" label'
                decisions.append(self.record("ignored", model, reason=reason, **about))
                continue
            if not model:
                decisions.append(self.record("ignored", reason="no model label", **about))
                continue
            if not MODEL_NAME.fullmatch(model):
                reason = (
                    f"model label {model[:60]!r} is not a plain name "
                    "(letters, digits, '.', '_', '-'; at most 128)"
                )
                decisions.append(self.record("rejected", reason=reason, **about))
                continue
            key = f"a:{about['starts_at']}:{alert.fingerprint}"
            slot = self.slots.get(model)
            if key in self.remembered or seen is not None:
                which = "alert" if key in self.remembered else "notification"
                run = self.remembered.get(key) or seen
                reason = f"this {which} already started run {run}"
                decisions.append(self.record("deduplicated", model, reason=reason, **about))
            elif slot is not None:
                reason = f"run {slot.run_id or '(starting)'} is in flight"
                decisions.append(self.record("in_flight", model, reason=reason, **about))
            elif now - self.cooldown_from.get(model, -1e18) < self.config.cooldown_seconds:
                left = self.config.cooldown_seconds - (now - self.cooldown_from[model])
                reason = f"cooling down: {left:.0f}s left of {self.config.cooldown_seconds:g}s"
                decisions.append(self.record("cooling_down", model, reason=reason, **about))
            else:
                slot = _Slot(None, (key, notification), dict(about))
                self._set_slot(model, slot)
                self._remember(key, "(starting)")
                self._remember(notification, "(starting)")
                starts.append((len(decisions), model, alert, slot))
                decisions.append(None)
        if starts:
            results = await asyncio.gather(
                *(self._start(model, alert, slot, arrived) for _, model, alert, slot in starts)
            )
            for (index, *_), result in zip(starts, results, strict=True):
                decisions[index] = result
        return [d for d in decisions if d is not None]

    async def _start(
        self, model: str, alert: Alert, slot: _Slot, arrived: datetime
    ) -> dict[str, Any]:
        parameters = self.config.run_parameters(alert, arrived)
        about = slot.record
        try:
            handle = await self.starter.start(model, parameters)
        except StartFailed as exc:
            self._forget(slot.keys)
            self._set_slot(model, None)
            return self.record(
                "failed",
                model,
                stage="start",
                starter=self.starter.kind,
                attempts=exc.attempts,
                reason=str(exc),
                parameters=parameters,
                **about,
            )
        slot.run_id = handle.run_id
        for key in slot.keys:
            self._remember(key, handle.run_id)
        slot.record = self.record(
            "started",
            model,
            run_id=handle.run_id,
            starter=self.starter.kind,
            attempts=handle.attempts,
            pid=handle.pid,
            log=handle.log,
            parameters=parameters,
            keys=list(slot.keys),
            **about,
        )
        # The record's time, as load_state restores them after a restart.
        at = slot.record["time"]
        self.cooldown_from[model] = at
        self.metrics.last_run.labels(model=model).set(at)
        self._follow(model, slot, handle)
        return slot.record

    def _follow(self, model: str, slot: _Slot, handle: RunHandle) -> None:
        async def follow() -> None:
            try:
                outcome = await self.starter.wait(handle)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("following run %s of %s", handle.run_id, model)
                outcome = RunOutcome(False, reason=f"lost track of the run: {_describe(exc)}")
            self._end(model, slot, outcome)

        task = asyncio.create_task(follow(), name=f"kfloop-trigger-{handle.run_id}")
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)

    def _end(self, model: str, slot: _Slot, outcome: RunOutcome) -> None:
        if self.slots.get(model) is slot:
            self._set_slot(model, None)
        if not outcome.succeeded:  # the alert's next firing may start it again
            self._forget([*slot.keys, *(k for k, v in self.remembered.items() if v == slot.run_id)])
        if outcome.interrupted:  # not the run's fault: the next firing may start it again
            self.cooldown_from.pop(model, None)
        else:
            self.cooldown_from[model] = self.clock()
        self.record(
            "finished" if outcome.succeeded else "failed",
            model,
            stage=None if outcome.succeeded else "run",
            run_id=slot.run_id,
            starter=self.starter.kind,
            exit_code=outcome.exit_code,
            state=outcome.state,
            interrupted=True if outcome.interrupted else None,
            reason=outcome.reason or None,
            log=slot.record.get("log"),
        )

    async def close(self) -> None:
        """End local runs (recorded), stop following KFP runs (they go on), close the log."""
        await self.starter.close()
        if self._waiters:
            _done, pending = await asyncio.wait(list(self._waiters), timeout=1.0)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def status(self, limit: int = 100, model: str | None = None) -> dict[str, Any]:
        """What ``GET /runs`` shows."""
        now = self.clock()
        items = [d for d in self.recent if model is None or d.get("model") == model]
        cooldowns = {
            m: iso_utc(t + self.config.cooldown_seconds)
            for m, t in self.cooldown_from.items()
            if now - t < self.config.cooldown_seconds
        }
        return {
            "starter": self.starter.kind,
            "in_flight": {m: s.run_id or "(starting)" for m, s in self.slots.items()},
            "cooldown_until": cooldowns,
            "decisions": items[-limit:] if limit > 0 else [],
        }


# -- HTTP -----------------------------------------------------------------------------------------


def create_app(trigger: RetrainingTrigger, token: str | None) -> web.Application:
    """``POST /alerts``, ``GET /runs``, ``GET /metrics``, ``GET /healthz``."""
    limit = trigger.config.max_body_bytes
    expected = f"Bearer {token}".encode() if token else None

    def refuse(status: int, reason: str, field: str | None = None) -> web.Response:
        trigger.reject(status, reason, field=field)
        body: dict[str, Any] = {"error": reason}
        if field:
            body["field"] = field
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return web.json_response(body, status=status, headers=headers)

    async def alerts(request: web.Request) -> web.Response:
        arrived = datetime.now(UTC)
        if expected is not None:
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                why = "wrong bearer token" if given else "no bearer token"
                return refuse(401, why)
        if request.content_type != "application/json":
            return refuse(415, f"content type {request.content_type!r}: send application/json")
        if request.content_length is not None and request.content_length > limit:
            return refuse(413, f"body of {request.content_length} bytes is over {limit}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return refuse(413, f"body is over {limit} bytes")
        try:
            hook = parse_webhook(body)
        except WebhookError as exc:
            return refuse(400, str(exc), exc.field)
        decisions = await trigger.handle(hook, arrived)
        keep = ("model", "decision", "reason", "run_id", "fingerprint")
        return web.json_response(
            {"decisions": [{k: d[k] for k in keep if k in d} for d in decisions]}
        )

    async def runs(request: web.Request) -> web.Response:
        try:
            limit_ = int(request.query.get("limit", "100"))
        except ValueError:
            return web.json_response({"error": "limit: give an integer"}, status=400)
        return web.json_response(trigger.status(limit_, request.query.get("model")))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(trigger.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    app = web.Application(client_max_size=limit)
    app.router.add_post("/alerts", alerts)
    app.router.add_get("/runs", runs)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


# -- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``kfloop trigger`` arguments."""
    home = Path(os.environ.get("KFLOOP_HOME", ".kfloop"))
    p = argparse.ArgumentParser(
        prog="kfloop trigger",
        description="Receive Alertmanager webhooks (POST /alerts) and start the retraining "
        "pipeline: through a KFP API server (--kfp-host) or locally (kfloop run retraining in "
        "the pipeline environment).",
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8090, help="listen port (default 8090)")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=home / "trigger",
        help="decisions.jsonl and local run logs (default $KFLOOP_HOME/trigger)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        help=f"file (mode 0600) holding the webhook bearer token (default: ${TOKEN_ENV})",
    )
    p.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="accept webhooks without a token (only on a trusted loopback)",
    )
    p.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="static pipeline parameter (JSON values allowed); repeatable",
    )
    p.add_argument("--params-file", type=Path, help="static pipeline parameters, a JSON object")
    p.add_argument("--cooldown-seconds", type=float, default=600.0, help="per model (600)")
    p.add_argument(
        "--window-lookback-seconds",
        type=float,
        default=3600.0,
        help="window_start = the alert's startsAt minus this (3600): the drifted requests "
        "came before the alert fired",
    )
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="413 above (1 MiB)")
    p.add_argument(
        "--pipeline-package",
        type=Path,
        default=DEFAULT_PACKAGE,
        help="compiled pipeline YAML (default pipelines/compiled/retraining.yaml)",
    )
    kfp = p.add_argument_group("KFP API (cluster)")
    kfp.add_argument("--kfp-host", help="KFP API URL; runs go there instead of running locally")
    kfp.add_argument("--experiment", default="kfloop", help="experiment name (default kfloop)")
    kfp.add_argument("--namespace", help="Kubeflow profile namespace (multi-user clusters)")
    kfp.add_argument("--start-attempts", type=int, default=4, help="tries per start (4)")
    kfp.add_argument(
        "--retry-backoff-seconds", type=float, default=1.0, help="first retry delay, doubling"
    )
    kfp.add_argument("--request-timeout-seconds", type=float, default=30.0)
    kfp.add_argument("--poll-seconds", type=float, default=10.0, help="get_run period (10)")
    local = p.add_argument_group("local runs")
    local.add_argument(
        "--kfloop-bin",
        type=Path,
        help="kfloop of the pipeline environment (default <repo>/.venv/bin/kfloop)",
    )
    local.add_argument(
        "--pipeline-python",
        type=Path,
        help="python of the pipeline environment; runs `python -m kfloop.cli run retraining`",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def build_trigger(args: argparse.Namespace) -> tuple[RetrainingTrigger, str | None]:
    """The trigger and its token from parsed arguments.

    Raises:
        ConfigError: no token without ``--allow-unauthenticated``, or a bad option (named).
    """
    token = read_token(args.token_file)
    if token is None and not args.allow_unauthenticated:
        raise ConfigError(
            "--token-file",
            f"no webhook token: give --token-file (mode 0600) or set {TOKEN_ENV}, or pass "
            "--allow-unauthenticated on a trusted loopback",
        )
    package: Path = args.pipeline_package
    inputs = pipeline_inputs(package)
    if inputs is None:
        log.warning("%s not found: run parameters are not checked against it", package)
    config = TriggerConfig(
        state_dir=args.state_dir,
        params=parse_params(args.param, args.params_file),
        cooldown_seconds=args.cooldown_seconds,
        max_body_bytes=args.max_body_bytes,
        inputs=inputs,
        window_lookback_seconds=args.window_lookback_seconds,
    )
    starter: RunStarter
    if args.kfp_host:
        starter = KfpStarter(
            args.kfp_host,
            package,
            experiment=args.experiment,
            namespace=args.namespace,
            attempts=args.start_attempts,
            backoff_seconds=args.retry_backoff_seconds,
            request_seconds=args.request_timeout_seconds,
            poll_seconds=args.poll_seconds,
        )
    else:
        if args.kfloop_bin is not None:
            command = [str(args.kfloop_bin)]
        elif args.pipeline_python is not None:
            command = [str(args.pipeline_python), "-m", "kfloop.cli"]
        else:
            command = [str(REPO_ROOT / ".venv" / "bin" / "kfloop")]
        starter = LocalStarter(command, args.state_dir / "runs")
    return RetrainingTrigger(config, starter), token


async def serve(trigger: RetrainingTrigger, token: str | None, host: str, port: int) -> None:
    """Run until SIGTERM/SIGINT, then shut down cleanly."""
    await trigger.start()
    runner = web.AppRunner(create_app(trigger, token), access_log=None, shutdown_timeout=10.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "retraining trigger on http://%s:%d/alerts (%s runs, state in %s)",
            host,
            port,
            trigger.starter.kind,
            trigger.config.state_dir,
        )
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
        await trigger.close()


def trigger_main(argv: list[str] | None = None) -> int:
    """``kfloop trigger``: run the retraining trigger until SIGTERM/SIGINT."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    try:
        trigger, token = build_trigger(args)
    except KfloopError as exc:
        log.error("%s", exc)
        return 2
    if token is None:
        log.warning(
            "!!! --allow-unauthenticated: ANYONE who can reach %s:%d can start retraining "
            "runs; use it only on a trusted loopback !!!",
            args.host,
            args.port,
        )
    try:
        asyncio.run(serve(trigger, token, args.host, args.port))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(trigger_main())
