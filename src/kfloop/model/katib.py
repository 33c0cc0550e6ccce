"""A Katib ``Experiment`` equivalent to :func:`kfloop.model.tune.tune_hyperparameters`.

The local search runs inside one KFP component (keras-tuner). At cluster scale the same
search can run as a Katib ``Experiment`` (``kubeflow.org/v1beta1``) whose trials are
Kubernetes ``Job`` s running ``python -m kfloop.model.tune_trial`` in the pipeline image.
:func:`katib_experiment` is a pure builder: it returns the manifest as a dict (no cluster
access); ``yaml.safe_dump`` it or hand it to the Kubernetes custom-objects API.

How the local search maps onto Katib:

============================  ============================================================
local (keras-tuner)           Katib
============================  ============================================================
``algorithm="random"``        ``algorithmName: random`` (``random_state`` = seed)
``algorithm="bayesian"``      ``algorithmName: bayesianoptimization`` (skopt;
                              ``random_state`` = seed, same number of initial points)
``algorithm="hyperband"``     ``algorithmName: hyperband``; ``eta`` = 3 (keras-tuner's
                              ``factor``), ``r_l`` = epochs per trial (``max_epochs``);
                              the resource is an extra ``epochs`` parameter
``float`` range               ``parameterType: double``, ``feasibleSpace.min/max``,
                              ``distribution: logUniform`` when ``log`` else ``uniform``
``int`` range                 ``parameterType: int``, ``min/max/step``
``choice``                    ``parameterType: categorical``; lists as ``"64,32"``
objective ``val_loss``        ``objective.type: minimize``, best epoch (``metricStrategies``
                              ``min``), as keras-tuner scores a trial by its best epoch
objective ``val_auc``         ``type: maximize``, strategy ``max``
``max_trials``                ``maxTrialCount``
============================  ============================================================

Katib has no wall-time budget per experiment like ``max_seconds``; bound a trial's run time
with ``active_deadline_seconds`` (the Job's ``activeDeadlineSeconds``) instead.

Trials print their metrics as ``name=value`` lines (``val_loss=0.4123``) that Katib's
``StdOut`` metrics collector reads with :data:`METRICS_FORMAT` (Katib's default filter, set
explicitly here). The trial container reads S3 credentials from a Secret (``s3_secret``,
via ``envFrom``); no credential is ever written into the manifest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from kfloop.core.errors import ConfigError
from kfloop.core.images import PIPELINE_IMAGE
from kfloop.model.search_space import (
    Choice,
    FloatRange,
    IntRange,
    SearchSpace,
    encode_value,
    parse_search_space,
)

API_VERSION = "kubeflow.org/v1beta1"
KIND = "Experiment"
TRIAL_MODULE = "kfloop.model.tune_trial"
PRIMARY_CONTAINER = "training"
# Local algorithm name -> Katib algorithmName.
KATIB_ALGORITHMS: dict[str, str] = {
    "random": "random",
    "hyperband": "hyperband",
    "bayesian": "bayesianoptimization",
}
OBJECTIVES: dict[str, str] = {"val_loss": "minimize", "val_auc": "maximize"}
HYPERBAND_ETA = 3
# The resource parameter Katib's Hyperband varies (kfloop's Hyperparameters.epochs).
HYPERBAND_RESOURCE = "epochs"
# Katib's default StdOut filter: group 1 is the metric name, group 2 its value.
METRICS_FORMAT = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
# What Katib's defaulting webhook would set for a batch/v1 Job (set here so that the
# manifest is complete as written).
JOB_SUCCESS_CONDITION = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
JOB_FAILURE_CONDITION = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Trial (and Job) names are the experiment name plus a suffix of up to ~23 characters; keep
# the result within a 63-character DNS label.
MAX_NAME_LENGTH = 40


def trial_parameter_name(name: str) -> str:
    """The ``trialParameters`` name of a hyperparameter: ``learning_rate`` -> ``learningRate``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def cli_flag(name: str) -> str:
    """The ``tune_trial`` option of a hyperparameter: ``learning_rate`` -> ``--learning-rate``."""
    return "--" + name.replace("_", "-")


def placeholder(name: str) -> str:
    """Katib's substitution for a trial parameter: ``${trialParameters.learningRate}``."""
    return "${trialParameters." + trial_parameter_name(name) + "}"


