"""The ``kfloop`` command.

    kfloop stack up|down|status     the local object store (and, later, monitoring)
    kfloop demo                     what the loop can do so far, on the local stack
    kfloop run training             run a pipeline under kfp.local on the local stack
    kfloop submit training --host   submit the compiled pipeline to a KFP API server
    kfloop serve --model-uri URI    serve a packaged ONNX model (serving environment)
    kfloop logger --reference-profile URI   payload logger + drift metrics (serving env)
    kfloop trigger                  Alertmanager webhook -> retraining run (serving env)

Errors kfloop raises on purpose print one line (``kfloop: error: ...``) and exit 1;
invalid configuration exits 2. Set ``KFLOOP_DEBUG=1`` for tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kfloop import __version__
from kfloop.core.errors import ConfigError, KfloopError

EPILOG = """\
Configuration comes from environment variables with the names KServe and the AWS SDKs
use: S3_ENDPOINT (host:port), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_USE_HTTPS,
plus KFLOOP_DATA_BUCKET, KFLOOP_MODELS_BUCKET, KFLOOP_LOGS_BUCKET, KFLOOP_PIPELINE_BUCKET.
`kfloop stack up` writes them for the local stack to .kfloop/stack.env.
"""


def _cmd_stack_up(args: argparse.Namespace) -> int:
    from kfloop.local.stack import LocalStack

    stack = LocalStack(home=args.home, s3_port=args.s3_port)
    started = time.monotonic()
    settings = stack.up()
    print(f"SeaweedFS S3 ready at {settings.endpoint_url} ({time.monotonic() - started:.1f}s)")
    print(
        f"buckets: {settings.data_bucket}, {settings.models_bucket}, {settings.logs_bucket}, "
        f"{settings.pipeline_bucket}"
    )
    print(f"state and logs: {stack.home}")
    print(f"credentials: {stack.env_file} (mode 0600); `source` it to use the stack from a shell")
    return 0


def _cmd_stack_down(args: argparse.Namespace) -> int:
    from kfloop.local.stack import LocalStack

    stopped = LocalStack(home=args.home).down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _cmd_stack_status(args: argparse.Namespace) -> int:
    from kfloop.local.stack import LocalStack

    services = LocalStack(home=args.home).status()
    for svc in services:
        state = "ready" if svc.ready else ("running, not answering" if svc.running else "stopped")
        pid = f"pid {svc.pid}" if svc.pid else "-"
        print(f"{svc.name:<16} {state:<24} {pid:<10} {svc.endpoint}")
    return 0 if all(s.ready for s in services) else 3


def _cmd_demo(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("tensorflow_data_validation") is None:
        raise KfloopError(
            "the demo runs the training pipeline, which needs the pipeline environment: "
            "use .venv/bin/kfloop (or `make demo`)"
        )
    from kfloop.pipelines.demo import DemoConfig, run_demo

    config = DemoConfig(
        rows=args.rows,
        max_trials=args.max_trials,
        epochs=args.epochs,
        in_distribution_rows=args.traffic_rows,
        drifted_rows=args.drifted_rows,
        after_rows=args.traffic_rows,
        keep=args.keep,
    )
    uri = run_demo(args.home, args.s3_port, args.keep, config=config)
    return 0 if uri else 1


def _parse_params(pairs: Sequence[str] | None) -> dict[str, object]:
    """``--param key=value``: the value is JSON when it parses as JSON, else a string."""
    import json

    params: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("--param", f"{pair!r} is not key=value")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _cmd_run(args: argparse.Namespace) -> int:
    from kfloop.local.stack import LocalStack
    from kfloop.pipelines.run import run_local

    stack = LocalStack(home=args.home)
    settings = stack.up()
    params = _parse_params(args.param)
    print(f"running the {args.pipeline} pipeline under kfp.local (S3 at {settings.endpoint_url})")
    try:
        result = run_local(args.pipeline, params, settings, stack.home / "pipeline-root")
    except RuntimeError as exc:  # kfp.local's "Pipeline ... finished with status FAILURE"
        import re

        message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        raise KfloopError(
            f"{message} The failing task's log is above; artifacts are under "
            f"{stack.home / 'pipeline-root'}"
        ) from None
    print(
        f"{args.pipeline} pipeline finished in {result.seconds:.1f}s; "
        f"artifacts under {result.pipeline_root}"
    )
    for key, value in result.outputs.items():
        print(f"  {key}: {getattr(value, 'uri', value)}")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from kfloop.pipelines.run import submit

    run_id = submit(
        args.pipeline,
        _parse_params(args.param),
        host=args.host,
        experiment=args.experiment,
        namespace=args.namespace,
    )
    print(f"submitted {args.pipeline} to {args.host}: run {run_id}")
    return 0


def _delegate(module: str, function: str, argv: Sequence[str]) -> int:
    """Hand the remaining arguments to a service's own parser (serving environment)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("kserve") is None:
        raise KfloopError(
            f"`kfloop {function.removesuffix('_main')}` runs in the serving environment: "
            "use .venv-serving/bin/kfloop"
        )
    # kserve parses sys.argv when it is imported: give it nothing of ours to misread.
    sys.argv = [sys.argv[0]]
    entry = getattr(importlib.import_module(module), function)
    return int(entry(list(argv)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kfloop",
        description="kfloop: Kubeflow Pipelines components for the whole ML loop, "
        "and the local stack to run them on one machine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kfloop {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    home_help = "stack folder for state, logs and credentials (default: $KFLOOP_HOME or ./.kfloop)"
    port_help = (
        "S3 port of the local object store (default: $KFLOOP_S3_PORT, the last one used, "
        "or 8333); SeaweedFS's other ports follow it: +1..+4 and +10000..+10004"
    )

    stack = sub.add_parser(
        "stack",
        help="start, check or stop the local stack",
        description="The local stack: SeaweedFS as the S3 object store, bound to 127.0.0.1, "
        "with its data under the stack folder.",
    )
    stack_sub = stack.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = stack_sub.add_parser("up", help="start the services (does nothing if already up)")
    up.add_argument("--home", type=Path, help=home_help)
    up.add_argument("--s3-port", type=int, help=port_help)
    up.set_defaults(func=_cmd_stack_up)
    down = stack_sub.add_parser("down", help="stop the services (SIGTERM, then SIGKILL after 10s)")
    down.add_argument("--home", type=Path, help=home_help)
    down.set_defaults(func=_cmd_stack_down)
    status = stack_sub.add_parser("status", help="show each service; exit 3 if one is not ready")
    status.add_argument("--home", type=Path, help=home_help)
    status.set_defaults(func=_cmd_stack_status)

    demo = sub.add_parser(
        "demo",
        help="the whole closed loop on one machine (pipeline environment)",
        description="Starts SeaweedFS, trains and deploys v1 (training pipeline under "
        "kfp.local), starts the predictor, the logger, the trigger, Prometheus and "
        "Alertmanager on 127.0.0.1, sends in-distribution then drifted traffic, lets the drift "
        "alert start the retraining pipeline, and checks that v2 is deployed and drift is "
        "back to normal. Prints a summary and writes an HTML report; stops everything it "
        "started (also on Ctrl-C).",
    )
    demo.add_argument("--home", type=Path, help=home_help)
    demo.add_argument("--s3-port", type=int, help=port_help)
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    demo.add_argument("--rows", type=int, default=20_000, help="synthetic rows (default 20000)")
    demo.add_argument("--max-trials", type=int, default=3, help="tuning trials (default 3)")
    demo.add_argument("--epochs", type=int, default=5, help="epochs per trial (default 5)")
    demo.add_argument(
        "--traffic-rows", type=int, default=2_000, help="rows of in-distribution traffic"
    )
    demo.add_argument("--drifted-rows", type=int, default=5_000, help="rows of drifted traffic")
    demo.set_defaults(func=_cmd_demo)

    param_help = "pipeline parameter key=value (JSON values allowed); repeatable"
    run = sub.add_parser(
        "run",
        help="run a pipeline locally under kfp.local on the local stack",
        description="Starts the local stack if needed and runs the pipeline with kfp.local's "
        "SubprocessRunner in this environment (the pipeline environment, .venv).",
    )
    run.add_argument("pipeline", choices=["training", "retraining"])
    run.add_argument("--param", "-p", action="append", metavar="KEY=VALUE", help=param_help)
    run.add_argument("--home", type=Path, help=home_help)
    run.set_defaults(func=_cmd_run)

    submit = sub.add_parser(
        "submit",
        help="submit a compiled pipeline to a Kubeflow Pipelines API server",
        description="Submits pipelines/compiled/<pipeline>.yaml with kfp.Client.",
    )
    submit.add_argument("pipeline", choices=["training", "retraining"])
    submit.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8888")
    submit.add_argument("--param", "-p", action="append", metavar="KEY=VALUE", help=param_help)
    submit.add_argument("--experiment", default="kfloop", help="experiment name (default kfloop)")
    submit.add_argument("--namespace", help="Kubeflow profile namespace (multi-user clusters)")
    submit.set_defaults(func=_cmd_submit)

    serve = sub.add_parser(
        "serve",
        help="serve a packaged ONNX model with KServe (serving environment)",
        description="kserve.ModelServer with kfloop's ONNX predictor: KServe v1 and Open "
        "Inference Protocol v2 over REST and gRPC. `kfloop serve --help` lists the options.",
        add_help=False,
    )
    serve.add_argument("args", nargs=argparse.REMAINDER)
    serve.set_defaults(func=lambda a: _delegate("kfloop.serving.predictor", "serve_main", a.args))
    return parser


SERVICES = {
    "serve": ("kfloop.serving.predictor", "serve_main"),
    "logger": ("kfloop.serving.logger", "logger_main"),
    "trigger": ("kfloop.serving.trigger", "trigger_main"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in SERVICES:
        # Services own their options (and --help); everything after the name is theirs.
        module, function = SERVICES[arguments[0]]
        try:
            return _delegate(module, function, arguments[1:])
        except KfloopError as exc:
            print(f"kfloop: error: {exc}", file=sys.stderr)
            return 1
    args = parser.parse_args(arguments)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except ConfigError as exc:
        if os.environ.get("KFLOOP_DEBUG"):
            raise
        print(f"kfloop: error: {exc}", file=sys.stderr)
        return 2
    except KfloopError as exc:
        if os.environ.get("KFLOOP_DEBUG"):
            raise
        print(f"kfloop: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
