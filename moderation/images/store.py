"""The object store of sanitized images, content-addressed by the SHA-256 of their bytes.

Two implementations of one small protocol: `LocalImageStore` (a directory, the default) and
`S3ImageStore` (any S3-compatible server through boto3: AWS S3, MinIO, Ceph, R2; tested against
moto's S3 emulator over real HTTP). An object's name is its hash, so putting the same bytes twice
stores them once and a reader can verify what it got. Calls block (file or network I/O): async
callers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from moderation.images.hashes import sha256_hex

if TYPE_CHECKING:
    from moderation.settings import ImageSettings

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ImageNotFound(KeyError):
    """No object with this SHA-256 in the store."""


def _checked(sha256: str) -> str:
    # Names come from events and requests: never let one become a path or key of its own.
    if not _SHA256.match(sha256):
        raise ValueError(f"{sha256!r} is not a SHA-256 (64 lower-case hex digits)")
    return sha256


class ImageStore(Protocol):
    def put(self, data: bytes, content_type: str) -> str:
        """Store `data` under its SHA-256 (idempotent, atomic); its URI."""
        ...

    def get(self, sha256: str) -> bytes:
        """The bytes stored under `sha256`; `ImageNotFound` when there are none."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def uri(self, sha256: str) -> str:
        """Where the object of `sha256` is (or would be)."""
        ...


class LocalImageStore:
    """Objects as files `<root>/<ab>/<cd>/<sha256>`; written to a temp file, then renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, sha256: str) -> Path:
        name = _checked(sha256)
        return self.root / name[:2] / name[2:4] / name

    def uri(self, sha256: str) -> str:
        return self.path(sha256).as_uri()

    def put(self, data: bytes, content_type: str) -> str:
        sha256 = sha256_hex(data)
        target = self.path(sha256)
        if target.exists():
            return target.as_uri()
        target.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as the target: the rename stays on one file system, so it is atomic
        # and a reader sees the whole object or none.
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return target.as_uri()

    def get(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise ImageNotFound(sha256) from None

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()


class S3ImageStore:
    """Objects in an S3 bucket under `<prefix><ab>/<sha256>` (boto3)."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "images/",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        import boto3  # type: ignore[import-untyped]  # no type information shipped
        from botocore.config import Config  # type: ignore[import-untyped]

        self.bucket = bucket
        self.prefix = prefix
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            # S3-compatible servers rarely serve virtual-host-style bucket names.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )

    def key(self, sha256: str) -> str:
        name = _checked(sha256)
        return f"{self.prefix}{name[:2]}/{name}"

    def uri(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self.key(sha256)}"

    def put(self, data: bytes, content_type: str) -> str:
        sha256 = sha256_hex(data)
        if not self.exists(sha256):
            # A PUT is atomic in S3: readers see the old object, or none, or the whole new one.
            self._client.put_object(
                Bucket=self.bucket,
                Key=self.key(sha256),
                Body=data,
                ContentType=content_type,
                ChecksumSHA256=_base64_sha256(data),
            )
        return self.uri(sha256)

    def get(self, sha256: str) -> bytes:
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=self.key(sha256))
        except self._client.exceptions.NoSuchKey:
            raise ImageNotFound(sha256) from None
        body: bytes = answer["Body"].read()
        return body

    def exists(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError  # type: ignore[import-untyped]

        try:
            self._client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True


def _base64_sha256(data: bytes) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def make_store(settings: ImageSettings) -> ImageStore:
    """The store the settings name (`images.store.kind`)."""
    store = settings.store
    if store.kind == "local":
        return LocalImageStore(store.local_dir)
    return S3ImageStore(
        bucket=store.bucket,
        prefix=store.prefix,
        endpoint_url=store.endpoint_url,
        region=store.region,
        access_key_id=store.access_key_id.get_secret_value() if store.access_key_id else None,
        secret_access_key=(
            store.secret_access_key.get_secret_value() if store.secret_access_key else None
        ),
    )
