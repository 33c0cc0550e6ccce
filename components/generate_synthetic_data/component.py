"""KFP component ``generate_synthetic_data``: a seeded synthetic table (the demo data set)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def generate_synthetic_data(
    dataset: Output[Dataset],
    rows: int = 10000,
    seed: int = 0,
    spec: dict = {},  # noqa: B006 (KFP needs a literal default)
    drift: dict = {},  # noqa: B006 (KFP needs a literal default)
) -> int:
    """Generate a seeded synthetic table; the same inputs always give the same table.

    Args:
        dataset: The generated table, one Parquet file. Metadata: rows, columns, sha256,
            seed, positive_rate, duplicate_rows, drifted, column_names.
        rows: Number of rows.
        seed: Random seed (a non-negative integer).
        spec: The table's SynthSpec as a dict (numeric, categorical, boolean, timestamp,
            label, regression, duplicate_rate); empty for the kfloop demo data set (churn).
        drift: A DriftSpec as a dict (mean_shift_stds, category_weights, boolean_p_true,
            label); empty for no drift.

    Returns:
        The number of rows generated.
    """
    from kfloop.data.synth import generate_synthetic_data as generate  # KFP ships only this

    result = generate(dataset.path, rows, seed, spec=dict(spec), drift=dict(drift))
    metadata = result.as_metadata()
    metadata.pop("uri")
    dataset.metadata.update(metadata)
    return result.rows
