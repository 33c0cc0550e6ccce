"""validate_data under kfp.local (SubprocessRunner), with and without the optional inputs.

kfp.local runs a component with input artifacts only inside a pipeline, so every test
builds a tiny pipeline: ``dsl.importer`` for the inputs, then ``validate_data``.

kfp 2.13's local runner cannot omit an optional input artifact: ``construct_executor_input``
looks up every declared input artifact and raises ``KeyError`` (kubeflow/pipelines#13061,
still open in kfp 2.16). The cluster backend passes nothing and the executor hands the
function ``None``. ``kfloop.pipelines.local_compat`` (installed by the ``kfp_local``
fixture and by ``kfloop run``) drops omitted optional artifacts from the spec kfp.local
reads, which is what the backend does; a test records the kfp bug so the shim can go once
kfp handles it.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_data_validation as tfdv
import yaml
from kfp import compiler, dsl
from kfp.dsl import HTML, Artifact, Dataset

from components.validate_data.component import validate_data
from kfloop.data.validate import validate_table
from kfloop.pipelines.local_compat import original_construct_executor_input

ROWS = 300
COLORS = ["red", "green", "blue"]


def make_table(seed: int = 0, shift: float = 0.0, p: list[float] | None = None) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "id": pa.array(np.arange(ROWS, dtype=np.int64)),
            "amount": pa.array(rng.normal(10 + shift, 2, ROWS), mask=rng.random(ROWS) < 0.1),
            "color": pa.array(rng.choice(COLORS, ROWS, p=p).tolist()),
            "flag": pa.array(rng.random(ROWS) < 0.5),
        }
    )


def write(table: pa.Table, path: Path) -> str:
    pq.write_table(table, path)
    return str(path)


class Outputs(NamedTuple):
    statistics: Artifact
    schema: Artifact
    anomalies: Artifact
    report: HTML
    count: int


def test_compiled_spec_marks_the_artifact_inputs_optional(tmp_path: Path) -> None:
    out = tmp_path / "validate_data.yaml"
    compiler.Compiler().compile(validate_data, str(out))
    spec = yaml.safe_load(out.read_text())
    artifacts = spec["components"]["comp-validate-data"]["inputDefinitions"]["artifacts"]
    assert artifacts["curated_schema"]["isOptional"] is True
    assert artifacts["previous_statistics"]["isOptional"] is True
    assert "isOptional" not in artifacts["dataset"]
    params = spec["components"]["comp-validate-data"]["inputDefinitions"]["parameters"]
    assert params["fail_on_anomalies"]["defaultValue"] is True
    assert params["drift_threshold_numeric"]["parameterType"] == "NUMBER_DOUBLE"
    assert params["beam_pipeline_args"]["parameterType"] == "LIST"


def test_kfp_local_still_cannot_omit_optional_input_artifacts(tmp_path: Path) -> None:
    """kubeflow/pipelines#13061: once this fails, kfp is fixed; drop local_compat."""
    spec = validate_data.pipeline_spec.components["comp-validate-data"]
    construct = original_construct_executor_input()
    with pytest.raises(KeyError):
        construct(
            spec,
            {"dataset": dsl.Dataset(name="d", uri=str(tmp_path), metadata={})},
            str(tmp_path / "task"),
            False,
        )


@pytest.mark.slow
def test_optional_inputs_omitted(kfp_local: Path, tmp_path: Path) -> None:
    table = make_table()
    data = write(table, tmp_path / "data.parquet")

    @dsl.pipeline
    def first_run() -> Outputs:
        imported = dsl.importer(artifact_uri=data, artifact_class=Dataset)
        task = validate_data(dataset=imported.output)
        return Outputs(
            statistics=task.outputs["statistics"],
            schema=task.outputs["schema"],
            anomalies=task.outputs["anomalies"],
            report=task.outputs["report"],
            count=task.outputs["Output"],
        )

    outputs = first_run().outputs
    assert outputs["count"] == 0
    stats = tfdv.load_statistics(outputs["statistics"].path)
    assert stats.datasets[0].num_examples == ROWS
    assert outputs["statistics"].metadata["num_examples"] == ROWS
    assert outputs["statistics"].metadata["num_features"] == table.num_columns
    schema = tfdv.load_schema_text(outputs["schema"].path)
    assert [f.name for f in schema.feature] == table.column_names
    assert outputs["schema"].metadata["inferred"] is True
    assert not tfdv.load_anomalies_text(outputs["anomalies"].path).anomaly_info
    assert outputs["anomalies"].metadata["anomalies"] == 0
    page = Path(outputs["report"].path).read_text(encoding="utf-8")
    for name in table.column_names:
        assert f"<td>{name}</td>" in page


