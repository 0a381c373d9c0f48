"""Strikes, author actions and user reports on the real Kafka and PostgreSQL (issue 15, parts 2
and 3).

The recorder runs in this process as the `recorder` Kafka principal (so its ACLs on
`authors.actioned` and `reports.resolved` are exercised), the API in this process as `api`, both
on topics and a consumer group of the test's own; events are produced as `admin`, and what the
services publish is read back from Kafka.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI
from faststream import TestApp
from sqlalchemy import text
from sqlmodel import Session, select

from moderation.db import crud
from moderation.db.engine import make_engine
from moderation.db.models import PostStatus, Review, Strike
from moderation.devtools.stack.kafka import KafkaBroker, delete_topics, ensure_topics
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import isolated_settings
from moderation.events import (
    AuthorActioned,
    Event,
    ModerationVerdict,
    PostSubmitted,
    ReportResolved,
    ReviewDecided,
    ReviewPriority,
    ReviewRequested,
    review_id_for,
)
from moderation.services.api import build_app
from moderation.services.recorder.app import Recorder, RetryPolicy
from moderation.services.recorder.app import build_app as build_recorder
from moderation.settings import ReportSettings, Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests import crud_helpers
from tests.integration.streams import kafka_admin_auth

pytestmark = pytest.mark.integration
T = TypeVar("T")
RETRY = RetryPolicy(initial_seconds=0.1, max_seconds=1.0, rewind_pause_seconds=0.5)
DEADLINE = 60.0


# --- the stack, isolated ---------------------------------------------------------------------


class Stack:
    """The test's settings, database, producer, and readers of what the services publish."""

    def __init__(self, settings: Settings, prefix: str) -> None:
        self.settings = settings
        self.prefix = prefix
        self.engine = make_engine(settings)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            **kafka_admin_auth(),
            enable_idempotence=True,
            acks="all",
        )

    def topic_of(self, event: Event) -> str:
        topics = self.settings.kafka.topics
        if isinstance(event, PostSubmitted):
            return topics.posts_submitted
        if isinstance(event, ModerationVerdict):
            return topics.verdicts
        if isinstance(event, ReviewRequested):
            return topics.review_requested
        return topics.review_decisions

    async def send(self, *events: Event) -> None:
        for event in events:
            await self.producer.send_and_wait(
                self.topic_of(event), event.model_dump_json().encode(), key=event.key()
            )

    async def read(self, query: Callable[[Session], T]) -> T:
        def run() -> T:
            with Session(self.engine) as session:
                return query(session)

        return await asyncio.to_thread(run)

    async def until(self, query: Callable[[Session], T], what: str) -> T:
        """Poll the read model until `query` answers something truthy."""
        deadline = time.monotonic() + DEADLINE
        while True:
            found = await self.read(query)
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {DEADLINE:.0f}s: {what}")
            await asyncio.sleep(0.2)

    async def consume(
        self, topic: str, count: int, keep: Callable[[bytes], bool] = lambda _: True
    ) -> list[bytes]:
        """The first `count` kept messages of `topic`, read from its beginning."""
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            **kafka_admin_auth(),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        found: list[bytes] = []
        try:
            deadline = time.monotonic() + DEADLINE
            while len(found) < count:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{topic}: {len(found)} of {count} messages")
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    found += [r.value for r in records if r.value is not None and keep(r.value)]
        finally:
            await consumer.stop()
        return found

    def delete_rows(self) -> None:
        with self.engine.begin() as connection:
            for table, column in (
                ("posts", "id"),
                ("verdicts", "post_id"),
                ("reviews", "post_id"),
                ("decisions", "post_id"),
                ("strikes", "post_id"),
                ("author_actions", "post_id"),
                ("reports", "post_id"),
            ):
                connection.execute(
                    text(f"DELETE FROM {table} WHERE {column} LIKE :prefix"),
                    {"prefix": f"%{self.prefix}%"},
                )


@pytest.fixture
async def stack(
    settings: Settings, kafka: KafkaBroker, postgres: PostgresCluster, unique: str
) -> AsyncIterator[Stack]:
    """Topics and a group of the test's own (their ACLs too), the schema and its grants."""
    run = settings.model_copy(update={"reports": ReportSettings(per_reporter_limit=3)})
    test_settings = isolated_settings(run, f"it-strikes-{unique}")
    await ensure_topics(test_settings)
    await asyncio.to_thread(postgres.grant_service_roles, settings.db.name)  # the new tables
    stack = Stack(test_settings, f"sr{unique}")
    await stack.producer.start()
    try:
        yield stack
    finally:
        await stack.producer.stop()
        await asyncio.to_thread(stack.delete_rows)
        stack.engine.dispose()
        await delete_topics(test_settings)


