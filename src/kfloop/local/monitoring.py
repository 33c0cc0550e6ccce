"""Prometheus and Alertmanager for the local stack (Debian's ``prometheus`` and
``prometheus-alertmanager`` packages, which ``make setup`` installs).

Both bind to 127.0.0.1 only and keep their state under ``<stack home>/monitoring``:

- **Prometheus** reads a generated ``prometheus.yml``: short scrape and evaluation intervals
  (2 s), one scrape job per entry of the targets mapping (job -> ``host:port`` list), the
  rule file rendered from the ``PrometheusRule`` manifest (:mod:`kfloop.monitoring.rules`,
  with the local ``for`` overrides) and alerting to the local Alertmanager. It runs with
  ``--rules.alert.resend-delay=2s`` (with the default 1 m the first notification goes out
  before the Alertmanager is discovered and the next one waits a minute) and
  ``--web.enable-lifecycle`` so that :meth:`LocalMonitoring.set_targets` reloads it through
  ``/-/reload`` (which reports a bad configuration, where SIGHUP would not).
- **Alertmanager** reads a generated ``alertmanager.yml`` routing alerts labelled
  ``kfloop_action="retrain"`` to the retraining trigger's webhook (Alertmanager webhook
  payload version 4), authenticated with ``authorization.credentials_file``: the token stays
  in its 0600 file, never in the configuration. Other alerts go to a receiver with no
  notifier (they are visible in both UIs). Gossip is off (``--cluster.listen-address=``).

Plug into :class:`~kfloop.local.stack.LocalStack` through :class:`LocalMonitoring`
(``start``/``stop``/``status``).
"""

from __future__ import annotations

import os
import shutil
import stat
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kfloop.core.errors import ConfigError, StackError
from kfloop.local.process import LOOPBACK, ManagedProcess
from kfloop.monitoring import rules as rules_mod

DEFAULT_PROMETHEUS_PORT = 9090
DEFAULT_ALERTMANAGER_PORT = 9093
PROMETHEUS_BIN = "prometheus"
ALERTMANAGER_BIN = "prometheus-alertmanager"
RETRAIN_RECEIVER = "kfloop-retrain"
NULL_RECEIVER = "kfloop-null"


def find_binary(name: str, search_path: str | None = None) -> str:
    """The path of ``name`` on PATH (or ``search_path``); StackError naming it when absent."""
    found = shutil.which(name, path=search_path)
    if found:
        return found
    package = "prometheus-alertmanager" if "alertmanager" in name else "prometheus"
    raise StackError(
        f"`{name}` not found on PATH: the local monitoring needs Debian's {package} package; "
        f"`make setup` installs it (or `sudo apt-get install {package}`)"
    )


