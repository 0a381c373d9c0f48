"""The recorder against the real Kafka and PostgreSQL, including a PostgreSQL restart under load.

Each test gets its own topics and consumer group (auto topic creation is off on the broker, so
they are created here) and post ids with a unique prefix; the recorder runs in this process.
The messaging behaviours (events of every topic land with their derived status, duplicates are
harmless, a poison message goes to the DLQ) are written once in tests/unit/test_recorder.py and
run there in memory and against the real Kafka and PostgreSQL; this module keeps what needs the
real stack beyond them (poison messages with one PostgreSQL rejects as data, readiness, status
derivation in PostgreSQL's statements, a PostgreSQL restart under load).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from faststream import TestApp
from faststream.asgi import AsgiFastStream
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlmodel import Session

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.models import PostStatus
from moderation.devtools.stack.kafka import KafkaBroker, delete_topics, ensure_topics
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.events import (
    Event,
    ModerationVerdict,
    PostSubmitted,
    ReviewDecided,
    ReviewRequested,
)
from moderation.services.recorder.app import Recorder, RetryPolicy, build_app
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests import crud_helpers
from tests.integration.streams import consume_dead_letters, kafka_admin_auth

pytestmark = pytest.mark.integration
T = TypeVar("T")

FAULT_POSTS = 1_500  # each with a verdict, every 10th reviewed and decided: 3,300 events
RETRY = RetryPolicy(initial_seconds=0.1, max_seconds=1.0, rewind_pause_seconds=0.5)


# --- helpers ---------------------------------------------------------------------------------


def isolated(settings: Settings, unique: str) -> Settings:
    """The settings with this test's own topics and consumer group."""
    base = settings.kafka.topics
    topics = base.model_copy(
        update={
            name: f"it.{unique}.{getattr(base, name)}"
            for name in ("posts_submitted", "verdicts", "review_requested", "review_decisions")
        }
    )
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"topics": topics}),
            "worker": settings.worker.model_copy(update={"recorder_group": f"recorder-{unique}"}),
        }
    )


async def wait_for(
    condition: Callable[[], Awaitable[bool]], what: str, *, within: float, every: float = 0.2
) -> None:
    """Poll an observable condition until it holds, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {within:.0f}s: {what}")
        await asyncio.sleep(every)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def make_post(post_id: str) -> PostSubmitted:
    return PostSubmitted(post_id=post_id, text=f"text of {post_id}", author_id="it")


def make_verdict(
    post_id: str, decision: Decision, *, model_version: str = "fast-it"
) -> ModerationVerdict:
    return ModerationVerdict(
        post_id=post_id,
        decision=decision,
        scores=dict.fromkeys(CATEGORIES, 0.1),
        primary_category=Category.SAFE,
        confidence=0.9,
        stage=Stage.MODEL,
        model_version=model_version,
        policy_version="v1",
        latency_ms=1.0,
    )


def make_review(post_id: str) -> ReviewRequested:
    return ReviewRequested(
        post_id=post_id, reason="uncertain", verdict=make_verdict(post_id, Decision.REVIEW)
    )


def make_decision(post_id: str) -> ReviewDecided:
    return ReviewDecided(
        post_id=post_id, label=Category.SPAM, decision=Decision.REMOVE, moderator_id="it-mod"
    )


class Producer:
    """An idempotent acks=all producer that sends events (or raw bytes) to the right topic."""

    def __init__(self, settings: Settings) -> None:
        self.topics = settings.kafka.topics
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            **kafka_admin_auth(),
            enable_idempotence=True,
            acks="all",
        )
        self.sent = 0

    def topic_of(self, event: Event) -> str:
        if isinstance(event, PostSubmitted):
            return self.topics.posts_submitted
        if isinstance(event, ModerationVerdict):
            return self.topics.verdicts
        if isinstance(event, ReviewRequested):
            return self.topics.review_requested
        return self.topics.review_decisions

    async def send(self, events: Sequence[Event]) -> None:
        futures = [
            await self.producer.send(self.topic_of(e), e.model_dump_json().encode(), key=e.key())
            for e in events
        ]
        await asyncio.gather(*futures)
        self.sent += len(events)

    async def send_raw(self, topic: str, value: bytes, key: bytes) -> None:
        await self.producer.send_and_wait(topic, value, key=key)


class Database:
    """Reads of the real read model through crud, run in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(settings)
        create_tables(self.engine)

    async def read(self, query: Callable[[Session], T]) -> T:
        def run() -> T:
            with Session(self.engine) as session:
                return query(session)

        return await asyncio.to_thread(run)

    async def statuses(self, post_ids: Sequence[str]) -> dict[str, PostStatus]:
        return await self.read(lambda s: crud_helpers.post_statuses(s, post_ids=post_ids))

    def delete_prefix(self, prefix: str) -> None:
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
                    {"prefix": f"{prefix}%"},
                )


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
async def real(
    settings: Settings, kafka: KafkaBroker, postgres: PostgresCluster, unique: str
) -> AsyncIterator[tuple[Settings, Database, str]]:
    """Isolated topics and group, the database, and this test's post-id prefix."""
    test_settings = isolated(settings, unique)
    await ensure_topics(test_settings)  # and the services' ACLs for them
    database = Database(test_settings)
    prefix = f"rec-{unique}-"
    try:
        yield test_settings, database, prefix
    finally:
        await asyncio.to_thread(postgres.start)  # a failed fault test must not leave it down
        await asyncio.to_thread(database.delete_prefix, prefix)
        database.engine.dispose()
        await delete_topics(test_settings)