@pytest.fixture
async def recorder(stack: Stack) -> AsyncIterator[Recorder]:
    """The recorder, started for real as the `recorder` principal."""
    service = Recorder(stack.settings, retry=RETRY, outbox_interval=1.0)
    async with TestApp(build_recorder(stack.settings, recorder=service)):
        yield service


@pytest.fixture
async def api(stack: Stack, recorder: Recorder) -> AsyncIterator[FastAPI]:
    app = build_app(stack.settings)
    async with app.router.lifespan_context(app):
        yield app


def key(stack: Stack, *scopes: str) -> dict[str, str]:
    with Session(stack.engine) as session:
        plaintext, _ = crud.create_api_key(
            session, name=f"{stack.prefix}-{'-'.join(scopes)}", scopes=list(scopes)
        )
    return {"Authorization": f"Bearer {plaintext}"}


def verdict(post_id: str, decision: Decision) -> ModerationVerdict:
    return ModerationVerdict(
        post_id=post_id,
        decision=decision,
        scores=dict.fromkeys(CATEGORIES, 0.1),
        primary_category=Category.SAFE if decision is Decision.ALLOW else Category.HARASSMENT,
        confidence=0.9,
        stage=Stage.MODEL,
        model_version="fast-it",
        policy_version="v1",
        latency_ms=1.0,
    )


def decision(post_id: str, decided: Decision, review_id: str = "") -> ReviewDecided:
    return ReviewDecided(
        review_id=review_id,
        post_id=post_id,
        label=Category.SAFE if decided is Decision.ALLOW else Category.HARASSMENT,
        decision=decided,
        moderator_id="key:it",
    )


def strike_of(session: Session, *, post_id: str) -> Strike | None:
    return session.exec(select(Strike).where(Strike.post_id == post_id)).first()


def actions_of(author: str) -> Callable[[bytes], bool]:
    return lambda value: AuthorActioned.model_validate_json(value).author_id == author


# --- strikes and actions ----------------------------------------------------------------------


async def test_removals_climb_the_ladder_and_an_allowed_appeal_reverses(
    stack: Stack, recorder: Recorder
) -> None:
    author = f"author-{stack.prefix}"
    posts = [f"{stack.prefix}-p{n}" for n in range(1, 4)]
    for post_id in posts:
        review = ReviewRequested(
            post_id=post_id, reason="unsure", verdict=verdict(post_id, Decision.REVIEW)
        )
        await stack.send(
            PostSubmitted(post_id=post_id, text="you are awful", author_id=author),
            verdict(post_id, Decision.REVIEW),
            review,
            decision(post_id, Decision.REMOVE),
        )
        # One removal at a time: the events of different posts take different partitions, so
        # the order the ladder sees them in is fixed here, not by the broker.
        await stack.until(partial(strike_of, post_id=post_id), f"the strike of {post_id}")
    topic = stack.settings.kafka.topics.authors_actioned
    # Keyed by post, the actions of one author spread over partitions: order them by their count.
    climbed = sorted(
        (
            AuthorActioned.model_validate_json(value)
            for value in await stack.consume(topic, 3, actions_of(author))
        ),
        key=lambda event: event.active_strikes,
    )
    # harassment is `medium` (weight 1): 1, 2, 3 points reach warn, rate_limit, suspend.
    assert [(e.action.value, e.post_id, e.active_strikes) for e in climbed] == [
        ("warn", posts[0], 1),
        ("rate_limit", posts[1], 2),
        ("suspend", posts[2], 3),
    ]
    assert climbed[2].days == 7 and climbed[2].until is not None
    assert {e.tenant for e in climbed} == {"default"}
    strikes = await stack.read(
        lambda s: s.exec(select(Strike).where(Strike.author_id == author)).all()
    )
    assert sorted(s.post_id for s in strikes) == posts

    # The author appeals; the moderator allows the appeal of the last removal.
    appeal = ReviewRequested(
        review_id=review_id_for(posts[2], 1),
        post_id=posts[2],
        reason="appeal",
        verdict=verdict(posts[2], Decision.REVIEW),
        appeal_of="it-decision",
        priority=ReviewPriority.HIGH,
    )
    allow = decision(posts[2], Decision.ALLOW, review_id=appeal.review_id)
    await stack.send(appeal, allow)
    everything = [
        AuthorActioned.model_validate_json(value)
        for value in await stack.consume(topic, 4, actions_of(author))
    ]
    [reversal] = [event for event in everything if event.action.value == "reverse"]
    assert (reversal.action.value, reversal.reverses, reversal.post_id) == (
        "reverse",
        climbed[2].action_id,
        posts[2],
    )
    assert reversal.active_strikes == 2

    def standing(session: Session) -> crud.Standing | None:
        rows = crud.get_author(session, tenant="default", author_id=author, limit=5, offset=0)
        return (
            crud.author_standing(rows.strikes, rows.actions, reversal.occurred_at) if rows else None
        )

    now = await stack.read(standing)
    assert now is not None and (now.status, now.active_strikes) == ("rate_limited", 2)
    # Each event was published once: the outbox marked them.
    assert await stack.read(lambda s: crud.unpublished_author_actions(s)) == []


