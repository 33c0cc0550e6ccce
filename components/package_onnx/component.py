"""KFP component ``package_onnx``: trained-model folder -> one raw-input ONNX file, published.

The ``onnx_model`` artifact's ``.path`` is a FOLDER (see :mod:`kfloop.model.package`)::

    model.onnx      raw features in (float [N,1] numeric, NaN = missing; string [N,1]
                    categorical), output ``prediction`` [N,1]; opset 17 + ai.onnx.ml 3
    metadata.json   input/output signature, feature spec, metrics, data fingerprints, lineage,
                    parity result, opsets, library versions
    MODEL_CARD.md   intended use, task, features, training data, metrics, parity, limitations

The folder is uploaded to ``s3://<KFLOOP_MODELS_BUCKET>/<model_name>/<version>/`` (the layout
a KServe ``storageUri`` points at) only when the blessing says ``blessed`` AND the acceptance
says ``passed`` (and ``publish`` is on); otherwise the model is still converted and checked,
and the model card and the log say why it was not published. Versions are never
overwritten; ``metadata.json`` is uploaded last.

Artifact metadata: ``sha256``, ``bytes``, ``parity_max_abs_diff``, ``parity_rows``,
``parity_tolerance``, ``opset``, ``model_name``, ``version``, ``published_uri``,
``not_published_because``, ``inputs``.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def package_onnx(
    model: Input[Model],
    test: Input[Dataset],
    onnx_model: Output[Model],
    model_card: Output[Markdown],
    blessing: Input[Artifact] = None,
    acceptance: Input[Artifact] = None,
    model_name: str = "model",
    version: str = "",
    metrics: dict = {},  # noqa: B006 (KFP needs a literal default)
    lineage: dict = {},  # noqa: B006 (KFP needs a literal default)
    parity_tolerance: float = 1e-5,
    publish: bool = True,
) -> str:
    """Convert the trained model to one ONNX file taking raw features; check parity; publish.

    Args:
        model: Trained-model folder from train_model (model.keras, core.keras,
            feature_spec.json, training.json).
        test: Test split (split_dataset folder or Parquet file): parity rows and fingerprint.
        onnx_model: Folder with model.onnx, metadata.json and MODEL_CARD.md.
        model_card: The model card (Markdown) for the KFP UI.
        blessing: Evaluation's blessing, JSON {"blessed": bool, "reasons": [...]} (a file, or
            a folder holding blessing.json). Missing means not blessed: no publishing.
        acceptance: Acceptance test result, JSON {"passed": bool, ...} (a file, or a folder
            holding acceptance.json). Missing means not accepted: no publishing.
        model_name: Model name in the models bucket (lowercase letters, digits, . _ -).
        version: Version folder; empty uses the UTC time (YYYYMMDD-HHMMSS). An existing
            version is never overwritten: the step fails instead.
        metrics: Evaluation/acceptance metrics to record in metadata.json and the card.
        lineage: Pipeline run id, source data URI, parent model, ... to record.
        parity_tolerance: Largest allowed |ONNX Runtime - Keras| prediction difference on the
            test rows and probe rows; above it the step fails and nothing is written.
        publish: Set false to package without publishing.

    Returns:
        The published URI (s3://<models-bucket>/<model_name>/<version>/), or "" when the model
        was not published.
    """
    import dataclasses
    import logging
    import shutil
    from pathlib import Path

    from kfloop.core.objectstore import ObjectStore
    from kfloop.core.settings import Settings
    from kfloop.model.package import (  # inside: KFP ships only this function
        CARD_FILE,
        check_release_names,
        decide_release,
        default_version,
        publish_model,
        version_uri,
    )
    from kfloop.model.package import package_onnx as package_op

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("package_onnx")
    version = version or default_version()
    check_release_names(model_name, version)
    decision = decide_release(
        blessing.path if blessing is not None else None,
        acceptance.path if acceptance is not None else None,
        publish=publish,
    )
    settings = None
    root = ""
    if decision.publish:
        settings = Settings.from_env()
        root = f"s3://{settings.models_bucket}"
        decision = dataclasses.replace(decision, target_uri=version_uri(root, model_name, version))
    else:
        log.warning(
            "model %s %s will not be published: %s",
            model_name,
            version,
            "; ".join(decision.reasons),
        )
    recorded_lineage = {"model_artifact": model.uri, "test_artifact": test.uri}
    recorded_lineage.update(dict(lineage))
    result = package_op(
        model.path,
        test.path,
        onnx_model.path,
        metrics=dict(metrics),
        lineage=recorded_lineage,
        parity_tolerance=parity_tolerance,
        model_name=model_name,
        version=version,
        release=decision,
    )
    uri = ""
    if decision.publish and settings is not None:
        uri = publish_model(
            onnx_model.path,
            root,
            model_name,
            version,
            ObjectStore(settings),
            blessed=decision.blessed,
            accepted=decision.accepted,
        )
    shutil.copyfile(Path(onnx_model.path) / CARD_FILE, model_card.path)
    onnx_model.metadata.update(
        {
            "framework": "onnx",
            "sha256": result.onnx_sha256,
            "bytes": result.onnx_bytes,
            "parity_max_abs_diff": result.parity.max_abs_diff,
            "parity_rows": result.parity.rows,
            "parity_tolerance": result.parity.tolerance,
            "opset": result.metadata["opset"],
            "inputs": [item["name"] for item in result.metadata["inputs"]],
            "model_name": model_name,
            "version": version,
            "published_uri": uri,
            "not_published_because": list(decision.reasons),
        }
    )
    return uri
