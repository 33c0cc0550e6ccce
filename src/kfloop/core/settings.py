"""Settings from environment variables, with the names KServe and the AWS SDKs use.

One source of configuration for every kfloop process: components, the predictor, the
logger, the trigger and the CLI. Values are validated on load; a bad value raises
:class:`~kfloop.core.errors.ConfigError` naming the variable. Secrets are wrapped in
:class:`Secret`, whose ``repr`` and ``str`` never show the value.

Precedence: the process environment, then the local stack's ``.kfloop/stack.env`` (written
by ``kfloop stack up``) when a caller passes it as ``fallback``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from kfloop.core.errors import ConfigError

# Variable names: KServe's storage initializer and the AWS SDKs read the same ones.
S3_ENDPOINT = "S3_ENDPOINT"
S3_USE_HTTPS = "S3_USE_HTTPS"
S3_VERIFY_SSL = "S3_VERIFY_SSL"
AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
AWS_REGION = "AWS_REGION"
AWS_DEFAULT_REGION = "AWS_DEFAULT_REGION"
DATA_BUCKET = "KFLOOP_DATA_BUCKET"
MODELS_BUCKET = "KFLOOP_MODELS_BUCKET"
LOGS_BUCKET = "KFLOOP_LOGS_BUCKET"
PIPELINE_BUCKET = "KFLOOP_PIPELINE_BUCKET"
S3_RETRIES = "KFLOOP_S3_RETRIES"
S3_TIMEOUT = "KFLOOP_S3_TIMEOUT"

DEFAULT_ENDPOINT = "127.0.0.1:8333"
DEFAULT_BUCKETS = {
    DATA_BUCKET: "kfloop-data",
    MODELS_BUCKET: "kfloop-models",
    LOGS_BUCKET: "kfloop-logs",
    PIPELINE_BUCKET: "kfloop-pipelines",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]+$")


class Secret:
    """A string that never shows itself in ``repr``, ``str``, f-strings or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """Return the secret value. Call only where the value is handed to a client."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def parse_bool(name: str, raw: str) -> bool:
    """Parse a boolean environment value, naming the variable when it is not one."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, f"{raw!r} is not a boolean; use one of 0/1, true/false, yes/no")


def validate_bucket(name: str, bucket: str) -> str:
    """Check an S3 bucket name against the S3 naming rules."""
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ConfigError(
            name,
            f"{bucket!r} is not a valid S3 bucket name: 3-63 characters of lowercase letters, "
            "digits, '.' and '-', starting and ending with a letter or digit",
        )
    return bucket


def _parse_endpoint(raw: str, use_https: bool | None) -> tuple[str, bool]:
    """Accept ``host:port`` (KServe's form) or ``http(s)://host:port``."""
    value = raw.strip()
    if not value:
        raise ConfigError(S3_ENDPOINT, "is empty; set it to host:port, e.g. 127.0.0.1:8333")
    scheme_https: bool | None = None
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ConfigError(
                S3_ENDPOINT, f"{raw!r} has scheme {parts.scheme!r}; use http or https"
            )
        if parts.path not in ("", "/") or parts.query:
            raise ConfigError(S3_ENDPOINT, f"{raw!r} must not contain a path; give host:port only")
        scheme_https = parts.scheme == "https"
        value = parts.netloc
        if use_https is not None and use_https != scheme_https:
            raise ConfigError(
                S3_ENDPOINT,
                f"{raw!r} says {parts.scheme} but {S3_USE_HTTPS}={int(use_https)}; make them agree",
            )
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, ""
    if not host or not _HOST_RE.match(host):
        raise ConfigError(S3_ENDPOINT, f"{raw!r} is not host:port")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ConfigError(S3_ENDPOINT, f"{raw!r} has port {port!r}; use 1-65535")
    https = scheme_https if scheme_https is not None else bool(use_https)
    return value, https


def read_env_file(path: Path) -> dict[str, str]:
    """Read a ``KEY=value`` file (the local stack's ``stack.env``); missing file gives {}."""
    result: dict[str, str] = {}
    if not path.exists():
        return result
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        stripped = stripped.removeprefix("export ")
        key, sep, value = stripped.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}", "expected KEY=value")
        result[key.strip()] = value.strip().strip("'\"")
    return result


