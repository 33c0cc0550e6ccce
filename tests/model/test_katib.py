"""The Katib Experiment builder, the search-space config and the trial's command line."""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml

from kfloop.core.errors import ConfigError
from kfloop.core.images import PIPELINE_IMAGE
from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from kfloop.model.katib import (
    HYPERBAND_RESOURCE,
    JOB_FAILURE_CONDITION,
    JOB_SUCCESS_CONDITION,
    METRICS_FORMAT,
    PRIMARY_CONTAINER,
    TRIAL_MODULE,
    hyperband_min_parallel,
    katib_experiment,
    trial_parameter_name,
)
from kfloop.model.search_space import (
    HYPERPARAMETER_KINDS,
    NOT_SEARCHABLE,
    Choice,
    FloatRange,
    IntRange,
    SearchSpace,
    decode_value,
    default_search_space,
    encode_value,
    parse_search_space,
)
from kfloop.model.train import Hyperparameters
from kfloop.model.tune_trial import main, metric_lines, parse_trial_args

SPACE = {
    "learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True},
    "dropout": {"type": "float", "min": 0, "max": 0.5},
    "hidden_units": {"type": "choice", "values": [[64, 32], [128, 64], [32]]},
    "embedding_dim": {"type": "int", "min": 4, "max": 16},
    "batch_size": {"type": "choice", "values": [16, 32]},
}
PLACEHOLDER = re.compile(r"\$\{trialParameters\.([^}]+)\}")


def experiment(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "algorithm": "random",
        "max_trials": 12,
        "parallel_trials": 3,
        "train_uri": "s3://data/splits/train",
        "validation_uri": "s3://data/splits/validation",
        "label": "label",
    }
    kwargs.update(overrides)
    search_space = kwargs.pop("search_space", SPACE)
    return katib_experiment("kfloop-tune", "kubeflow-user", search_space, **kwargs)


