"""Bulk decisions through the real stack: Kafka, PostgreSQL, daprd + placement + scheduler, and
the worker, recorder, review service and API as processes.

Fifty posts of one author become fifty reviews (one Dapr workflow each, as `test_review_flow`);
one `POST /v1/reviews/bulk-decision` naming the author decides them all: each decision is
audited, raised to its own workflow, which records it and publishes it to `review.decisions`,
and completes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from functools import partial

import pytest
from aiokafka import AIOKafkaConsumer
from dapr.ext.workflow import WorkflowStatus
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from moderation.db import crud
from moderation.db.models import AuditLog, HumanDecision, Review
from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices
from moderation.events import (
    ModerationVerdict,
    PostSubmitted,
    ReviewPriority,
    ReviewRequested,
    review_id_for,
    utc_now,
)
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests.integration.streams import (
    STAGE_ONE_DECIDES_NOTHING,
    kafka_admin_auth,
    produce,
    running_services,
    topics_of_their_own,
    wait_for,
)
from tests.integration.test_review_flow import api, workflow_status

pytestmark = pytest.mark.integration

POSTS = 50


@pytest.fixture(scope="module")
def bulk_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    with topics_of_their_own(settings, "bulk") as isolated:
        yield isolated


@pytest.fixture(scope="module")
def services(
    bulk_settings: Settings, dapr: DaprRuntime, postgres: PostgresCluster
) -> Iterator[PipelineServices]:
    """The review service with its daprd delivering `review.requested` to it."""
    running = PipelineServices(
        bulk_settings,
        extra_env={"MODERATION_AGENT__ENABLED": "false", **STAGE_ONE_DECIDES_NOTHING},
    )
    with running_services(running, "recorder", "worker", "api", "review", dapr=dapr):
        yield running


def tasks_created(engine: Engine, review_ids: list[str]) -> bool:
    """Every review's workflow ran its first activity (the row has its SLA)."""
    with Session(engine) as session:
        count = session.exec(
            select(func.count())
            .select_from(Review)
            .where(col(Review.review_id).in_(review_ids), col(Review.sla_due_at).is_not(None))
        ).one()
    return count == len(review_ids)


def recorded(engine: Engine, review_ids: list[str]) -> list[HumanDecision] | None:
    with Session(engine) as session:
        rows = session.exec(
            select(HumanDecision).where(col(HumanDecision.review_id).in_(review_ids))
        ).all()
    return list(rows) if len(rows) == len(review_ids) else None


def all_completed(settings: Settings, review_ids: list[str]) -> bool:
    return all(
        workflow_status(settings, review_id) == WorkflowStatus.COMPLETED for review_id in review_ids
    )


