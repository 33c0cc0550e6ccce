"""KFP component ``collect_window``: the labeled fresh data window of a retraining run.

Served requests (the payload logger's Parquet under ``logs_uri``) whose ``timestamp`` lies in
``[window_start, window_end]``, joined with ground truth by ``request_id`` (``label_data``'s
feedback mode), and/or labeled source rows from ``data_uri``. Either source may be left
empty (kfp 2.13's local runner cannot branch; an empty URI means "not this source"), not
both. The logic is :func:`kfloop.data.window.collect_window`.
"""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def collect_window(
    window: Output[Dataset],
    report: Output[Markdown],
    logs_uri: str = "",
    ground_truth_uri: str = "",
    window_start: str = "",
    window_end: str = "",
    data_uri: str = "",
    label: str = "label",
    key_column: str = "id",
    model_name: str = "",
    drifted_version: str = "",
) -> int:
    """Build the labeled fresh window from served requests and/or new source rows.

    Args:
        window: The labeled window, one Parquet file: the key column (request_id of logged
            rows, renamed; string), the features and the label. Metadata: rows, columns,
            sha256, bytes, window_start, window_end, log_rows, log_rows_in_window,
            feedback_rows, feedback_duplicates, feedback_unlabeled, data_rows,
            dropped_columns, sources.
        report: Markdown table of what was read, kept and dropped.
        logs_uri: Folder or s3:// prefix of the payload logger's Parquet files
            (s3://<logs>/<model>/<version>/); empty for no served requests, unless
            drifted_version is given (then s3://<KFLOOP_LOGS_BUCKET>/<model_name>/
            <drifted_version>/ is read).
        ground_truth_uri: Parquet/CSV file, folder or s3:// prefix with request_id and the
            label; required with logs_uri.
        window_start: ISO-8601 start (inclusive) of the requests' timestamps; empty: open.
        window_end: ISO-8601 end (inclusive); empty: open.
        data_uri: Labeled source rows (file, folder or s3://) holding the label column;
            empty for none.
        label: The label column.
        key_column: Key column of the output (request_id is renamed to it).
        model_name: Model whose logs to read when logs_uri is empty and drifted_version given.
        drifted_version: The served version the drift alert names; with an empty logs_uri
            its logs are read (see logs_uri). Empty: only logs_uri counts.

    Returns:
        The number of rows in the window.
    """
    from pathlib import Path

    from kfloop.data.window import collect_window as collect  # inside: KFP ships only this

    if not logs_uri and drifted_version and ground_truth_uri:
        from kfloop.core.settings import Settings

        if not model_name:
            from kfloop.core.errors import ConfigError

            raise ConfigError("model_name", "is needed to find the logs of drifted_version")
        logs_uri = f"s3://{Settings.from_env().logs_bucket}/{model_name}/{drifted_version}/"
    result = collect(
        window.path,
        logs_uri=logs_uri,
        ground_truth_uri=ground_truth_uri,
        window_start=window_start,
        window_end=window_end,
        data_uri=data_uri,
        label=label,
        key_column=key_column,
    )
    window.metadata.update(result.metadata())
    Path(report.path).write_text(result.report.to_markdown(), encoding="utf-8")
    return result.report.rows
