"""Bulk decisions (`POST /v1/reviews/bulk-decision`) and the queue's language and author
filters, on SQLite with the fake workflow gateway of `test_reviews_api`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.models import ReviewStatus
from moderation.db.schemas import MAX_BULK_DECISIONS
from moderation.events import (
    ModerationVerdict,
    PostSubmitted,
    ReviewPriority,
    ReviewRequested,
    utc_now,
)
from moderation.services.api import build_app
from moderation.services.api.publisher import InMemoryPublisher
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests import crud_helpers
from tests.unit.test_reviews_api import FakeWorkflows, make_key, who

BULK = "/v1/reviews/bulk-decision"
REMOVE = {"label": "spam", "decision": "remove", "note": "link farm"}


@pytest.fixture
def workflows() -> FakeWorkflows:
    return FakeWorkflows()


@pytest.fixture
def app(
    settings: Settings, publisher: InMemoryPublisher, engine: Engine, workflows: FakeWorkflows
) -> FastAPI:
    return build_app(settings, publisher=publisher, engine=engine, workflows=workflows)


@pytest.fixture
def alice(engine: Engine) -> dict[str, str]:
    return make_key(engine, "moderate", name="alice")


@pytest.fixture
def bob(engine: Engine) -> dict[str, str]:
    return make_key(engine, "moderate", name="bob")


@pytest.fixture
def admin(engine: Engine) -> dict[str, str]:
    return make_key(engine, "admin", name="root")


def seed(
    engine: Engine,
    post_id: str,
    *,
    author: str = "author-1",
    lang: str | None = None,
    signals: tuple[str, ...] = (),
    category: Category = Category.SPAM,
    tenant: str = "default",
) -> str:
    """A recorded post (metadata `lang` when given) with a model verdict carrying `signals`
    and an open review; returns the review id."""
    verdict = ModerationVerdict(
        post_id=post_id,
        decision=Decision.REVIEW,
        scores={**dict.fromkeys(CATEGORIES, 0.02), category: 0.55},
        primary_category=category,
        confidence=0.55,
        stage=Stage.MODEL,
        model_version="fast-test",
        policy_version="v1",
        latency_ms=3.0,
        signals=list(signals),
    )
    request = ReviewRequested(
        post_id=post_id, reason="uncertain", priority=ReviewPriority.NORMAL, verdict=verdict
    )
    post = PostSubmitted(
        post_id=post_id,
        text=f"text of {post_id}",
        author_id=author,
        tenant=tenant,
        metadata={"lang": lang} if lang is not None else {},
    )
    with Session(engine) as session:
        crud.record_events(session, events=[post, verdict, request])
    return request.review_id


def review(engine: Engine, review_id: str) -> crud.ReviewView:
    with Session(engine) as session:
        view = crud.get_review(session, review_id=review_id, now=utc_now())
    assert view is not None
    return view


def actions(engine: Engine, review_id: str) -> list[str]:
    with Session(engine) as session:
        entries = crud_helpers.list_audit(session, entity="review", entity_id=review_id)
    return [entry.action for entry in entries]


def all_review_audit(engine: Engine) -> list[tuple[str, str]]:
    with Session(engine) as session:
        entries = crud_helpers.list_audit(session, entity="review")
    return [(entry.action, entry.entity_id) for entry in entries]


async def claim(client: httpx.AsyncClient, review_id: str, key: dict[str, str]) -> None:
    response = await client.post(f"/v1/reviews/{review_id}/claim", headers=key)
    assert response.status_code == 200, response.text


# --- the body: 422 before anything is recorded ------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (REMOVE, "exactly one of review_ids and author_id"),
        ({**REMOVE, "review_ids": ["review-p1"], "author_id": "a"}, "exactly one of"),
        ({**REMOVE, "review_ids": []}, "review_ids"),
        ({**REMOVE, "review_ids": [f"r{i}" for i in range(MAX_BULK_DECISIONS + 1)]}, "500"),
        ({**REMOVE, "review_ids": ["review-p1", "review-p1"]}, "more than once"),
        ({**REMOVE, "review_ids": ["review-p1"], "tenant": "default"}, "only with author_id"),
        ({**REMOVE, "review_ids": ["review-p1"], "label": "spam", "decision": "allow"}, "safe"),
        ({**REMOVE, "review_ids": ["review-p1"], "decision": "review"}, "decision"),
        ({**REMOVE, "review_ids": ["review-p1"], "extra": 1}, "extra"),
    ],
)
async def test_a_bad_body_is_422_naming_the_problem_and_records_nothing(
    client: httpx.AsyncClient,
    engine: Engine,
    alice: dict[str, str],
    workflows: FakeWorkflows,
    body: dict[str, Any],
    problem: str,
) -> None:
    seed(engine, "p1")

    response = await client.post(BULK, json=body, headers=alice)

    assert response.status_code == 422, response.text
    assert problem in response.text
    assert workflows.raised == []
    assert all_review_audit(engine) == []
    assert review(engine, "review-p1").status is ReviewStatus.PENDING


async def test_more_than_500_open_reviews_of_an_author_is_422_and_decides_none(
    client: httpx.AsyncClient, engine: Engine, alice: dict[str, str], workflows: FakeWorkflows
) -> None:
    for i in range(MAX_BULK_DECISIONS + 1):
        seed(engine, f"many-{i}", author="prolific")

    response = await client.post(BULK, json={**REMOVE, "author_id": "prolific"}, headers=alice)

    assert response.status_code == 422
    assert "501 open reviews" in response.json()["detail"]
    assert workflows.raised == [] and all_review_audit(engine) == []


# --- deciding ----------------------------------------------------------------------------------


async def test_listed_reviews_are_claimed_and_decided_one_by_one_and_anothers_claim_is_skipped(
    client: httpx.AsyncClient,
    engine: Engine,
    alice: dict[str, str],
    bob: dict[str, str],
    workflows: FakeWorkflows,
) -> None:
    free, mine, bobs = seed(engine, "free"), seed(engine, "mine"), seed(engine, "bobs")
    done = seed(engine, "done")
    await claim(client, mine, alice)
    await claim(client, bobs, bob)
    await claim(client, done, bob)
    decided_by_bob = await client.post(f"/v1/reviews/{done}/decision", json=REMOVE, headers=bob)
    assert decided_by_bob.status_code == 202

    response = await client.post(
        BULK,
        json={**REMOVE, "review_ids": [free, mine, bobs, done, "review-nope"]},
        headers=alice,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    outcomes = {item["review_id"]: item for item in body["outcomes"]}
    assert [item["review_id"] for item in body["outcomes"]] == [
        free,
        mine,
        bobs,
        done,
        "review-nope",
    ]
    assert (body["decided"], body["skipped"], body["failed"]) == (2, 3, 0)
    assert outcomes[free]["outcome"] == outcomes[mine]["outcome"] == "decided"
    assert outcomes[bobs]["outcome"] == "skipped"
    assert "claimed by 'bob" in outcomes[bobs]["reason"]
    assert outcomes[done] == {
        "review_id": done,
        "outcome": "skipped",
        "reason": f"review '{done}' is already decided",
        "event_id": None,
    }
    assert outcomes["review-nope"]["reason"] == "review 'review-nope' not found"
    # Each decided review's own event went to its own workflow, as the single path's.
    raised = dict(workflows.raised)
    assert set(raised) == {free, mine, done}
    for review_id in (free, mine):
        payload = raised[review_id]
        assert payload["event_id"] == outcomes[review_id]["event_id"]
        assert (payload["label"], payload["decision"], payload["note"]) == (
            "spam",
            "remove",
            "link farm",
        )
        assert payload["moderator_id"] == who(engine, "alice")
        assert payload["overrode"] == "review"
        assert review(engine, review_id).status is ReviewStatus.DECIDED
    # Bob's claim stands; one audited decision per decided review (the free one claimed first).
    kept = review(engine, bobs)
    assert kept.status is ReviewStatus.CLAIMED and kept.review.claimed_by == who(engine, "bob")
    assert actions(engine, free) == ["review.claim", "review.decide"]
    assert actions(engine, mine) == ["review.claim", "review.claim", "review.decide"]
    assert actions(engine, bobs) == ["review.claim"]


async def test_an_admin_decides_a_review_another_moderator_holds(
    client: httpx.AsyncClient,
    engine: Engine,
    admin: dict[str, str],
    bob: dict[str, str],
    workflows: FakeWorkflows,
) -> None:
    bobs = seed(engine, "bobs")
    await claim(client, bobs, bob)

    response = await client.post(BULK, json={**REMOVE, "review_ids": [bobs]}, headers=admin)

    assert response.json()["decided"] == 1
    assert [review_id for review_id, _ in workflows.raised] == [bobs]
    with Session(engine) as session:
        [*_, decide] = crud_helpers.list_audit(session, entity="review", entity_id=bobs)
    assert decide.action == "review.decide" and decide.after is not None
    assert decide.after["as_admin"] is True


async def test_an_unreachable_workflow_reopens_each_review_and_reports_it_failed(
    client: httpx.AsyncClient, engine: Engine, alice: dict[str, str], workflows: FakeWorkflows
) -> None:
    first, second = seed(engine, "p1"), seed(engine, "p2")
    workflows.available = False

    response = await client.post(
        BULK, json={**REMOVE, "review_ids": [first, second]}, headers=alice
    )

    assert response.status_code == 200
    body = response.json()
    assert (body["decided"], body["skipped"], body["failed"]) == (0, 0, 2)
    for item in body["outcomes"]:
        assert item["outcome"] == "failed" and item["event_id"] is None
        assert "simulated outage" in item["reason"] and "reopened" in item["reason"]
        reopened = review(engine, item["review_id"])
        assert reopened.status is ReviewStatus.CLAIMED  # claimed by alice again, as the single
        assert reopened.review.decided_at is None
        assert actions(engine, item["review_id"]) == [
            "review.claim",
            "review.decide",
            "review.decide.revert",
        ]


async def test_an_authors_open_reviews_are_decided_and_no_one_elses(
    client: httpx.AsyncClient, engine: Engine, alice: dict[str, str], workflows: FakeWorkflows
) -> None:
    own = [seed(engine, f"spammer-{i}", author="spammer") for i in range(3)]
    other = seed(engine, "bystander", author="someone-else")

    response = await client.post(BULK, json={**REMOVE, "author_id": "spammer"}, headers=alice)

    body = response.json()
    assert body["decided"] == 3 and {item["review_id"] for item in body["outcomes"]} == set(own)
    assert sorted(review_id for review_id, _ in workflows.raised) == sorted(own)
    decides = [entity for action, entity in all_review_audit(engine) if action == "review.decide"]
    assert sorted(decides) == sorted(own)  # one audit row per decided review
    assert review(engine, other).status is ReviewStatus.PENDING
    # Decided reviews are no longer open: a second call finds none.
    again = await client.post(BULK, json={**REMOVE, "author_id": "spammer"}, headers=alice)
    assert again.json() == {"outcomes": [], "decided": 0, "voted": 0, "skipped": 0, "failed": 0}


async def test_an_author_in_a_tenant_the_key_does_not_see_is_404(
    client: httpx.AsyncClient, engine: Engine, workflows: FakeWorkflows
) -> None:
    seed(engine, "theirs", author="spammer", tenant="other")
    seed(engine, "ours", author="spammer", tenant="mine")
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(
            session, name="mine-mod", scopes=["moderate"], tenant="mine"
        )
    key = {"Authorization": f"Bearer {plaintext}"}

    hidden = await client.post(
        BULK, json={**REMOVE, "author_id": "spammer", "tenant": "other"}, headers=key
    )
    listed = await client.post(BULK, json={**REMOVE, "review_ids": ["review-theirs"]}, headers=key)
    own = await client.post(BULK, json={**REMOVE, "author_id": "spammer"}, headers=key)

    assert hidden.status_code == 404
    assert listed.json()["outcomes"][0]["reason"] == "review 'review-theirs' not found"
    assert [item["review_id"] for item in own.json()["outcomes"]] == ["review-ours"]
    assert [review_id for review_id, _ in workflows.raised] == ["review-ours"]


# --- queue filters -----------------------------------------------------------------------------


async def test_the_queue_filters_by_language_author_and_category(
    client: httpx.AsyncClient, engine: Engine, alice: dict[str, str]
) -> None:
    seed(engine, "declared-ja", lang="ja", author="kenji")
    seed(engine, "detected-ja", signals=("unreadable:language:ja",), author="kenji")
    # The submitter's metadata wins over what stage 1 detected.
    seed(engine, "declared-en", lang="EN", signals=("unreadable:language:ja",))
    seed(engine, "unknown", category=Category.HARASSMENT)
    seed(engine, "detected-jav", signals=("unreadable:language:jav",))

    async def queue(query: str) -> list[str]:
        response = await client.get(f"/v1/reviews?{query}", headers=alice)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == len(body["items"])
        return sorted(item["post_id"] for item in body["items"])

    assert await queue("language=ja") == ["declared-ja", "detected-ja"]
    assert await queue("language=en") == ["declared-en"]
    assert await queue("language=jav") == ["detected-jav"]
    assert await queue("language=fr") == []
    assert await queue("author_id=kenji") == ["declared-ja", "detected-ja"]
    assert await queue("author_id=kenji&language=ja&category=spam") == [
        "declared-ja",
        "detected-ja",
    ]
    assert await queue("category=harassment") == ["unknown"]
    bad = await client.get("/v1/reviews?language=ja%25", headers=alice)
    assert bad.status_code == 422 and "language" in bad.text


async def test_claim_next_takes_the_next_review_in_a_language(
    client: httpx.AsyncClient, engine: Engine, alice: dict[str, str]
) -> None:
    seed(engine, "english", lang="en")
    seed(engine, "japanese", signals=("unreadable:language:ja",))

    first = await client.post("/v1/reviews/claim-next?language=ja", headers=alice)
    second = await client.post("/v1/reviews/claim-next?language=ja", headers=alice)
    none = await client.post("/v1/reviews/claim-next?language=fr", headers=alice)

    assert first.json()["post_id"] == second.json()["post_id"] == "japanese"
    assert none.status_code == 204
