"""KFP component ``clean_data``: declarative, validated, counted table cleaning."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def clean_data(
    dataset: Input[Dataset],
    cleaned: Output[Dataset],
    report: Output[Markdown],
    config: dict = {},  # noqa: B006 (KFP needs a literal default)
) -> int:
    """Clean a table with declarative rules and report every rule's effect.

    Rules run in a fixed order: drop_columns, normalize_strings, coerce, deduplicate,
    drop_rows_with_missing, clip_outliers, impute. The whole config is checked against the
    table before any work: an unknown column or a rule that does not fit the column's type
    fails the step with the config path named (e.g. config.impute.incme).

    Args:
        dataset: The table to clean (Parquet).
        cleaned: The cleaned table, one Parquet file. Metadata: rows, columns, sha256, bytes,
            rows_in, rows_dropped, rows_dropped_by_rule and fitted (the imputation values
            computed from the data; pass them back as config.fitted to reuse them).
        report: Markdown tables counting each rule's effect (values coerced, nulled, clipped
            with bounds, imputed with fill values; rows dropped per rule; duplicates).
        config: The cleaning rules, e.g. {"drop_columns": ["id"], "coerce": {"age": {"type":
            "int64", "on_error": "null"}}, "deduplicate": {"subset": ["id"]},
            "drop_rows_with_missing": ["label"], "clip_outliers": {"income": {"method":
            "iqr", "k": 1.5}}, "impute": {"income": {"strategy": "median"}}}. Keys:
            drop_columns, normalize_strings, coerce, deduplicate, drop_rows_with_missing,
            clip_outliers, impute, fitted.

    Returns:
        The number of rows in the cleaned table.
    """
    from kfloop.data.clean import clean_data as clean  # inside: KFP ships only this function

    result = clean(dataset.path, cleaned.path, dict(config))
    metadata = result.metadata()
    metadata.pop("uri")
    cleaned.metadata.update(metadata)
    with open(report.path, "w", encoding="utf-8") as handle:
        handle.write(result.report.to_markdown())
    return result.report.rows_out
