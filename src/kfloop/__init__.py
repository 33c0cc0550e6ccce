"""kfloop: Kubeflow Pipelines components for the whole machine-learning loop."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kfloop")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
