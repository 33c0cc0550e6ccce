"""The local store keeps accepting writes when a run creates many buckets."""

from __future__ import annotations

import shutil

from minio.deleteobjects import DeleteObject

from kfloop.core.objectstore import ObjectStore
from kfloop.local.stack import LocalStack


def test_writes_succeed_in_more_buckets_than_gigabytes_of_free_disk(
    local_stack: LocalStack, store: ObjectStore
) -> None:
    # SeaweedFS gives each bucket its own volume; with its default limit (free disk / 1 GB)
    # the bucket after the limit failed every write with InternalError. The suite alone
    # creates about 60 buckets.
    free_gb = shutil.disk_usage(local_stack.home).free // 2**30
    count = min(free_gb + 8, 150)
    names = [f"many-buckets-{i:03d}" for i in range(count)]
    try:
        for name in names:
            store.ensure_bucket(name)
            store.put_bytes(name.encode(), f"s3://{name}/probe.txt")
        assert [store.get_bytes(f"s3://{name}/probe.txt") for name in names] == [
            name.encode() for name in names
        ]
    finally:
        for name in names:
            if store.bucket_exists(name):
                errors = list(store.client.remove_objects(name, [DeleteObject("probe.txt")]))
                assert not errors, errors
                store.client.remove_bucket(name)
