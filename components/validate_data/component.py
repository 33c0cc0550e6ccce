"""KFP component ``validate_data``: TFDV statistics, schema, anomalies and drift of a table."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def validate_data(
    dataset: Input[Dataset],
    statistics: Output[Artifact],
    schema: Output[Artifact],
    anomalies: Output[Artifact],
    report: Output[HTML],
    curated_schema: Input[Artifact] = None,
    previous_statistics: Input[Artifact] = None,
    fail_on_anomalies: bool = True,
    fail_on_drift: bool = False,
    drift_threshold_categorical: float = 0.1,
    drift_threshold_numeric: float = 0.1,
    drift_exclude: list = [],  # noqa: B006 (KFP needs a literal default)
    warning_anomaly_types: list = [],  # noqa: B006 (KFP needs a literal default)
    chunk_rows: int = 262144,
    beam_pipeline_args: list = [],  # noqa: B006 (KFP needs a literal default)
) -> int:
    """Validate a table with TensorFlow Data Validation (TFDV) and detect drift.

    Computes TFDV statistics (in memory, chunk by chunk; on Beam when beam_pipeline_args is
    given), infers a schema or applies a curated one, and lists anomalies. With previous
    statistics it also measures drift (L-infinity for string features, Jensen-Shannon
    divergence for numeric ones). ERROR anomalies fail the step with one line per anomaly
    (feature: anomaly: description); the outputs are still written where the runner keeps
    them. WARNING anomalies and, unless fail_on_drift, drift are reported only.

    Args:
        dataset: The table to validate: one Parquet file or a folder of Parquet files.
        statistics: TFDV DatasetFeatureStatisticsList as a one-record TFRecord (read it
            with tfdv.load_statistics). Metadata: num_examples, num_features, engine.
        schema: The schema validated against (schema.pbtxt, text proto), drift
            comparators included. Metadata: inferred, num_features.
        anomalies: TFDV Anomalies (text proto). Metadata: anomalies, error_anomalies,
            warning_anomalies, anomaly_list, drifted_features, drift.
        report: HTML page: anomalies, drift, per-feature summary and TFDV's Facets view
            (current vs previous statistics in a retraining run).
        curated_schema: Optional curated schema.pbtxt (for example the schema output of
            the previous run); the schema is inferred from the data when omitted.
        previous_statistics: Optional statistics output of the previous run; turns on drift
            detection and the side-by-side report.
        fail_on_anomalies: Fail the step on ERROR schema anomalies.
        fail_on_drift: Rate drift above threshold as ERROR and fail the step on it.
        drift_threshold_categorical: L-infinity distance threshold for string features, in
            (0, 1].
        drift_threshold_numeric: Jensen-Shannon divergence threshold for numeric features,
            in (0, 1].
        drift_exclude: Columns left out of drift detection (ids, keys). Timestamp and
            date columns are always left out.
        warning_anomaly_types: TFDV anomaly types rated WARNING instead of ERROR, such as
            SCHEMA_NEW_COLUMN or ENUM_TYPE_UNEXPECTED_STRING_VALUES.
        chunk_rows: Rows per record batch handed to TFDV (bounds memory).
        beam_pipeline_args: When non-empty, compute the statistics with a Beam pipeline
            run with these arguments, for example ["--runner=DirectRunner"].

    Returns:
        The number of anomalies found (errors and warnings, one per feature and reason).
    """
    import os
    import shutil
    import tempfile

    # inside: KFP ships only this function
    from kfloop.data.validate import (
        ANOMALIES_FILE,
        REPORT_FILE,
        SCHEMA_FILE,
        STATISTICS_FILE,
        ValidationFailed,
        validate_table,
    )

    targets = (
        (STATISTICS_FILE, statistics.path),
        (SCHEMA_FILE, schema.path),
        (ANOMALIES_FILE, anomalies.path),
        (REPORT_FILE, report.path),
    )

    def place(folder: str) -> None:
        for name, path in targets:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shutil.move(os.path.join(folder, name), path)

    work = tempfile.mkdtemp(prefix="validate-data-")
    try:
        try:
            result = validate_table(
                dataset.path,
                work,
                schema_path=curated_schema.path if curated_schema is not None else None,
                previous_statistics_path=(
                    previous_statistics.path if previous_statistics is not None else None
                ),
                fail_on_anomalies=fail_on_anomalies,
                fail_on_drift=fail_on_drift,
                drift_threshold_categorical=drift_threshold_categorical,
                drift_threshold_numeric=drift_threshold_numeric,
                drift_exclude=list(drift_exclude),
                warning_anomaly_types=list(warning_anomaly_types),
                chunk_rows=chunk_rows,
                beam_pipeline_args=list(beam_pipeline_args),
            )
        except ValidationFailed:
            place(work)  # complete outputs: the record of why the step failed
            raise
        place(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    meta = result.as_metadata()
    statistics.metadata.update(
        {
            "num_examples": result.num_examples,
            "num_features": result.num_features,
            "engine": result.engine,
            "format": "tfrecord",
        }
    )
    schema.metadata.update(
        {"inferred": result.schema_inferred, "num_features": result.num_features}
    )
    anomalies.metadata.update(meta)
    report.metadata.update(
        {"anomalies": len(result.anomalies), "drifted_features": list(result.drifted_features)}
    )
    return len(result.anomalies)
