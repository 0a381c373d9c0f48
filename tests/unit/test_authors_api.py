"""`/v1/authors` on SQLite with the in-memory publisher: an author's history and standing per
tenant, and the author's appeal of an action, overturned through the recorder's projection."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session, select

from moderation.db import crud
from moderation.db.models import AuthorAction, Review
from moderation.events import (
    Event,
    ModerationVerdict,
    PostSubmitted,
    ReviewDecided,
    ReviewPriority,
    ReviewRequested,
)
from moderation.policy import load_enforcement
from moderation.services.api import build_app
from moderation.services.api.publisher import InMemoryPublisher
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage


@pytest.fixture
def app(settings: Settings, publisher: InMemoryPublisher, engine: Engine) -> FastAPI:
    return build_app(settings, publisher=publisher, engine=engine)


def key(
    engine: Engine, *scopes: str, tenant: str = "default", granted: list[str] | None = None
) -> dict[str, str]:
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(
            session, name="k", scopes=list(scopes), tenant=tenant, granted_tenants=granted
        )
    return {"Authorization": f"Bearer {plaintext}"}


def removal(post_id: str) -> ModerationVerdict:
    return ModerationVerdict(
        post_id=post_id,
        decision=Decision.REMOVE,
        scores=dict.fromkeys(CATEGORIES, 0.1),
        primary_category=Category.HARASSMENT,
        confidence=0.95,
        stage=Stage.MODEL,
        model_version="fast-1",
        policy_version="v1",
        latency_ms=1.0,
    )


def recorded(engine: Engine, *events: Event) -> None:
    with Session(engine) as session:
        crud.record_events(session, events=list(events), enforcement=load_enforcement())


def removed_posts(engine: Engine, count: int, author: str = "a1", tenant: str = "default") -> None:
    for number in range(1, count + 1):
        post_id = f"{tenant}-{author}-p{number}"
        recorded(
            engine,
            PostSubmitted(post_id=post_id, text=f"post {number}", author_id=author, tenant=tenant),
            removal(post_id),
        )


async def test_an_author_with_posts_strikes_and_actions(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    removed_posts(engine, 3)
    answer = await client.get("/v1/authors/a1", headers=key(engine, "read"))
    assert answer.status_code == 200, answer.text
    author = answer.json()
    assert (author["tenant"], author["author_id"], author["post_count"]) == ("default", "a1", 3)
    assert [p["post_id"] for p in author["posts"]][0] == "default-a1-p3"  # newest first
    assert {v["decision"] for v in author["verdicts"]} == {"remove"}
    assert [s["state"] for s in author["strikes"]] == ["active"] * 3
    assert [a["action"] for a in author["actions"]] == ["suspend", "rate_limit", "warn"]
    standing = author["standing"]
    assert (standing["status"], standing["active_strikes"]) == ("suspended", 3)
    assert standing["action_id"] == author["actions"][0]["action_id"]
    assert standing["until"] is not None
    page = await client.get(
        "/v1/authors/a1", params={"limit": 1, "offset": 1}, headers=key(engine, "read")
    )
    assert [p["post_id"] for p in page.json()["posts"]] == ["default-a1-p2"]


async def test_authors_are_per_tenant_and_others_are_404(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    removed_posts(engine, 1, tenant="t1")
    removed_posts(engine, 2, tenant="t2")
    t1 = key(engine, "read", tenant="t1")
    own = (await client.get("/v1/authors/a1", headers=t1)).json()
    assert (own["tenant"], own["post_count"], own["standing"]["status"]) == ("t1", 1, "warned")
    assert (await client.get("/v1/authors/a1?tenant=t2", headers=t1)).status_code == 404
    assert (await client.get("/v1/authors/nobody", headers=t1)).status_code == 404
    moderator = key(engine, "moderate", tenant="t1", granted=["t2"])
    other = await client.get("/v1/authors/a1?tenant=t2", headers=moderator)
    assert other.status_code == 200 and other.json()["post_count"] == 2
    refused = await client.get("/v1/authors/a1", headers=key(engine, "submit", tenant="t1"))
    assert refused.status_code == 403
    bad = await client.get("/v1/authors/a1?tenant=NOT%20A%20TENANT", headers=t1)
    assert bad.status_code == 422


async def test_an_appealed_action_is_reversed_when_the_appeal_is_allowed(
    client: httpx.AsyncClient, engine: Engine, publisher: InMemoryPublisher
) -> None:
    removed_posts(engine, 2)
    author = (await client.get("/v1/authors/a1", headers=key(engine, "read"))).json()
    rate_limit = author["actions"][0]
    assert rate_limit["action"] == "rate_limit"
    submit = key(engine, "submit")
    url = f"/v1/authors/a1/actions/{rate_limit['action_id']}/appeal"
    answer = await client.post(url, json={"reason": "it was a joke"}, headers=submit)
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    post_id = "default-a1-p2"  # the latest strike the rate limit counted
    assert (accepted["review_id"], accepted["post_id"]) == (f"review-{post_id}-appeal-1", post_id)
    [(topic, _key, value)] = publisher.records
    request = ReviewRequested.model_validate_json(value)
    assert topic == "review.requested" and request.priority is ReviewPriority.HIGH
    with Session(engine) as session:
        rows = crud.get_author(session, tenant="default", author_id="a1", limit=5, offset=0)
        assert rows is not None
        strike = next(s for s in rows.strikes if s.post_id == post_id)
        review = session.exec(select(Review).where(Review.review_id == request.review_id)).one()
    # An automated removal is appealed by naming the verdict that removed it.
    assert request.appeal_of == strike.cause_event_id == accepted["appeal_of"]
    assert review.appeal_of == strike.cause_event_id
    again = await client.post(url, json={"reason": "again"}, headers=submit)
    assert again.status_code == 409 and "open appeal" in again.json()["detail"]

    # A moderator allows the appeal; the recorder overturns the strike and reverses the action.
    recorded(
        engine,
        ReviewDecided(
            review_id=request.review_id,
            post_id=post_id,
            label=Category.SAFE,
            decision=Decision.ALLOW,
            moderator_id="key:9",
        ),
    )
    after = (await client.get("/v1/authors/a1", headers=key(engine, "read"))).json()
    reversal = after["actions"][0]
    assert (reversal["action"], reversal["reverses"]) == ("reverse", rate_limit["action_id"])
    assert after["standing"]["status"] == "warned" and after["standing"]["active_strikes"] == 1
    assert sorted(s["state"] for s in after["strikes"]) == ["active", "overturned"]
    reversed_again = await client.post(url, json={"reason": "x"}, headers=submit)
    assert (
        reversed_again.status_code == 409 and "already reversed" in reversed_again.json()["detail"]
    )
    of_reversal = f"/v1/authors/a1/actions/{reversal['action_id']}/appeal"
    assert (await client.post(of_reversal, json={"reason": "x"}, headers=submit)).status_code == 409


async def test_bad_appeals_are_refused_and_record_nothing(
    client: httpx.AsyncClient, engine: Engine, publisher: InMemoryPublisher
) -> None:
    removed_posts(engine, 1)
    with Session(engine) as session:
        [action] = session.exec(select(AuthorAction)).all()
    url = f"/v1/authors/a1/actions/{action.action_id}/appeal"
    other_tenant = key(engine, "submit", tenant="t2")
    assert (await client.post(url, json={"reason": "x"}, headers=other_tenant)).status_code == 404
    wrong_author = f"/v1/authors/a2/actions/{action.action_id}/appeal"
    assert (
        await client.post(wrong_author, json={"reason": "x"}, headers=key(engine, "submit"))
    ).status_code == 404
    too_long = await client.post(url, json={"reason": "x" * 2_001}, headers=key(engine, "submit"))
    assert too_long.status_code == 422
    assert (
        await client.post(url, json={"reason": "x"}, headers=key(engine, "read"))
    ).status_code == 403
    publisher.available = False
    down = await client.post(url, json={"reason": "x"}, headers=key(engine, "submit"))
    assert down.status_code == 503
    assert publisher.records == []
    with Session(engine) as session:
        assert session.exec(select(Review)).all() == []