@pytest.mark.slow
def test_retraining_run_with_curated_schema_and_previous_statistics(
    kfp_local: Path, tmp_path: Path
) -> None:
    first = validate_table(write(make_table(), tmp_path / "a.parquet"), str(tmp_path / "first"))
    data = write(make_table(seed=4, shift=4.0, p=[0.8, 0.1, 0.1]), tmp_path / "b.parquet")

    @dsl.pipeline
    def retraining_run() -> Outputs:
        imported = dsl.importer(artifact_uri=data, artifact_class=Dataset)
        schema = dsl.importer(artifact_uri=first.schema_path, artifact_class=Artifact)
        previous = dsl.importer(artifact_uri=first.statistics_path, artifact_class=Artifact)
        task = validate_data(
            dataset=imported.output,
            curated_schema=schema.output,
            previous_statistics=previous.output,
            drift_exclude=["id"],
        )
        return Outputs(
            statistics=task.outputs["statistics"],
            schema=task.outputs["schema"],
            anomalies=task.outputs["anomalies"],
            report=task.outputs["report"],
            count=task.outputs["Output"],
        )

    outputs = retraining_run().outputs
    meta = outputs["anomalies"].metadata
    assert outputs["count"] == 2
    assert meta["drifted_features"] == ["amount", "color"]
    assert meta["warning_anomalies"] == 2
    assert meta["error_anomalies"] == 0
    assert meta["drift"]["amount"] > 0.1
    assert meta["drift"]["color"] > 0.1
    assert "id" not in meta["drift"]
    assert outputs["schema"].metadata["inferred"] is False
    schema = tfdv.load_schema_text(outputs["schema"].path)
    assert tfdv.get_feature(schema, "color").drift_comparator.infinity_norm.threshold == 0.1
    page = Path(outputs["report"].path).read_text(encoding="utf-8")
    assert "current vs previous" in page


@pytest.mark.slow
def test_blocking_anomaly_fails_the_task_with_the_list(
    kfp_local: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    first = validate_table(write(make_table(), tmp_path / "a.parquet"), str(tmp_path / "first"))
    schema = tfdv.load_schema_text(first.schema_path)
    domain = tfdv.get_domain(schema, "color")
    domain.ClearField("value")
    domain.value.extend(["red", "green"])
    curated = tmp_path / "curated.pbtxt"
    tfdv.write_schema_text(schema, str(curated))
    data = write(make_table(seed=1), tmp_path / "b.parquet")

    @dsl.pipeline
    def strict_run() -> int:
        imported = dsl.importer(artifact_uri=data, artifact_class=Dataset)
        schema_in = dsl.importer(artifact_uri=str(curated), artifact_class=Artifact)
        task = validate_data(dataset=imported.output, curated_schema=schema_in.output)
        return task.outputs["Output"]

    with pytest.raises(RuntimeError, match="validate-data"):
        strict_run()
    logs = capfd.readouterr()
    text = logs.out + logs.err
    assert "ValidationFailed" in text
    assert "1 blocking anomaly" in text
    assert (
        "color: Unexpected string values: Examples contain values missing from the schema: blue"
        in text
    )
    # The complete outputs are kept where the local runner keeps them: the failure's record.
    (anomalies,) = kfp_local.rglob("validate-data/anomalies")
    assert "color" in tfdv.load_anomalies_text(str(anomalies)).anomaly_info
