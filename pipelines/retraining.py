"""The retraining pipeline: a fresh data window, a challenger, and the champion to beat.

collect_window (served requests in the drifted window joined with ground truth, and/or new
source rows) -> resolve_champion (the production model and its training statistics) ->
validate (TFDV against the champion's training statistics: drift is REPORTED, never blocking,
since drift is why we retrain) -> clean -> split -> tune (small budget) -> train ->
evaluate (the challenger WITH the champion as baseline on the same validation split:
``max_regression`` objectives; both metrics recorded) -> package (ONNX) -> acceptance ->
publish (with the window's statistics, the next run's reference) -> deploy.

No ``dsl.If`` (kfp 2.13's local runner has none): the challenger is deployed only if it wins
because the gates are artifacts. ``evaluate_model`` writes ``blessed: false`` when the
challenger is worse than the champion; ``publish_model`` then publishes nothing (its
``release`` report says why) and returns ""; ``deploy_model`` skips visibly on an empty URI
or a missing blessing. "And/or" sources are empty URIs ``collect_window`` handles: leave
``logs_uri``/``ground_truth_uri`` or ``data_uri`` empty. With no production model yet,
``resolve_champion`` writes a "no champion" folder (max_regression objectives are skipped)
and statistics of the window itself (drift reads zero).
"""

from kfp import dsl

from components.acceptance_test.component import acceptance_test
from components.clean_data.component import clean_data
from components.collect_window.component import collect_window
from components.deploy_model.component import deploy_model
from components.evaluate_model.component import evaluate_model
from components.package_onnx.component import package_onnx
from components.publish_model.component import publish_model
from components.resolve_champion.component import resolve_champion
from components.split_dataset.component import split_dataset
from components.train_model.component import train_model
from components.tune_hyperparameters.component import tune_hyperparameters
from components.validate_data.component import validate_data

DEFAULT_CLEAN = {
    "deduplicate": True,
    "drop_rows_with_missing": ["label"],
}
# The challenger must reach a floor on its own and must not be worse than the champion.
DEFAULT_OBJECTIVES = {"min": {"auc": 0.6}, "max_regression": {"auc": 0.0}}
DEFAULT_ACCEPTANCE = {"min": {"auc": 0.6}}


@dsl.pipeline(
    name="kfloop-retraining",
    description="Retrain on a fresh window (logged requests + ground truth and/or source "
    "rows), validate against the champion's statistics, evaluate the challenger against the "
    "production model, and deploy it only if it wins.",
)
def retraining_pipeline(
    model_name: str = "churn",
    drifted_version: str = "",
    window_start: str = "",
    window_end: str = "",
    logs_uri: str = "",
    ground_truth_uri: str = "",
    data_uri: str = "",
    label: str = "label",
    version: str = "",
    key_column: str = "id",
    clean_config: dict = DEFAULT_CLEAN,
    train_ratio: float = 0.6,
    validation_ratio: float = 0.2,
    test_ratio: float = 0.2,
    tune_algorithm: str = "random",
    max_trials: int = 2,
    max_tuning_seconds: int = 120,
    epochs_per_trial: int = 5,
    objectives: dict = DEFAULT_OBJECTIVES,
    acceptance_objectives: dict = DEFAULT_ACCEPTANCE,
    max_latency_ms_p95: float = 50.0,
    slice_feature: str = "",
    fail_on_anomalies: bool = False,
    drift_threshold_categorical: float = 0.1,
    drift_threshold_numeric: float = 0.1,
    deploy_target: str = "local",
    serving_url: str = "",
    seed: int = 0,
) -> str:
    """Retrain ``model_name`` on a fresh window; deploy the challenger only if it wins.

    Args:
        model_name: registry name; the champion is s3://<models>/<model_name>/production.json.
        drifted_version: the served version the drift alert names; with an empty logs_uri,
            s3://<logs>/<model_name>/<drifted_version>/ is read.
        window_start: ISO-8601 start of the drifted window (request timestamps); "" open.
        window_end: ISO-8601 end of the drifted window; "" open.
        logs_uri: the payload logger's Parquet (s3://<logs>/<model>/<version>/); "" for none.
        ground_truth_uri: Parquet/CSV (file, folder or s3:// prefix) of request_id + label.
        data_uri: fresh labeled rows from the source (path, folder or s3://); "" for none.
        label: label column.
        version: the challenger's version; empty means the run's UTC timestamp.
        key_column: unique key for the hash split (request_id of logged rows becomes it).
        clean_config: cleaning rules for clean_data.
        train_ratio: share of rows for training.
        validation_ratio: share of rows for validation (champion vs challenger, tuning).
        test_ratio: held-back share, read only by the acceptance test.
        tune_algorithm: random, hyperband or bayesian.
        max_trials: hyperparameter search budget in trials.
        max_tuning_seconds: hyperparameter search budget in seconds.
        epochs_per_trial: epochs per tuning trial.
        objectives: evaluation objectives; max_regression compares with the champion.
        acceptance_objectives: objectives on the held-back test split.
        max_latency_ms_p95: acceptance bound on single-row latency of the ONNX model.
        slice_feature: categorical feature to slice evaluation metrics by.
        fail_on_anomalies: fail on schema anomalies of the window (drift never fails).
        drift_threshold_categorical: L-infinity threshold reported for string features.
        drift_threshold_numeric: Jensen-Shannon threshold reported for numeric features.
        deploy_target: local, none or kserve (see deploy_model).
        serving_url: running kfloop serve for deploy_target local ("" moves the pointer only).
        seed: seed for splitting, tuning and training.
    """
    window = collect_window(
        logs_uri=logs_uri,
        ground_truth_uri=ground_truth_uri,
        window_start=window_start,
        window_end=window_end,
        data_uri=data_uri,
        label=label,
        key_column=key_column,
        model_name=model_name,
        drifted_version=drifted_version,
    )
    champion = resolve_champion(reference=window.outputs["window"], model_name=model_name)
    validate = validate_data(
        dataset=window.outputs["window"],
        previous_statistics=champion.outputs["statistics"],
        fail_on_anomalies=fail_on_anomalies,
        fail_on_drift=False,
        drift_threshold_categorical=drift_threshold_categorical,
        drift_threshold_numeric=drift_threshold_numeric,
        drift_exclude=[key_column],
    )
    clean = clean_data(dataset=window.outputs["window"], config=clean_config)
    clean.after(validate)
    split = split_dataset(
        dataset=clean.outputs["cleaned"],
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
        baseline_model=champion.outputs["champion"],
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
