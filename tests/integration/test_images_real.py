"""Posts with images through the real stack: the API, worker, recorder and review service as
processes on Kafka, PostgreSQL and Dapr (issue 16).

A hash list names Grace Hopper's portrait (matplotlib's sample photo) by its PDQ hash. A post
with a resized, recompressed copy of it is removed at once by stage 1, the list's name in the
verdict, and never reaches a moderator; a post with an unrelated photo is not matched, the nudity
detector (NudeNet on onnxruntime, in the worker) scores it low, and stage 1 does not allow it:
it goes to a human review. The API stored both images without metadata and the recorder kept
their references; moderators read the stored image back through the API. In the dashboard,
in Debian's headless chromium (Playwright), the image is blurred and greyscale until revealed,
then greyscale (screenshots: `test-artifacts/image-review-*.png`).
"""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import sync_playwright
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from moderation.db import crud
from moderation.db.models import Post, Review, Verdict
from moderation.devtools.stack.browser import ensure_chromium
from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices
from moderation.images.intake import ImageLimits, prepare
from moderation.settings import PROJECT_ROOT, Settings
from tests.image_samples import photo
from tests.integration.streams import (
    running_services,
    topics_of_their_own,
    wait_for,
)
from tests.integration.test_review_flow import api

pytestmark = pytest.mark.integration

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
BLURRED = ARTIFACTS / "image-review-blurred.png"
REVEALED = ARTIFACTS / "image-review-revealed.png"


def jpeg(image: Image.Image, *, quality: int = 85) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store directory, and hash lists holding the PDQ of Grace Hopper's portrait."""
    root = tmp_path_factory.mktemp("images")
    listed = prepare(jpeg(photo("grace_hopper")), ImageLimits.from_settings(Settings().images))
    lists = root / "hashlists" / "sexual_minors"
    lists.mkdir(parents=True)
    (lists / "test-known-bad.csv").write_text(
        f"kind,hash,note\npdq,{listed.hashes.pdq},the portrait stands in for a listed image\n"
    )
    return root / "store", root / "hashlists"


@pytest.fixture(scope="module")
def image_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    with topics_of_their_own(settings, "images") as isolated:
        yield isolated


@pytest.fixture(scope="module")
def services(
    image_settings: Settings,
    image_dirs: tuple[Path, Path],
    dapr: DaprRuntime,
    postgres: PostgresCluster,
) -> Iterator[PipelineServices]:
    store, hashlists = image_dirs
    running = PipelineServices(
        image_settings,
        extra_env={
            "MODERATION_AGENT__ENABLED": "false",
            "MODERATION_IMAGES__STORE__LOCAL_DIR": str(store),
            "MODERATION_IMAGES__HASHLIST_DIR": str(hashlists),
        },
    )
    with running_services(running, "recorder", "worker", "api", "review", dapr=dapr):
        yield running


def model_verdict(engine: Engine, post_id: str) -> Verdict | None:
    with Session(engine) as session:
        return session.exec(
            select(Verdict).where(col(Verdict.post_id) == post_id, col(Verdict.stage) == "model")
        ).first()


def review_of(engine: Engine, post_id: str) -> Review | None:
    with Session(engine) as session:
        return session.exec(select(Review).where(col(Review.post_id) == post_id)).first()


@pytest.mark.timeout(600)
async def test_a_listed_image_is_removed_at_once_and_an_unlisted_one_goes_to_a_human(
    services: PipelineServices, image_settings: Settings, read_model: Engine
) -> None:
    # A tenant of its own: the moderator's queue holds only this test's review.
    tenant = f"img-{uuid.uuid4().hex[:8]}"
    with Session(read_model) as session:
        submit_key, _ = crud.create_api_key(
            session, name=f"{tenant}-submit", scopes=["submit"], tenant=tenant
        )
        moderator_key, _ = crud.create_api_key(
            session, name=f"{tenant}-mod", scopes=["moderate"], tenant=tenant
        )
    portrait = photo("grace_hopper")
    near_copy = jpeg(
        portrait.resize((portrait.width * 3 // 4, portrait.height * 3 // 4)), quality=70
    )
    unrelated = jpeg(photo("coffee"))
    post_ids = {}
    with api(image_settings, submit_key) as client:
        for name, data in (("listed", near_copy), ("unlisted", unrelated)):
            response = client.post(
                "/v1/posts",
                json={
                    # Text the fast model allows: the images alone must stop the allow.
                    "text": "Holiday pictures from the beach with my family.",
                    "author_id": "img-author",
                    "images": [{"data_base64": base64.b64encode(data).decode()}],
                },
            )
            assert response.status_code == 202, response.text
            post_ids[name] = response.json()["post_id"]

    listed = await asyncio.to_thread(
        wait_for, partial(model_verdict, read_model, post_ids["listed"]), 120, "listed verdict"
    )
    assert listed.decision == "remove"
    assert listed.primary_category == "sexual_minors"
    assert "image:hash-match:test-known-bad:pdq" in listed.signals
    unlisted = await asyncio.to_thread(
        wait_for, partial(model_verdict, read_model, post_ids["unlisted"]), 120, "verdict"
    )
    assert unlisted.decision == "review"
    assert "unreadable:images" in unlisted.signals
    assert any(signal.startswith("image:nudity:") for signal in unlisted.signals)
    assert any(signal.startswith("image:detector:nudenet-320n:") for signal in unlisted.signals)
    assert await asyncio.to_thread(
        wait_for, partial(review_of, read_model, post_ids["unlisted"]), 120, "its review"
    )
    assert review_of(read_model, post_ids["listed"]) is None  # no one has to look at it

    with Session(read_model) as session:
        post = session.get(Post, post_ids["unlisted"])
        assert post is not None
        [ref] = post.images
    with api(image_settings, moderator_key) as client:
        stored = client.get(f"/v1/images/{ref['sha256']}")
    assert stored.status_code == 200
    assert stored.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(stored.content)).size == (ref["width"], ref["height"])

    # The dashboard in a real browser: the image is blurred and greyscale until revealed.
    await asyncio.to_thread(services.start, "dashboard")
    filters = await asyncio.to_thread(
        drive_image_review, image_settings, ensure_chromium(), moderator_key
    )
    assert "blur" in filters["before"] and "grayscale" in filters["before"], filters
    assert "blur" not in filters["after"] and "grayscale" in filters["after"], filters
    assert BLURRED.stat().st_size > 0 and REVEALED.stat().st_size > 0


def drive_image_review(settings: Settings, chromium: Path, key: str) -> dict[str, str]:
    """Sign in, claim the review, read the image's CSS filter before and after revealing it."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(60_000)
        try:
            page.goto(f"http://127.0.0.1:{settings.dashboard.port}/")
            page.locator(".st-key-hitl_sign_in_key input").fill(key)
            page.locator(".st-key-sign_in button").click()
            page.locator(".st-key-claim_next button").first.click()
            image = page.locator('img[data-testid="hitl-image"]')
            image.wait_for()
            before = str(image.evaluate("element => getComputedStyle(element).filter"))
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(BLURRED), full_page=True)
            page.locator(".st-key-reveal_image button").click()
            page.locator('img[data-testid="hitl-image"]:not(.hitl-image-blurred)').wait_for()
            after = str(
                page.locator('img[data-testid="hitl-image"]').evaluate(
                    "element => getComputedStyle(element).filter"
                )
            )
            page.screenshot(path=str(REVEALED), full_page=True)
            return {"before": before, "after": after}
        except Exception:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "image-review-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
