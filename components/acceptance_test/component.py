"""KFP component ``acceptance_test``: the final test of the model as served, on the TEST split.

The held-back TEST split is read here and by no earlier step. When ``onnx_model`` (the
package_onnx folder with model.onnx + metadata.json) is given, the PACKAGED model is tested:
metrics from ONNX Runtime predictions on raw inputs, single-row latency and size of
model.onnx. Without it the Keras model.keras of ``model`` is tested instead (see
:mod:`kfloop.model.acceptance`).

The ``acceptance`` artifact's ``.path`` is a FOLDER::

    acceptance.json   {"passed", "reasons", "metrics", "latency_ms": {"p50", "p95"},
                       "model_bytes", "source", "objectives", ...}
    acceptance.md     the Markdown report (also written to ``report``)

A failed acceptance test does NOT fail the step: the component returns False and
``passed: false`` gates publishing (``kfloop.model.package.decide_release`` reads the folder).

Artifact metadata of ``acceptance``: ``passed``, ``reasons``, ``source``, ``rows``,
``latency_ms_p50``, ``latency_ms_p95``, ``model_bytes``, plus every test metric as
``test_<name>``.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def acceptance_test(
    model: Input[Model],
    test: Input[Dataset],
    acceptance: Output[Artifact],
    report: Output[Markdown],
    onnx_model: Input[Model] = None,
    objectives: dict = {},  # noqa: B006 (KFP needs a literal default)
    max_latency_ms_p95: float = 50.0,
    max_model_bytes: int = 50000000,
    latency_samples: int = 200,
    threshold: float = 0.5,
) -> bool:
    """Run the final acceptance test (quality, latency, size) on the held-back test split.

    Args:
        model: Trained-model folder from train_model (feature spec; the Keras model is tested
            when no onnx_model is given).
        test: Held-back TEST split (split_dataset folder with data.parquet, or a Parquet
            file) holding the label column.
        acceptance: Folder with acceptance.json (passed, reasons, metrics, latency_ms p50/p95,
            model_bytes, objectives) and acceptance.md.
        report: Markdown report: verdict, reasons, test metrics, latency, size, objectives.
        onnx_model: Packaged model folder from package_onnx (model.onnx + metadata.json);
            when given, the ONNX model is what is tested; omitted, the Keras model is.
        objectives: {"min": {metric: value}, "max": {...}} on the test metrics (auc, pr_auc,
            accuracy, precision, recall, f1, log_loss, positive_rate, or rmse, mae, r2) and
            latency_ms_p50. max_regression is not allowed here (evaluate_model does it).
        max_latency_ms_p95: Largest allowed p95 single-row latency in milliseconds.
        max_model_bytes: Largest allowed size of the tested model file in bytes.
        latency_samples: Timed single-row requests (after 20 warm-up requests), 1..100000.
        threshold: Probability at or above which class 1 is predicted (classification).

    Returns:
        True when every objective passed.
    """
    from pathlib import Path

    from kfloop.model.acceptance import acceptance_test as run_test  # KFP ships only this

    result = run_test(
        model.path,
        test.path,
        acceptance.path,
        onnx_dir=onnx_model.path if onnx_model is not None else None,
        objectives=dict(objectives),
        max_latency_ms_p95=max_latency_ms_p95,
        max_model_bytes=max_model_bytes,
        latency_samples=latency_samples,
        threshold=threshold,
    )
    Path(report.path).write_text(result.report_path.read_text(encoding="utf-8"), encoding="utf-8")
    acceptance.metadata.update(
        {
            "passed": result.passed,
            "reasons": list(result.reasons),
            "source": result.source,
            "rows": result.rows,
            "latency_ms_p50": result.latency.p50,
            "latency_ms_p95": result.latency.p95,
            "model_bytes": result.model_bytes,
        }
    )
    acceptance.metadata.update({f"test_{k}": v for k, v in result.metrics.items() if v is not None})
    return result.passed
