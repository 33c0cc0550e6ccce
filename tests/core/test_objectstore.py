"""Object store round trips and failures against a real SeaweedFS."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from minio import Minio

from kfloop.core.errors import (
    IntegrityError,
    ObjectNotFound,
    ObjectStoreAuthError,
    ObjectStoreUnavailable,
)
from kfloop.core.objectstore import ObjectStore, S3Uri, sha256_file
from kfloop.core.settings import Settings
from kfloop.local.process import free_port
from kfloop.local.stack import LocalStack
from tests.conftest import free_s3_port


def write_random(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            chunk = min(remaining, 8 * 1024 * 1024)
            handle.write(os.urandom(chunk))
            remaining -= chunk
    return path


def test_small_round_trip(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello kfloop\n")
    info = store.put_file(src, f"s3://{bucket}/dir/a.txt")
    assert info.size == 13
    assert info.sha256 == sha256_file(src)
    stat = store.stat(f"s3://{bucket}/dir/a.txt")
    assert stat.sha256 == info.sha256
    assert stat.size == 13
    dest = tmp_path / "out" / "a.txt"
    store.get_file(f"s3://{bucket}/dir/a.txt", dest)
    assert dest.read_bytes() == b"hello kfloop\n"
    assert store.get_bytes(f"s3://{bucket}/dir/a.txt") == b"hello kfloop\n"


def test_empty_object(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    store.put_bytes(b"", f"s3://{bucket}/empty")
    assert store.stat(f"s3://{bucket}/empty").size == 0
    dest = tmp_path / "empty"
    store.get_file(f"s3://{bucket}/empty", dest)
    assert dest.exists() and dest.read_bytes() == b""


def test_200_mb_round_trip(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    src = write_random(tmp_path / "big.bin", 200 * 1024 * 1024)
    info = store.put_file(src, f"s3://{bucket}/big.bin")
    assert info.size == 200 * 1024 * 1024
    dest = tmp_path / "back.bin"
    got = store.get_file(f"s3://{bucket}/big.bin", dest)
    assert got.size == info.size
    assert sha256_file(dest) == info.sha256
    src.unlink()
    dest.unlink()


def test_many_small_objects_as_a_folder(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    expected = {}
    for i in range(300):
        rel = f"part-{i // 100}/obj-{i:04d}.txt"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(f"object {i}\n" * (i % 7))
        expected[rel] = (folder / rel).read_bytes()
    uploaded = store.put_dir(folder, f"s3://{bucket}/many")
    assert len(uploaded) == 300
    listed = sorted(o.uri.key for o in store.list_objects(f"s3://{bucket}/many/"))
    assert listed == sorted(f"many/{rel}" for rel in expected)
    back = tmp_path / "back"
    store.get_dir(f"s3://{bucket}/many", back)
    for rel, data in expected.items():
        assert (back / rel).read_bytes() == data


def test_tampered_object_is_rejected_and_leaves_no_file(
    store: ObjectStore, settings: Settings, bucket: str, tmp_path: Path
) -> None:
    raw = Minio(
        settings.s3_endpoint,
        access_key=settings.access_key.get(),
        secret_key=settings.secret_key.get(),
        secure=False,
    )
    data = b"the real bytes"
    raw.put_object(bucket, "tampered", io.BytesIO(data), len(data), metadata={"sha256": "0" * 64})
    dest = tmp_path / "tampered"
    with pytest.raises(IntegrityError, match="does not match"):
        store.get_file(f"s3://{bucket}/tampered", dest)
    assert list(tmp_path.iterdir()) == []


def test_missing_bucket_and_key(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound, match="bucket"):
        store.stat("s3://no-such-bucket-kfloop/x")
    with pytest.raises(ObjectNotFound, match="object"):
        store.get_file(f"s3://{bucket}/nope", tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    assert store.exists(f"s3://{bucket}/nope") is False
    with pytest.raises(ObjectNotFound, match="no such file"):
        store.put_file(tmp_path / "absent.bin", f"s3://{bucket}/absent.bin")


def test_ensure_bucket_is_idempotent(store: ObjectStore) -> None:
    name = f"ensure-{os.getpid()}-{time.monotonic_ns() % 100000}"
    assert store.ensure_bucket(name) is True
    assert store.ensure_bucket(name) is False
    assert store.bucket_exists(name)


@pytest.mark.parametrize("which", ["secret", "access key"])
def test_wrong_credentials_name_the_variables_not_the_values(
    settings: Settings, bucket: str, which: str
) -> None:
    if which == "secret":
        bad = settings.with_credentials(settings.access_key.get(), "wrong-secret-value")
    else:
        bad = settings.with_credentials("unknown-key-id", "wrong-secret-value")
    with pytest.raises(ObjectStoreAuthError) as err:
        ObjectStore(bad).bucket_exists(bucket)
    message = str(err.value)
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in message
    assert settings.endpoint_url in message
    assert "wrong-secret-value" not in message
    assert settings.secret_key.get() not in message


def test_unreachable_endpoint_is_named_after_bounded_retries(settings: Settings) -> None:
    port = free_port()
    env = {**settings.to_env(), "S3_ENDPOINT": f"127.0.0.1:{port}", "KFLOOP_S3_RETRIES": "2"}
    store = ObjectStore(Settings.from_env(env), backoff=0.01)
    started = time.monotonic()
    with pytest.raises(ObjectStoreUnavailable) as err:
        store.bucket_exists("kfloop-data")
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert f"http://127.0.0.1:{port}" in message
    assert "S3_ENDPOINT" in message
    assert "tried 3 times" in message
    assert "connection refused" in message
    assert err.value.__cause__ is None  # no chained SDK traceback soup


def crash(stack: LocalStack) -> None:
    """Kill SeaweedFS outright (SIGKILL), as a crashed or partitioned endpoint would look."""
    proc = stack._seaweedfs(stack.settings())
    pid = proc.pid()
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while proc.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def doomed_stack(tmp_path: Path) -> LocalStack:
    """A SeaweedFS of its own, which the test may kill."""
    stack = LocalStack(home=tmp_path / "doomed", s3_port=free_s3_port())
    stack.up()
    yield stack  # type: ignore[misc]
    stack.down()


def test_endpoint_down_mid_upload_leaves_no_object(
    doomed_stack: LocalStack, tmp_path: Path
) -> None:
    settings = doomed_stack.settings()
    store = ObjectStore(
        Settings.from_env({**settings.to_env(), "KFLOOP_S3_RETRIES": "1"}), backoff=0.01
    )
    src = write_random(tmp_path / "big.bin", 300 * 1024 * 1024)
    target = f"s3://{settings.data_bucket}/mid/big.bin"
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            store.put_file(src, target)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    # Kill SeaweedFS once the upload is under way: wait for bytes to reach its volume.
    data_dir = doomed_stack.home / "seaweedfs" / "data"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and thread.is_alive():
        written = sum(f.stat().st_size for f in data_dir.rglob("*.dat") if f.is_file())
        if written > 20 * 1024 * 1024:
            break
        time.sleep(0.02)
    crash(doomed_stack)
    thread.join(60)
    assert not thread.is_alive()
    assert len(errors) == 1, "the upload should fail when the endpoint goes away"
    assert isinstance(errors[0], ObjectStoreUnavailable)
    assert settings.endpoint_url in str(errors[0])
    # Bring the same store back: nothing is visible under the final key.
    doomed_stack.up()
    fresh = ObjectStore(settings)
    assert fresh.exists(target) is False
    assert list(fresh.list_objects(f"s3://{settings.data_bucket}/mid/")) == []


def test_endpoint_down_mid_download_leaves_no_file(
    doomed_stack: LocalStack, tmp_path: Path
) -> None:
    settings = doomed_stack.settings()
    store = ObjectStore(
        Settings.from_env({**settings.to_env(), "KFLOOP_S3_RETRIES": "1"}), backoff=0.01
    )
    src = write_random(tmp_path / "big.bin", 300 * 1024 * 1024)
    target = f"s3://{settings.data_bucket}/mid/big.bin"
    store.put_file(src, target)
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    errors: list[BaseException] = []

    def download() -> None:
        try:
            store.get_file(target, dest_dir / "big.bin")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=download)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and thread.is_alive():
        parts = list(dest_dir.glob(".big.bin.*.part"))
        if parts and parts[0].stat().st_size > 10 * 1024 * 1024:
            break
        time.sleep(0.01)
    crash(doomed_stack)
    thread.join(60)
    assert not thread.is_alive()
    assert len(errors) == 1, "the download should fail when the endpoint goes away"
    assert isinstance(errors[0], ObjectStoreUnavailable | IntegrityError)
    assert list(dest_dir.iterdir()) == []


def test_folder_key_is_rejected(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "x"
    src.write_text("x")
    with pytest.raises(Exception, match="names a folder"):
        store.put_file(src, f"s3://{bucket}/folder/")


def test_uri_helpers_accept_both_forms(store: ObjectStore, bucket: str) -> None:
    store.put_bytes(b"abc", S3Uri(bucket, "typed"))
    assert store.get_bytes(f"s3://{bucket}/typed") == b"abc"


def test_put_bytes_records_the_digest_of_what_it_uploads(store: ObjectStore, bucket: str) -> None:
    data = bytearray(os.urandom(3 * 1024 * 1024 + 7))
    info = store.put_bytes(memoryview(data), f"s3://{bucket}/mem.bin")
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.stat(f"s3://{bucket}/mem.bin").sha256 == info.sha256
    assert store.get_bytes(f"s3://{bucket}/mem.bin") == bytes(data)
    with pytest.raises(Exception, match="names a folder"):
        store.put_bytes(b"x", f"s3://{bucket}/folder/")


def test_an_upload_into_a_bucket_deleted_since_creates_it_again(
    store: ObjectStore, tmp_path: Path
) -> None:
    # The store checks a bucket once; another client deleting it must not break its uploads,
    # whether from memory or from a file.
    name = f"gone-{os.getpid()}-{time.monotonic_ns() % 100000}"
    other = ObjectStore(store.settings)
    src = write_random(tmp_path / "c.bin", 1000)
    try:
        for upload in (
            lambda: store.put_bytes(b"second", f"s3://{name}/b.txt"),
            lambda: store.put_file(src, f"s3://{name}/c.bin"),
        ):
            store.put_bytes(b"first", f"s3://{name}/a.txt")
            for obj in list(other.list_objects(f"s3://{name}/")):
                other.delete(obj.uri)
            other.client.remove_bucket(name)
            assert not other.bucket_exists(name)
            upload()
        assert store.get_bytes(f"s3://{name}/c.bin") == src.read_bytes()
    finally:
        for obj in list(other.list_objects(f"s3://{name}/")):
            other.delete(obj.uri)
        other.client.remove_bucket(name)


class _ResetFirstConnection:
    """A TCP proxy to ``port`` that resets the first connection once it has received some
    bytes (an upload cut by the network), and passes every later one through."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted == 1:
                client.recv(65536)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


def test_a_retried_upload_from_memory_sends_the_whole_body(settings: Settings, bucket: str) -> None:
    proxy = _ResetFirstConnection(int(settings.s3_endpoint.rsplit(":", 1)[1]))
    try:
        env = {**settings.to_env(), "S3_ENDPOINT": f"127.0.0.1:{proxy.port}"}
        store = ObjectStore(Settings.from_env({**env, "KFLOOP_S3_RETRIES": "2"}), backoff=0.01)
        data = os.urandom(512 * 1024)
        info = store.put_bytes(data, f"s3://{bucket}/retried.bin", create_bucket=False)
        assert proxy.accepted >= 2  # the first attempt was cut
        assert store.get_bytes(f"s3://{bucket}/retried.bin") == data
        assert store.stat(f"s3://{bucket}/retried.bin").sha256 == info.sha256
    finally:
        proxy.close()