def bayesian_initial_points(max_trials: int) -> int:
    """Random trials before the Bayesian model guides the search (same locally and in Katib)."""
    return max(1, min(10, max_trials // 2))


def hyperband_min_parallel(epochs_per_trial: int, eta: int = HYPERBAND_ETA) -> int:
    """The ``parallelTrialCount`` Katib's Hyperband requires (``eta ** s_max``)."""
    s_max = int(math.log(epochs_per_trial) / math.log(eta)) if epochs_per_trial > 1 else 0
    return int(eta**s_max)


def _number(value: float | int) -> str:
    """A bound as Katib's string: integers without a decimal point, floats by ``repr``."""
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _parameter(name: str, spec: FloatRange | IntRange | Choice) -> dict[str, Any]:
    if isinstance(spec, Choice):
        return {
            "name": name,
            "parameterType": "categorical",
            "feasibleSpace": {"list": [str(encode_value(v)) for v in spec.values]},
        }
    space: dict[str, Any] = {"min": _number(spec.min), "max": _number(spec.max)}
    if isinstance(spec, IntRange):
        space["step"] = str(spec.step)
        ptype = "int"
    else:
        if spec.step is not None:
            space["step"] = _number(float(spec.step))
        ptype = "double"
    space["distribution"] = "logUniform" if spec.log else "uniform"
    return {"name": name, "parameterType": ptype, "feasibleSpace": space}


def _positive_int(field: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(field, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _nonempty(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, f"must be a non-empty string, got {value!r}")
    return value


def katib_experiment(
    name: str,
    namespace: str,
    search_space: SearchSpace | dict[str, Any] | str | None,
    *,
    algorithm: str = "random",
    max_trials: int = 12,
    parallel_trials: int = 3,
    objective_metric: str = "val_loss",
    goal: float | None = None,
    image: str = PIPELINE_IMAGE,
    train_uri: str,
    validation_uri: str,
    label: str,
    task: str | None = None,
    exclude: Sequence[str] = (),
    epochs_per_trial: int = 10,
    seed: int = 0,
    max_failed_trials: int | None = None,
    s3_secret: str | None = None,
    active_deadline_seconds: int | None = None,
    resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``kubeflow.org/v1beta1`` ``Experiment`` that runs the declared search with Katib.

    Args:
        name: Experiment name: lower-case letters, digits and ``-``, starting with a letter,
            at most 40 characters (Katib derives trial and Job names from it).
        namespace: Kubernetes namespace (the Kubeflow profile namespace).
        search_space: The search space (as for ``tune_hyperparameters``; empty -> default).
        algorithm: ``random``, ``hyperband`` or ``bayesian``.
        max_trials: ``maxTrialCount``.
        parallel_trials: ``parallelTrialCount`` (<= ``max_trials``; Hyperband needs at least
            :func:`hyperband_min_parallel` of ``epochs_per_trial``).
        objective_metric: ``val_loss`` (minimised) or ``val_auc`` (maximised, classification).
        goal: Stop the experiment once a trial reaches this objective value.
        image: Container image of the trials (kfloop's pipeline image).
        train_uri: Training split (``s3://`` URI of its folder or Parquet file).
        validation_uri: Validation split.
        label: Label column.
        task: ``binary_classification`` / ``regression``; inferred from the label when None.
        exclude: Columns that are not features (ids, keys), as for ``train_model``.
        epochs_per_trial: Epochs per trial (Hyperband: the maximum, ``r_l``).
        seed: Seed of the trials' training and of the algorithm (``random_state``).
        max_failed_trials: ``maxFailedTrialCount``; default ``min(3, max_trials)``.
        s3_secret: Name of a Secret whose keys (``S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ...)
            become the trial container's environment (``envFrom``).
        active_deadline_seconds: Time limit of each trial Job.
        resources: The trial container's ``resources`` (requests/limits).

    Returns:
        The manifest as a dict (plain str/int/float/list/dict values; ``yaml.safe_dump`` works).

    Raises:
        ConfigError: naming the parameter with a bad value.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > MAX_NAME_LENGTH:
        raise ConfigError(
            "name",
            f"{name!r} is not a valid experiment name: use at most {MAX_NAME_LENGTH} lower-case "
            "letters, digits and '-', starting with a letter and ending with a letter or digit",
        )
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace) or len(namespace) > 63:
        raise ConfigError("namespace", f"{namespace!r} is not a valid Kubernetes namespace")
    space = parse_search_space(search_space)
    if algorithm not in KATIB_ALGORITHMS:
        raise ConfigError(
            "algorithm",
            f"unknown algorithm {algorithm!r}; use one of {', '.join(KATIB_ALGORITHMS)}",
        )
    _positive_int("max_trials", max_trials)
    _positive_int("parallel_trials", parallel_trials)
    if parallel_trials > max_trials:
        raise ConfigError(
            "parallel_trials",
            f"{parallel_trials} is more than max_trials={max_trials}; Katib requires "
            "parallelTrialCount <= maxTrialCount",
        )
    _positive_int("epochs_per_trial", epochs_per_trial)
    _positive_int("seed", seed, minimum=0)
    if objective_metric not in OBJECTIVES:
        raise ConfigError(
            "objective_metric",
            f"unknown objective {objective_metric!r}; use one of {', '.join(OBJECTIVES)}",
        )
    if objective_metric == "val_auc" and task == "regression":
        raise ConfigError("objective_metric", "val_auc needs a binary_classification task")
    if task not in (None, "", "binary_classification", "regression"):
        raise ConfigError("task", f"{task!r} is not binary_classification or regression")
    if goal is not None and (
        isinstance(goal, bool) or not isinstance(goal, int | float) or not math.isfinite(goal)
    ):
        raise ConfigError("goal", f"must be a finite number or None, got {goal!r}")
    if max_failed_trials is None:
        max_failed_trials = min(3, max_trials)
    _positive_int("max_failed_trials", max_failed_trials, minimum=0)
    if max_failed_trials > max_trials:
        raise ConfigError(
            "max_failed_trials", f"{max_failed_trials} is more than max_trials={max_trials}"
        )
    if active_deadline_seconds is not None:
        _positive_int("active_deadline_seconds", active_deadline_seconds)
    _nonempty("image", image)
    _nonempty("train_uri", train_uri)
    _nonempty("validation_uri", validation_uri)
    _nonempty("label", label)
    if isinstance(exclude, str) or any(not c or "," in c for c in exclude):
        raise ConfigError(
            "exclude", f"must be a list of column names without commas, got {exclude!r}"
        )
    if s3_secret is not None and not _NAMESPACE_RE.match(s3_secret):
        raise ConfigError("s3_secret", f"{s3_secret!r} is not a valid Secret name")

    params = space.params()
    parameters = [_parameter(pname, spec) for pname, spec in params.items()]
    settings: list[dict[str, str]] = []
    katib_name = KATIB_ALGORITHMS[algorithm]
    epochs_arg = f"--epochs={epochs_per_trial}"
    trial_names = list(params)
    if algorithm == "hyperband":
        need = hyperband_min_parallel(epochs_per_trial)
        if parallel_trials < need or max_trials < need:
            raise ConfigError(
                "parallel_trials",
                f"Katib's Hyperband with eta={HYPERBAND_ETA} and r_l={epochs_per_trial} "
                f"(epochs_per_trial) needs parallelTrialCount >= {need} (and max_trials >= "
                f"{need}); got parallel_trials={parallel_trials}, max_trials={max_trials}",
            )
        parameters.append(
            {
                "name": HYPERBAND_RESOURCE,
                "parameterType": "int",
                "feasibleSpace": {"min": "1", "max": str(epochs_per_trial), "step": "1"},
            }
        )
        trial_names.append(HYPERBAND_RESOURCE)
        epochs_arg = f"{cli_flag(HYPERBAND_RESOURCE)}={placeholder(HYPERBAND_RESOURCE)}"
        settings = [
            {"name": "resource_name", "value": HYPERBAND_RESOURCE},
            {"name": "eta", "value": str(HYPERBAND_ETA)},
            {"name": "r_l", "value": str(epochs_per_trial)},
        ]
    elif algorithm == "bayesian":
        settings = [
            {"name": "random_state", "value": str(seed)},
            {"name": "n_initial_points", "value": str(bayesian_initial_points(max_trials))},
        ]
    else:
        settings = [{"name": "random_state", "value": str(seed)}]

    command = [
        "python",
        "-m",
        TRIAL_MODULE,
        f"--train-uri={train_uri}",
        f"--validation-uri={validation_uri}",
        f"--label={label}",
        f"--objective={objective_metric}",
        f"--seed={seed}",
        epochs_arg,
    ]
    if task:
        command.append(f"--task={task}")
    if exclude:
        command.append(f"--exclude={','.join(exclude)}")
    command += [f"{cli_flag(p)}={placeholder(p)}" for p in params]

    container: dict[str, Any] = {
        "name": PRIMARY_CONTAINER,
        "image": image,
        "command": command,
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
    }
    if s3_secret:
        container["envFrom"] = [{"secretRef": {"name": s3_secret}}]
    if resources:
        container["resources"] = resources
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "template": {
            # Istio sidecars keep a Job's pod running after the trial ends.
            "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
            "spec": {"restartPolicy": "Never", "containers": [container]},
        },
    }
    if active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = active_deadline_seconds

    direction = OBJECTIVES[objective_metric]
    additional = [m for m in ("val_loss", "loss") if m != objective_metric]
    objective: dict[str, Any] = {
        "type": direction,
        "objectiveMetricName": objective_metric,
        "additionalMetricNames": additional,
        "metricStrategies": [
            {"name": objective_metric, "value": "min" if direction == "minimize" else "max"},
            *({"name": m, "value": "min"} for m in additional),
        ],
    }
    if goal is not None:
        objective["goal"] = float(goal)
    algorithm_spec: dict[str, Any] = {"algorithmName": katib_name}
    if settings:
        algorithm_spec["algorithmSettings"] = settings

    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "kfloop"},
        },
        "spec": {
            "objective": objective,
            "algorithm": algorithm_spec,
            "parallelTrialCount": parallel_trials,
            "maxTrialCount": max_trials,
            "maxFailedTrialCount": max_failed_trials,
            "metricsCollectorSpec": {
                "collector": {"kind": "StdOut"},
                "source": {"filter": {"metricsFormat": [METRICS_FORMAT]}},
            },
            "parameters": parameters,
            "trialTemplate": {
                "primaryContainerName": PRIMARY_CONTAINER,
                "successCondition": JOB_SUCCESS_CONDITION,
                "failureCondition": JOB_FAILURE_CONDITION,
                "trialParameters": [
                    {
                        "name": trial_parameter_name(p),
                        "description": f"kfloop hyperparameter {p}",
                        "reference": p,
                    }
                    for p in trial_names
                ],
                "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": job_spec},
            },
        },
    }
