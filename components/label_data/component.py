"""KFP component ``label_data``: a label column from rules, or ground truth joined to requests."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def label_data(
    labeled: Output[Dataset],
    report: Output[Markdown],
    dataset: Input[Dataset] = None,
    mode: str = "rules",
    config: dict = {},  # noqa: B006 (KFP needs a literal default)
    logs_uri: str = "",
    ground_truth_uri: str = "",
) -> int:
    """Label a table by rules, or label served requests with ground truth (feedback loop).

    A label with fewer than two classes fails the step unless config.allow_single_class is
    true.

    Args:
        labeled: The labeled table, one Parquet file. Metadata: rows, columns, sha256, bytes,
            mode, label_column, labeled, unlabeled, unlabeled_dropped, class_balance (and in
            feedback mode duplicate_requests, orphans).
        report: Markdown tables: labeled/unlabeled counts, class balance, rows per rule or the
            feedback join counts (retries deduplicated, orphan ground truth).
        dataset: Rules mode: the table to label. Ignored in feedback mode.
        mode: "rules" (derive the label from the features) or "feedback" (join request logs
            with ground truth by request_id).
        config: Rules mode: {"label_column": "label", "rules": [{"when": [{"column": "income",
            "op": "<", "value": 20000}], "label": 1}], "default": 0} or {"label_column": "y",
            "threshold": {"column": "score", "op": ">=", "value": 0.5}}; ops <, <=, >, >=, ==,
            !=, in, not_in, is_null, not_null; first matching rule wins; no rules: check the
            existing label column. Feedback mode: {"label_column": "label",
            "keep_prediction": false, "duplicates": "first"}. Both: "unlabeled": "drop" or
            "keep", "allow_single_class": false.
        logs_uri: Feedback mode: folder or s3:// prefix of the payload logger's Parquet files
            (request_id, model_name, model_version, timestamp, features, prediction).
        ground_truth_uri: Feedback mode: Parquet or CSV file (local or s3://) with request_id
            and the label column.

    Returns:
        The number of rows in the labeled table.
    """
    from kfloop.data.label import label_data as label  # inside: KFP ships only this function

    result = label(
        labeled.path,
        mode,
        dict(config),
        # Feedback mode ignores a dataset: kfp.local (2.13) cannot omit optional input artifacts.
        dataset_path=dataset.path if dataset is not None and mode != "feedback" else "",
        logs_uri=logs_uri,
        ground_truth_uri=ground_truth_uri,
    )
    metadata = result.metadata()
    metadata.pop("uri")
    labeled.metadata.update(metadata)
    with open(report.path, "w", encoding="utf-8") as handle:
        handle.write(result.report.to_markdown())
    return result.report.rows_out
