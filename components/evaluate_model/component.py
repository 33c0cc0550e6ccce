"""KFP component ``evaluate_model``: metrics on the validation split, objectives, blessing.

The ``blessing`` artifact's ``.path`` is a FOLDER::

    blessing.json     {"blessed", "reasons", "metrics", "baseline_metrics", "objectives"}
    evaluation.json   metrics, slices, confusion matrix, ROC curve, objectives

A blessing is written whether or not the model is blessed; a model that misses its
objectives does NOT fail the step (the component returns False and later steps skip
publishing: ``kfloop.model.package.decide_release`` reads the folder).

Artifact metadata of ``blessing``: ``blessed``, ``reasons``, ``task``, ``label``, ``rows``,
``threshold``, ``has_baseline``, ``baseline_version``. The logic is
:func:`kfloop.model.evaluate.evaluate_model`.
"""

from kfp import dsl
from kfp.dsl import (
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def evaluate_model(
    model: Input[Model],
    validation: Input[Dataset],
    blessing: Output[Artifact],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[Markdown],
    objectives: dict = {},  # noqa: B006 (KFP needs a literal default)
    slice_feature: str = "",
    baseline_model: Input[Model] = None,
    threshold: float = 0.5,
) -> bool:
    """Evaluate a trained model on the validation split and decide its blessing.

    Args:
        model: Trained-model folder from train_model (model.keras, feature_spec.json, ...).
        validation: Validation split (split_dataset folder with data.parquet, or a Parquet
            file) holding the label column named in the model's feature spec.
        blessing: Folder with blessing.json (blessed, reasons, metrics, baseline_metrics,
            objectives) and evaluation.json (metrics, slices, confusion matrix, ROC curve).
        metrics: Scalar metrics of the model (auc, accuracy, ... or rmse, mae, r2), the
            production model's as baseline_<name> when given, and blessed (1/0).
        classification_metrics: ROC curve (<= 200 points) and confusion matrix (classes
            "0", "1") for binary classification; empty for regression.
        report: Markdown report: verdict, reasons, metrics, objectives, slices.
        objectives: {"min": {metric: value}, "max": {...}, "max_regression": {...}};
            max_regression is the allowed worsening against the production model. Metrics:
            auc, pr_auc, accuracy, precision, recall, f1, log_loss, positive_rate
            (classification) or rmse, mae, r2 (regression). Empty blesses any model.
        slice_feature: Column to report metrics per value of (top 10 values + __other__ +
            __missing__; slices under 30 rows are flagged small); empty for none.
        baseline_model: The current production model, scored on the same rows for
            max_regression objectives: a packaged folder (model.onnx + metadata.json, as
            published; predicted with ONNX Runtime), a trained-model folder, or
            resolve_champion's champion output. Omitted, or resolve_champion's "no champion"
            folder (NO_CHAMPION.json): max_regression objectives are reported as skipped.
        threshold: Probability at or above which class 1 is predicted (classification).

    Returns:
        True when the model is blessed (every objective passed).
    """
    import json
    import math
    from pathlib import Path

    from kfloop.model.evaluate import evaluate_model as evaluate  # inside: KFP ships only this
    from kfloop.model.evaluate import evaluation_markdown

    result = evaluate(
        model.path,
        validation.path,
        blessing.path,
        objectives=dict(objectives),
        slice_feature=slice_feature or None,
        baseline_model_dir=baseline_model.path if baseline_model is not None else None,
        threshold=threshold,
    )
    for name, value in result.metrics.items():
        if value is not None and math.isfinite(value):
            metrics.log_metric(name, float(value))
    for name, value in (result.baseline_metrics or {}).items():
        if value is not None and math.isfinite(value):
            metrics.log_metric(f"baseline_{name}", float(value))
    metrics.log_metric("blessed", 1.0 if result.blessed else 0.0)
    Path(metrics.path).write_text(json.dumps(dict(metrics.metadata), indent=2) + "\n")

    if result.roc is not None and result.confusion_matrix is not None:
        classification_metrics.log_roc_curve(result.roc.fpr, result.roc.tpr, result.roc.thresholds)
        classification_metrics.log_confusion_matrix(["0", "1"], result.confusion_matrix)
    Path(classification_metrics.path).write_text(
        json.dumps(
            {
                "roc": result.roc.to_dict() if result.roc is not None else None,
                "confusion_matrix": result.confusion_matrix,
            }
        )
        + "\n"
    )
    Path(report.path).write_text(evaluation_markdown(result), encoding="utf-8")
    blessing.metadata.update(
        {
            "blessed": result.blessed,
            "reasons": list(result.reasons),
            "task": result.task,
            "label": result.label,
            "rows": result.rows,
            "threshold": result.threshold,
            "has_baseline": result.baseline_metrics is not None,
            "baseline_version": (result.baseline or {}).get("version", ""),
        }
    )
    return result.blessed
