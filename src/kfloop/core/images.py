"""Container images of the components and services: one version for all of them.

Components name :data:`PIPELINE_IMAGE` as their ``base_image``; the manifests and the
Dockerfiles under ``images/`` use the same references (a test checks they agree).
"""

from __future__ import annotations

REGISTRY = "ghcr.io/kfloop"
VERSION = "0.1.0"
PIPELINE_IMAGE = f"{REGISTRY}/kfloop-pipeline:{VERSION}"
SERVING_IMAGE = f"{REGISTRY}/kfloop-serving:{VERSION}"
