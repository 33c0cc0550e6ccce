"""Make kfp 2.13's local runner accept omitted optional input artifacts.

``kfp.local`` builds each task's executor input by looking up every input artifact the
component declares, and raises ``KeyError`` for an optional one the pipeline did not pass
(kubeflow/pipelines#13061, still open in kfp 2.16). The cluster backend passes nothing and
the executor hands the function ``None``. :func:`allow_omitted_optional_inputs` does the
same locally: it drops omitted optional artifacts from the spec kfp.local reads. kfloop's
pipelines depend on this (``validate_data`` without a curated schema, ``evaluate_model``
without a production baseline, ...). A test checks the kfp bug is still there, so the shim
goes once kfp fixes it.
"""

from __future__ import annotations

from typing import Any

from kfp.local import executor_input_utils

_ORIGINAL = executor_input_utils.construct_executor_input
_MARK = "_kfloop_allows_omitted_optional_inputs"


def _construct(
    component_spec: Any, arguments: dict[str, Any], task_root: str, block_input_artifact: bool
) -> Any:
    spec = type(component_spec)()
    spec.CopyFrom(component_spec)
    for name, definition in list(spec.input_definitions.artifacts.items()):
        if definition.is_optional and name not in arguments:
            del spec.input_definitions.artifacts[name]
    return _ORIGINAL(spec, arguments, task_root, block_input_artifact)


setattr(_construct, _MARK, True)


def allow_omitted_optional_inputs() -> None:
    """Install the shim (idempotent)."""
    executor_input_utils.construct_executor_input = _construct


def original_construct_executor_input() -> Any:
    """kfp's own function, for the test that watches for the upstream fix."""
    return _ORIGINAL
