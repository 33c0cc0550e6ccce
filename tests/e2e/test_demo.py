"""End to end: `kfloop demo`, the whole closed loop, as `make demo` runs it (smaller budgets).

Runs the real command in a subprocess on its own stack folder and ports: SeaweedFS, the
training pipeline under kfp.local, the predictor, the logger, the trigger, Prometheus and
Alertmanager. Checks what a user would: v1 trained and deployed, the drift alert fired, the
trigger started exactly one retraining run, v2 beat v1 and serves, drift against v2's
reference is back under the alert threshold, every request is in Parquet, the report and the
summary are written, no credential in the output, and nothing the demo started is left
running.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kfloop.core.objectstore import ObjectStore
from kfloop.deploy.registry import read_production
from kfloop.local.process import pid_alive
from kfloop.local.stack import LocalStack
from tests.conftest import free_s3_port

KFLOOP = str(Path(sys.executable).parent / "kfloop")
DRIFT_THRESHOLD = 0.25  # the PrometheusRule's KfloopFeatureDrift threshold


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "KFLOOP_"))}


def _pids(home: Path) -> dict[str, int]:
    """The pids of every service the demo started (recorded in its summary)."""
    summary = json.loads(next(home.glob("demo/*/summary.json")).read_text())
    return {name: int(pid) for name, pid in summary["pids"].items()}


@pytest.mark.slow
def test_demo_closes_the_loop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_s3_port()
    out = subprocess.run(
        [
            KFLOOP,
            "demo",
            "--home",
            str(home),
            "--s3-port",
            str(port),
            "--keep",
            "--rows",
            "6000",
            "--max-trials",
            "1",
            "--epochs",
            "4",
            "--traffic-rows",
            "1500",
            "--drifted-rows",
            "4000",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        env=_env(),
    )
    stack = LocalStack(home=home, s3_port=port)
    try:
        assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
        settings = stack.settings()
        assert settings.secret_key.get() not in out.stdout + out.stderr
        summary_file = next(home.glob("demo/*/summary.json"))
        summary = json.loads(summary_file.read_text())
        assert summary["ok"] is True, summary["failure"]
        store = ObjectStore(settings)
        pointer = read_production(store, f"s3://{settings.models_bucket}", "churn")
        assert pointer is not None
        assert pointer.uri == summary["v2_uri"] != summary["v1_uri"]
        assert pointer.previous is not None and pointer.previous["uri"] == summary["v1_uri"]
        metrics = summary["metrics"]
        # Drift: low in distribution, high when drifted, low again against v2's reference.
        assert metrics["psi_in_distribution"]["psi"] < DRIFT_THRESHOLD
        assert metrics["psi_drifted"]["psi"] > DRIFT_THRESHOLD
        assert metrics["psi_after"]["psi"] < DRIFT_THRESHOLD
        assert metrics["psi_after"]["version"] == pointer.version
        assert metrics["alert"]["alertname"] == "KfloopFeatureDrift"
        # Exactly one retraining run, and it finished.
        decisions = [
            json.loads(line)
            for line in (home / "loop" / "trigger" / "decisions.jsonl").read_text().splitlines()
            if line.strip()
        ]
        assert [d["decision"] for d in decisions].count("started") == 1
        assert metrics["retraining_run"]["decision"] == "finished"
        # Every drifted request that was answered is in the request logs of v1.
        v1 = summary["v1_uri"].rstrip("/").rsplit("/", 1)[1]
        ids = set(_column(store, f"s3://{settings.logs_bucket}/churn/{v1}/", "request_id"))
        truth = _column(store, summary["artifacts"]["ground_truth"], "request_id")
        assert truth and set(truth) <= ids
        report = Path(summary["report"])
        page = report.read_text()
        assert "<svg" in page and "KfloopFeatureDrift" in page
        # Nothing the demo started is left running except the stack (--keep).
        pids = _pids(home)
        assert {"predictor", "logger", "trigger", "prometheus", "alertmanager"} <= set(pids)
        for name, pid in pids.items():
            if not name.startswith("seaweedfs"):
                assert not pid_alive(pid), f"{name} (pid {pid}) is still running"
    finally:
        stack.down()


def _column(store: ObjectStore, prefix: str, name: str) -> list[str]:
    """Values of column ``name`` in every Parquet object under ``prefix``."""
    values: list[str] = []
    for obj in store.list_objects(prefix):
        if obj.uri.key.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(store.get_bytes(obj.uri)), columns=[name])
            values.extend(table.column(name).to_pylist())
    return values


def _session_processes(sid: int) -> list[str]:
    """Command lines of live processes in session ``sid`` (a terminal's Ctrl-C reaches them)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            found.append(f"{stat.parent.name}: {cmdline}")
    return found


@pytest.mark.slow
def test_interrupted_demo_leaves_nothing_behind(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) during the run stops every process it started; a rerun starts clean."""
    home = tmp_path / "home"
    port = free_s3_port()
    argv = [
        # A shell starts background jobs with SIGINT ignored, and Python keeps an inherited
        # SIG_IGN (no KeyboardInterrupt ever): CI may run the suite that way. A terminal's
        # foreground job has the default disposition, so give the demo that.
        sys.executable,
        "-c",
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.argv[1], sys.argv[1:])",
        KFLOOP,
        "demo",
        "--home",
        str(home),
        "--s3-port",
        str(port),
        "--rows",
        "3000",
        "--max-trials",
        "1",
        "--epochs",
        "1",
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "3. training pipeline" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    rest, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0, "".join(seen) + rest
    pids = _pids(home)
    assert pids, "the demo recorded no process"
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) survived Ctrl-C"
    assert _session_processes(proc.pid) == []
    # The next run starts clean: the stack comes up again on the same folder.
    stack = LocalStack(home=home, s3_port=port)
    try:
        stack.up()
        assert all(s.ready for s in stack.status())
    finally:
        stack.down()