@pytest.fixture
async def running(
    real: tuple[Settings, Database, str],
) -> AsyncIterator[tuple[Recorder, AsgiFastStream]]:
    """The recorder service started for real: lifespan, engine, consumer group."""
    recorder = Recorder(real[0], retry=RETRY)
    app = build_app(recorder.settings, recorder=recorder)
    async with TestApp(app):
        yield recorder, app


# --- scenarios through the real broker -------------------------------------------------------


async def test_poison_messages_go_to_the_dlq_and_do_not_block_the_partition(
    real: tuple[Settings, Database, str], running: tuple[Recorder, AsgiFastStream]
) -> None:
    settings, database, prefix = real
    topics = settings.kafka.topics
    post_id = f"{prefix}after-poison"
    too_long = make_verdict(post_id, Decision.ALLOW, model_version="m" * 300)  # > VARCHAR(128)
    producer = Producer(settings)
    await producer.producer.start()
    try:
        key = post_id.encode()  # same key, same partition: the poison is in front
        await producer.send_raw(topics.posts_submitted, b"{not json", key)
        await producer.send_raw(topics.posts_submitted, json.dumps({"post_id": "x"}).encode(), key)
        await producer.send([too_long])
        await producer.send([make_post(post_id), make_verdict(post_id, Decision.REMOVE)])
    finally:
        await producer.producer.stop()

    async def recorded() -> bool:
        return await database.statuses([post_id]) == {post_id: PostStatus.REMOVED}

    await wait_for(recorded, "the post behind the poison recorded", within=60)

    letters = await consume_dead_letters(settings, topics.posts_submitted + topics.dlq_suffix, 2)
    assert [letter.payload for letter in letters][:1] == ["{not json"]
    assert {letter.error_type for letter in letters} == {"ValidationError"}
    assert all(letter.consumer_group == settings.worker.recorder_group for letter in letters)
    (rejected,) = await consume_dead_letters(settings, topics.verdicts + topics.dlq_suffix, 1)
    assert rejected.error_type == "DataError"
    assert ModerationVerdict.model_validate_json(rejected.payload).event_id == too_long.event_id
    verdicts = await database.read(lambda s: crud_helpers.list_verdicts(s, post_ids=[post_id]))
    assert [v.model_version for v in verdicts] == ["fast-it"]  # never a truncated copy


async def test_readiness_really_checks_kafka_and_the_database(
    running: tuple[Recorder, AsgiFastStream],
) -> None:
    _, app = running
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://recorder") as client:
        ready = await client.get("/readyz")
        health = await client.get("/healthz")
    assert (ready.status_code, ready.text) == (200, "ready")
    assert health.status_code == 200


# --- crud on PostgreSQL: the dialect-specific statements --------------------------------------


