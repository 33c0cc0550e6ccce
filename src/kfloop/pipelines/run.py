"""Run a pipeline locally under kfp.local, or submit its compiled YAML to a KFP API server.

Local runs use ``kfp.local.SubprocessRunner(use_venv=False)`` in this (pipeline)
environment: every component runs as a subprocess that inherits the S3 settings, exactly as
a pod gets them from the S3 secret on a cluster. kfp 2.13's local runner has no ``dsl.If``
or ``dsl.ParallelFor``; kfloop's pipelines gate by artifacts instead, so they run unchanged.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfloop.core.errors import ConfigError, KfloopError
from kfloop.core.settings import Settings
from kfloop.pipelines.compile import PIPELINES, compiled_path, load_pipeline


@dataclass(frozen=True)
class LocalRun:
    pipeline: str
    seconds: float
    pipeline_root: Path
    outputs: dict[str, Any]


def pipeline_parameters(name: str) -> dict[str, Any]:
    """The pipeline's parameters and their defaults (``inspect.Parameter.empty`` if required)."""
    func = load_pipeline(name)
    signature = inspect.signature(getattr(func, "pipeline_func", func))
    return {key: param.default for key, param in signature.parameters.items()}


def check_arguments(name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    if name not in PIPELINES:
        raise ConfigError(
            "pipeline", f"{name!r} is not a kfloop pipeline; use one of {sorted(PIPELINES)}"
        )
    known = pipeline_parameters(name)
    unknown = sorted(set(arguments) - set(known))
    if unknown:
        raise ConfigError(
            f"{name}.{unknown[0]}",
            f"is not a parameter of the {name} pipeline; its parameters are {sorted(known)}",
        )
    missing = [k for k, v in known.items() if v is inspect.Parameter.empty and k not in arguments]
    if missing:
        raise ConfigError(f"{name}.{missing[0]}", "is required")
    return dict(arguments)


def run_local(
    name: str, arguments: Mapping[str, Any], settings: Settings, pipeline_root: Path
) -> LocalRun:
    """Run pipeline ``name`` under kfp.local with the S3 settings in the environment."""
    from kfp import local

    from kfloop.pipelines.local_compat import allow_omitted_optional_inputs

    args = check_arguments(name, arguments)
    allow_omitted_optional_inputs()
    os.environ.update(settings.to_env())
    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    func = load_pipeline(name)
    started = time.monotonic()
    task = func(**args)
    elapsed = time.monotonic() - started
    outputs = dict(getattr(task, "outputs", {}) or {})
    return LocalRun(pipeline=name, seconds=elapsed, pipeline_root=pipeline_root, outputs=outputs)


def submit(
    name: str,
    arguments: Mapping[str, Any],
    host: str,
    experiment: str = "kfloop",
    run_name: str | None = None,
    namespace: str | None = None,
) -> str:
    """Submit the checked-in compiled YAML to the KFP API at ``host``; returns the run id."""
    import kfp

    args = check_arguments(name, arguments)
    package = compiled_path(name)
    if not package.exists():
        raise KfloopError(f"{package} does not exist; run `make compile`")
    client = kfp.Client(host=host, namespace=namespace)
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments=args,
        run_name=run_name or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        experiment_name=experiment,
    )
    return str(result.run_id)