def container_of(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = manifest["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert len(containers) == 1
    return typing.cast(dict[str, Any], containers[0])


# -- the search space ------------------------------------------------------------------------


def test_searchable_names_and_kinds_match_train_hyperparameters() -> None:
    fields = Hyperparameters.model_fields
    assert set(HYPERPARAMETER_KINDS) | set(NOT_SEARCHABLE) == set(fields)
    assert set(SearchSpace.model_fields) == set(HYPERPARAMETER_KINDS)
    defaults = Hyperparameters()
    for name, kind in HYPERPARAMETER_KINDS.items():
        value = getattr(defaults, name)
        expected = {"int_list": list, "int": int, "float": float}[kind]
        assert isinstance(value, expected), name


def test_parse_search_space_keeps_the_declared_ranges() -> None:
    space = parse_search_space(SPACE)
    params = space.params()
    assert list(params) == [
        "hidden_units",
        "dropout",
        "learning_rate",
        "embedding_dim",
        "batch_size",
    ]
    lr = params["learning_rate"]
    assert isinstance(lr, FloatRange) and lr.log and (lr.min, lr.max) == (1e-4, 1e-2)
    emb = params["embedding_dim"]
    assert isinstance(emb, IntRange) and (emb.min, emb.max, emb.step) == (4, 16, 1)
    hidden = params["hidden_units"]
    assert isinstance(hidden, Choice) and hidden.values == [[64, 32], [128, 64], [32]]
    assert space.max_value("batch_size") == 32
    assert space.max_value("l2") is None
    # JSON text parses the same; an empty value means the default space.
    import json

    assert parse_search_space(json.dumps(SPACE)) == space
    assert parse_search_space({}) == default_search_space()
    assert parse_search_space(None) == default_search_space()


def test_float_choices_are_normalised_to_one_type() -> None:
    space = parse_search_space({"l2": {"type": "choice", "values": [0, 1e-5]}})
    l2 = space.params()["l2"]
    assert isinstance(l2, Choice)
    assert l2.values == [0.0, 1e-5]
    assert all(isinstance(v, float) for v in l2.values)


def test_integral_floats_from_kfp_json_are_integers() -> None:
    # KFP passes dict parameters through JSON (protobuf Struct): 64 arrives as 64.0.
    space = parse_search_space(
        {
            "hidden_units": {"type": "choice", "values": [[64.0, 32.0], [16.0]]},
            "embedding_dim": {"type": "int", "min": 4.0, "max": 16.0, "step": 2.0},
            "batch_size": {"type": "choice", "values": [32.0, 64.0]},
        }
    )
    params = space.params()
    hidden, emb, batch = params["hidden_units"], params["embedding_dim"], params["batch_size"]
    assert isinstance(hidden, Choice) and hidden.values == [[64, 32], [16]]
    assert all(isinstance(v, int) for layer in hidden.values for v in layer)
    assert isinstance(emb, IntRange) and (emb.min, emb.max, emb.step) == (4, 16, 2)
    assert all(isinstance(v, int) for v in (emb.min, emb.max, emb.step))
    assert isinstance(batch, Choice) and batch.values == [32, 64]
    assert all(isinstance(v, int) for v in batch.values)
    with pytest.raises(ConfigError) as info:
        parse_search_space({"embedding_dim": {"type": "int", "min": 4.5, "max": 16}})
    assert info.value.field.startswith("search_space.embedding_dim")


def test_default_search_space_values_are_valid_hyperparameters() -> None:
    space = default_search_space()
    assert set(space.params()) >= {"learning_rate", "dropout", "hidden_units", "embedding_dim"}
    for name, spec in space.params().items():
        values = spec.values if isinstance(spec, Choice) else [spec.min, spec.max]
        for value in values:
            Hyperparameters(**{name: value})


@pytest.mark.parametrize(
    ("space", "field", "words"),
    [
        ({"momentum": {"type": "float", "min": 0, "max": 1}}, "search_space.momentum", "unknown"),
        ({"epochs": {"type": "int", "min": 1, "max": 5}}, "search_space.epochs", "epochs_per"),
        ({"dropout": {"type": "float", "min": 0.4, "max": 0.1}}, "search_space.dropout", "0.4"),
        ({"embedding_dim": {"type": "int", "min": 9, "max": 3}}, "search_space.embedding_dim", "9"),
        (
            {"learning_rate": {"type": "float", "min": 0, "max": 0.1, "log": True}},
            "search_space.learning_rate",
            "log",
        ),
        (
            {"hidden_units": {"type": "int", "min": 8, "max": 64}},
            "search_space.hidden_units",
            "choice",
        ),
        (
            {"batch_size": {"type": "float", "min": 8, "max": 64}},
            "search_space.batch_size",
            "int or choice",
        ),
        (
            {"dropout": {"type": "float", "min": 0.0, "max": 1.5}},
            "search_space.dropout",
            "1.5",
        ),
        (
            {"hidden_units": {"type": "choice", "values": [[64, 0]]}},
            "search_space.hidden_units",
            "[64, 0]",
        ),
        ({"dropout": {"type": "float", "min": 0}}, "search_space.dropout", "max"),
        ({"dropout": {"type": "uniform", "min": 0, "max": 1}}, "search_space.dropout", "type"),
    ],
)
def test_bad_search_spaces_name_the_hyperparameter(
    space: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_search_space(space)
    assert info.value.field.startswith(field), info.value.field
    assert words in str(info.value)


def test_encode_and_decode_choice_values() -> None:
    assert encode_value([64, 32]) == "64,32"
    assert decode_value("hidden_units", "64,32") == [64, 32]
    assert decode_value("batch_size", "32") == 32
    assert decode_value("learning_rate", "1e-05") == 1e-5
    with pytest.raises(ConfigError) as info:
        decode_value("batch_size", "3.5")
    assert info.value.field == "batch_size" and "3.5" in str(info.value)


# -- the Experiment manifest -----------------------------------------------------------------


def test_manifest_structure_and_names() -> None:
    m = experiment(goal=0.3)
    assert m["apiVersion"] == "kubeflow.org/v1beta1"
    assert m["kind"] == "Experiment"
    assert m["metadata"]["name"] == "kfloop-tune"
    assert m["metadata"]["namespace"] == "kubeflow-user"
    spec = m["spec"]
    assert spec["objective"]["type"] == "minimize"
    assert spec["objective"]["objectiveMetricName"] == "val_loss"
    assert spec["objective"]["goal"] == 0.3
    assert "val_loss" not in spec["objective"]["additionalMetricNames"]
    assert {"name": "val_loss", "value": "min"} in spec["objective"]["metricStrategies"]
    assert spec["algorithm"]["algorithmName"] == "random"
    assert spec["maxTrialCount"] == 12
    assert spec["parallelTrialCount"] == 3
    assert spec["maxFailedTrialCount"] == 3
    assert spec["metricsCollectorSpec"]["collector"]["kind"] == "StdOut"
    template = spec["trialTemplate"]
    assert template["primaryContainerName"] == PRIMARY_CONTAINER
    assert template["successCondition"] == JOB_SUCCESS_CONDITION
    assert template["failureCondition"] == JOB_FAILURE_CONDITION
    assert template["trialSpec"]["apiVersion"] == "batch/v1"
    assert template["trialSpec"]["kind"] == "Job"
    container = container_of(m)
    assert container["name"] == PRIMARY_CONTAINER
    assert container["image"] == PIPELINE_IMAGE
    assert container["command"][:3] == ["python", "-m", TRIAL_MODULE]
    # No credential of any kind in the manifest.
    text = yaml.safe_dump(m)
    assert "AWS_SECRET" not in text and "secretKey" not in text


def test_val_auc_objective_is_maximised() -> None:
    m = experiment(objective_metric="val_auc", task="binary_classification")
    objective = m["spec"]["objective"]
    assert objective["type"] == "maximize"
    assert objective["objectiveMetricName"] == "val_auc"
    assert {"name": "val_auc", "value": "max"} in objective["metricStrategies"]
    assert "--objective=val_auc" in container_of(m)["command"]


def test_parameters_map_one_to_one_from_the_search_space() -> None:
    m = experiment()
    space = parse_search_space(SPACE)
    parameters = {p["name"]: p for p in m["spec"]["parameters"]}
    assert list(parameters) == list(space.params())
    for name, spec in space.params().items():
        p = parameters[name]
        fs = p["feasibleSpace"]
        if isinstance(spec, Choice):
            assert p["parameterType"] == "categorical"
            assert set(fs) == {"list"}
            assert [decode_value(name, v) for v in fs["list"]] == spec.values
        elif isinstance(spec, IntRange):
            assert p["parameterType"] == "int"
            assert (int(fs["min"]), int(fs["max"]), int(fs["step"])) == (
                spec.min,
                spec.max,
                spec.step,
            )
            assert fs["distribution"] == "uniform"
        else:
            assert p["parameterType"] == "double"
            assert math.isclose(float(fs["min"]), spec.min)
            assert math.isclose(float(fs["max"]), spec.max)
            assert fs["distribution"] == ("logUniform" if spec.log else "uniform")
        # Katib's feasibleSpace values are strings.
        assert all(isinstance(v, str) for v in fs.get("list", [])), name
        assert all(isinstance(fs[k], str) for k in ("min", "max", "step") if k in fs), name
    assert parameters["hidden_units"]["feasibleSpace"]["list"] == ["64,32", "128,64", "32"]


@pytest.mark.parametrize(
    ("algorithm", "katib_name"),
    [("random", "random"), ("bayesian", "bayesianoptimization"), ("hyperband", "hyperband")],
)
def test_algorithm_names_and_settings(algorithm: str, katib_name: str) -> None:
    m = experiment(algorithm=algorithm, max_trials=12, parallel_trials=9, seed=5)
    algo = m["spec"]["algorithm"]
    assert algo["algorithmName"] == katib_name
    settings = {s["name"]: s["value"] for s in algo.get("algorithmSettings", [])}
    assert all(isinstance(v, str) for v in settings.values())
    names = [p["name"] for p in m["spec"]["parameters"]]
    if algorithm == "hyperband":
        assert settings == {"resource_name": HYPERBAND_RESOURCE, "eta": "3", "r_l": "10"}
        assert names[-1] == HYPERBAND_RESOURCE
        assert names[:-1] == list(parse_search_space(SPACE).params())
        resource = m["spec"]["parameters"][-1]
        assert resource["parameterType"] == "int"
        assert resource["feasibleSpace"]["max"] == "10"
        assert "--epochs=${trialParameters.epochs}" in container_of(m)["command"]
    else:
        assert settings["random_state"] == "5"
        assert names == list(parse_search_space(SPACE).params())
        assert "--epochs=10" in container_of(m)["command"]


def check_like_katib_webhook(m: dict[str, Any]) -> None:
    """The checks of Katib's experiment validating webhook that a manifest alone can fail."""
    spec = m["spec"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", m["metadata"]["name"])
    assert 0 <= spec["maxFailedTrialCount"] <= spec["maxTrialCount"]
    assert 0 < spec["parallelTrialCount"] <= spec["maxTrialCount"]
    objective = spec["objective"]
    assert objective["type"] in ("minimize", "maximize")
    assert objective["objectiveMetricName"] not in objective.get("additionalMetricNames", [])
    for p in spec["parameters"]:
        fs = p["feasibleSpace"]
        assert p["parameterType"] in ("int", "double", "categorical", "discrete")
        assert fs.get("distribution", "uniform") in ("uniform", "logUniform")
        if p["parameterType"] in ("int", "double"):
            assert fs["min"] and fs["max"] and "list" not in fs
            assert float(fs["min"]) <= float(fs["max"])
        else:
            assert fs["list"] and not {"min", "max", "step"} & set(fs)
    template = spec["trialTemplate"]
    assert template["primaryContainerName"]
    assert template["successCondition"] and template["failureCondition"]
    text = yaml.safe_dump(template["trialSpec"])
    parameter_names = {p["name"] for p in spec["parameters"]}
    names, refs = set(), set()
    for tp in template["trialParameters"]:
        assert tp["name"] and tp["reference"] and "{" not in tp["name"] and "}" not in tp["name"]
        assert tp["name"] not in names and tp["reference"] not in refs
        names.add(tp["name"])
        refs.add(tp["reference"])
        assert tp["reference"] in parameter_names
        assert "${trialParameters." + tp["name"] + "}" in text
    assert set(PLACEHOLDER.findall(text)) == names
    assert refs == parameter_names
    job = template["trialSpec"]
    assert "name" not in job.get("metadata", {}) and "namespace" not in job.get("metadata", {})
    pod = job["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]].count(template["primaryContainerName"]) == 1
    # The StdOut collector rewrites the primary container's command: it must be set.
    primary = next(c for c in pod["containers"] if c["name"] == template["primaryContainerName"])
    assert primary["command"]
    filters = spec["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"]
    for f in filters:
        assert re.fullmatch(r".*\(.*\).*\(.*\).*", f)


def validate_job(job: dict[str, Any]) -> None:
    """Validate a batch/v1 Job against the Kubernetes API types.

    The Kubernetes Python client (installed with kfp) deserialises into ``V1Job`` with
    client-side validation: unknown types and missing required fields (a container's name,
    the pod template's containers, ...) raise. No OpenAPI/JSON-schema validator is installed
    (no jsonschema, kubeconform or cluster), so fields the client ignores are checked by hand.
    """
    kubernetes = pytest.importorskip("kubernetes")
    from kubernetes.client import ApiClient, V1Job

    client = ApiClient()
    parsed = client._ApiClient__deserialize(job, "V1Job")  # type: ignore[attr-defined]
    assert isinstance(parsed, V1Job)
    assert parsed.api_version == "batch/v1" and parsed.kind == "Job"
    pod = parsed.spec.template.spec
    assert pod.restart_policy == "Never"
    assert pod.containers[0].name == PRIMARY_CONTAINER
    # Every key we wrote is a field the API knows (round trip through the typed model).
    again = client.sanitize_for_serialization(parsed)
    assert again == job, "the Job template has fields that the Kubernetes API does not know"
    assert kubernetes.__version__


@pytest.mark.parametrize("algorithm", ["random", "bayesian", "hyperband"])
def test_manifest_passes_katib_and_kubernetes_checks(algorithm: str) -> None:
    m = experiment(
        algorithm=algorithm,
        max_trials=12,
        parallel_trials=9,
        s3_secret="kfloop-s3",
        active_deadline_seconds=900,
        resources={"requests": {"cpu": "1", "memory": "2Gi"}},
        exclude=["id"],
        task="binary_classification",
    )
    check_like_katib_webhook(m)
    validate_job(m["spec"]["trialTemplate"]["trialSpec"])


def test_manifest_round_trips_through_yaml() -> None:
    for algorithm in ("random", "bayesian", "hyperband"):
        m = experiment(algorithm=algorithm, max_trials=12, parallel_trials=9, goal=0.25)
        text = yaml.safe_dump(m, sort_keys=False)
        assert yaml.safe_load(text) == m


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"algorithm": "grid"}, "algorithm", "grid"),
        ({"max_trials": 0}, "max_trials", "0"),
        ({"parallel_trials": 20}, "parallel_trials", "20"),
        ({"algorithm": "hyperband", "parallel_trials": 3}, "parallel_trials", ">= 9"),
        (
            {"objective_metric": "val_auc", "task": "regression"},
            "objective_metric",
            "binary_classification",
        ),
        ({"objective_metric": "accuracy"}, "objective_metric", "accuracy"),
        ({"goal": float("nan")}, "goal", "nan"),
        (
            {"search_space": {"momentum": {"type": "float", "min": 0, "max": 1}}},
            "search_space.momentum",
            "momentum",
        ),
        ({"train_uri": ""}, "train_uri", "non-empty"),
        ({"exclude": "id"}, "exclude", "'id'"),
        ({"max_failed_trials": 20}, "max_failed_trials", "20"),
    ],
)
def test_bad_parameters_are_config_errors(
    overrides: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        experiment(**overrides)
    assert info.value.field == field
    assert words in str(info.value)


def test_bad_names_are_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        katib_experiment(
            "Tune_Model", "ns", SPACE, train_uri="s3://a/b", validation_uri="s3://a/c", label="y"
        )
    assert info.value.field == "name" and "Tune_Model" in str(info.value)
    with pytest.raises(ConfigError) as info:
        katib_experiment(
            "tune", "Bad NS", SPACE, train_uri="s3://a/b", validation_uri="s3://a/c", label="y"
        )
    assert info.value.field == "namespace"


def test_hyperband_parallelism_follows_katib_rule() -> None:
    # Katib: s_max = int(log(r_l) / log(eta)); parallelTrialCount >= eta ** s_max.
    assert hyperband_min_parallel(1) == 1
    assert hyperband_min_parallel(2) == 1
    assert hyperband_min_parallel(3) == 3
    assert hyperband_min_parallel(10) == 9
    assert hyperband_min_parallel(27) == 27


# -- the trial's command line ----------------------------------------------------------------


def sample_value(spec: FloatRange | IntRange | Choice) -> str:
    if isinstance(spec, Choice):
        return str(encode_value(spec.values[-1]))
    if isinstance(spec, IntRange):
        return str(spec.max)
    return repr(float(spec.max))


@pytest.mark.parametrize("algorithm", ["random", "hyperband"])
def test_trial_parser_accepts_exactly_what_the_template_passes(algorithm: str) -> None:
    m = experiment(
        algorithm=algorithm,
        max_trials=12,
        parallel_trials=9,
        exclude=["id", "event_time"],
        task="binary_classification",
    )
    space = parse_search_space(SPACE)
    by_trial_name = {trial_parameter_name(n): spec for n, spec in space.params().items()}
    samples = {name: sample_value(spec) for name, spec in by_trial_name.items()}
    samples["epochs"] = "3"
    command = container_of(m)["command"]
    filled = [PLACEHOLDER.sub(lambda mt: samples[mt.group(1)], arg) for arg in command]
    assert not any("${" in arg for arg in filled)
    assert filled[:3] == ["python", "-m", TRIAL_MODULE]

    args = parse_trial_args(filled[3:])

    assert args.train_uri == "s3://data/splits/train"
    assert args.validation_uri == "s3://data/splits/validation"
    assert args.label == "label"
    assert args.task == "binary_classification"
    assert args.exclude == ["id", "event_time"]
    assert args.epochs == (3 if algorithm == "hyperband" else 10)
    assert args.hyperparameters == {
        "hidden_units": [32],
        "dropout": 0.5,
        "learning_rate": 0.01,
        "embedding_dim": 16,
        "batch_size": 32,
    }
    Hyperparameters(**args.hyperparameters)


def test_trial_parser_rejects_unknown_options_and_bad_values() -> None:
    base = ["--train-uri=a", "--validation-uri=b", "--label=y", "--epochs=2"]
    with pytest.raises(ConfigError) as info:
        parse_trial_args([*base, "--momentum=0.9"])
    assert "--momentum=0.9" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_trial_args([*base, "--dropout=1.5"])
    assert info.value.field == "hyperparameters.dropout"
    with pytest.raises(ConfigError) as info:
        parse_trial_args([*base, "--hidden-units=64,x"])
    assert info.value.field == "hidden_units" and "64,x" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_trial_args(["--train-uri=a", "--label=y", "--epochs=2"])
    assert "--validation-uri" in str(info.value)


def test_metric_lines_match_katibs_stdout_filter() -> None:
    history: dict[str, list[float | None]] = {
        "loss": [0.7, 0.6],
        "val_loss": [0.65, 1e-05],
        "val_auc": [0.5, None],
        "val_rmse": [float("nan"), 2.0],
    }
    lines = list(metric_lines(history))
    pattern = re.compile(METRICS_FORMAT)
    parsed = []
    for line in lines:
        match = pattern.fullmatch(line)
        assert match, line
        parsed.append((match.group(1), float(match.group(2))))
    assert parsed == [
        ("loss", 0.7),
        ("val_auc", 0.5),
        ("val_loss", 0.65),
        ("loss", 0.6),
        ("val_loss", 1e-05),
        ("val_rmse", 2.0),
    ]


# -- a real trial ----------------------------------------------------------------------------


def split_table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    colour = rng.choice(["red", "green", "blue"], rows)
    logit = 2.0 * x + (colour == "red") - 0.3
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return pa.table({"id": np.arange(rows, dtype=np.int64), "x": x, "colour": colour, "label": y})


def test_trial_reads_s3_splits_and_prints_katib_metrics(
    tmp_path: Path,
    store: ObjectStore,
    bucket: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kfloop.core.arrowio import write_parquet

    for name, rows, seed in (("train", 120, 1), ("validation", 40, 2)):
        local = tmp_path / name / "data.parquet"
        write_parquet(split_table(rows, seed), local)
        store.put_file(local, f"s3://{bucket}/splits/{name}/data.parquet")
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    m = experiment(
        train_uri=f"s3://{bucket}/splits/train",
        validation_uri=f"s3://{bucket}/splits/validation",
        exclude=["id"],
        search_space={"learning_rate": SPACE["learning_rate"], "batch_size": SPACE["batch_size"]},
        epochs_per_trial=2,
    )
    samples = {"learningRate": "0.005", "batchSize": "16"}
    command = [
        PLACEHOLDER.sub(lambda mt: samples[mt.group(1)], arg) for arg in container_of(m)["command"]
    ]
    model_dir = tmp_path / "kept-model"

    status = main([*command[3:], f"--output-dir={model_dir}"])

    captured = capsys.readouterr()
    assert status == 0, captured.err
    pattern = re.compile(METRICS_FORMAT)
    metrics: dict[str, list[float]] = {}
    for line in captured.out.splitlines():
        match = pattern.fullmatch(line)
        assert match, f"not a Katib metric line: {line!r}"
        metrics.setdefault(match.group(1), []).append(float(match.group(2)))
    assert len(metrics["val_loss"]) == 2  # one per epoch
    assert len(metrics["loss"]) == 2
    assert all(math.isfinite(v) and v > 0 for v in metrics["val_loss"])
    assert 0.0 <= metrics["val_auc"][-1] <= 1.0
    import json

    training = json.loads((model_dir / "training.json").read_text())
    assert training["hyperparameters"]["learning_rate"] == 0.005
    assert training["hyperparameters"]["batch_size"] == 16
    assert training["rows"] == {"train": 120, "validation": 40}


def test_trial_with_a_missing_split_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    status = main(
        [f"--train-uri={missing}", f"--validation-uri={missing}", "--label=y", "--epochs=1"]
    )
    assert status == 2
    assert str(missing) in capsys.readouterr().err