async def test_status_derivation_on_postgres(real: tuple[Settings, Database, str]) -> None:
    _, database, prefix = real
    ids = {name: f"{prefix}{name}" for name in ("late", "same", "agent", "final", "review")}
    model_review = make_verdict(ids["agent"], Decision.REVIEW)
    agent_allow = make_verdict(ids["agent"], Decision.ALLOW).model_copy(
        update={"stage": Stage.AGENT, "model_version": "agent-it"}
    )
    batches: list[list[Event]] = [
        [make_verdict(ids["late"], Decision.REMOVE)],  # before its post, in an earlier batch
        [make_post(ids["late"])],
        [make_post(ids["same"]), make_verdict(ids["same"], Decision.ALLOW)],
        [agent_allow, make_post(ids["agent"])],
        [model_review],  # a model verdict after the agent's: the agent still wins
        [make_post(ids["final"]), make_verdict(ids["final"], Decision.REVIEW)],
        [make_review(ids["final"]), make_decision(ids["final"])],
        [make_verdict(ids["final"], Decision.ALLOW, model_version="later")],  # decided stays
        [make_post(ids["review"]), make_review(ids["review"])],
    ]
    for batch in batches:
        await database.read(partial(crud.record_events, events=batch))
    again = await database.read(partial(crud.record_events, events=batches[-1]))

    assert await database.statuses(list(ids.values())) == {
        ids["late"]: PostStatus.REMOVED,
        ids["same"]: PostStatus.ALLOWED,
        ids["agent"]: PostStatus.ALLOWED,
        ids["final"]: PostStatus.DECIDED,
        ids["review"]: PostStatus.IN_REVIEW,
    }
    assert sum(again.inserted.values()) == 0 and again.duplicates == 2
    trail = await database.read(lambda s: crud.get_post_trail(s, post_id=ids["final"]))
    assert [str(r.status) for r in trail.reviews] == ["decided"]


# --- fault: PostgreSQL restarts under load ---------------------------------------------------


@pytest.mark.timeout(300)
async def test_postgres_restart_under_load_loses_and_doubles_nothing(
    real: tuple[Settings, Database, str],
    running: tuple[Recorder, AsgiFastStream],
    postgres: PostgresCluster,
) -> None:
    settings, database, prefix = real
    _, app = running
    post_ids = [f"{prefix}{i:05d}" for i in range(FAULT_POSTS)]
    expected: dict[str, PostStatus] = {}
    events: list[Event] = []
    for i, post_id in enumerate(post_ids):
        decision = Decision.ALLOW if i % 2 else Decision.REMOVE
        events += [make_post(post_id), make_verdict(post_id, decision)]
        expected[post_id] = PostStatus.ALLOWED if i % 2 else PostStatus.REMOVED
        if i % 10 == 0:
            events += [make_review(post_id), make_decision(post_id)]
            expected[post_id] = PostStatus.DECIDED
    third = len(events) // 3
    retries_before = metric("moderation_recorder_db_retries_total")

    async def recorded_count() -> int:
        return await database.read(lambda s: crud_helpers.count_posts(s, post_ids=post_ids))

    producer = Producer(settings)
    await producer.producer.start()
    try:
        await producer.send(events[:third])

        async def some_recorded() -> bool:
            return await recorded_count() > 0

        await wait_for(some_recorded, "the recorder writing the first third", within=60)

        await asyncio.to_thread(postgres.stop)
        # The stream goes on while PostgreSQL is down ...
        await producer.send(events[third : 2 * third])

        async def recorder_retrying() -> bool:
            return metric("moderation_recorder_db_retries_total") > retries_before

        await wait_for(
            recorder_retrying, "the recorder retrying against the stopped database", within=60
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://recorder"
        ) as client:
            not_ready = await client.get("/readyz")
        assert (not_ready.status_code, not_ready.text) == (503, "not ready: database")

        await asyncio.to_thread(postgres.start)
        await producer.send(events[2 * third :])
    finally:
        await producer.producer.stop()
    assert producer.sent == len(events) >= 2_000

    async def everything_recorded() -> bool:
        return await recorded_count() == FAULT_POSTS and (
            await database.statuses(post_ids) == expected
        )

    await wait_for(everything_recorded, f"{FAULT_POSTS} posts with their final status", within=120)
    verdicts = await database.read(lambda s: crud_helpers.verdicts_per_post(s, post_ids=post_ids))
    decided = [post_id for post_id, status in expected.items() if status is PostStatus.DECIDED]
    decisions = await database.read(lambda s: crud_helpers.count_decisions(s, post_ids=post_ids))
    assert verdicts == dict.fromkeys(post_ids, 1)  # exactly one verdict row per post
    assert decisions == len(decided) == FAULT_POSTS // 10  # one decision per reviewed post
