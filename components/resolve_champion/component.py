"""KFP component ``resolve_champion``: the production model to beat, and its statistics.

Reads ``s3://<KFLOOP_MODELS_BUCKET>/<model_name>/production.json`` (the production pointer,
:mod:`kfloop.deploy.registry`) and downloads the version it names into the ``champion``
Model artifact (a FOLDER: ``model.onnx``, ``metadata.json``, ... as published), which
``evaluate_model`` takes as ``baseline_model``. The champion's training statistics
(``stats.tfrecord`` published next to ``model.onnx``) go to ``statistics`` for
``validate_data``'s ``previous_statistics``.

kfp 2.13's local runner cannot branch, so both outputs always exist: with no production
version the champion folder holds only ``NO_CHAMPION.json`` ("no baseline" for
``evaluate_model``); without published statistics they are computed from ``reference``
(the fresh window: drift then reads zero). The logic is
:func:`kfloop.deploy.champion.resolve_champion`.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from kfloop.core.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def resolve_champion(
    champion: Output[Model],
    statistics: Output[Artifact],
    reference: Input[Dataset] = None,
    model_name: str = "model",
) -> str:
    """Fetch the current production model (the champion) and its training statistics.

    Args:
        champion: Folder with the production version's files (model.onnx, metadata.json,
            reference_profile.json, stats.tfrecord, ...), or only NO_CHAMPION.json when the
            model has no production version. Metadata: present, model, version, uri,
            statistics_source, reason, files.
        statistics: TFDV statistics (one-record TFRecord) of the champion's training data;
            computed from reference when the champion has none. Metadata: source
            ("champion" or "reference_dataset"), version.
        reference: Table whose statistics stand in when the champion has none (the fresh
            data window in the retraining pipeline); required in that case.
        model_name: Model name in the models bucket.

    Returns:
        The champion's version, or "" when the model has no production version.
    """
    import logging

    from kfloop.core.objectstore import ObjectStore  # inside: KFP ships only this function
    from kfloop.core.settings import Settings
    from kfloop.deploy.champion import resolve_champion as resolve

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("resolve_champion")
    settings = Settings.from_env()
    found = resolve(
        ObjectStore(settings),
        f"s3://{settings.models_bucket}",
        model_name,
        champion.path,
        statistics.path,
        reference_dataset=reference.path if reference is not None else "",
    )
    if found.present:
        log.info("champion: %s %s (%s)", model_name, found.version, found.uri)
    else:
        log.warning("no champion: %s", found.reason)
    if found.reason and found.present:
        log.warning("%s", found.reason)
    champion.metadata.update(found.as_metadata())
    statistics.metadata.update(
        {"source": found.statistics_source, "version": found.version, "format": "tfrecord"}
    )
    return found.version
