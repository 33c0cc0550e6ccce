"""KFP component ``deploy_model``: the last step of the training and retraining pipelines.

Makes the version ``publish_model`` published the model's production version: the production
pointer ``s3://<KFLOOP_MODELS_BUCKET>/<model_name>/production.json`` (previous version kept
for rollback), and, per ``target``, the serving side first: ``local`` tells a running
``kfloop serve`` (``serving_url``) to load the version and checks it serves it; ``kserve``
applies its InferenceService. The pointer is written last: a failed load leaves production
unchanged and fails the step. No published version, not blessed or not accepted: nothing is
deployed and the ``report`` says why (a visible skip, not a failure).
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def deploy_model(
    model_uri: str,
    report: Output[Markdown],
    blessing: Input[Artifact] = None,
    acceptance: Input[Artifact] = None,
    model_name: str = "model",
    target: str = "local",
    serving_url: str = "",
    namespace: str = "",
    canary_percent: int = 0,
) -> str:
    """Deploy the published model version when it is blessed and accepted.

    Args:
        model_uri: The published version's URI (publish_model's output); "" means nothing was
            published, and nothing is deployed.
        report: Markdown record: version, previous version (the rollback target), the checks
            done; or why nothing was deployed.
        blessing: Evaluation blessing JSON {"blessed": bool, ...}; missing means not blessed.
        acceptance: Acceptance result JSON {"passed": bool, ...}; missing means not accepted.
        model_name: Model name in the models bucket (the pointer is <model_name>/production.json).
        target: "local" (a running kfloop serve, see serving_url), "none" (pointer only) or
            "kserve" (InferenceService in namespace).
        serving_url: Base URL of the running kfloop serve for target "local" (admin token from
            $KFLOOP_SERVING_ADMIN_TOKEN); "" moves the pointer only.
        namespace: Kubernetes namespace of the InferenceService (target "kserve").
        canary_percent: Share of traffic for the new version, 1-99 (target "kserve" only); 0
            rolls it out fully.

    Returns:
        The deployed version URI, or "" when nothing was deployed.
    """
    import logging
    from pathlib import Path

    from kfloop.core.objectstore import ObjectStore  # inside: KFP ships only this function
    from kfloop.core.settings import Settings
    from kfloop.deploy.local import check_target, deploy_version, render_report, skipped
    from kfloop.model.package import decide_release

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("deploy_model")
    check_target(target, canary_percent)
    reasons = []
    if not model_uri:
        reasons.append("no published version: publish_model published nothing (model_uri is '')")
    decision = decide_release(
        blessing.path if blessing is not None else None,
        acceptance.path if acceptance is not None else None,
    )
    reasons += list(decision.reasons)
    if reasons:
        deployment = skipped(model_name, target, reasons, model_uri)
    else:
        settings = Settings.from_env()
        deployment = deploy_version(
            ObjectStore(settings),
            f"s3://{settings.models_bucket}",
            model_name,
            model_uri,
            target=target,
            serving_url=serving_url,
            namespace=namespace,
            canary_percent=canary_percent,
            reason=f"deploy_model (target {target})",
        )
        log.info(
            "deployed %s %s (%s); previous: %s",
            model_name,
            deployment.version,
            target,
            deployment.previous_version or "none",
        )
    Path(report.path).write_text(
        render_report(deployment, serving_url=serving_url), encoding="utf-8"
    )
    report.metadata.update(
        {
            "deployed": deployment.deployed,
            "deployed_uri": deployment.uri if deployment.deployed else "",
            "version": deployment.version,
            "previous_version": deployment.previous_version,
            "previous_uri": deployment.previous_uri,
            "target": target,
            "pointer_moved": deployment.pointer_moved,
            "reasons": list(deployment.reasons),
        }
    )
    return deployment.uri if deployment.deployed else ""