async def published_decisions(
    settings: Settings, review_ids: set[str], within: float
) -> dict[str, dict[str, object]]:
    """review_id → its `review.decisions` event, once every one of `review_ids` has one."""
    consumer = AIOKafkaConsumer(
        settings.kafka.topics.review_decisions,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        **kafka_admin_auth(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    found: dict[str, dict[str, object]] = {}
    await consumer.start()
    try:
        async with asyncio.timeout(within):
            async for record in consumer:
                event = json.loads(record.value or b"{}")
                if event.get("review_id") in review_ids:
                    found[event["review_id"]] = event
                if len(found) == len(review_ids):
                    return found
    finally:
        await consumer.stop()
    raise AssertionError("unreachable")


@pytest.mark.timeout(600)
async def test_bulk_decision_of_an_authors_50_open_reviews_decides_audits_and_completes_each(
    services: PipelineServices, bulk_settings: Settings, read_model: Engine
) -> None:
    author = f"bulk-author-{uuid.uuid4().hex[:8]}"
    posts = [
        PostSubmitted(post_id=uuid.uuid4().hex, text=f"Cheap pills, offer {i}", author_id=author)
        for i in range(POSTS)
    ]
    review_ids = [review_id_for(post.post_id) for post in posts]
    with Session(read_model) as session:
        key, _ = crud.create_api_key(
            session, name=f"bulk-mod-{uuid.uuid4().hex[:6]}", scopes=["moderate"]
        )
        moderator = crud.authenticate_api_key(session, key=key)
    assert moderator is not None
    await produce(bulk_settings, posts)
    await asyncio.to_thread(
        wait_for, partial(tasks_created, read_model, review_ids), 300, "50 review tasks"
    )
    for review_id in review_ids:
        assert workflow_status(bulk_settings, review_id) == WorkflowStatus.RUNNING

    with api(bulk_settings, key) as client:
        queue = client.get("/v1/reviews", params={"author_id": author, "limit": 200})
        assert queue.json()["total"] == POSTS
        response = client.post(
            "/v1/reviews/bulk-decision",
            json={"author_id": author, "label": "spam", "decision": "remove", "note": "pill spam"},
            timeout=300,
        )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["decided"], body["skipped"], body["failed"]) == (POSTS, 0, 0), body
    event_ids = {item["review_id"]: item["event_id"] for item in body["outcomes"]}
    assert set(event_ids) == set(review_ids)

    # Each decision went through its own workflow to `review.decisions`...
    published = await published_decisions(bulk_settings, set(review_ids), within=300)
    for review_id, event in published.items():
        assert event["event_id"] == event_ids[review_id]
        assert (event["label"], event["decision"], event["note"]) == ("spam", "remove", "pill spam")
        assert event["moderator_id"] == f"key:{moderator.id}"
    # ...is recorded once (the recorder and the workflow both write it, keyed on the event)...
    rows = await asyncio.to_thread(
        wait_for, partial(recorded, read_model, review_ids), 120, "50 decision rows"
    )
    assert {row.review_id: row.event_id for row in rows} == event_ids
    # ...is audited once, as the single decision is...
    with Session(read_model) as session:
        audited = session.exec(
            select(AuditLog).where(
                col(AuditLog.entity_id).in_(review_ids), col(AuditLog.action) == "review.decide"
            )
        ).all()
    assert sorted(entry.entity_id for entry in audited) == sorted(review_ids)
    assert {entry.after["decision_event_id"] for entry in audited if entry.after} == set(
        event_ids.values()
    )
    # ...and each review's workflow completed.
    assert await asyncio.to_thread(
        wait_for, partial(all_completed, bulk_settings, review_ids), 300, "50 workflows completed"
    )
    with api(bulk_settings, key) as client:
        assert client.get("/v1/reviews", params={"author_id": author}).json()["total"] == 0


def test_the_language_and_author_filters_on_postgresql(read_model: Engine) -> None:
    """The queue's language (metadata `lang`, else stage 1's signal) on the real database's
    JSON columns; the rows are recorded as the recorder records them."""
    author = f"lang-author-{uuid.uuid4().hex[:8]}"
    cases = {"declared": ("JA", []), "detected": (None, ["unreadable:language:ja"]),
             "overridden": ("en", ["unreadable:language:ja"]), "unknown": (None, [])}  # fmt: skip
    post_ids = {}
    with Session(read_model) as session:
        for name, (lang, signals) in cases.items():
            post = PostSubmitted(
                post_id=uuid.uuid4().hex,
                text=f"post {name}",
                author_id=author,
                metadata={"lang": lang} if lang else {},
            )
            verdict = ModerationVerdict(
                post_id=post.post_id,
                decision=Decision.REVIEW,
                scores={**dict.fromkeys(CATEGORIES, 0.02), Category.SPAM: 0.55},
                primary_category=Category.SPAM,
                confidence=0.55,
                stage=Stage.MODEL,
                model_version="fast-test",
                policy_version="v1",
                latency_ms=1.0,
                signals=signals,
            )
            request = ReviewRequested(
                post_id=post.post_id,
                reason="uncertain",
                priority=ReviewPriority.NORMAL,
                verdict=verdict,
            )
            crud.record_events(session, events=[post, verdict, request])
            post_ids[post.post_id] = name

        def names(language: str) -> list[str]:
            views, total = crud.list_reviews(
                session, now=utc_now(), author_id=author, language=language
            )
            assert total == len(views)
            return sorted(post_ids[view.review.post_id] for view in views)

        assert names("ja") == ["declared", "detected"]
        assert names("en") == ["overridden"]
        assert names("fr") == []
        _, everything = crud.list_reviews(session, now=utc_now(), author_id=author)
        assert everything == len(cases)
