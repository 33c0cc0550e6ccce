"""Object store client on the ``minio`` SDK: any S3-compatible store (SeaweedFS, MinIO, AWS S3).

- ``s3://bucket/key`` URIs (:class:`S3Uri`).
- Bounded retries with exponential backoff on transient errors (connection refused or
  reset, timeouts, 5xx, ``SlowDown``); the SDK's own retries are switched off so the bound
  is ours and the error says how often it tried.
- Clear errors: :class:`ObjectStoreUnavailable` names the endpoint, :class:`ObjectStoreAuthError`
  names the credential variables, :class:`ObjectNotFound` names the URI. No traceback soup:
  the SDK's exception is chained, not printed.
- Integrity: every upload records the object's SHA-256 as user metadata; every download
  checks size and SHA-256 (when recorded) before the file appears under its final name.
- Atomic visibility: S3 shows an object only once its (multipart) upload completes, and
  downloads are written to a temporary file renamed into place, so an interrupted transfer
  never leaves a partial file or object under the final name.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import urllib3
from minio import Minio
from minio.error import S3Error
from minio.helpers import ObjectWriteResult
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from kfloop.core.errors import (
    ConfigError,
    IntegrityError,
    ObjectNotFound,
    ObjectStoreAuthError,
    ObjectStoreError,
    ObjectStoreUnavailable,
)
from kfloop.core.settings import AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_ENDPOINT, Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

SHA256_META = "sha256"  # stored as x-amz-meta-sha256
_CHUNK = 1024 * 1024
_PART_SIZE = 16 * 1024 * 1024
_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "XMinioServerNotInitialized",
}
_NOT_FOUND_CODES = {"NoSuchBucket", "NoSuchKey", "NoSuchObject", "NoSuchUpload"}


@dataclass(frozen=True)
class S3Uri:
    """A parsed ``s3://bucket/key`` URI. ``key`` may be empty (the bucket) or end in ``/``."""

    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, uri: str, field: str = "uri") -> S3Uri:
        """Parse ``s3://bucket[/key]``; raise :class:`ConfigError` naming ``field`` otherwise."""
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise ConfigError(field, f"{uri!r} is not an s3:// URI (expected s3://bucket/key)")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if len(bucket) < 3 or len(bucket) > 63 or bucket.lower() != bucket:
            raise ConfigError(field, f"{uri!r} has an invalid bucket name {bucket!r}")
        return cls(bucket=bucket, key=key)

    def join(self, *parts: str) -> S3Uri:
        """Append path parts to the key with ``/``."""
        key = self.key
        for part in parts:
            part = part.strip("/")
            if not part:
                continue
            key = f"{key.rstrip('/')}/{part}" if key else part
        return S3Uri(self.bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ObjectInfo:
    """What the store holds under one key."""

    uri: S3Uri
    size: int
    sha256: str | None
    etag: str | None = None


def is_s3_uri(value: str | os.PathLike[str]) -> bool:
    """True when ``value`` is an ``s3://`` URI rather than a local path."""
    return isinstance(value, str) and value.startswith("s3://")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _object_target(uri: S3Uri | str) -> S3Uri:
    """``uri`` as an object's address; a folder (no key, or a key ending in ``/``) is refused."""
    target = S3Uri.parse(uri) if isinstance(uri, str) else uri
    if not target.key or target.key.endswith("/"):
        raise ConfigError("uri", f"{target} names a folder; give the object key")
    return target


def _short_reason(exc: BaseException) -> str:
    """One line for a connection failure, without urllib3's nested reprs."""
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    for marker in ("Connection refused", "Connection reset", "timed out", "Name or service"):
        if marker.lower() in text.lower():
            return marker.lower()
    return type(reason).__name__ if len(text) > 160 else text


class ObjectStore:
    """S3 client for kfloop artifacts. Create with :meth:`from_settings` or :meth:`from_env`."""

    def __init__(
        self, settings: Settings, *, backoff: float = 0.25, max_backoff: float = 4.0
    ) -> None:
        self.settings = settings
        self._backoff = backoff
        self._max_backoff = max_backoff
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(
                connect=min(5.0, settings.s3_timeout), read=settings.s3_timeout
            ),
            retries=False,  # kfloop's own bounded retries, see _call
            maxsize=10,
            cert_reqs="CERT_REQUIRED" if settings.s3_verify_ssl else "CERT_NONE",
        )
        self.client = Minio(
            settings.s3_endpoint,
            access_key=settings.access_key.get(),
            secret_key=settings.secret_key.get(),
            secure=settings.s3_use_https,
            region=settings.region,
            http_client=http,
        )
        # Buckets this store saw or created: an upload checks its bucket once per store, not
        # once per object (a HEAD request that cost SeaweedFS about 1 ms of CPU per file of
        # the payload logger). An upload into one deleted since then re-creates it (_upload).
        self._buckets: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        return cls(settings)

    @classmethod
    def from_env(cls) -> ObjectStore:
        return cls(Settings.from_env())

    def __repr__(self) -> str:
        return f"ObjectStore(endpoint={self.settings.endpoint_url!r})"

    # -- error handling -------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with bounded retries; translate SDK errors into kfloop errors."""
        attempts = self.settings.s3_retries + 1
        started = time.monotonic()
        last: BaseException | None = None
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except S3Error as exc:
                if exc.code in _AUTH_CODES:
                    raise ObjectStoreAuthError(
                        f"the object store at {self.settings.endpoint_url} ({S3_ENDPOINT}) refused "
                        f"the credentials in {AWS_ACCESS_KEY_ID}/{AWS_SECRET_ACCESS_KEY} "
                        f"({exc.code}) while {what}; check both variables (or the S3 secret)"
                    ) from None
                if exc.code in _NOT_FOUND_CODES:
                    missing = "bucket" if exc.code == "NoSuchBucket" else "object"
                    raise ObjectNotFound(f"no such {missing} while {what} ({exc.code})") from None
                if exc.code not in _TRANSIENT_CODES:
                    raise ObjectStoreError(f"{what} failed: {exc.code}: {exc.message}") from None
                last = exc
            except (Urllib3HTTPError, ConnectionError, TimeoutError) as exc:
                last = exc
            if attempt < attempts:
                delay = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2
                log.warning(
                    "object store: %s failed (%s); retry %d/%d in %.2fs",
                    what,
                    _short_reason(last),
                    attempt,
                    attempts - 1,
                    delay,
                )
                time.sleep(delay)
        assert last is not None
        elapsed = time.monotonic() - started
        if isinstance(last, S3Error):
            raise ObjectStoreError(
                f"{what} failed after {attempts} attempts over {elapsed:.1f}s: {last.code}"
            ) from None
        raise ObjectStoreUnavailable(
            f"cannot reach the object store at {self.settings.endpoint_url} ({S3_ENDPOINT}) while "
            f"{what}: {_short_reason(last)}; tried {attempts} times over {elapsed:.1f}s. Is it "
            "running? Locally: `kfloop stack status`"
        ) from None

    # -- buckets --------------------------------------------------------------------------

    def bucket_exists(self, bucket: str) -> bool:
        return self._call(f"checking bucket {bucket!r}", lambda: self.client.bucket_exists(bucket))

    def ensure_bucket(self, bucket: str) -> bool:
        """Create ``bucket`` when missing. Returns True when it was created."""
        if self.bucket_exists(bucket):
            self._buckets.add(bucket)
            return False
        try:
            self._call(f"creating bucket {bucket!r}", lambda: self.client.make_bucket(bucket))
        except ObjectStoreError as exc:
            # Another process may have created it between the check and the call.
            if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                self._buckets.add(bucket)
                return False
            raise
        self._buckets.add(bucket)
        return True

    def check(self) -> None:
        """Verify the endpoint answers and accepts the credentials (one ListBuckets call)."""
        self._call("checking the connection", self.client.list_buckets)

    # -- objects --------------------------------------------------------------------------

    def stat(self, uri: S3Uri | str) -> ObjectInfo:
        target = S3Uri.parse(uri) if isinstance(uri, str) else uri
        st = self._call(
            f"reading {target}", lambda: self.client.stat_object(target.bucket, target.key)
        )
        meta = {k.lower(): v for k, v in (st.metadata or {}).items()}
        return ObjectInfo(
            uri=target,
            size=int(st.size or 0),
            sha256=meta.get(f"x-amz-meta-{SHA256_META}"),
            etag=st.etag,
        )

    def exists(self, uri: S3Uri | str) -> bool:
        try:
            self.stat(uri)
        except ObjectNotFound:
            return False
        return True

    def put_file(
        self,
        path: str | os.PathLike[str],
        uri: S3Uri | str,
        content_type: str = "application/octet-stream",
        create_bucket: bool = True,
    ) -> ObjectInfo:
        """Upload one file; its SHA-256 goes with it as metadata."""
        target = _object_target(uri)
        source = Path(path)
        if not source.is_file():
            raise ObjectNotFound(f"cannot upload {source}: no such file")
        digest = sha256_file(source)
        size = source.stat().st_size
        result = self._upload(
            target,
            f"uploading {source} to {target}",
            lambda **options: self.client.fput_object(
                target.bucket, target.key, str(source), **options
            ),
            content_type,
            digest,
            create_bucket,
        )
        log.debug("uploaded %s (%d bytes) to %s", source, size, target)
        return ObjectInfo(uri=target, size=size, sha256=digest, etag=result.etag)

    def put_bytes(
        self,
        data: bytes | bytearray | memoryview,
        uri: S3Uri | str,
        content_type: str = "application/octet-stream",
        create_bucket: bool = True,
    ) -> ObjectInfo:
        """Upload bytes held in memory (no temporary file); their SHA-256 goes with them as
        metadata, as :meth:`put_file`'s."""
        target = _object_target(uri)
        view = memoryview(data).cast("B")
        digest = hashlib.sha256(view).hexdigest()
        result = self._upload(
            target,
            f"uploading {view.nbytes} bytes to {target}",
            # A new reader for every attempt: a retry must send the whole body again.
            lambda **options: self.client.put_object(
                target.bucket, target.key, io.BytesIO(view), view.nbytes, **options
            ),
            content_type,
            digest,
            create_bucket,
        )
        log.debug("uploaded %d bytes to %s", view.nbytes, target)
        return ObjectInfo(uri=target, size=view.nbytes, sha256=digest, etag=result.etag)

    def _upload(
        self,
        target: S3Uri,
        what: str,
        send: Callable[..., ObjectWriteResult],
        content_type: str,
        digest: str,
        create_bucket: bool,
    ) -> ObjectWriteResult:
        """Run ``send`` (given the content type, the SHA-256 metadata and the part size) into
        ``target``'s bucket, created first when missing (checked once per store: see
        ``_buckets``)."""
        known = target.bucket in self._buckets
        if create_bucket and not known:
            self.ensure_bucket(target.bucket)

        def upload() -> ObjectWriteResult:
            return send(
                content_type=content_type,
                metadata={SHA256_META: digest},
                part_size=_PART_SIZE,
            )

        try:
            return self._call(what, upload)
        except ObjectNotFound:
            if not (create_bucket and known):
                raise
            # The bucket was deleted since this store saw it: create it again, once.
            self._buckets.discard(target.bucket)
            self.ensure_bucket(target.bucket)
            return self._call(what, upload)

    def get_file(self, uri: S3Uri | str, path: str | os.PathLike[str]) -> ObjectInfo:
        """Download to ``path``, verifying size and SHA-256; ``path`` appears only when verified."""
        target = S3Uri.parse(uri) if isinstance(uri, str) else uri
        info = self.stat(target)
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def download() -> str:
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{dest.name}.", suffix=".part", dir=dest.parent
            )
            tmp = Path(tmp_name)
            digest = hashlib.sha256()
            written = 0
            try:
                response = self.client.get_object(target.bucket, target.key)
                try:
                    with os.fdopen(fd, "wb") as handle:
                        for chunk in response.stream(_CHUNK):
                            digest.update(chunk)
                            handle.write(chunk)
                            written += len(chunk)
                finally:
                    response.close()
                    response.release_conn()
                if written != info.size:
                    raise IntegrityError(
                        f"{target}: downloaded {written} bytes, the store says {info.size}"
                    )
                if info.sha256 and digest.hexdigest() != info.sha256:
                    raise IntegrityError(
                        f"{target}: SHA-256 {digest.hexdigest()} does not match the "
                        f"{info.sha256} recorded at upload"
                    )
                tmp.replace(dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return digest.hexdigest()

        digest = self._call(f"downloading {target} to {dest}", download)
        return ObjectInfo(uri=target, size=info.size, sha256=info.sha256 or digest, etag=info.etag)

    def get_bytes(self, uri: S3Uri | str) -> bytes:
        """Download a (small) object into memory, verified like :meth:`get_file`."""
        with tempfile.TemporaryDirectory(prefix="kfloop-get-") as tmp:
            local = Path(tmp) / "object"
            self.get_file(uri, local)
            return local.read_bytes()

    def list_objects(self, prefix: S3Uri | str, recursive: bool = True) -> Iterator[ObjectInfo]:
        """Objects under a prefix (folder markers skipped)."""
        target = S3Uri.parse(prefix) if isinstance(prefix, str) else prefix
        objects = self._call(
            f"listing {target}",
            lambda: list(
                self.client.list_objects(
                    target.bucket, prefix=target.key or None, recursive=recursive
                )
            ),
        )
        for obj in objects:
            name = obj.object_name or ""
            if obj.is_dir or name.endswith("/"):
                continue
            yield ObjectInfo(
                uri=S3Uri(target.bucket, name), size=int(obj.size or 0), sha256=None, etag=obj.etag
            )

    def delete(self, uri: S3Uri | str) -> None:
        target = S3Uri.parse(uri) if isinstance(uri, str) else uri
        self._call(
            f"deleting {target}", lambda: self.client.remove_object(target.bucket, target.key)
        )

    # -- folders --------------------------------------------------------------------------

    def put_dir(self, folder: str | os.PathLike[str], prefix: S3Uri | str) -> list[ObjectInfo]:
        """Upload every file under ``folder`` to ``prefix`` keeping relative paths."""
        base = Path(folder)
        if not base.is_dir():
            raise ObjectNotFound(f"cannot upload {base}: no such folder")
        target = S3Uri.parse(prefix) if isinstance(prefix, str) else prefix
        self.ensure_bucket(target.bucket)
        uploaded = []
        for file in sorted(p for p in base.rglob("*") if p.is_file()):
            rel = file.relative_to(base).as_posix()
            uploaded.append(self.put_file(file, target.join(rel), create_bucket=False))
        return uploaded

    def get_dir(self, prefix: S3Uri | str, folder: str | os.PathLike[str]) -> list[ObjectInfo]:
        """Download every object under ``prefix`` into ``folder`` keeping relative paths."""
        target = S3Uri.parse(prefix) if isinstance(prefix, str) else prefix
        root = target.key.rstrip("/") + "/" if target.key else ""
        base = Path(folder)
        results = []
        for obj in self.list_objects(S3Uri(target.bucket, root)):
            rel = obj.uri.key[len(root) :]
            dest = (base / rel).resolve()
            if base.resolve() not in dest.parents:
                raise ObjectStoreError(f"{obj.uri} would be written outside {base}; refusing")
            results.append(self.get_file(obj.uri, dest))
        return results