# --- user reports -----------------------------------------------------------------------------


async def test_reports_raise_priority_reopen_and_resolve(
    stack: Stack, recorder: Recorder, api: FastAPI
) -> None:
    allowed, reviewed = f"{stack.prefix}-allowed", f"{stack.prefix}-reviewed"
    author = f"author-{stack.prefix}"
    await stack.send(
        PostSubmitted(post_id=allowed, text="nice day", author_id=author),
        verdict(allowed, Decision.ALLOW),
        PostSubmitted(post_id=reviewed, text="hmm", author_id=author),
        verdict(reviewed, Decision.REVIEW),
        ReviewRequested(
            post_id=reviewed, reason="unsure", verdict=verdict(reviewed, Decision.REVIEW)
        ),
    )

    def recorded(session: Session) -> bool:
        statuses = crud_helpers.post_statuses(session, post_ids=[allowed, reviewed])
        return statuses == {allowed: PostStatus.ALLOWED, reviewed: PostStatus.IN_REVIEW}

    await stack.until(recorded, "both posts recorded")
    reporter_key = key(stack, "report")
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:

        async def report(post_id: str, reporter: str, **extra: Any) -> httpx.Response:
            body = {"post_id": post_id, "reason": "harassment", "reporter_id": reporter, **extra}
            return await client.post("/v1/reports", json=body, headers=reporter_key)

        # Two new reporters (0.5 each) reach the priority threshold (1.0) of the open review.
        for reporter in ("r1", "r2"):
            assert (await report(reviewed, reporter)).status_code == 201
        review = await stack.read(
            lambda s: s.exec(select(Review).where(Review.post_id == reviewed)).one()
        )
        assert review.priority == "high"

        # Three reach the reopen threshold (1.5) of the allowed post: a ReviewRequested.
        first = await report(allowed, "r1", text="they keep at it")
        assert first.status_code == 201
        assert (await report(allowed, "r1")).json()["report_id"] == first.json()["report_id"]
        assert (await report(allowed, "r2")).status_code == 201
        third = await report(allowed, "r3")
        assert third.status_code == 201
        reopened = f"review-{allowed}-report-1"
        assert third.json()["review_id"] == reopened

        # Bad input: nothing recorded.
        unknown = await report(allowed, "r4", reason="rude")
        assert unknown.status_code == 422 and "choose one of" in unknown.json()["detail"]
        huge = await report(allowed, "r4", text="x" * 2_000_000)
        assert huge.status_code == 413
        # The per-reporter limit (3 per hour here): r1 filed 2, one more, then 429.
        assert (await report(f"{stack.prefix}-nothing", "r1")).status_code == 404
        other = f"{stack.prefix}-other"
        await stack.send(
            PostSubmitted(post_id=other, text="x", author_id=author), verdict(other, Decision.ALLOW)
        )
        await stack.until(
            lambda s: (
                crud_helpers.post_statuses(s, post_ids=[other]) == {other: PostStatus.ALLOWED}
            ),
            "the other post recorded",
        )
        assert (await report(other, "r1")).status_code == 201
        await stack.send(
            PostSubmitted(post_id=f"{other}2", text="x", author_id=author),
            verdict(f"{other}2", Decision.ALLOW),
        )
        await stack.until(lambda s: crud.get_post(s, post_id=f"{other}2"), "post recorded")
        limited = await report(f"{other}2", "r1")
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1

    requested = [
        ReviewRequested.model_validate_json(value)
        for value in await stack.consume(
            stack.settings.kafka.topics.review_requested,
            1,
            lambda v: ReviewRequested.model_validate_json(v).review_id == reopened,
        )
    ]
    assert [(r.post_id, r.priority.value, r.reason) for r in requested] == [
        (allowed, "high", "reported: harassment")
    ]
    reports_before = await stack.read(
        lambda s: [r for r in crud.unpublished_report_resolutions(s) if r.post_id == allowed]
    )
    assert reports_before == []  # open: nothing to publish yet

    # The moderator removes the reported post: its three reports are upheld and published.
    await stack.send(decision(allowed, Decision.REMOVE, review_id=reopened))
    resolved = [
        ReportResolved.model_validate_json(value)
        for value in await stack.consume(
            stack.settings.kafka.topics.reports_resolved,
            3,
            lambda v: ReportResolved.model_validate_json(v).post_id == allowed,
        )
    ]
    assert sorted(r.reporter_id for r in resolved) == ["r1", "r2", "r3"]
    assert {r.outcome.value for r in resolved} == {"upheld"}
    assert len({r.event_id for r in resolved}) == 3
    # And the author has a strike for it.
    await stack.until(partial(strike_of, post_id=allowed), "the strike")
