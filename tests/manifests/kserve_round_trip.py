"""Round-trip InferenceService specs through the kserve SDK's generated models, in its own
process: ``import kserve`` registers the protobuf package ``inference``, which
``tritonclient.grpc`` (imported by the serving tests in the same pytest run) registers too.

Reads one JSON spec per line on stdin; writes ``sanitize_for_serialization(deserialize(spec))``
as one JSON line on stdout.
"""

from __future__ import annotations

import json
import sys

import kserve
import kserve.models
from kubernetes.client import models as k8s_models


class _Response:
    def __init__(self, data: object) -> None:
        self.data = json.dumps(data)


def main() -> None:
    # kserve's models name Kubernetes types (V1Container...) that it looks up in
    # kserve.models: take those from the Kubernetes client's generated models.
    for name in dir(k8s_models):
        if name.startswith("V1") and not hasattr(kserve.models, name):
            setattr(kserve.models, name, getattr(k8s_models, name))
    sdk = kserve.ApiClient()
    for line in sys.stdin:
        model = sdk.deserialize(_Response(json.loads(line)), "V1beta1InferenceServiceSpec")
        print(json.dumps(sdk.sanitize_for_serialization(model)), flush=True)


if __name__ == "__main__":
    main()
