"""kfp.local for component tests: the SubprocessRunner in this (pipeline) environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kfp import local

from kfloop.core.settings import Settings
from kfloop.pipelines.local_compat import allow_omitted_optional_inputs


@pytest.fixture
def kfp_local(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Initialise kfp.local with a pipeline root in tmp_path; S3 settings in the environment.

    Components run as subprocesses of this interpreter and inherit the environment, so
    they reach the session's SeaweedFS exactly as a pod reaches the cluster's store.
    """
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    allow_omitted_optional_inputs()  # kubeflow/pipelines#13061, see kfloop.pipelines.local_compat
    root = tmp_path / "pipeline-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    yield root