def _http_ok(url: str, method: str = "GET", timeout: float = 2.0) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except (OSError, ValueError) as exc:
        return 0, str(exc)


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def check_targets(targets: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Validate scrape targets (job -> ``host:port`` list); ConfigError naming the job."""
    checked: dict[str, list[str]] = {}
    for job, addresses in targets.items():
        if not isinstance(job, str) or not job.strip():
            raise ConfigError("targets", f"job names must be non-empty strings, got {job!r}")
        if isinstance(addresses, str):
            raise ConfigError(f"targets[{job}]", "must be a list of host:port, not one string")
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not host or "/" in address or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"targets[{job}]", f"{address!r} is not host:port")
        checked[job] = [str(a) for a in addresses]
    return checked


@dataclass(frozen=True)
class RetrainWebhook:
    """Where Alertmanager sends ``kfloop_action="retrain"`` alerts.

    Attributes:
        url: the retraining trigger's webhook URL (no credentials in it).
        token_file: file holding the bearer token, mode 0600 (Alertmanager reads it).
    """

    url: str
    token_file: Path

    def check(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("webhook.url", f"{self.url!r} is not an http(s) URL")
        if parts.username or parts.password:
            raise ConfigError("webhook.url", "must not carry credentials; use the token file")
        try:
            mode = stat.S_IMODE(self.token_file.stat().st_mode)
        except OSError as exc:
            raise ConfigError(
                "webhook.token_file", f"{self.token_file}: cannot read: {exc.strerror}"
            ) from None
        if mode & 0o077:
            raise ConfigError(
                "webhook.token_file",
                f"{self.token_file} has mode {mode:o}; it holds a secret: chmod 600 it",
            )
        if not self.token_file.read_text().strip():
            raise ConfigError("webhook.token_file", f"{self.token_file} is empty")


@dataclass(frozen=True)
class AlertmanagerTiming:
    """Notification timing; the defaults suit the local demo (seconds, not minutes)."""

    group_wait: str = "1s"
    group_interval: str = "5s"
    repeat_interval: str = "2m"


def prometheus_config(
    targets: Mapping[str, Sequence[str]],
    rule_file: Path,
    alertmanager: str,
    scrape_interval: str = "2s",
    evaluation_interval: str = "2s",
) -> dict[str, Any]:
    """``prometheus.yml`` as a dict."""
    rules_mod.parse_duration(scrape_interval, "scrape_interval")
    rules_mod.parse_duration(evaluation_interval, "evaluation_interval")
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(rule_file)],
        "alerting": {
            "alertmanagers": [
                {"api_version": "v2", "static_configs": [{"targets": [alertmanager]}]}
            ]
        },
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
            for job, addresses in check_targets(targets).items()
        ],
    }


def alertmanager_config(
    webhook: RetrainWebhook | None, timing: AlertmanagerTiming | None = None
) -> dict[str, Any]:
    """``alertmanager.yml`` as a dict: retrain alerts to the webhook, the rest to no notifier."""
    timing = timing or AlertmanagerTiming()
    receivers: list[dict[str, Any]] = [{"name": NULL_RECEIVER}]
    route: dict[str, Any] = {
        "receiver": NULL_RECEIVER,
        "group_by": ["alertname", "model", "version"],
        "group_wait": timing.group_wait,
        "group_interval": timing.group_interval,
        "repeat_interval": timing.repeat_interval,
    }
    if webhook is not None:
        webhook.check()
        receivers.append(
            {
                "name": RETRAIN_RECEIVER,
                "webhook_configs": [
                    {
                        "url": webhook.url,
                        "send_resolved": False,
                        "http_config": {
                            "authorization": {
                                "type": "Bearer",
                                "credentials_file": str(webhook.token_file),
                            }
                        },
                    }
                ],
            }
        )
        # The same matcher and grouping as manifests/base/alertmanagerconfig.yaml (cluster).
        route["routes"] = [
            {
                "receiver": RETRAIN_RECEIVER,
                "matchers": [f'{rules_mod.ACTION_LABEL}="retrain"'],
                "group_by": ["alertname", "model"],
            }
        ]
    return {"route": route, "receivers": receivers}


@dataclass(frozen=True)
class MonitoringService:
    """State of one monitoring service, for ``kfloop stack status``."""

    name: str
    pid: int | None
    url: str
    ready: bool


@dataclass
class LocalMonitoring:
    """Prometheus + Alertmanager of the local stack, state under ``home/monitoring``.

    Args:
        home: the stack folder.
        prometheus_port, alertmanager_port: loopback ports.
        targets: scrape jobs, job name -> list of ``host:port`` (path ``/metrics``).
        webhook: the retraining trigger, or None (retrain alerts then go nowhere).
        manifest: the ``PrometheusRule`` (default ``manifests/base/prometheusrule.yaml``).
        for_overrides: alert -> ``for`` for the local rule file (default: seconds-long).
        interval: scrape and rule evaluation interval.
    """

    home: Path
    prometheus_port: int = DEFAULT_PROMETHEUS_PORT
    alertmanager_port: int = DEFAULT_ALERTMANAGER_PORT
    targets: dict[str, list[str]] = field(default_factory=dict)
    webhook: RetrainWebhook | None = None
    manifest: Path | None = None
    for_overrides: Mapping[str, str] = field(default_factory=lambda: dict(rules_mod.LOCAL_FOR))
    interval: str = rules_mod.LOCAL_INTERVAL
    timing: AlertmanagerTiming = field(default_factory=AlertmanagerTiming)

    def __post_init__(self) -> None:
        self.dir = Path(self.home).resolve() / "monitoring"
        self.targets = check_targets(self.targets)

    # -- files and addresses --------------------------------------------------------------------

    @property
    def prometheus_url(self) -> str:
        return f"http://{LOOPBACK}:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{LOOPBACK}:{self.alertmanager_port}"

    @property
    def prometheus_yml(self) -> Path:
        return self.dir / "prometheus.yml"

    @property
    def alertmanager_yml(self) -> Path:
        return self.dir / "alertmanager.yml"

    @property
    def rule_file(self) -> Path:
        return self.dir / "kfloop.rules.yml"

    def write_prometheus_config(self) -> None:
        """Render the rule file from the manifest and write ``prometheus.yml`` (atomically)."""
        rules_mod.render_rule_file(self.rule_file, self.manifest, self.for_overrides, self.interval)
        config = prometheus_config(
            self.targets,
            self.rule_file,
            f"{LOOPBACK}:{self.alertmanager_port}",
            self.interval,
            self.interval,
        )
        _write_atomic(self.prometheus_yml, rules_mod.dump(config))

    def write_alertmanager_config(self) -> None:
        """Write ``alertmanager.yml`` (atomically, mode 0600; it names the token file)."""
        config = alertmanager_config(self.webhook, self.timing)
        _write_atomic(self.alertmanager_yml, rules_mod.dump(config), mode=0o600)

    # -- processes ------------------------------------------------------------------------------

    @property
    def prometheus(self) -> ManagedProcess:
        argv = [
            shutil.which(PROMETHEUS_BIN) or PROMETHEUS_BIN,
            f"--config.file={self.prometheus_yml}",
            f"--storage.tsdb.path={self.dir / 'prometheus-data'}",
            "--storage.tsdb.retention.time=7d",
            f"--web.listen-address={LOOPBACK}:{self.prometheus_port}",
            "--web.enable-lifecycle",
            "--rules.alert.resend-delay=2s",
        ]
        return ManagedProcess(
            name="prometheus",
            argv=argv,
            workdir=self.dir,
            ports={"http": self.prometheus_port},
            ready=lambda: _http_ok(f"{self.prometheus_url}/-/ready", timeout=1.0)[0] == 200,
            marker=f"--config.file={self.prometheus_yml}",
            prepare=self.write_prometheus_config,
            start_timeout=60.0,
        )

    @property
    def alertmanager(self) -> ManagedProcess:
        argv = [
            shutil.which(ALERTMANAGER_BIN) or ALERTMANAGER_BIN,
            f"--config.file={self.alertmanager_yml}",
            f"--storage.path={self.dir / 'alertmanager-data'}",
            f"--web.listen-address={LOOPBACK}:{self.alertmanager_port}",
            "--cluster.listen-address=",
        ]
        return ManagedProcess(
            name="alertmanager",
            argv=argv,
            workdir=self.dir,
            ports={"http": self.alertmanager_port},
            ready=lambda: _http_ok(f"{self.alertmanager_url}/-/ready", timeout=1.0)[0] == 200,
            marker=f"--config.file={self.alertmanager_yml}",
            prepare=self.write_alertmanager_config,
            start_timeout=60.0,
        )

    def start(self) -> None:
        """Start Alertmanager, then Prometheus (idempotent: running services are kept).

        Raises:
            StackError: a binary is not installed (naming it and ``make setup``), a port is
                taken, or a service did not become ready (with the last lines of its log).
            ConfigError: the rules manifest, a scrape target or the webhook is invalid.
        """
        find_binary(ALERTMANAGER_BIN)
        find_binary(PROMETHEUS_BIN)
        self.alertmanager.start()
        self.prometheus.start()

    def stop(self) -> list[str]:
        """Stop both (Prometheus first); the names of those that were running.

        Works without the binaries installed (it only reads the pid files).
        """
        return [p.name for p in (self.prometheus, self.alertmanager) if p.stop()]

    def status(self) -> list[MonitoringService]:
        out = []
        for proc, url in (
            (self.prometheus, self.prometheus_url),
            (self.alertmanager, self.alertmanager_url),
        ):
            pid = proc.pid()
            out.append(MonitoringService(proc.name, pid, url, pid is not None and proc.ready()))
        return out

    # -- reconfiguration ------------------------------------------------------------------------

    def _reload(self, proc: ManagedProcess, url: str) -> bool:
        if proc.pid() is None:
            return False
        code, body = _http_ok(f"{url}/-/reload", method="POST", timeout=10.0)
        if code != 200:
            raise StackError(
                f"{proc.name} refused its new configuration ({code}): {body.strip()[:500]}. "
                f"Log: {proc.log_file}"
            )
        return True

    def reload_prometheus(self) -> bool:
        """Rewrite the rule file and ``prometheus.yml``; reload when running (True then)."""
        self.write_prometheus_config()
        return self._reload(self.prometheus, self.prometheus_url)

    def reload_alertmanager(self) -> bool:
        """Rewrite ``alertmanager.yml``; reload when running (True then)."""
        self.write_alertmanager_config()
        return self._reload(self.alertmanager, self.alertmanager_url)

    def set_targets(self, targets: Mapping[str, Sequence[str]]) -> bool:
        """Replace the scrape targets and reload Prometheus (True when it was running)."""
        self.targets = check_targets(targets)
        return self.reload_prometheus()

    def add_target(self, job: str, address: str) -> bool:
        """Add one ``host:port`` to a job (created when new) and reload Prometheus."""
        targets = {k: list(v) for k, v in self.targets.items()}
        if address not in targets.setdefault(job, []):
            targets[job].append(address)
        return self.set_targets(targets)

    def set_webhook(self, webhook: RetrainWebhook | None) -> bool:
        """Point retrain alerts at ``webhook`` and reload Alertmanager (True when running)."""
        self.webhook = webhook
        return self.reload_alertmanager()
