"""KFP component ``split_dataset``: one table in, train / validation / test ``Dataset``s out.

Each output artifact's ``.path`` is a FOLDER (a *split artifact*)::

    <artifact.path>/data.parquet                              the split's rows (zstd Parquet)
    <artifact.path>/tfrecord/part-00000-of-00002.tfrecord.gz  tf.Example shards, GZIP
    <artifact.path>/tfrecord/part-00001-of-00002.tfrecord.gz  (only with write_tfrecord)

Downstream components read the table with
``kfloop.data.split.split_artifact_parquet(artifact.path)`` and the shards with
``kfloop.data.split.split_artifact_tfrecords(artifact.path)``; the feature types of the shards
follow ``kfloop.data.tfrecord.example_feature_types`` of the Parquet schema.

Artifact metadata: ``split`` (train/validation/test), ``rows``, ``columns``, ``sha256`` and
``bytes`` of ``data.parquet``, ``tfrecord_shards`` (paths relative to the folder),
``tfrecord_compression``, ``parquet`` (``data.parquet``), ``method``, ``ratio``, ``seed``,
``key_column``, ``stratify_column``, ``time_column``, ``source_rows``.

The logic is :func:`kfloop.data.split.split_to_artifacts`; see its module for the methods
(stable key hash, seeded stratified random, time) and their guarantees.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def split_dataset(
    dataset: Input[Dataset],
    train: Output[Dataset],
    validation: Output[Dataset],
    test: Output[Dataset],
    train_ratio: float = 0.8,
    validation_ratio: float = 0.1,
    test_ratio: float = 0.1,
    method: str = "hash",
    key_column: str = "id",
    stratify_column: str = "",
    time_column: str = "",
    seed: int = 0,
    num_shards: int = 1,
    write_tfrecord: bool = True,
) -> NamedTuple("Outputs", [("train_rows", int), ("validation_rows", int), ("test_rows", int)]):
    """Split a table into train, validation and test sets, as Parquet and tf.Example TFRecords.

    Args:
        dataset: Table to split: a Parquet file or a folder holding data.parquet.
        train: Training split: a folder with data.parquet and tfrecord/part-*.tfrecord.gz.
        validation: Validation split, same folder layout as train.
        test: Test split, same folder layout as train.
        train_ratio: Fraction of rows for train; the three ratios must be > 0 and sum to 1.
        validation_ratio: Fraction of rows for validation.
        test_ratio: Fraction of rows for test.
        method: "hash" (stable split by the key's FarmHash fingerprint: a key never changes
            split when rows are added), "random" (seeded, stratified by stratify_column when
            given) or "time" (oldest rows train, newest test, by time_column).
        key_column: Integer or string key column hashed by method "hash" (no nulls allowed).
        stratify_column: Class column whose proportions method "random" keeps in every
            split; empty for an unstratified random split.
        time_column: Timestamp, date or numeric column ordering rows for method "time".
        seed: Random seed of method "random" (>= 0); "hash" and "time" ignore it.
        num_shards: TFRecord files per split (1 to 10000).
        write_tfrecord: Also write the tf.Example TFRecord shards (GZIP).

    Returns:
        train_rows: Rows in the train split.
        validation_rows: Rows in the validation split.
        test_rows: Rows in the test split.
    """
    from kfloop.data.split import split_to_artifacts  # inside: KFP ships only this function
    from kfloop.data.tfrecord import COMPRESSION

    outputs = {"train": train, "validation": validation, "test": test}
    ratios = {"train": train_ratio, "validation": validation_ratio, "test": test_ratio}
    result = split_to_artifacts(
        dataset.path,
        {name: artifact.path for name, artifact in outputs.items()},
        ratios=(train_ratio, validation_ratio, test_ratio),
        method=method,
        key_column=key_column or None,
        stratify_column=stratify_column or None,
        time_column=time_column or None,
        seed=seed,
        num_shards=num_shards,
        write_tfrecord=write_tfrecord,
    )
    manifest = result.manifest
    for name, artifact in outputs.items():
        artifact.metadata.update(result.splits[name].as_metadata())
        artifact.metadata.update(
            {
                "parquet": "data.parquet",
                "tfrecord_compression": COMPRESSION if write_tfrecord else "",
                "method": result.method,
                "ratio": ratios[name],
                "seed": result.seed,
                "key_column": manifest["key_column"] or "",
                "stratify_column": manifest["stratify_column"] or "",
                "time_column": manifest["time_column"] or "",
                "source_rows": result.source_rows,
            }
        )
    return (result.rows["train"], result.rows["validation"], result.rows["test"])