@dataclass(frozen=True)
class Settings:
    """Validated configuration for the object store and buckets."""

    s3_endpoint: str
    access_key: Secret = field(repr=True)
    secret_key: Secret = field(repr=True)
    s3_use_https: bool = False
    s3_verify_ssl: bool = True
    region: str | None = None
    data_bucket: str = DEFAULT_BUCKETS[DATA_BUCKET]
    models_bucket: str = DEFAULT_BUCKETS[MODELS_BUCKET]
    logs_bucket: str = DEFAULT_BUCKETS[LOGS_BUCKET]
    pipeline_bucket: str = DEFAULT_BUCKETS[PIPELINE_BUCKET]
    s3_retries: int = 3
    s3_timeout: float = 30.0

    @property
    def endpoint_url(self) -> str:
        """The endpoint as a URL, for messages and for clients that want one."""
        return f"{'https' if self.s3_use_https else 'http'}://{self.s3_endpoint}"

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        fallback: Mapping[str, str] | None = None,
    ) -> Settings:
        """Load settings from ``env`` (default ``os.environ``), then ``fallback``.

        Raises:
            ConfigError: naming the variable that is missing or invalid.
        """
        source: dict[str, str] = dict(fallback or {})
        source.update({k: v for k, v in (os.environ if env is None else env).items()})

        def get(name: str) -> str | None:
            value = source.get(name)
            return value if value is None or value.strip() else None

        use_https_raw = get(S3_USE_HTTPS)
        use_https = parse_bool(S3_USE_HTTPS, use_https_raw) if use_https_raw is not None else None
        endpoint, https = _parse_endpoint(get(S3_ENDPOINT) or DEFAULT_ENDPOINT, use_https)

        access = get(AWS_ACCESS_KEY_ID)
        secret = get(AWS_SECRET_ACCESS_KEY)
        hint = (
            "export it (on a cluster it comes from the S3 secret), or run `kfloop stack up` "
            "for the local object store and `source .kfloop/stack.env`"
        )
        if access is None:
            raise ConfigError(AWS_ACCESS_KEY_ID, f"is not set; {hint}")
        if secret is None:
            raise ConfigError(AWS_SECRET_ACCESS_KEY, f"is not set; {hint}")

        verify_raw = get(S3_VERIFY_SSL)
        verify = parse_bool(S3_VERIFY_SSL, verify_raw) if verify_raw is not None else True

        buckets = {
            name: validate_bucket(name, get(name) or default)
            for name, default in DEFAULT_BUCKETS.items()
        }

        retries_raw = get(S3_RETRIES) or "3"
        if not retries_raw.strip().isdigit() or int(retries_raw) > 20:
            raise ConfigError(S3_RETRIES, f"{retries_raw!r} is not an integer from 0 to 20")
        timeout_raw = get(S3_TIMEOUT) or "30"
        try:
            timeout = float(timeout_raw)
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 3600:
            raise ConfigError(
                S3_TIMEOUT, f"{timeout_raw!r} is not a number of seconds in (0, 3600]"
            )

        return cls(
            s3_endpoint=endpoint,
            access_key=Secret(access.strip()),
            secret_key=Secret(secret.strip()),
            s3_use_https=https,
            s3_verify_ssl=verify,
            region=get(AWS_REGION) or get(AWS_DEFAULT_REGION),
            data_bucket=buckets[DATA_BUCKET],
            models_bucket=buckets[MODELS_BUCKET],
            logs_bucket=buckets[LOGS_BUCKET],
            pipeline_bucket=buckets[PIPELINE_BUCKET],
            s3_retries=int(retries_raw),
            s3_timeout=timeout,
        )

    def with_credentials(self, access_key: str, secret_key: str) -> Settings:
        """A copy with other credentials (used by tests and the local stack)."""
        return replace(self, access_key=Secret(access_key), secret_key=Secret(secret_key))

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings (secrets included).

        For handing to a child process only; never log or write the result to an artifact.
        """
        return {
            S3_ENDPOINT: self.s3_endpoint,
            S3_USE_HTTPS: "1" if self.s3_use_https else "0",
            S3_VERIFY_SSL: "1" if self.s3_verify_ssl else "0",
            AWS_ACCESS_KEY_ID: self.access_key.get(),
            AWS_SECRET_ACCESS_KEY: self.secret_key.get(),
            DATA_BUCKET: self.data_bucket,
            MODELS_BUCKET: self.models_bucket,
            LOGS_BUCKET: self.logs_bucket,
            PIPELINE_BUCKET: self.pipeline_bucket,
            S3_RETRIES: str(self.s3_retries),
            S3_TIMEOUT: str(self.s3_timeout),
            **({AWS_REGION: self.region} if self.region else {}),
        }
