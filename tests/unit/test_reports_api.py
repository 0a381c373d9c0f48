"""`POST /v1/reports` on SQLite with the in-memory publisher: dedupe, weights, the priority raise,
the reopen past the threshold, the per-reporter limit, and every refusal recording nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from moderation.db import crud
from moderation.db.models import AuditLog, Report, Review
from moderation.db.schemas import REPORT_REASONS
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
from moderation.settings import ReportSettings, Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage

REVIEW_TOPIC = "review.requested"


@pytest.fixture
def settings() -> Settings:
    return Settings(reports=ReportSettings(per_reporter_limit=3))


@pytest.fixture
def app(settings: Settings, publisher: InMemoryPublisher, engine: Engine) -> FastAPI:
    return build_app(settings, publisher=publisher, engine=engine)


def key(engine: Engine, *scopes: str, tenant: str = "default") -> dict[str, str]:
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(
            session, name=f"k-{tenant}", scopes=list(scopes), tenant=tenant
        )
    return {"Authorization": f"Bearer {plaintext}"}


def verdict(post_id: str, decision: Decision) -> ModerationVerdict:
    return ModerationVerdict(
        post_id=post_id,
        decision=decision,
        scores=dict.fromkeys(CATEGORIES, 0.1),
        primary_category=Category.SAFE if decision is Decision.ALLOW else Category.SPAM,
        confidence=0.9,
        stage=Stage.MODEL,
        model_version="fast-1",
        policy_version="v1",
        latency_ms=1.0,
    )


def recorded(engine: Engine, *events: Event) -> None:
    """As the recorder records them (with the enforcement policy)."""
    with Session(engine) as session:
        crud.record_events(session, events=list(events), enforcement=load_enforcement())


def allowed_post(engine: Engine, post_id: str, tenant: str = "default") -> None:
    recorded(
        engine,
        PostSubmitted(post_id=post_id, text="hello", author_id="a1", tenant=tenant),
        verdict(post_id, Decision.ALLOW),
    )


def body(post_id: str, reporter: str, reason: str = "spam", text: str = "") -> dict[str, Any]:
    return {"post_id": post_id, "reason": reason, "text": text, "reporter_id": reporter}


def reports(engine: Engine) -> list[Report]:
    with Session(engine) as session:
        return list(session.exec(select(Report).order_by(col(Report.created_at))).all())


def reviews(engine: Engine, post_id: str) -> list[Review]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Review).where(Review.post_id == post_id).order_by(col(Review.id))
            ).all()
        )


def reopens(publisher: InMemoryPublisher) -> list[ReviewRequested]:
    return [
        ReviewRequested.model_validate_json(value)
        for topic, _key, value in publisher.records
        if topic == REVIEW_TOPIC
    ]


async def test_a_report_is_recorded_once_per_reporter_and_post(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    allowed_post(engine, "p1")
    headers = key(engine, "report")
    first = await client.post("/v1/reports", json=body("p1", "u1", text="spam!"), headers=headers)
    assert first.status_code == 201, first.text
    answer = first.json()
    assert (answer["status"], answer["weight"], answer["reason"]) == ("open", 0.5, "spam")
    again = await client.post("/v1/reports", json=body("p1", "u1", "hate"), headers=headers)
    assert again.status_code == 200
    assert again.json()["report_id"] == answer["report_id"]
    assert len(reports(engine)) == 1
    other = await client.post("/v1/reports", json=body("p1", "u2"), headers=headers)
    assert other.status_code == 201 and len(reports(engine)) == 2


@pytest.mark.parametrize(
    ("payload", "status", "says"),
    [
        (body("p1", "u1", reason="ugly"), 422, "unknown reason 'ugly'; choose one of spam"),
        (body("p1", "u1", reason="safe"), 422, "unknown reason 'safe'"),
        (body("p1", "u1", text="x" * 2_001), 422, "text"),
        (body("p1", "u1", text="a\x00b"), 422, "NUL"),
        (body("p1", ""), 422, "reporter_id"),
        ({**body("p1", "u1"), "extra": 1}, 422, "extra"),
        ({"post_id": "p1", "reason": "spam"}, 422, "reporter_id"),
        (body("nope", "u1"), 404, "post 'nope' not found"),
    ],
)
async def test_bad_reports_get_a_clear_4xx_and_record_nothing(
    client: httpx.AsyncClient, engine: Engine, payload: dict[str, Any], status: int, says: str
) -> None:
    allowed_post(engine, "p1")
    answer = await client.post("/v1/reports", json=payload, headers=key(engine, "report"))
    assert answer.status_code == status, answer.text
    assert says in answer.json()["detail"]
    assert reports(engine) == []


async def test_the_unknown_reason_answer_lists_the_valid_ones(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    allowed_post(engine, "p1")
    answer = await client.post(
        "/v1/reports", json=body("p1", "u1", reason="meh"), headers=key(engine, "report")
    )
    assert answer.status_code == 422
    assert ", ".join(REPORT_REASONS) in answer.json()["detail"]


async def test_a_2_mb_report_is_refused_with_413(client: httpx.AsyncClient, engine: Engine) -> None:
    allowed_post(engine, "p1")
    huge = body("p1", "u1", text="x" * (2 * 1024 * 1024))
    answer = await client.post("/v1/reports", json=huge, headers=key(engine, "report"))
    assert answer.status_code == 413
    assert "too large" in answer.json()["detail"]
    assert reports(engine) == []


async def test_scope_and_tenant(client: httpx.AsyncClient, engine: Engine) -> None:
    allowed_post(engine, "p1", tenant="t1")
    refused = await client.post("/v1/reports", json=body("p1", "u1"), headers=key(engine, "read"))
    assert refused.status_code == 403 and "report" in refused.json()["detail"]
    # Another tenant's post does not exist for this key.
    other = await client.post(
        "/v1/reports", json=body("p1", "u1"), headers=key(engine, "report", tenant="t2")
    )
    assert other.status_code == 404
    own = await client.post(
        "/v1/reports", json=body("p1", "u1"), headers=key(engine, "report", tenant="t1")
    )
    assert own.status_code == 201
    [report] = reports(engine)
    assert report.tenant == "t1"
    # Its audit entry belongs to the tenant too: keys restricted to other tenants never see it.
    with Session(engine) as session:
        [audit] = session.exec(select(AuditLog).where(AuditLog.action == "report.file")).all()
    assert audit.tenant == "t1"


async def test_the_per_reporter_limit_answers_429(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    headers = key(engine, "report")
    for number in range(5):
        allowed_post(engine, f"p{number}")
    for number in range(3):
        answer = await client.post("/v1/reports", json=body(f"p{number}", "u1"), headers=headers)
        assert answer.status_code == 201
    refused = await client.post("/v1/reports", json=body("p3", "u1"), headers=headers)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 3_600
    assert "reporter 'u1' filed 3 reports" in refused.json()["detail"]
    assert len(reports(engine)) == 3
    # A duplicate is no new report: it is answered, not limited; other reporters are not held.
    assert (
        await client.post("/v1/reports", json=body("p0", "u1"), headers=headers)
    ).status_code == 200
    assert (
        await client.post("/v1/reports", json=body("p3", "u2"), headers=headers)
    ).status_code == 201


async def test_reports_raise_the_open_reviews_priority_once(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    review = ReviewRequested(post_id="p1", reason="unsure", verdict=verdict("p1", Decision.REVIEW))
    recorded(engine, PostSubmitted(post_id="p1", text="hm", author_id="a1"), review)
    headers = key(engine, "report")
    await client.post("/v1/reports", json=body("p1", "u1"), headers=headers)
    assert reviews(engine, "p1")[0].priority == "normal"  # 0.5 < 1.0
    await client.post("/v1/reports", json=body("p1", "u2"), headers=headers)
    assert reviews(engine, "p1")[0].priority == "high"  # 1.0: crossed
    await client.post("/v1/reports", json=body("p1", "u3"), headers=headers)
    assert reviews(engine, "p1")[0].priority == "high"  # once per crossing
    with Session(engine) as session:
        audits = session.exec(select(AuditLog).where(AuditLog.action == "review.reported")).all()
    assert [(a.entity_id, (a.after or {})["priority"]) for a in audits] == [("review-p1", "high")]
    assert [a.tenant for a in audits] == ["default"]


async def test_reports_past_the_threshold_reopen_an_allowed_post_once(
    client: httpx.AsyncClient, engine: Engine, publisher: InMemoryPublisher
) -> None:
    allowed_post(engine, "p1")
    headers = key(engine, "report")
    for reporter in ("u1", "u2"):
        await client.post("/v1/reports", json=body("p1", reporter), headers=headers)
    assert reopens(publisher) == [] and reviews(engine, "p1") == []
    third = await client.post("/v1/reports", json=body("p1", "u3", "hate"), headers=headers)
    assert third.status_code == 201 and third.json()["review_id"] == "review-p1-report-1"
    [reopen] = reopens(publisher)
    assert (reopen.review_id, reopen.priority, reopen.reason) == (
        "review-p1-report-1",
        ReviewPriority.HIGH,
        "reported: hate, spam",
    )
    [review] = reviews(engine, "p1")  # recorded at once, with the report
    assert review.review_id == "review-p1-report-1" and review.priority == "high"
    await client.post("/v1/reports", json=body("p1", "u4"), headers=headers)
    assert len(reopens(publisher)) == 1  # the review is open: no second reopen

    # The moderator allows the post: the recorder rejects the reports, their reporters count less.
    allow = ReviewDecided(
        review_id="review-p1-report-1",
        post_id="p1",
        label=Category.SAFE,
        decision=Decision.ALLOW,
        moderator_id="key:1",
    )
    recorded(engine, allow)
    assert {r.outcome for r in reports(engine)} == {"rejected"}
    with Session(engine) as session:
        assert crud.reporter_weight(session, tenant="default", reporter_id="u1") == 1 / 3
        outbox = crud.unpublished_report_resolutions(session)
    assert len(outbox) == 4 and {r.decision_event_id for r in outbox} == {allow.event_id}

    # New reports cross the threshold again: a second reopen, counted with the new weights.
    for reporter in ("u5", "u6", "u7"):
        await client.post("/v1/reports", json=body("p1", reporter), headers=headers)
    assert [r.review_id for r in reopens(publisher)] == ["review-p1-report-1", "review-p1-report-2"]


async def test_a_reporter_whose_reports_are_rejected_counts_less(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    headers = key(engine, "report")
    for post_id in ("p1", "p2", "p3"):
        allowed_post(engine, post_id)
    for post_id in ("p1", "p2"):
        await client.post("/v1/reports", json=body(post_id, "u1"), headers=headers)
        recorded(
            engine,
            ReviewDecided(
                post_id=post_id, label=Category.SAFE, decision=Decision.ALLOW, moderator_id="m"
            ),
        )
    answer = await client.post("/v1/reports", json=body("p3", "u1"), headers=headers)
    assert answer.json()["weight"] == 0.25  # (0 upheld + 1) / (2 resolved + 2)


async def test_a_report_of_a_removed_post_is_upheld_at_once(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    removal = verdict("p1", Decision.REMOVE)
    recorded(engine, PostSubmitted(post_id="p1", text="buy", author_id="a1"), removal)
    answer = await client.post("/v1/reports", json=body("p1", "u1"), headers=key(engine, "report"))
    assert answer.status_code == 201 and answer.json()["status"] == "upheld"
    with Session(engine) as session:
        [pending] = crud.unpublished_report_resolutions(session)
    event = crud.report_resolved_event(pending)
    assert (event.outcome.value, event.decision_event_id) == ("upheld", removal.event_id)


async def test_kafka_down_at_a_reopen_records_nothing(
    client: httpx.AsyncClient, engine: Engine, publisher: InMemoryPublisher
) -> None:
    allowed_post(engine, "p1")
    headers = key(engine, "report")
    for reporter in ("u1", "u2"):
        await client.post("/v1/reports", json=body("p1", reporter), headers=headers)
    publisher.available = False
    answer = await client.post("/v1/reports", json=body("p1", "u3"), headers=headers)
    assert answer.status_code == 503 and "Retry-After" in answer.headers
    assert len(reports(engine)) == 2 and reviews(engine, "p1") == []
    publisher.available = True
    retried = await client.post("/v1/reports", json=body("p1", "u3"), headers=headers)
    assert retried.status_code == 201 and retried.json()["review_id"] == "review-p1-report-1"
