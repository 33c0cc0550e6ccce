"""Object store throughput: kfloop's ObjectStore against the bare minio SDK, same run.

kfloop adds a SHA-256 on upload (stored as metadata) and a verified, atomically renamed
download. This measures what that costs, as a ratio against the SDK's own fput/fget of the
same 200 MB file on the same SeaweedFS. Run: `make bench` (or this file with .venv/bin/python).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from minio import Minio

from kfloop.core.objectstore import ObjectStore
from kfloop.local.stack import LocalStack
from tests.conftest import free_s3_port

SIZE = 200 * 1024 * 1024
REPEAT = 3


def best(fn, repeat: int = REPEAT) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        stack = LocalStack(home=home, s3_port=free_s3_port())
        settings = stack.up()
        try:
            src = Path(tmp) / "blob.bin"
            with src.open("wb") as handle:
                for _ in range(SIZE // (8 << 20)):
                    handle.write(os.urandom(8 << 20))
            store = ObjectStore(settings)
            raw = Minio(
                settings.s3_endpoint,
                access_key=settings.access_key.get(),
                secret_key=settings.secret_key.get(),
                secure=False,
            )
            bucket = settings.data_bucket
            dest = Path(tmp) / "back.bin"

            up_sdk = best(lambda: raw.fput_object(bucket, "sdk.bin", str(src), part_size=16 << 20))
            up_kf = best(lambda: store.put_file(src, f"s3://{bucket}/kf.bin"))
            down_sdk = best(lambda: raw.fget_object(bucket, "sdk.bin", str(dest)))
            down_kf = best(lambda: store.get_file(f"s3://{bucket}/kf.bin", dest))
        finally:
            stack.down()
    mb = SIZE / 1e6
    print(f"object store, {mb:.0f} MB file, median of {REPEAT}, SeaweedFS on loopback")
    print(
        f"  upload   minio SDK {up_sdk:6.2f}s ({mb / up_sdk:6.0f} MB/s)   "
        f"kfloop {up_kf:6.2f}s ({mb / up_kf:6.0f} MB/s)   ratio {up_kf / up_sdk:.2f}x"
    )
    print(
        f"  download minio SDK {down_sdk:6.2f}s ({mb / down_sdk:6.0f} MB/s)   "
        f"kfloop {down_kf:6.2f}s ({mb / down_kf:6.0f} MB/s)   ratio {down_kf / down_sdk:.2f}x"
    )
    print("  (kfloop hashes on upload and verifies size + SHA-256 on download)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
