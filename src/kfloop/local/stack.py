"""Start, check and stop the local stack (``kfloop stack up|down|status``)."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from kfloop.core.errors import ObjectStoreError, StackError
from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import (
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY,
    S3_ENDPOINT,
    S3_USE_HTTPS,
    Settings,
    read_env_file,
)
from kfloop.local.process import LOOPBACK, ManagedProcess
from kfloop.local.seaweedfs import DEFAULT_S3_PORT, seaweedfs_process

KFLOOP_HOME = "KFLOOP_HOME"
KFLOOP_S3_PORT = "KFLOOP_S3_PORT"
STACK_ENV = "stack.env"


def stack_home(env: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """The stack folder: ``$KFLOOP_HOME`` or ``./.kfloop``."""
    source = os.environ if env is None else env
    return Path(source.get(KFLOOP_HOME) or Path.cwd() / ".kfloop").resolve()


def load_settings(home: Path | None = None) -> Settings:
    """Settings from the environment, falling back to the local stack's ``stack.env``."""
    return Settings.from_env(fallback=read_env_file((home or stack_home()) / STACK_ENV))


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    endpoint: str
    ready: bool


def wait_until_writable(store: ObjectStore, bucket: str, timeout: float = 60.0) -> None:
    """Write, read back and delete a probe object until that works.

    SeaweedFS answers S3 listings as soon as its filer is up, but reads and writes of object
    data wait for the volume server to register with the master (right after a restart) and
    for volumes to be grown for the bucket (its first write): a pipeline step could otherwise
    fail on its first read or write.
    """
    key = f"s3://{bucket}/.kfloop-ready-probe"
    deadline = time.monotonic() + timeout
    while True:
        try:
            store.put_bytes(b"ok", key)
            ok = store.get_bytes(key) == b"ok"
            store.delete(key)
            if ok:
                return
            problem = "the probe object read back different bytes"
        except ObjectStoreError as exc:
            problem = str(exc)
        if time.monotonic() > deadline:
            raise StackError(
                f"SeaweedFS answers but {bucket} is not writable after {timeout:.0f}s: {problem}"
            )
        time.sleep(0.5)


class LocalStack:
    """The local services, their state under ``home`` and the credentials they share."""

    def __init__(self, home: Path | None = None, s3_port: int | None = None) -> None:
        self.home = (home or stack_home()).resolve()
        self.env_file = self.home / STACK_ENV
        recorded = read_env_file(self.env_file)
        if s3_port is None:
            port_text = (
                os.environ.get(KFLOOP_S3_PORT) or recorded.get(S3_ENDPOINT, "").rpartition(":")[2]
            )
            if port_text and not port_text.isdigit():
                raise StackError(f"{KFLOOP_S3_PORT}={port_text!r} is not a port number")
            s3_port = int(port_text) if port_text else DEFAULT_S3_PORT
        self.s3_port = s3_port
        self._recorded = recorded
        self._generated: tuple[str, str] | None = None

    # -- credentials --------------------------------------------------------------------

    def settings(self) -> Settings:
        """Settings pointing at the local S3 endpoint.

        Credentials: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from the environment when
        set, else the ones recorded in ``stack.env``, else new random ones.
        """
        access = os.environ.get(AWS_ACCESS_KEY_ID) or self._recorded.get(AWS_ACCESS_KEY_ID)
        secret = os.environ.get(AWS_SECRET_ACCESS_KEY) or self._recorded.get(AWS_SECRET_ACCESS_KEY)
        if not access or not secret:
            if self._generated is None:
                self._generated = ("kfloop-" + secrets.token_hex(6), secrets.token_urlsafe(24))
            access, secret = self._generated
        env = {
            **{k: v for k, v in os.environ.items() if k.startswith(("KFLOOP_", "S3_", "AWS_"))},
            S3_ENDPOINT: f"{LOOPBACK}:{self.s3_port}",
            S3_USE_HTTPS: "0",
            AWS_ACCESS_KEY_ID: access,
            AWS_SECRET_ACCESS_KEY: secret,
        }
        return Settings.from_env(env)

    def _write_env(self, settings: Settings) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        lines = [
            "# kfloop local stack: `source` this file to reach it.",
            "# It holds credentials: keep it private (mode 0600, git-ignored).",
        ]
        lines += [f"export {key}={value}" for key, value in settings.to_env().items()]
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        os.chmod(self.env_file, 0o600)
        self._recorded = read_env_file(self.env_file)

    # -- services -----------------------------------------------------------------------

    def _seaweedfs(self, settings: Settings) -> ManagedProcess:
        return seaweedfs_process(self.home, settings, self.s3_port)

    def up(self) -> Settings:
        """Start every service (idempotent), create the buckets, write ``stack.env``."""
        settings = self.settings()
        weed = self._seaweedfs(settings)
        if weed.pid() is None:
            # New credentials take effect only on a fresh start; record them first.
            self._write_env(settings)
        weed.start()
        store = ObjectStore(settings)
        for bucket in (
            settings.data_bucket,
            settings.models_bucket,
            settings.logs_bucket,
            settings.pipeline_bucket,
        ):
            store.ensure_bucket(bucket)
            # SeaweedFS grows volumes for a bucket on its first write; do that now, not in
            # the middle of a pipeline step (under load it takes seconds: InternalError).
            wait_until_writable(store, bucket)
        return settings

    def down(self) -> list[str]:
        """Stop every service; returns the names of those that were running."""
        from kfloop.local.loop import stop_loop_services
        from kfloop.local.monitoring import LocalMonitoring

        # What a demo started and could not stop (killed outright): loop services first, then
        # monitoring, then the object store they write to.
        stopped = stop_loop_services(self.home)
        stopped += LocalMonitoring(self.home).stop()
        weed = self._seaweedfs(self.settings())
        if weed.stop():
            stopped.append(weed.name)
        return stopped

    def status(self) -> list[ServiceStatus]:
        settings = self.settings()
        weed = self._seaweedfs(settings)
        pid = weed.pid()
        return [
            ServiceStatus(
                name="seaweedfs (S3)",
                running=pid is not None,
                pid=pid,
                endpoint=settings.endpoint_url,
                ready=pid is not None and weed.ready(),
            )
        ]
