"""The champion of a retraining run: the production model, fetched for champion/challenger.

:func:`resolve_champion` reads the production pointer (:mod:`kfloop.deploy.registry`) of a
model and downloads the version it names (``model.onnx``, ``metadata.json``, ... as
``publish_model`` published it) into a local folder, the baseline ``evaluate_model`` scores on
the same validation rows as the challenger. It also places the champion's training statistics
(``stats.tfrecord``, published next to ``model.onnx`` when the training run passed them to
``publish_model``), the reference ``validate_data`` measures the fresh window's drift against.

kfp 2.13's local runner cannot branch, so both outputs always exist:

* no production version yet: the champion folder holds only :data:`NO_CHAMPION_FILE`
  (``{"champion": false, "reason": ...}``), which ``evaluate_model`` reads as "no baseline"
  (``max_regression`` objectives are skipped, the challenger is judged on its own);
* no published statistics (no champion, or a version published without them): the statistics
  are computed from ``reference_dataset`` (the fresh window itself, in the retraining
  pipeline), so validation still checks the schema and reports zero drift; ``source`` says so.

A pointer that names a version which is not (completely) published is an error, never "no
champion": a broken registry must not silently disable the comparison.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import ObjectStore, S3Uri
from kfloop.deploy.registry import METADATA_FILE, read_production

CHAMPION_FILE = "CHAMPION.json"
"""Written next to the downloaded files: ``{"champion": true, "model", "version", "uri"}``
(the published ``metadata.json`` may not name its version: publish_model chooses it)."""
NO_CHAMPION_FILE = "NO_CHAMPION.json"
"""Marker file: the champion folder stands for "no production model" (read by evaluate)."""
STATISTICS_FILE = "stats.tfrecord"
"""Training statistics in a published version (= kfloop.model.package.STATISTICS_FILE)."""
ONNX_FILE = "model.onnx"

SOURCE_CHAMPION = "champion"
SOURCE_REFERENCE = "reference_dataset"


@dataclass(frozen=True)
class Champion:
    """What :func:`resolve_champion` found and wrote.

    Attributes:
        present: True when a production version exists (and was downloaded).
        model: The model name.
        version: The production version ("" when none).
        uri: Its URI in the models bucket ("" when none).
        statistics_source: ``champion`` (its published training statistics) or
            ``reference_dataset`` (computed from the reference dataset: none were published).
        reason: Why there is no champion, or no champion statistics ("" otherwise).
        files: Files downloaded into the champion folder.
    """

    present: bool
    model: str
    version: str
    uri: str
    statistics_source: str
    reason: str = ""
    files: int = 0

    def as_metadata(self) -> dict[str, Any]:
        """Plain values for KFP artifact metadata."""
        return asdict(self)


def _download(store: ObjectStore, uri: str, folder: Path) -> int:
    """Download a published version into ``folder`` atomically (temporary sibling, rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        got = store.get_dir(S3Uri.parse(uri, "uri"), tmp)
        missing = [n for n in (ONNX_FILE, METADATA_FILE) if not (tmp / n).is_file()]
        if missing:
            raise DataError(
                f"{uri}: the production pointer names this version but it holds no "
                f"{' or '.join(missing)}; it is not a complete published version. Fix the "
                "pointer (kfloop registry rollback/promote) before retraining"
            )
        if folder.exists():
            shutil.rmtree(folder)
        tmp.replace(folder)
        return len(got)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_marker(folder: Path, model: str, reason: str) -> None:
    if folder.is_dir():
        shutil.rmtree(folder)
    elif folder.exists():
        folder.unlink()
    folder.mkdir(parents=True)
    body = {"champion": False, "model": model, "reason": reason}
    (folder / NO_CHAMPION_FILE).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def reference_statistics(dataset_path: str, statistics_path: Path) -> None:
    """TFDV statistics of ``dataset_path`` written to ``statistics_path`` (one-record TFRecord)."""
    from kfloop.data.validate import STATISTICS_FILE as VALIDATE_STATS
    from kfloop.data.validate import validate_table

    with tempfile.TemporaryDirectory(prefix="kfloop-reference-stats-") as tmp:
        validate_table(dataset_path, tmp, fail_on_anomalies=False)
        statistics_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / VALIDATE_STATS, statistics_path)


def resolve_champion(
    store: ObjectStore,
    models_root: str,
    model: str,
    champion_dir: str | os.PathLike[str],
    statistics_path: str | os.PathLike[str],
    *,
    reference_dataset: str | os.PathLike[str] = "",
) -> Champion:
    """Fetch the production model of ``model`` and its training statistics.

    Args:
        store: The object store holding the models bucket.
        models_root: ``s3://<models-bucket>[/<prefix>]``.
        model: Model name (the pointer is ``<models_root>/<model>/production.json``).
        champion_dir: Folder to write the champion into (the published version's files), or
            the :data:`NO_CHAMPION_FILE` marker when nothing is deployed.
        statistics_path: File to write the champion's training statistics to.
        reference_dataset: Parquet file/folder whose statistics stand in when the champion
            has none (see the module docstring); empty: then a missing statistics file is an
            error.

    Returns:
        :class:`Champion`.

    Raises:
        ConfigError: bad model name or models root; no statistics anywhere and no
            ``reference_dataset`` (field ``reference_dataset``).
        DataError: the pointer is unreadable or names an incomplete version.
        ObjectStoreError: the store failed.
    """
    folder = Path(champion_dir)
    stats_out = Path(statistics_path)
    pointer = read_production(store, models_root, model)
    if pointer is None:
        reason = f"{model} has no production version yet (nothing deployed)"
        _write_marker(folder, model, reason)
        present, version, uri, files = False, "", "", 0
    else:
        files = _download(store, pointer.uri, folder)
        present, version, uri = True, pointer.version, pointer.uri
        body = {"champion": True, "model": model, "version": version, "uri": uri}
        (folder / CHAMPION_FILE).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        reason = ""
    published_stats = folder / STATISTICS_FILE
    if present and published_stats.is_file():
        stats_out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(published_stats, stats_out)
        source = SOURCE_CHAMPION
    else:
        why = (
            reason
            if not present
            else f"{model} {version} was published without training statistics"
        )
        if not os.fspath(reference_dataset):
            raise ConfigError(
                "reference_dataset",
                f"{why}; give a reference dataset to compute statistics from",
            )
        reference_statistics(os.fspath(reference_dataset), stats_out)
        source = SOURCE_REFERENCE
        reason = f"{why}: statistics computed from the reference dataset (drift reads zero)"
    return Champion(
        present=present,
        model=model,
        version=version,
        uri=uri,
        statistics_source=source,
        reason=reason,
        files=files,
    )
