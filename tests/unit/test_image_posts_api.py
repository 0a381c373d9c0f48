"""Posts with images through the API (issue 16 part 1): each image checked, decoded in the
decoder process, stripped of metadata and stored before the post is published; a bad image is a
clear 4xx and nothing is published; moderators read stored images back, within their tenants.

On SQLite with the in-memory publisher; the images go through the real decoder processes and a
local store in a temporary directory.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.events import PostSubmitted
from moderation.services.api import build_app
from moderation.services.api.publisher import InMemoryPublisher
from moderation.settings import Settings
from tests.unit.test_api import auth, make_key


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings()
    settings.images.store.local_dir = tmp_path / "images"
    settings.images.max_bytes = 2_000_000
    return settings


@pytest.fixture
def app(settings: Settings, publisher: InMemoryPublisher, engine: Engine) -> Iterator[FastAPI]:
    yield build_app(settings, publisher=publisher, engine=engine)


def photo(*, size: tuple[int, int] = (320, 240), exif: bool = True) -> bytes:
    image = Image.new("RGB", size, (200, 120, 40))
    for x in range(0, size[0], 16):
        image.putpixel((x, size[1] // 2), (0, 0, 0))
    out = io.BytesIO()
    metadata = Image.Exif()
    metadata[0x010F] = "SecretCam"  # Make
    metadata[0x8825] = {2: (51.0, 30.0, 0.0)}  # GPS
    image.save(out, format="JPEG", exif=metadata.tobytes() if exif else b"")
    return out.getvalue()


def b64(data: bytes) -> dict[str, str]:
    return {"data_base64": base64.b64encode(data).decode()}


def published(publisher: InMemoryPublisher) -> list[PostSubmitted]:
    return [PostSubmitted.model_validate_json(value) for _, _, value in publisher.records]


async def submit(client: httpx.AsyncClient, key: str, **body: Any) -> httpx.Response:
    return await client.post(
        "/v1/posts", headers=auth(key), json={"text": "look", "author_id": "a", **body}
    )


async def test_a_post_with_an_image_is_stored_without_metadata_and_published_by_reference(
    client: httpx.AsyncClient, engine: Engine, publisher: InMemoryPublisher, settings: Settings
) -> None:
    key = make_key(engine, "submit")
    original = photo()
    assert b"SecretCam" in original
    response = await submit(client, key, images=[b64(original)])
    assert response.status_code == 202, response.text
    [event] = published(publisher)
    [ref] = event.images
    assert (ref.format, ref.width, ref.height) == ("jpeg", 320, 240)
    stored = (settings.images.store.local_dir).rglob(f"*{ref.sha256}*")
    [path] = list(stored)
    data = path.read_bytes()
    assert b"SecretCam" not in data
    assert not Image.open(io.BytesIO(data)).getexif()
    assert ref.size_bytes == len(data)
    assert len(publisher.records[0][2]) < len(original)  # the event carries no bytes


@pytest.mark.parametrize(
    ("images", "status", "field"),
    [
        ([{"data_base64": "not base64!"}], 422, "images[0].data_base64"),
        ([b64(b"%PDF-1.7 not an image")], 415, "images[0]"),
        ([b64(photo()[:400])], 422, "images[0]"),
        ([b64(photo())] * 5, 413, "images"),
        ([b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)], 422, "images[0]"),
    ],
    ids=["base64", "pdf", "truncated", "too-many", "broken-png"],
)
async def test_a_bad_image_is_a_clear_4xx_and_nothing_is_published(
    client: httpx.AsyncClient,
    engine: Engine,
    publisher: InMemoryPublisher,
    images: list[dict[str, str]],
    status: int,
    field: str,
) -> None:
    key = make_key(engine, "submit")
    response = await submit(client, key, images=[b64(photo()), *images][1:])
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errors"][0]["field"] == field
    assert publisher.records == []


async def test_images_are_refused_in_a_batch_and_the_other_posts_go_on(
    client: httpx.AsyncClient, engine: Engine, publisher: InMemoryPublisher
) -> None:
    key = make_key(engine, "submit")
    batch = {
        "posts": [
            {"text": "with a picture", "author_id": "a", "images": [b64(photo())]},
            {"text": "text only", "author_id": "a"},
        ]
    }
    response = await client.post("/v1/posts:batch", headers=auth(key), json=batch)
    assert response.status_code == 202, response.text
    first, second = response.json()["results"]
    assert "POST /v1/posts only" in first["error"]["message"]
    assert "post_id" in second
    assert [event.text for event in published(publisher)] == ["text only"]


async def test_moderators_read_a_stored_image_only_within_their_tenants(
    client: httpx.AsyncClient, engine: Engine, publisher: InMemoryPublisher
) -> None:
    key = make_key(engine, "submit")
    assert (await submit(client, key, images=[b64(photo())])).status_code == 202
    [event] = published(publisher)
    with Session(engine) as session:
        crud.record_events(session, events=[event])
        other, _ = crud.create_api_key(session, name="acme-mod", scopes=["moderate"], tenant="acme")
    sha = event.images[0].sha256
    moderator = make_key(engine, "moderate", name="mod")
    shown = await client.get(f"/v1/images/{sha}", headers=auth(moderator))
    assert shown.status_code == 200
    assert shown.headers["content-type"] == "image/jpeg"
    assert shown.content[:3] == b"\xff\xd8\xff"
    hidden = await client.get(f"/v1/images/{sha}", headers=auth(other))
    assert hidden.status_code == 404
    unknown = await client.get(f"/v1/images/{'0' * 64}", headers=auth(moderator))
    assert unknown.status_code == 404
    malformed = await client.get("/v1/images/not-a-digest", headers=auth(moderator))
    assert malformed.status_code == 422
    submitter = await client.get(f"/v1/images/{sha}", headers=auth(key))
    assert submitter.status_code == 403
    reader = make_key(engine, "read", name="reader")
    trail = await client.get(f"/v1/posts/{event.post_id}", headers=auth(reader))
    assert trail.status_code == 200, trail.text
    assert trail.json()["images"][0]["sha256"] == sha
