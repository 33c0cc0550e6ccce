"""A background service process with a pid file, a log file, port checks and escalation."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kfloop.core.errors import StackError

LOOPBACK = "127.0.0.1"


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True when something already listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def free_port(host: str = LOOPBACK) -> int:
    """A port the kernel says is free now (for tests and ephemeral services)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a fully exited zombie.

    A multi-threaded process (SeaweedFS is Go) whose leader thread has exited shows state
    ``Z`` while its other threads still run and hold its sockets: that counts as alive.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    if stat.rsplit(")", 1)[-1].split()[0] != "Z":
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    threads = [line for line in status.splitlines() if line.startswith("Threads:")]
    return bool(threads) and int(threads[0].split()[1]) > 1


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


@dataclass
class ManagedProcess:
    """One long-running service of the local stack.

    Attributes:
        name: short name used in messages and file names (``seaweedfs``).
        argv: the command line.
        workdir: folder holding ``<name>.pid`` and ``<name>.log``.
        ports: the ports it will listen on, by role, checked free before start.
        ready: returns True once the service answers; polled until ``start_timeout``.
        marker: a string its command line contains, so a recycled pid is not signalled.
        prepare: called before the process starts (writes its config files).
    """

    name: str
    argv: Sequence[str]
    workdir: Path
    ports: Mapping[str, int]
    ready: Callable[[], bool]
    marker: str
    env: Mapping[str, str] | None = None
    prepare: Callable[[], None] | None = None
    start_timeout: float = 60.0
    stop_timeout: float = 10.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def pid_file(self) -> Path:
        return self.workdir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The recorded pid when that process is alive and is ours, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid_alive(pid) and self.marker in _cmdline(pid):
            return pid
        return None

    def is_running(self) -> bool:
        return self.pid() is not None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> int:
        """Start the process (idempotent when already running and ready); return its pid."""
        existing = self.pid()
        if existing is not None:
            if self.ready():
                return existing
            raise StackError(
                f"{self.name} (pid {existing}) is running but not answering; "
                f"`kfloop stack down` then up again. Log: {self.log_file}"
            )
        for role, port in self.ports.items():
            if port_in_use(port):
                raise StackError(
                    f"{self.name}: port {port} ({role}) on {LOOPBACK} is already in use by "
                    "another process; stop that process or choose other ports "
                    "(see `kfloop stack up --help`)"
                )
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.prepare is not None:
            self.prepare()
        log = self.log_file.open("ab")
        try:
            proc = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
            )
        except OSError as exc:
            raise StackError(f"{self.name}: cannot start {self.argv[0]}: {exc}") from None
        finally:
            log.close()
        self._proc = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"{self.name} exited with code {proc.returncode} while starting. "
                    f"Last lines of {self.log_file}:\n{self.log_tail()}"
                )
            if self.ready():
                return proc.pid
            time.sleep(0.25)
        self.stop()
        raise StackError(
            f"{self.name} did not become ready within {self.start_timeout:.0f}s. "
            f"Last lines of {self.log_file}:\n{self.log_tail()}"
        )

    def stop(self) -> bool:
        """SIGTERM the process group; SIGKILL after ``stop_timeout``. True if it was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._signal(pid, signal.SIGTERM)
        if not self._wait_gone(pid, self.stop_timeout):
            self._signal(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 5.0):
                raise StackError(f"{self.name} (pid {pid}) survived SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        # The kernel releases listening sockets as the last thread exits; wait for that too.
        deadline = time.monotonic() + 5.0
        while any(port_in_use(p) for p in self.ports.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:
                    return True
            elif not pid_alive(pid):
                return True
            time.sleep(0.1)
        return False
