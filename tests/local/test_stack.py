"""The local stack's process management, against real processes."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kfloop.core.errors import StackError
from kfloop.core.objectstore import ObjectStore
from kfloop.local.process import ManagedProcess, free_port, pid_alive
from kfloop.local.seaweedfs import port_plan
from kfloop.local.stack import LocalStack
from tests.conftest import free_s3_port


def test_port_plan_derives_every_port_from_s3() -> None:
    plan = port_plan(20000)
    assert plan["s3"] == 20000
    assert plan["s3 gRPC"] == 30000
    assert len(set(plan.values())) == 10
    with pytest.raises(StackError, match="out of range"):
        port_plan(60000)


def test_up_status_down_leaves_no_process(tmp_path: Path) -> None:
    stack = LocalStack(home=tmp_path, s3_port=free_s3_port())
    settings = stack.up()
    status = stack.status()
    assert status[0].ready and status[0].pid
    pid = status[0].pid
    # Idempotent: a second `up` reuses the running service.
    assert stack.up() == settings
    assert stack.status()[0].pid == pid
    # Buckets exist; only loopback listens.
    store = ObjectStore(settings)
    assert store.bucket_exists(settings.models_bucket)
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    mine = [line for line in listening.splitlines() if f"pid={pid}," in line]
    assert mine, listening
    assert all(" 127.0.0.1:" in line for line in mine), mine
    assert stack.down() == ["seaweedfs"]
    assert not pid_alive(pid)
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    ports = {f":{p} " for p in port_plan(stack.s3_port).values()}
    assert not [line for line in listening.splitlines() if any(p in line for p in ports)]
    assert stack.down() == []


def test_credentials_file_is_private_and_reused(tmp_path: Path) -> None:
    stack = LocalStack(home=tmp_path, s3_port=free_s3_port())
    first = stack.settings()
    stack.up()
    try:
        env_file = tmp_path / "stack.env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        ident = tmp_path / "seaweedfs" / "s3-identities.json"
        assert stat.S_IMODE(ident.stat().st_mode) == 0o600
        log = (tmp_path / "seaweedfs" / "seaweedfs.log").read_text()
        assert first.secret_key.get() not in log
        again = LocalStack(home=tmp_path)
        assert again.s3_port == stack.s3_port
        assert again.settings().secret_key == first.secret_key
    finally:
        stack.down()


def test_taken_port_gives_a_clear_error(tmp_path: Path) -> None:
    port = free_s3_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port + 3))  # the filer's port
        blocker.listen()
        stack = LocalStack(home=tmp_path, s3_port=port)
        with pytest.raises(StackError) as err:
            stack.up()
    assert f"port {port + 3} (filer)" in str(err.value)
    assert "already in use" in str(err.value)
    assert stack.status()[0].running is False


STUBBORN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ignoring SIGTERM', flush=True)\n"
    "time.sleep(600)\n"
)


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    proc = ManagedProcess(
        name="stubborn",
        argv=[sys.executable, "-c", STUBBORN, "kfloop-stubborn-marker"],
        workdir=tmp_path,
        ports={},
        ready=lambda: "ignoring" in (tmp_path / "stubborn.log").read_text(),
        marker="kfloop-stubborn-marker",
        stop_timeout=1.0,
    )
    pid = proc.start()
    started = time.monotonic()
    assert proc.stop() is True
    assert time.monotonic() - started >= 1.0  # it waited for SIGTERM first
    assert not pid_alive(pid)
    assert not proc.pid_file.exists()


def test_process_that_dies_at_start_reports_its_log(tmp_path: Path) -> None:
    proc = ManagedProcess(
        name="crasher",
        argv=[sys.executable, "-c", "import sys; print('bad flag -x'); sys.exit(3)", "crasher"],
        workdir=tmp_path,
        ports={"http": free_port()},
        ready=lambda: False,
        marker="crasher",
    )
    with pytest.raises(StackError, match=r"exited with code 3(.|\n)*bad flag -x"):
        proc.start()
    assert not proc.pid_file.exists()


def test_stale_pid_file_is_not_trusted(tmp_path: Path) -> None:
    proc = ManagedProcess(
        name="svc",
        argv=["true"],
        workdir=tmp_path,
        ports={},
        ready=lambda: True,
        marker="never-matches-anything",
    )
    proc.pid_file.write_text(f"{os.getpid()}\n")  # alive, but not ours
    assert proc.pid() is None
    assert proc.stop() is False
