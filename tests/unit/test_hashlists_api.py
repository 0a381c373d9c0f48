"""Hash lists kept in the database (issue 16 parts 2 and 5): admins add hashes through
`/v1/hashlists`; a moderator's removal can add the post's images to a list; the worker's image
stage matches them after its reload. On SQLite with the fake workflow gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.classifier.image_stage import ImageJudge
from moderation.db import crud
from moderation.events import ImageRef, ModerationVerdict, PostSubmitted, ReviewRequested
from moderation.images.store import LocalImageStore
from moderation.services.api import build_app
from moderation.services.api.deps import get_workflows
from moderation.services.api.publisher import InMemoryPublisher
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests.crud_helpers import list_audit
from tests.image_samples import image_ref
from tests.unit.test_reviews_api import FakeWorkflows, make_key


@pytest.fixture
def workflows() -> FakeWorkflows:
    return FakeWorkflows()


@pytest.fixture
def app(
    settings: Settings, publisher: InMemoryPublisher, engine: Engine, workflows: FakeWorkflows
) -> Iterator[FastAPI]:
    app = build_app(settings, publisher=publisher, engine=engine)
    app.dependency_overrides[get_workflows] = lambda: workflows
    yield app


def seed_review(engine: Engine, post_id: str, images: list[ImageRef]) -> str:
    verdict = ModerationVerdict(
        post_id=post_id,
        decision=Decision.REVIEW,
        scores={**dict.fromkeys(CATEGORIES, 0.02), Category.VIOLENCE: 0.55},
        primary_category=Category.VIOLENCE,
        confidence=0.55,
        stage=Stage.MODEL,
        model_version="fast-test",
        policy_version="v1",
        latency_ms=1.0,
    )
    post = PostSubmitted(post_id=post_id, text="look", author_id="a", images=images)
    request = ReviewRequested(post_id=post_id, reason="uncertain", verdict=verdict)
    with Session(engine) as session:
        crud.record_events(session, events=[post, verdict, request])
    return request.review_id


async def test_admins_add_hashes_to_a_list_and_a_repeat_adds_nothing(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    admin = make_key(engine, "admin", name="root")
    entries = [{"kind": "pdq", "hash": image_ref("a").pdq}, {"kind": "md5", "hash": "A" * 32}]
    body = {"category": "violence", "entries": entries}
    first = await client.post("/v1/hashlists/gore-2026/entries", headers=admin, json=body)
    assert first.status_code == 201, first.text
    assert (first.json()["added"], first.json()["entries"]) == (2, 2)
    again = await client.post("/v1/hashlists/gore-2026/entries", headers=admin, json=body)
    assert (again.json()["added"], again.json()["entries"]) == (0, 2)
    listed = await client.get("/v1/hashlists", headers=admin)
    assert [(i["name"], i["category"], i["entries"]) for i in listed.json()["items"]] == [
        ("gore-2026", "violence", 2)
    ]
    with Session(engine) as session:
        assert [e.action for e in list_audit(session, entity="hashlist")] == ["hashlist.add"] * 2


MD5 = [{"kind": "md5", "hash": "a" * 32}]
BAD_INPUT = {
    "safe": ("x", {"category": "safe", "entries": MD5}, 422),
    "not-hex": ("x", {"category": "spam", "entries": [{"kind": "pdq", "hash": "zz" * 32}]}, 422),
    "empty": ("x", {"category": "spam", "entries": []}, 422),
    "name": ("bad name", {"category": "spam", "entries": MD5}, 422),
    "other-category": ("gore", {"category": "spam", "entries": MD5}, 409),
}


@pytest.mark.parametrize(("name", "body", "status"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
async def test_bad_hash_list_input_is_a_clear_4xx_and_adds_nothing(
    client: httpx.AsyncClient, engine: Engine, name: str, body: dict[str, object], status: int
) -> None:
    admin = make_key(engine, "admin", name="root")
    seeded = {"category": "violence", "entries": [{"kind": "md5", "hash": "c" * 32}]}
    assert (await client.post("/v1/hashlists/gore/entries", headers=admin, json=seeded)).is_success
    response = await client.post(f"/v1/hashlists/{name}/entries", headers=admin, json=body)
    assert response.status_code == status, response.text
    listed = (await client.get("/v1/hashlists", headers=admin)).json()["items"]
    assert [(i["name"], i["entries"]) for i in listed] == [("gore", 1)]


async def test_only_admins_touch_hash_lists(client: httpx.AsyncClient, engine: Engine) -> None:
    moderator = make_key(engine, "moderate", name="mod")
    assert (await client.get("/v1/hashlists", headers=moderator)).status_code == 403
    body = {"category": "violence", "entries": [{"kind": "md5", "hash": "a" * 32}]}
    added = await client.post("/v1/hashlists/gore/entries", headers=moderator, json=body)
    assert added.status_code == 403


async def test_a_removal_adds_the_posts_images_and_the_worker_then_matches_a_reupload(
    client: httpx.AsyncClient,
    engine: Engine,
    settings: Settings,
    workflows: FakeWorkflows,
    tmp_path: Path,
) -> None:
    admin = make_key(engine, "admin", name="root")
    moderator = make_key(engine, "moderate", name="mod")
    seeded = {"category": "violence", "entries": [{"kind": "md5", "hash": "c" * 32}]}
    await client.post("/v1/hashlists/gore/entries", headers=admin, json=seeded)
    shown = image_ref("shown")
    review_id = seed_review(engine, "p-img", [shown])
    assert (await client.post(f"/v1/reviews/{review_id}/claim", headers=moderator)).is_success

    wrong = {"label": "spam", "decision": "remove", "add_images_to_hashlist": "gore"}
    refused = await client.post(f"/v1/reviews/{review_id}/decision", headers=moderator, json=wrong)
    assert refused.status_code == 409 and "of category 'violence'" in refused.text
    unknown = {"label": "violence", "decision": "remove", "add_images_to_hashlist": "nope"}
    missing = await client.post(
        f"/v1/reviews/{review_id}/decision", headers=moderator, json=unknown
    )
    assert missing.status_code == 422 and "no hash list 'nope'" in missing.text
    assert workflows.raised == []

    body = {"label": "violence", "decision": "remove", "add_images_to_hashlist": "gore"}
    decided = await client.post(f"/v1/reviews/{review_id}/decision", headers=moderator, json=body)
    assert decided.status_code == 202, decided.text

    # The worker's image stage, reading the database's lists, matches a re-upload at once.
    def database_lists() -> list[object]:
        with Session(engine) as session:
            return list(crud.database_hashlists(session))

    settings.images.hashlist_dir = tmp_path / "no-files"
    judge = ImageJudge(
        settings,
        store=LocalImageStore(tmp_path / "store"),
        detector=None,
        database_lists=database_lists,  # type: ignore[arg-type]
    )
    reupload = PostSubmitted(post_id="p-again", text="again", author_id="b", images=[shown])
    [found] = judge.judge([reupload])
    assert found is not None and found.hit is not None
    assert (found.hit.list_name, found.hit.category) == ("gore", Category.VIOLENCE)
