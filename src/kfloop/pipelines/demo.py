"""``kfloop demo`` / ``make demo``: the whole loop on one machine.

1. start the local stack: SeaweedFS (S3), all on 127.0.0.1;
2. generate the synthetic customer data set into ``s3://<data>/demo/``;
3. run the training pipeline under kfp.local: v1 is trained, packaged as ONNX, accepted,
   published and made the production version;
4. start the serving side: the logger (following the production version), the predictor
   (v1, payload logging to the logger), the retraining trigger, and Prometheus +
   Alertmanager with kfloop's alert rules (the ``PrometheusRule`` under ``manifests/``);
5. send in-distribution traffic: drift stays low;
6. send drifted traffic, with its ground truth arriving in ``s3://<data>/demo/ground-truth/``;
7. the drift alert fires in Prometheus, Alertmanager calls the trigger, the trigger starts
   the retraining pipeline (kfp.local, pipeline environment) on the drifted window;
8. the challenger (v2) beats the champion (v1) on that window and is deployed: the predictor
   hot-swaps to v2, the logger switches to v2's reference profile;
9. more drifted traffic: drift is back to normal against v2's reference, the alert resolves;
10. a summary (versions, metrics before/after, where every artifact is) and an HTML report;
    everything the demo started is stopped (also on Ctrl-C or an error).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kfloop.core.errors import KfloopError
from kfloop.core.objectstore import ObjectStore
from kfloop.local.loop import LoopServices

DEMO_MODEL = "churn"
DRIFT_ALERT_PSI = 0.25  # KfloopFeatureDrift's threshold in manifests/base/prometheusrule.yaml
# The drift the demo injects: customers get older and more tenured, income shifts, and the
# churn rule changes (tenure and inactivity stop protecting), so v1 gets worse on it.
DRIFT: dict[str, Any] = {
    "mean_shift_stds": {"income": 1.5, "tenure_months": 1.5, "age": 1.0},
    "category_weights": {"plan": [0.1, 0.2, 0.3, 0.4]},
    "label": {
        "intercept": -0.6,
        "numeric_weights": {"tenure_months": 1.2, "income": 0.9, "balance": 0.5},
        "boolean_weights": {"is_active": 1.0},
    },
}


@dataclass
class DemoConfig:
    """Sizes and budgets (the end-to-end test runs smaller ones)."""

    rows: int = 20_000
    max_trials: int = 3
    epochs: int = 5
    in_distribution_rows: int = 2_000
    drifted_rows: int = 5_000
    after_rows: int = 2_000
    rows_per_request: int = 10
    window_rows: int = 1_500
    alert_timeout_s: float = 240.0
    retraining_timeout_s: float = 900.0
    keep: bool = False


@dataclass
class DemoResult:
    ok: bool = False
    v1_uri: str = ""
    v2_uri: str = ""
    production_version: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    report: str = ""
    failure: str = ""
    pids: dict[str, int] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Demo:
    """The demo's steps; :func:`run_demo` drives them and cleans up."""

    def __init__(
        self,
        home: Path | None,
        s3_port: int | None,
        config: DemoConfig,
        say: Callable[[str], None] = print,
    ) -> None:
        from kfloop.local.stack import LocalStack
        from kfloop.pipelines.registry import repo_root

        self.config = config
        self.say = say
        self.stack = LocalStack(home=home, s3_port=s3_port)
        self.root = repo_root()
        self.result = DemoResult()
        self.started = time.monotonic()
        self.started_epoch = time.time()
        self.run_dir = self.stack.home / "demo" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.services: LoopServices
        self.prometheus_url = ""
        self.input_names: list[str] = []

    # -- output ---------------------------------------------------------------------------------

    def step(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.result.steps.append({"at": _now(), "elapsed_s": round(elapsed, 1), "step": text})
        self.say(f"[{elapsed:6.0f}s] {text}")

    def detail(self, text: str) -> None:
        self.say(f"          {text}")

    # -- traffic --------------------------------------------------------------------------------

    def rows(self, n: int, seed: int, drift: dict[str, Any] | None) -> tuple[list[dict], list]:
        """Model-input rows (None for missing) and their labels, from the generator."""
        from kfloop.data.synth import generate_table

        table = generate_table(rows=n, seed=seed, drift=drift)
        labels = table.column("label").to_pylist()
        features = table.select(self.input_names).to_pylist()
        for row in features:
            for key, value in row.items():
                if isinstance(value, float) and math.isnan(value):
                    row[key] = None
        return features, labels

    def send(self, rows: list[dict], prefix: str) -> list[str]:
        """v1 ``:predict`` requests of ``rows_per_request`` rows, 4 at a time; returns row ids.

        A batch request ``<id>`` is logged as rows ``<id>:0``, ``<id>:1``, ...
        """
        import requests

        size = self.config.rows_per_request
        url = f"{self.services.url('predictor')}/v1/models/{DEMO_MODEL}:predict"
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
        failures: list[str] = []

        def post(index: int) -> list[str]:
            rid = f"{prefix}-{index:06d}"
            chunk = chunks[index]
            with requests.post(
                url, json={"instances": chunk}, headers={"x-request-id": rid}, timeout=30
            ) as response:
                if response.status_code != 200:
                    failures.append(f"{rid}: HTTP {response.status_code} {response.text[:200]}")
                    return []
            return [f"{rid}:{i}" for i in range(len(chunk))] if len(chunk) > 1 else [rid]

        with ThreadPoolExecutor(4) as pool:
            ids = [rid for batch in pool.map(post, range(len(chunks))) for rid in batch]
        if failures:
            raise KfloopError(
                f"{len(failures)} of {len(chunks)} requests failed; first: {failures[0]}"
            )
        return ids

    # -- monitoring queries ---------------------------------------------------------------------

    def prom(self, query: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        from kfloop.local.loop import http_json

        data = http_json(f"{self.prometheus_url}/api/v1/query?query={quote(query)}")
        if not data or data.get("status") != "success":
            return []
        return list(data["data"]["result"])

    def max_psi(self) -> tuple[str, float, str]:
        """(feature, PSI, version) of the most drifted feature, from Prometheus."""
        result = self.prom(f'kfloop_feature_psi{{model="{DEMO_MODEL}"}}')
        best = ("", float("nan"), "")
        for item in result:
            value = float(item["value"][1])
            if math.isfinite(value) and not (value <= best[1]):
                best = (item["metric"].get("feature", ""), value, item["metric"].get("version", ""))
        return best

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        from kfloop.local.loop import http_json

        data = http_json(f"{self.prometheus_url}/api/v1/alerts")
        alerts = (data or {}).get("data", {}).get("alerts", [])
        return [
            a
            for a in alerts
            if a.get("labels", {}).get("alertname") == alertname and a.get("state") == "firing"
        ]

    def wait(self, what: str, check: Callable[[], Any], timeout: float, every: float = 2.0) -> Any:
        deadline = time.monotonic() + timeout
        last_note = time.monotonic()
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise KfloopError(f"timed out after {timeout:.0f}s waiting for {what}")
            if time.monotonic() - last_note > 30:
                self.detail(f"... still waiting for {what}")
                last_note = time.monotonic()
            time.sleep(every)

    def trigger_decisions(self) -> list[dict[str, Any]]:
        from kfloop.local.loop import http_json

        data = http_json(f"{self.services.url('trigger')}/runs")
        if isinstance(data, dict):
            data = data.get("decisions", [])
        return list(data or [])


ANSI = re.compile(r"\x1b\[[0-9;]*m")
TASK_EVENT = re.compile(r"(Executing task|Task) '([\w-]+)'(?: finished with status (\w+))?")


def task_events(line: str) -> str | None:
    """A progress line for a kfp.local log line about a task, else None."""
    match = TASK_EVENT.search(ANSI.sub("", line))
    if match is None:
        return None
    if match.group(1) == "Executing task":
        return f"- {match.group(2)}"
    if match.group(3):
        return f"  {match.group(2)}: {match.group(3)}"
    return None


class PipelineLog(io.TextIOBase):
    """Where kfp.local's output goes during a demo run: all of it into a log file, and one
    progress line per task to the demo's output."""

    def __init__(self, path: Path, say: Callable[[str], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a", encoding="utf-8")
        self.say = say
        self.pending = ""
        self.terminal = sys.stdout  # progress goes where output went before the redirect

    def write(self, text: str) -> int:
        self.file.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            event = task_events(line)
            if event and event.startswith("- "):
                with contextlib.redirect_stdout(self.terminal):
                    self.say(event)
        return len(text)

    def flush(self) -> None:
        if not self.file.closed:
            self.file.flush()

    def close(self) -> None:
        self.file.close()
        super().close()


def iter_chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_demo(
    home: Path | None,
    s3_port: int | None,
    keep: bool,
    rows: int = 20_000,
    max_trials: int = 3,
    say: Callable[[str], None] = print,
    config: DemoConfig | None = None,
) -> str:
    """Run the demo; returns the production model URI at the end ("" on failure)."""
    cfg = config or DemoConfig(rows=rows, max_trials=max_trials, keep=keep)
    demo = Demo(home, s3_port, cfg, say)
    with ExitStack() as cleanup:
        try:
            return _run(demo, cleanup)
        except KeyboardInterrupt:
            demo.result.failure = "interrupted (Ctrl-C)"
            say("\ninterrupted: stopping everything the demo started...")
            raise
        except KfloopError as exc:
            demo.result.failure = str(exc)
            say(f"\nthe demo stopped: {exc}")
            return ""
        finally:
            _write_summary(demo)
    return ""


def _write_summary(demo: Demo) -> None:
    demo.run_dir.mkdir(parents=True, exist_ok=True)
    path = demo.run_dir / "summary.json"
    path.write_text(json.dumps(asdict(demo.result), indent=2, default=str), encoding="utf-8")


def _run(demo: Demo, cleanup: ExitStack) -> str:
    import pyarrow as pa

    from kfloop.core.arrowio import write_parquet
    from kfloop.data.synth import generate_synthetic_data
    from kfloop.deploy.registry import read_production
    from kfloop.pipelines.run import run_local

    cfg, result, stack = demo.config, demo.result, demo.stack
    was_running = all(s.ready for s in stack.status())
    demo.step("1. starting the local stack (SeaweedFS S3 on 127.0.0.1)")
    settings = stack.up()
    if not was_running and not cfg.keep:
        cleanup.callback(lambda: demo.detail(f"stopped: {', '.join(stack.down()) or '-'}"))
    for service in stack.status():
        if service.pid:
            result.pids[service.name] = service.pid
    store = ObjectStore(settings)
    models_root = f"s3://{settings.models_bucket}"
    demo.detail(f"S3 at {settings.endpoint_url}; state under {stack.home}")

    services = LoopServices(stack.home, demo.root, settings, DEMO_MODEL)
    demo.services = services
    leftovers = services.stop_all()
    if leftovers:
        demo.detail(f"stopped services left over from an earlier run: {', '.join(leftovers)}")
    cleanup.callback(lambda: demo.detail(f"stopped: {', '.join(services.stop_all()) or '-'}"))

    data_uri = f"s3://{settings.data_bucket}/demo/customers.parquet"
    synth = generate_synthetic_data(data_uri, rows=cfg.rows, seed=0, store=store)
    demo.step(f"2. generated {synth.rows:,} synthetic customer rows -> {data_uri}")
    result.artifacts["training_data"] = data_uri

    # Versions are unique per demo run: the registry never overwrites a version.
    run_tag = demo.run_dir.name.lower()
    v1 = f"v1-{run_tag}"
    demo.step(f"3. training pipeline under kfp.local ({cfg.max_trials} tuning trials) -> {v1}")
    started = time.monotonic()
    training_log = demo.run_dir / "training-pipeline.log"
    demo.detail(f"(kfp.local's output: {training_log})")
    log = PipelineLog(training_log, demo.detail)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            run = run_local(
                "training",
                {
                    "data_uri": data_uri,
                    "model_name": DEMO_MODEL,
                    "version": v1,
                    "max_trials": cfg.max_trials,
                    "epochs_per_trial": cfg.epochs,
                    "deploy_target": "none",
                },
                settings,
                stack.home / "pipeline-root",
            )
    finally:
        log.close()
    result.artifacts["training_pipeline_log"] = str(training_log)
    result.v1_uri = str(run.outputs.get("Output", ""))
    demo.detail(f"finished in {time.monotonic() - started:.0f}s; artifacts: {run.pipeline_root}")
    pointer = read_production(store, models_root, DEMO_MODEL)
    if not result.v1_uri or pointer is None or pointer.version != v1:
        raise KfloopError(
            "the training pipeline did not publish and deploy v1 (not blessed or not "
            f"accepted?); see the release and deploy reports under {run.pipeline_root}"
        )
    v1_meta = json.loads(store.get_bytes(f"{result.v1_uri}metadata.json"))
    demo.input_names = [i["name"] for i in v1_meta["inputs"]]
    first = _latest(stack.home / "pipeline-root", "kfloop-training-*", "evaluate-model")
    result.metrics["v1_training"] = (first or {}).get("metrics", {})
    demo.detail(f"v1 published and in production: {result.v1_uri}")

    demo.step("4. starting the logger, the predictor, the trigger, Prometheus, Alertmanager")
    services.new_tokens()
    logger = services.logger(
        [
            "--window-rows",
            str(cfg.window_rows),
            "--drift-every-rows",
            "100",
            "--flush-seconds",
            "3",
            "--follow-seconds",
            "2",
        ]
    )
    result.pids["logger"] = logger.start()
    predictor = services.predictor(result.v1_uri)
    result.pids["predictor"] = predictor.start()
    trigger_params = {
        "model_name": DEMO_MODEL,
        "ground_truth_uri": f"s3://{settings.data_bucket}/demo/ground-truth/",
        "max_trials": 1,
        "epochs_per_trial": cfg.epochs,
        "deploy_target": "local",
        "serving_url": services.url("predictor"),
    }
    trigger = services.trigger(trigger_params, ["--cooldown-seconds", "3600"])
    result.pids["trigger"] = trigger.start()
    demo.prometheus_url = _start_monitoring(demo, cleanup, services)
    for name, url in (
        ("predictor", services.url("predictor")),
        ("logger", services.url("logger")),
        ("trigger", services.url("trigger")),
        ("prometheus", demo.prometheus_url),
    ):
        demo.detail(f"{name:<11} {url}")
    result.artifacts["service_logs"] = str(services.dir)

    demo.step(f"5. in-distribution traffic: {cfg.in_distribution_rows:,} rows")
    rows, _ = demo.rows(cfg.in_distribution_rows, seed=11, drift=None)
    demo.send(rows, "ok")
    feature, psi, version = demo.wait(
        "the logger's drift gauges in Prometheus",
        lambda: (lambda b: b if math.isfinite(b[1]) else None)(demo.max_psi()),
        60,
    )
    result.metrics["psi_in_distribution"] = {"feature": feature, "psi": psi, "version": version}
    demo.detail(f"highest PSI: {feature} {psi:.3f} against {version}'s reference")

    demo.step(f"6. drifted traffic: {cfg.drifted_rows:,} rows, their ground truth arriving")
    rows, labels = demo.rows(cfg.drifted_rows, seed=12, drift=DRIFT)
    ids = demo.send(rows, "drift")
    truth = pa.table({"request_id": ids, "label": pa.array(labels, pa.int64())})
    truth_uri = f"s3://{settings.data_bucket}/demo/ground-truth/drift-{run_tag}.parquet"
    write_parquet(truth, truth_uri, store)
    result.artifacts["ground_truth"] = truth_uri
    with contextlib.suppress(KfloopError):  # report the value even if it stays low
        demo.wait(
            "the drift to show in Prometheus",
            lambda: demo.max_psi()[1] > DRIFT_ALERT_PSI,
            60,
        )
    feature, psi, version = demo.max_psi()
    result.metrics["psi_drifted"] = {"feature": feature, "psi": psi, "version": version}
    demo.detail(f"highest PSI now: {feature} {psi:.3f} against {version}'s reference")

    demo.step("7. waiting for the drift alert, Alertmanager and the retraining trigger")
    alert = demo.wait(
        "KfloopFeatureDrift to fire", lambda: demo.firing("KfloopFeatureDrift"), cfg.alert_timeout_s
    )
    result.metrics["alert"] = alert[0].get("labels", {})
    demo.detail(f"alert firing since {alert[0].get('activeAt')}: {alert[0].get('labels')}")
    started_run = demo.wait(
        "the trigger to start a retraining run",
        lambda: [d for d in demo.trigger_decisions() if d.get("decision") == "started"],
        cfg.alert_timeout_s,
    )
    demo.detail(f"trigger started a retraining run: {started_run[-1].get('run_id', '')}")
    demo.step("8. retraining pipeline running (kfp.local, pipeline environment)")
    run_log = Path(str(started_run[-1].get("log", "")))
    demo.detail(f"(its output: {run_log})")
    result.artifacts["retraining_pipeline_log"] = str(run_log)
    shown: set[str] = set()

    def retraining_done() -> list[dict[str, Any]]:
        with contextlib.suppress(OSError):
            for line in run_log.read_text(errors="replace").splitlines():
                event = task_events(line)
                if event and event.startswith("- ") and event not in shown:
                    shown.add(event)
                    demo.detail(event)
        return [d for d in demo.trigger_decisions() if d.get("decision") in ("finished", "failed")]

    finished = demo.wait(
        "the retraining run to finish", retraining_done, cfg.retraining_timeout_s, every=2.0
    )
    outcome = finished[-1]
    result.metrics["retraining_run"] = outcome
    if outcome.get("decision") != "finished" or str(outcome.get("exit_code", 0)) not in ("0",):
        raise KfloopError(f"the retraining run failed: {outcome}; logs under {services.dir}")
    pointer = read_production(store, models_root, DEMO_MODEL)
    if pointer is None or pointer.version == v1:
        raise KfloopError(
            "the retraining run finished but did not deploy a new version (the challenger "
            f"did not win?); see its reports under {stack.home / 'pipeline-root'}"
        )
    result.v2_uri = pointer.uri
    result.production_version = pointer.version
    blessing = _latest(stack.home / "pipeline-root", "kfloop-retraining-*", "evaluate-model")
    if blessing:
        result.metrics["v1"] = blessing.get("baseline_metrics") or {}
        result.metrics["v2"] = blessing.get("metrics") or {}
        demo.detail(
            "on the drifted window's validation split: AUC v1 "
            f"{result.metrics['v1'].get('auc', float('nan')):.3f} -> v2 "
            f"{result.metrics['v2'].get('auc', float('nan')):.3f}"
        )
    demo.detail(f"v2 deployed: {pointer.uri} (previous: {pointer.previous})")

    demo.step(f"9. more drifted traffic ({cfg.after_rows:,} rows), now served by v2")
    demo.wait(
        "the logger to follow v2",
        lambda: demo.prom(f'kfloop_logger_model_info{{version="{pointer.version}"}}'),
        60,
    )
    rows, _ = demo.rows(cfg.after_rows, seed=13, drift=DRIFT)
    demo.send(rows, "after")
    feature, psi, version = demo.wait(
        "drift against v2's reference",
        lambda: (lambda b: b if b[2] == pointer.version and math.isfinite(b[1]) else None)(
            demo.max_psi()
        ),
        60,
    )
    result.metrics["psi_after"] = {"feature": feature, "psi": psi, "version": version}
    demo.detail(f"highest PSI: {feature} {psi:.3f} against {version}'s reference")
    demo.wait("the drift alert to resolve", lambda: not demo.firing("KfloopFeatureDrift"), 120)
    demo.detail("the drift alert resolved")

    result.ok = True
    demo.step("10. summary")
    _summary(demo)
    return result.v2_uri


def _latest(root: Path, runs: str, task: str) -> dict[str, Any] | None:
    """blessing.json of ``task`` in the newest run folder matching ``runs``, or None."""
    folders = sorted(root.glob(runs))
    if not folders:
        return None
    path = folders[-1] / task / "blessing" / "blessing.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _epoch(value: Any) -> float | None:
    """Seconds since the epoch from an ISO-8601 string or a number; None if neither."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _summary(demo: Demo) -> None:
    """Print the summary and write the HTML report next to summary.json."""
    from kfloop.pipelines.demo_report import Chart, Marker, bands_from, query_range, render_report

    result = demo.result
    start, end = demo.started_epoch, time.time()
    step = max(2.0, (end - start) / 400)
    url = demo.prometheus_url
    psi = query_range(
        url, f'max by (version) (kfloop_feature_psi{{model="{DEMO_MODEL}"}})', start, end, step
    )
    traffic = query_range(
        url,
        f'sum by (status) (rate(kfloop_predictor_requests_total{{model="{DEMO_MODEL}"}}[20s]))',
        start,
        end,
        step,
    )
    prediction = query_range(
        url, f'max by (version) (kfloop_prediction_psi{{model="{DEMO_MODEL}"}})', start, end, step
    )
    alerts = query_range(
        url, 'ALERTS{alertname="KfloopFeatureDrift",alertstate="firing"}', start, end, step
    )
    bands = bands_from(alerts, "KfloopFeatureDrift firing", step)
    markers: list[Marker] = []
    for decision in demo.trigger_decisions() if hasattr(demo, "services") else []:
        kind = decision.get("decision")
        at = _epoch(decision.get("at") or decision.get("time") or decision.get("timestamp"))
        if kind in ("started", "finished", "failed") and at is not None:
            markers.append(
                Marker(at, f"retraining {kind}", "#2ca02c" if kind != "failed" else "#d62728")
            )
    charts = [
        (Chart("Highest feature PSI, by model version", "PSI", psi, threshold=0.25), bands),
        (Chart("Prediction PSI, by model version", "PSI", prediction), bands),
        (Chart("Requests per second, by outcome", "req/s", traffic), bands),
    ]
    versions = {
        "v1 (champion), drifted window": result.metrics.get("v1", {}),
        "v2 (challenger), drifted window": result.metrics.get("v2", {}),
        "v1 at training time": result.metrics.get("v1_training", {}),
    }
    page = render_report(
        "kfloop demo: the closed loop on one machine",
        charts,
        start,
        end,
        markers,
        versions,
        result.steps,
        result.artifacts,
    )
    report = demo.run_dir / "report.html"
    demo.run_dir.mkdir(parents=True, exist_ok=True)
    report.write_text(page, encoding="utf-8")
    result.report = str(report)
    demo.detail(f"v1: {result.v1_uri}")
    demo.detail(f"v2: {result.v2_uri} (production)")
    for phase in ("psi_in_distribution", "psi_drifted", "psi_after"):
        m = result.metrics.get(phase, {})
        demo.detail(
            f"{phase:<20} {m.get('feature', '')}: {m.get('psi', float('nan')):.3f} "
            f"against {m.get('version', '')}"
        )
    for name in ("auc", "accuracy", "log_loss"):
        a, b = result.metrics.get("v1", {}).get(name), result.metrics.get("v2", {}).get(name)
        if isinstance(a, int | float) and isinstance(b, int | float):
            demo.detail(f"{name:<20} v1 {a:.4f} -> v2 {b:.4f} (same rows: the drifted window)")
    demo.detail(f"report: {report}")
    demo.detail(f"summary: {demo.run_dir / 'summary.json'}")


def _start_monitoring(demo: Demo, cleanup: ExitStack, services: LoopServices) -> str:
    """Prometheus (kfloop's rules, scraping the three services) and Alertmanager (routing
    retrain alerts to the trigger); returns Prometheus's URL. Stopped by ``cleanup``."""
    from kfloop.local.monitoring import LocalMonitoring, RetrainWebhook
    from kfloop.local.process import LOOPBACK, free_port

    monitoring = LocalMonitoring(
        home=demo.stack.home,
        prometheus_port=free_port(),
        alertmanager_port=free_port(),
        targets={
            name: [f"{LOOPBACK}:{services.ports[name]}"]
            for name in ("predictor", "logger", "trigger")
        },
        webhook=RetrainWebhook(services.url("trigger") + "/alerts", services.trigger_token_file),
    )
    leftovers = monitoring.stop()
    if leftovers:
        demo.detail(f"stopped monitoring left over from an earlier run: {', '.join(leftovers)}")
    cleanup.callback(lambda: demo.detail(f"stopped: {', '.join(monitoring.stop()) or '-'}"))
    monitoring.start()
    for service in monitoring.status():
        if service.pid:
            demo.result.pids[service.name] = service.pid
    demo.result.artifacts["prometheus_config"] = str(monitoring.prometheus_yml)
    demo.result.artifacts["alert_rules"] = str(monitoring.rule_file)
    return monitoring.prometheus_url
