"""KFP component ``publish_model``: the release gate at the end of the training pipeline.

Uploads the ``package_onnx`` folder (model.onnx, metadata.json, MODEL_CARD.md; plus the
training statistics as stats.tfrecord when given) to
``s3://<KFLOOP_MODELS_BUCKET>/<model_name>/<version>/`` only when the evaluation blessing
says ``blessed`` AND the acceptance test says ``passed``. Otherwise it publishes nothing and
says why, in the log and in its ``release`` Markdown artifact: a visible skip, not a failure
(as TFX's Pusher does). Versions are never overwritten; metadata.json is uploaded last.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Model, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def publish_model(
    onnx_model: Input[Model],
    release: Output[Markdown],
    blessing: Input[Artifact] = None,
    acceptance: Input[Artifact] = None,
    model_name: str = "model",
    version: str = "",
    statistics: Input[Artifact] = None,
) -> str:
    """Publish the packaged model to the registry when it is blessed and accepted.

    Args:
        onnx_model: Folder from package_onnx (model.onnx, metadata.json, MODEL_CARD.md).
        release: Markdown record of the decision: published URI, or why nothing was published.
        blessing: Evaluation blessing JSON {"blessed": bool, "reasons": [...]}; missing means
            not blessed.
        acceptance: Acceptance result JSON {"passed": bool, "reasons": [...]}; missing means
            not accepted.
        model_name: Model name in the models bucket (lowercase letters, digits, . _ -).
        version: Version folder; empty uses the version package_onnx recorded, else UTC time.
        statistics: Optional TFDV statistics of the training data (validate_data's statistics
            output), published as stats.tfrecord next to model.onnx: the reference the next
            retraining run validates its fresh data against (resolve_champion).

    Returns:
        The published URI (s3://<models-bucket>/<model_name>/<version>/), or "" when the model
        was not published.
    """
    import json
    import logging
    from pathlib import Path

    from kfloop.core.objectstore import ObjectStore  # inside: KFP ships only this function
    from kfloop.core.settings import Settings
    from kfloop.model.package import (
        METADATA_FILE,
        check_release_names,
        decide_release,
        default_version,
        version_uri,
    )
    from kfloop.model.package import (
        publish_model as publish_op,
    )

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("publish_model")
    recorded = json.loads((Path(onnx_model.path) / METADATA_FILE).read_text(encoding="utf-8"))
    version = version or str(recorded.get("version") or "") or default_version()
    check_release_names(model_name, version)
    decision = decide_release(
        blessing.path if blessing is not None else None,
        acceptance.path if acceptance is not None else None,
    )
    uri = ""
    if decision.publish:
        settings = Settings.from_env()
        root = f"s3://{settings.models_bucket}"
        uri = publish_op(
            onnx_model.path,
            root,
            model_name,
            version,
            ObjectStore(settings),
            blessed=decision.blessed,
            accepted=decision.accepted,
            statistics_path=statistics.path if statistics is not None else None,
        )
        assert uri == version_uri(root, model_name, version)
        log.info("published %s %s to %s", model_name, version, uri)
        lines = [f"# Published `{model_name}` version `{version}`", "", f"URI: `{uri}`"]
    else:
        log.warning("not publishing %s %s: %s", model_name, version, "; ".join(decision.reasons))
        lines = [f"# Not published: `{model_name}` version `{version}`", "", "Reasons:", ""]
        lines += [f"- {reason}" for reason in decision.reasons]
    lines += ["", f"- blessed: {decision.blessed}", f"- accepted: {decision.accepted}"]
    Path(release.path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    release.metadata.update(
        {
            "published_uri": uri,
            "blessed": decision.blessed,
            "accepted": decision.accepted,
            "reasons": list(decision.reasons),
            "version": version,
        }
    )
    return uri
