"""The training pipeline: raw data in, a blessed, accepted, parity-checked ONNX model out.

ingest -> validate -> clean -> label -> split -> tune -> train -> evaluate -> package (ONNX,
parity) -> acceptance (held-back test split, packaged model) -> publish -> deploy.

Gating is by artifacts, not ``dsl.If`` (kfp 2.13's local runner has none): ``evaluate_model``
writes a blessing, ``acceptance_test`` an acceptance result, and ``publish_model`` uploads to
``s3://<models-bucket>/<model_name>/<version>/`` only when both pass (with the training data's
TFDV statistics, the reference the retraining pipeline validates fresh data against);
otherwise it records why and publishes nothing. ``deploy_model`` then makes the published
version the production version (the pointer ``<model_name>/production.json``; with
``deploy_target="local"`` and a ``serving_url`` it first has the running ``kfloop serve`` load
it and checks it serves it), or skips visibly when nothing was published.
"""

from kfp import dsl

from components.acceptance_test.component import acceptance_test
from components.clean_data.component import clean_data
from components.deploy_model.component import deploy_model
from components.evaluate_model.component import evaluate_model
from components.ingest_data.component import ingest_data
from components.label_data.component import label_data
from components.package_onnx.component import package_onnx
from components.publish_model.component import publish_model
from components.split_dataset.component import split_dataset
from components.train_model.component import train_model
from components.tune_hyperparameters.component import tune_hyperparameters
from components.validate_data.component import validate_data

DEFAULT_CLEAN = {
    "deduplicate": True,
    "drop_rows_with_missing": ["label"],
}
DEFAULT_OBJECTIVES = {"min": {"auc": 0.75}}


@dsl.pipeline(
    name="kfloop-training",
    description="Ingest, validate, clean, label, split, tune, train, evaluate, package as "
    "ONNX, acceptance-test, publish and deploy a tabular model.",
)
def training_pipeline(
    data_uri: str,
    label: str = "label",
    model_name: str = "churn",
    version: str = "",
    key_column: str = "id",
    file_format: str = "auto",
    clean_config: dict = DEFAULT_CLEAN,
    train_ratio: float = 0.7,
    validation_ratio: float = 0.15,
    test_ratio: float = 0.15,
    tune_algorithm: str = "random",
    max_trials: int = 4,
    max_tuning_seconds: int = 300,
    epochs_per_trial: int = 8,
    objectives: dict = DEFAULT_OBJECTIVES,
    acceptance_objectives: dict = DEFAULT_OBJECTIVES,
    max_latency_ms_p95: float = 50.0,
    slice_feature: str = "",
    seed: int = 0,
    deploy_target: str = "none",
    serving_url: str = "",
) -> str:
    """Train and package a model from ``data_uri`` (a path, glob, folder or s3:// URI).

    Args:
        data_uri: source data: local path, glob, folder, or s3://bucket/prefix.
        label: label column.
        model_name: registry name; the model is published to s3://<models>/<model_name>/<version>/.
        version: model version; empty means the pipeline run's timestamp.
        key_column: unique key used for the deterministic hash split.
        file_format: auto, csv, tsv, parquet, jsonl or arrow.
        clean_config: cleaning rules for clean_data.
        train_ratio: share of rows for training.
        validation_ratio: share of rows for validation (evaluation, early stopping, tuning).
        test_ratio: held-back share, read only by the acceptance test.
        tune_algorithm: random, hyperband or bayesian.
        max_trials: hyperparameter search budget in trials.
        max_tuning_seconds: hyperparameter search budget in seconds.
        epochs_per_trial: epochs per tuning trial.
        objectives: evaluation objectives (blessing) on the validation split.
        acceptance_objectives: objectives on the held-back test split.
        max_latency_ms_p95: acceptance bound on single-row latency of the ONNX model.
        slice_feature: categorical feature to slice evaluation metrics by.
        seed: seed for splitting, tuning and training.
        deploy_target: "none" (production pointer only), "local" (also load it into the
            running kfloop serve at serving_url) or "kserve".
        serving_url: base URL of the running kfloop serve (deploy_target "local").

    Returns:
        The deployed version URI, or "" when the model was not published (not blessed or
        not accepted).
    """
    ingest = ingest_data(source_uri=data_uri, file_format=file_format)
    validate = validate_data(dataset=ingest.outputs["dataset"])
    clean = clean_data(dataset=ingest.outputs["dataset"], config=clean_config)
    clean.after(validate)
    labeled = label_data(
        dataset=clean.outputs["cleaned"], mode="rules", config={"label_column": label}
    )
    split = split_dataset(
        dataset=labeled.outputs["labeled"],
        train_ratio=train_ratio,
        validation_ratio=validation_ratio,
        test_ratio=test_ratio,
        method="hash",
        key_column=key_column,
        seed=seed,
    )
    tune = tune_hyperparameters(
        train=split.outputs["train"],
        validation=split.outputs["validation"],
        label=label,
        algorithm=tune_algorithm,
        max_trials=max_trials,
        max_seconds=max_tuning_seconds,
        epochs_per_trial=epochs_per_trial,
        seed=seed,
        exclude=[key_column],
    )
    train = train_model(
        train=split.outputs["train"],
        validation=split.outputs["validation"],
        label=label,
        hyperparameters=tune.outputs["Output"],
        exclude=[key_column],
        seed=seed,
    )
    evaluate = evaluate_model(
        model=train.outputs["model"],
        validation=split.outputs["validation"],
        objectives=objectives,
        slice_feature=slice_feature,
    )
    package = package_onnx(
        model=train.outputs["model"],
        test=split.outputs["test"],
        model_name=model_name,
        version=version,
        publish=False,
    )
    accept = acceptance_test(
        model=train.outputs["model"],
        test=split.outputs["test"],
        onnx_model=package.outputs["onnx_model"],
        objectives=acceptance_objectives,
        max_latency_ms_p95=max_latency_ms_p95,
    )
    publish = publish_model(
        onnx_model=package.outputs["onnx_model"],
        blessing=evaluate.outputs["blessing"],
        acceptance=accept.outputs["acceptance"],
        model_name=model_name,
        version=version,
        statistics=validate.outputs["statistics"],
    )
    deploy = deploy_model(
        model_uri=publish.outputs["Output"],
        blessing=evaluate.outputs["blessing"],
        acceptance=accept.outputs["acceptance"],
        model_name=model_name,
        target=deploy_target,
        serving_url=serving_url,
    )
    return deploy.outputs["Output"]
