"""The object stores round-trip and are idempotent: a directory, and S3 over real HTTP.

The S3 store is tested against moto's S3 emulator served on a local port (`ThreadedMotoServer`):
a real HTTP endpoint speaking the S3 protocol, which boto3 reaches as it would MinIO or AWS.
It is an emulator, not AWS: signatures, consistency and error details of the real service are
not what is tested here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import boto3  # type: ignore[import-untyped]  # no type information shipped
import pytest
from moto.server import ThreadedMotoServer

from moderation.images.store import (
    ImageNotFound,
    ImageStore,
    LocalImageStore,
    S3ImageStore,
    make_store,
)
from moderation.settings import ImageSettings, ImageStoreSettings

BUCKET = "moderation-images-test"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
    ).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def s3_store(endpoint: str) -> S3ImageStore:
    return S3ImageStore(
        bucket=BUCKET,
        prefix="images/",
        endpoint_url=endpoint,
        access_key_id="test-key",
        secret_access_key="test-secret",
    )


def round_trip(store: ImageStore) -> None:
    data = b"\xff\xd8\xff" + bytes(range(256)) * 40
    sha256 = hashlib.sha256(data).hexdigest()
    assert not store.exists(sha256)
    uri = store.put(data, "image/jpeg")
    assert uri == store.uri(sha256)
    assert store.exists(sha256)
    assert store.get(sha256) == data
    assert store.put(data, "image/jpeg") == uri  # idempotent
    other = b"another image"
    assert store.put(other, "image/png") != uri
    missing = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(ImageNotFound):
        store.get(missing)
    with pytest.raises(ValueError, match="is not a SHA-256"):
        store.get("../../etc/passwd")


def test_the_local_store_round_trips(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    round_trip(store)
    data = b"another image"
    path = store.path(hashlib.sha256(data).hexdigest())
    assert path.read_bytes() == data
    assert store.uri(path.name) == path.as_uri()
    # Atomic writes leave no temporary files behind.
    assert not list(tmp_path.rglob(".tmp-*"))


def test_the_local_store_keeps_the_first_copy(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    data = b"same bytes"
    store.put(data, "image/png")
    path = store.path(hashlib.sha256(data).hexdigest())
    before = path.stat().st_mtime_ns
    store.put(data, "image/png")
    assert path.stat().st_mtime_ns == before


def test_the_s3_store_round_trips_over_http(s3_endpoint: str) -> None:
    store = s3_store(s3_endpoint)
    round_trip(store)
    data = b"\xff\xd8\xff" + bytes(range(256)) * 40
    key = store.key(hashlib.sha256(data).hexdigest())
    head = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
    ).head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "image/jpeg"
    assert key.startswith("images/") and store.uri(key[-64:]).startswith(f"s3://{BUCKET}/images/")


def test_a_missing_bucket_is_an_error_not_an_absent_image(s3_endpoint: str) -> None:
    store = S3ImageStore(
        bucket="no-such-bucket",
        endpoint_url=s3_endpoint,
        access_key_id="test-key",
        secret_access_key="test-secret",
    )
    with pytest.raises(Exception, match="NoSuchBucket|Not Found|404"):
        store.put(b"data", "image/png")


def test_make_store_follows_the_settings(tmp_path: Path, s3_endpoint: str) -> None:
    local = make_store(ImageSettings(store=ImageStoreSettings(local_dir=tmp_path)))
    assert isinstance(local, LocalImageStore) and local.root == tmp_path.resolve()
    remote = make_store(
        ImageSettings(
            store=ImageStoreSettings(
                kind="s3",
                endpoint_url=s3_endpoint,
                bucket=BUCKET,
                access_key_id="test-key",  # type: ignore[arg-type]  # pydantic coerces to SecretStr
                secret_access_key="test-secret",  # type: ignore[arg-type]
            )
        )
    )
    assert isinstance(remote, S3ImageStore)
    uri = remote.put(b"from the settings", "image/png")
    assert uri.startswith(f"s3://{BUCKET}/images/")
