"""The `kfloop` command, run as a user would: a subprocess in this environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ENVIRONMENT, free_s3_port

KFLOOP = str(Path(sys.executable).parent / "kfloop")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KFLOOP, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def test_help_explains_commands_and_configuration() -> None:
    out = run("--help")
    assert out.returncode == 0
    for text in ("stack", "demo", "S3_ENDPOINT", "AWS_ACCESS_KEY_ID"):
        assert text in out.stdout
    up = run("stack", "up", "--help")
    assert "--s3-port" in up.stdout and "127.0.0.1" not in up.stderr


def test_status_of_a_stopped_stack_exits_3(tmp_path: Path) -> None:
    out = run("stack", "status", "--home", str(tmp_path), "--help")
    assert out.returncode == 0
    out = run("stack", "status", "--home", str(tmp_path))
    assert out.returncode == 3
    assert "stopped" in out.stdout


def test_bad_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    out = run("stack", "status", "--home", str(tmp_path), env={"KFLOOP_DATA_BUCKET": "No_Good"})
    assert out.returncode == 2
    assert out.stderr.startswith("kfloop: error: KFLOOP_DATA_BUCKET: ")
    assert "Traceback" not in out.stderr


def test_stack_up_status_down_through_the_cli(tmp_path: Path) -> None:
    port = free_s3_port()
    up = run("stack", "up", "--home", str(tmp_path), "--s3-port", str(port))
    try:
        assert up.returncode == 0, up.stderr
        assert f"http://127.0.0.1:{port}" in up.stdout
        secret = (tmp_path / "stack.env").read_text()
        key = next(
            line.split("=", 1)[1]
            for line in secret.splitlines()
            if line.startswith("export AWS_SECRET_ACCESS_KEY=")
        )
        assert key not in up.stdout + up.stderr
        status = run("stack", "status", "--home", str(tmp_path))
        assert status.returncode == 0
        assert "ready" in status.stdout
    finally:
        down = run("stack", "down", "--home", str(tmp_path))
    assert down.returncode == 0
    assert "stopped: seaweedfs" in down.stdout
    assert run("stack", "status", "--home", str(tmp_path)).returncode == 3


@pytest.mark.skipif(ENVIRONMENT != "serving", reason="the pipeline env runs the demo for real")
def test_demo_in_the_serving_environment_says_where_to_run_it(tmp_path: Path) -> None:
    out = run("demo", "--home", str(tmp_path))
    assert out.returncode == 1
    assert "pipeline environment" in out.stderr
    assert "Traceback" not in out.stderr


def test_port_conflict_is_reported_without_traceback(tmp_path: Path) -> None:
    import socket

    port = free_s3_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        out = run("stack", "up", "--home", str(tmp_path), "--s3-port", str(port))
    assert out.returncode == 1
    assert f"port {port} (s3)" in out.stderr
    assert "Traceback" not in out.stderr
