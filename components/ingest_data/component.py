"""KFP component ``ingest_data``: raw files (local, glob, folder or S3) -> one Parquet table."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def ingest_data(
    source_uri: str,
    dataset: Output[Dataset],
    file_format: str = "auto",
    delimiter: str = ",",
    has_header: bool = True,
    column_names: list = [],  # noqa: B006 (KFP needs a literal default)
    quote_char: str = '"',
    encoding: str = "utf-8",
    schema_hints: dict = {},  # noqa: B006 (KFP needs a literal default)
) -> int:
    """Ingest CSV/TSV, Parquet, JSON Lines or Arrow IPC files into one Parquet table (zstd).

    Reads streaming, with bounded memory. Every file must have the same columns and types
    (after schema_hints). Bad input fails the step with an error naming the file, the line
    and the column.

    Args:
        source_uri: A local file, glob (/data/*.csv), folder, s3://bucket/key,
            s3://bucket/prefix (every object under it) or s3://bucket/prefix/*.csv. S3 access
            comes from S3_ENDPOINT and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.
        dataset: The ingested table, one Parquet file. Metadata: rows, columns, sha256,
            sources, source_rows, column_names.
        file_format: auto (by suffix; .gz/.zst/.bz2 compression by suffix too), csv, tsv,
            parquet, jsonl or arrow.
        delimiter: CSV field delimiter (TSV files always use a tab).
        has_header: Whether the first CSV line holds the column names.
        column_names: CSV column names; with a header they replace it, without one they name
            the columns (default f0, f1, ...).
        quote_char: CSV quote character; empty disables quoting.
        encoding: Text encoding of CSV and JSON Lines files (utf-8, latin-1, utf-16, ...).
        schema_hints: Column -> type (int64, float64, string, bool, timestamp); a value that
            does not fit its type fails the step.

    Returns:
        The number of rows ingested.
    """
    from kfloop.data.ingest import ingest_data as ingest  # inside: KFP ships only this function

    result = ingest(
        source_uri,
        dataset.path,
        file_format=file_format,
        delimiter=delimiter,
        has_header=has_header,
        column_names=list(column_names),
        quote_char=quote_char,
        encoding=encoding,
        schema_hints=dict(schema_hints),
    )
    metadata = result.as_metadata()
    metadata.pop("uri")
    dataset.metadata.update(metadata)
    return result.rows
