"""The recorder: its messaging behaviours run in memory (FastStream's TestKafkaBroker, SQLite
behind) and against the local Kafka and PostgreSQL (`tests.messaging`); the database's part
(outages, rejected data, acknowledgement) in memory."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from faststream import TestApp
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.subscriber.usecase import LogicSubscriber
from prometheus_client import REGISTRY
from sqlalchemy import Engine, exc, text
from sqlmodel import Session, col, select

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.models import Post, PostStatus, Verdict
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.events import (
    DeadLetter,
    Event,
    ModerationVerdict,
    PostSubmitted,
    ReviewDecided,
    ReviewPriority,
    ReviewRequested,
    review_id_for,
)
from moderation.services.recorder import app as recorder_module
from moderation.services.recorder.app import Recorder, RetryPolicy, build_app, create_broker
from moderation.settings import DatabaseSettings, Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests import crud_helpers
from tests.messaging import Messaging

FAST_RETRY = RetryPolicy(initial_seconds=0.01, max_seconds=0.02, rewind_pause_seconds=0.0)


def make_post(post_id: str) -> PostSubmitted:
    return PostSubmitted(post_id=post_id, text=f"text of {post_id}", author_id="u1")


def make_verdict(post_id: str, decision: Decision = Decision.ALLOW) -> ModerationVerdict:
    return ModerationVerdict(
        post_id=post_id,
        decision=decision,
        scores=dict.fromkeys(CATEGORIES, 0.1),
        primary_category=Category.SAFE,
        confidence=0.9,
        stage=Stage.MODEL,
        model_version="fast-1",
        policy_version="v1",
        latency_ms=2.0,
    )


def make_decision(post_id: str) -> ReviewDecided:
    return ReviewDecided(
        post_id=post_id, label=Category.SPAM, decision=Decision.REMOVE, moderator_id="m1"
    )


def payload(event: Event) -> bytes:
    return event.model_dump_json().encode()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(db=DatabaseSettings(url_override=f"sqlite:///{tmp_path / 'recorder.db'}"))


@pytest.fixture
def recorder(settings: Settings) -> Iterator[Recorder]:
    service = Recorder(settings, retry=FAST_RETRY)
    yield service
    service.close_database()


@pytest.fixture
async def broker(recorder: Recorder) -> AsyncIterator[KafkaBroker]:
    """The recorder's broker in memory, with its lifespan (engine) started."""
    app = build_app(recorder.settings, recorder=recorder)
    (kafka_broker,) = app.brokers
    assert isinstance(kafka_broker, KafkaBroker)
    async with TestKafkaBroker(kafka_broker) as test_broker, TestApp(app):
        yield test_broker


def session_for(recorder: Recorder) -> Session:
    assert recorder.state.engine is not None
    return Session(recorder.state.engine)


# --- messaging behaviours: run in memory (SQLite) and through the local Kafka (PostgreSQL) -----


@functools.cache
def start_local_postgres() -> None:
    """Start the local stack's PostgreSQL if it is not running (idempotent), once per session."""
    cluster = PostgresCluster(Settings())
    cluster.install()
    cluster.start()


def delete_run(settings: Settings, prefix: str) -> None:
    """Delete the rows a run against the shared PostgreSQL wrote (its post ids start with
    `prefix`)."""
    engine = make_engine(settings)
    try:
        with engine.begin() as connection:
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
    finally:
        engine.dispose()


@pytest.fixture
async def live_recorder(messaging: Messaging, tmp_path: Path) -> AsyncIterator[Recorder]:
    """The recorder of a messaging run: on SQLite in memory; against Kafka on the local
    PostgreSQL (the run's rows deleted after)."""
    if messaging.real:
        await asyncio.to_thread(start_local_postgres)
        settings = messaging.settings
    else:
        database = DatabaseSettings(url_override=f"sqlite:///{tmp_path / 'recorder.db'}")
        settings = messaging.settings.model_copy(update={"db": database})
    service = Recorder(settings, retry=FAST_RETRY)
    try:
        yield service
    finally:
        service.close_database()
        if messaging.real:
            await asyncio.to_thread(delete_run, settings, messaging.prefix)


@pytest.fixture
async def live_broker(live_recorder: Recorder, messaging: Messaging) -> AsyncIterator[KafkaBroker]:
    """The recorder's broker with its lifespan (engine) started, in the run's mode."""
    app = build_app(
        live_recorder.settings,
        recorder=live_recorder,
        principal=messaging.principal("recorder"),
    )
    (kafka_broker,) = app.brokers
    assert isinstance(kafka_broker, KafkaBroker)
    async with messaging.running(kafka_broker, app) as test_broker:
        yield test_broker


def posts_of_run(session: Session, prefix: str) -> list[str]:
    """The ids of the recorded posts of a run (in memory, every post: its database is new)."""
    statement = select(Post.id).where(col(Post.id).startswith(prefix)).order_by(col(Post.id))
    return list(session.exec(statement).all())


def verdicts_of_run(session: Session, prefix: str) -> dict[str, int]:
    """post_id -> number of verdict rows, for the posts of a run (in memory, every post)."""
    statement = (
        select(Verdict.post_id, sa.func.count())
        .where(col(Verdict.post_id).startswith(prefix))
        .group_by(col(Verdict.post_id))
    )
    return {post_id: int(count) for post_id, count in session.exec(statement).all()}


async def test_events_of_every_topic_land_and_status_is_derived(
    live_recorder: Recorder, live_broker: KafkaBroker, messaging: Messaging
) -> None:
    recorder, broker = live_recorder, live_broker
    topics = recorder.settings.kafka.topics
    p1, p2, p3 = (messaging.id(name) for name in ("p1", "p2", "p3"))
    review = ReviewRequested(post_id=p2, reason="unsure", verdict=make_verdict(p2))
    decision = ReviewDecided(
        post_id=p2, label=Category.SPAM, decision=Decision.REMOVE, moderator_id="m1"
    )
    await broker.publish(payload(make_post(p1)), topic=topics.posts_submitted, key=p1.encode())
    await broker.publish(payload(make_verdict(p1)), topic=topics.verdicts, key=p1.encode())
    # p2 arrives out of order: the decision first, the post last.
    await broker.publish(payload(decision), topic=topics.review_decisions, key=p2.encode())
    await broker.publish(payload(review), topic=topics.review_requested, key=p2.encode())
    await broker.publish(payload(make_post(p2)), topic=topics.posts_submitted, key=p2.encode())
    # p3's verdict comes before its post.
    removed = make_verdict(p3, Decision.REMOVE)
    await broker.publish(payload(removed), topic=topics.verdicts, key=p3.encode())
    await broker.publish(payload(make_post(p3)), topic=topics.posts_submitted, key=p3.encode())

    expected = {p1: PostStatus.ALLOWED, p2: PostStatus.DECIDED, p3: PostStatus.REMOVED}

    def all_recorded() -> bool:
        with session_for(recorder) as session:
            trail = crud.get_post_trail(session, post_id=p2)
            statuses = crud_helpers.post_statuses(session, post_ids=list(expected))
        return statuses == expected and len(trail.reviews) == len(trail.decisions) == 1

    await messaging.wait_until(all_recorded, "three posts, their status derived")
    with session_for(recorder) as session:
        trail1 = crud.get_post_trail(session, post_id=p1)
        trail2 = crud.get_post_trail(session, post_id=p2)
        trail3 = crud.get_post_trail(session, post_id=p3)
    assert trail1.post is not None and trail1.post.status is PostStatus.ALLOWED
    assert [v.decision for v in trail1.verdicts] == ["allow"]
    assert trail2.post is not None and trail2.post.status is PostStatus.DECIDED
    assert len(trail2.reviews) == 1 and [d.event_id for d in trail2.decisions] == [
        decision.event_id
    ]
    assert [str(r.status) for r in trail2.reviews] == ["decided"]
    assert trail3.post is not None and trail3.post.status is PostStatus.REMOVED
    for publisher in recorder.dead_letter_publishers.values():
        publisher.mock.assert_not_called()


async def test_an_appeal_is_a_second_review_of_the_same_post(
    live_recorder: Recorder, live_broker: KafkaBroker, messaging: Messaging
) -> None:
    recorder, broker = live_recorder, live_broker
    topics = recorder.settings.kafka.topics
    p1 = messaging.id("p1")
    key = p1.encode()
    first = ReviewRequested(post_id=p1, reason="unsure", verdict=make_verdict(p1))
    decision = ReviewDecided(
        review_id=first.review_id,
        post_id=p1,
        label=Category.SPAM,
        decision=Decision.REMOVE,
        moderator_id="m1",
        overrode=Decision.REVIEW,
    )
    appeal = ReviewRequested(
        review_id=review_id_for(p1, 1),
        post_id=p1,
        reason="appeal: not spam",
        priority=ReviewPriority.HIGH,
        verdict=make_verdict(p1),
        appeal_of=decision.event_id,
    )
    await broker.publish(payload(make_post(p1)), topic=topics.posts_submitted, key=key)
    await broker.publish(payload(first), topic=topics.review_requested, key=key)
    await broker.publish(payload(decision), topic=topics.review_decisions, key=key)
    for _ in range(2):  # a redelivered appeal is the same review
        await broker.publish(payload(appeal), topic=topics.review_requested, key=key)

    def all_recorded() -> bool:
        with session_for(recorder) as session:
            trail = crud.get_post_trail(session, post_id=p1)
        return trail.post is not None and len(trail.reviews) == 2 and len(trail.decisions) == 1

    await messaging.wait_until(all_recorded, "the post, its two reviews and the decision")
    with session_for(recorder) as session:
        trail = crud.get_post_trail(session, post_id=p1)
    assert trail.post is not None and trail.post.status is PostStatus.IN_REVIEW
    assert [(r.review_id, r.status, r.appeal_of) for r in trail.reviews] == [
        (f"review-{p1}", "decided", None),
        (f"review-{p1}-appeal-1", "pending", decision.event_id),
    ]
    [recorded] = trail.decisions
    assert (recorded.review_id, recorded.overrode) == (f"review-{p1}", "review")


async def test_duplicates_are_harmless(
    live_recorder: Recorder, live_broker: KafkaBroker, messaging: Messaging
) -> None:
    recorder, broker = live_recorder, live_broker
    topics = recorder.settings.kafka.topics
    p1 = messaging.id("p1")
    verdict, decision = make_verdict(p1), make_decision(p1)
    redelivered = make_verdict(p1)  # the same natural key, a new event id
    post = payload(make_post(p1))
    counted = (topics.posts_submitted, topics.verdicts, topics.review_decisions)

    def duplicates() -> dict[str, float]:
        return {
            topic: metric("moderation_recorder_events_total", topic=topic, outcome="duplicate")
            for topic in counted
        }

    before = duplicates()
    await broker.publish_batch(post, post, topic=topics.posts_submitted)
    await broker.publish(post, topic=topics.posts_submitted, key=p1.encode())
    # One batch: one partition, so the first verdict is also the first read against Kafka.
    await broker.publish_batch(
        payload(verdict), payload(verdict), payload(redelivered), topic=topics.verdicts
    )
    await broker.publish_batch(payload(decision), payload(decision), topic=topics.review_decisions)

    expected = {topics.posts_submitted: 2, topics.verdicts: 2, topics.review_decisions: 1}

    def every_copy_counted() -> bool:
        after = duplicates()
        return {topic: after[topic] - before[topic] for topic in counted} == expected

    await messaging.wait_until(every_copy_counted, "every copy consumed")
    with session_for(recorder) as session:
        assert posts_of_run(session, messaging.prefix) == [p1]
        assert verdicts_of_run(session, messaging.prefix) == {p1: 1}
        trail = crud.get_post_trail(session, post_id=p1)
    assert trail.post is not None and trail.post.status is PostStatus.DECIDED
    assert [v.event_id for v in trail.verdicts] == [verdict.event_id]
    assert [d.event_id for d in trail.decisions] == [decision.event_id]


async def test_a_poison_message_goes_to_the_dlq_and_the_batch_goes_on(
    live_recorder: Recorder, live_broker: KafkaBroker, messaging: Messaging
) -> None:
    recorder, broker = live_recorder, live_broker
    topic = recorder.settings.kafka.topics.posts_submitted
    p1, p2, p9 = (messaging.id(name) for name in ("p1", "p2", "p9"))
    missing_field = json.dumps({"post_id": p9, "text": "no author"}).encode()
    # One batch: against Kafka one partition, the poison in front of p2.
    await broker.publish_batch(
        payload(make_post(p1)),
        b"{not json",
        missing_field,
        b"\xff\xfe binary",
        payload(make_post(p2)),
        topic=topic,
    )
    dlq = recorder.dead_letter_publishers[topic]

    def all_handled() -> bool:
        with session_for(recorder) as session:
            recorded = crud_helpers.count_posts(session, post_ids=[p1, p2, p9])
        return recorded == 2 and len(dlq.mock.call_args_list) >= 3

    await messaging.wait_until(all_handled, "two posts recorded, three dead letters")
    with session_for(recorder) as session:
        assert crud_helpers.count_posts(session, post_ids=[p1, p2, p9]) == 2
    # In the order of the batch (the letters are keyless: against Kafka they may come back
    # from different partitions).
    letters = sorted(
        (DeadLetter.model_validate(call.args[0]) for call in dlq.mock.call_args_list),
        key=lambda letter: (letter.partition, letter.offset),
    )
    assert [letter.payload_encoding for letter in letters] == ["utf-8", "utf-8", "base64"]
    assert letters[0].payload == "{not json"
    assert all(letter.source_topic == topic for letter in letters)
    assert all(letter.error_type == "ValidationError" for letter in letters)
    assert "author_id" in letters[1].error
    assert letters[2].consumer_group == recorder.settings.worker.recorder_group
    for other_topic, publisher in recorder.dead_letter_publishers.items():
        if other_topic != topic:
            publisher.mock.assert_not_called()


# --- the database's part: in memory only (PostgreSQL: tests/integration/test_recorder_real.py) --


async def test_database_outage_is_retried_until_it_is_back(
    recorder: Recorder, broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = recorder._record_sync
    failures = iter([True, True, True])

    def flaky(events: list[Event]) -> crud.RecordResult:
        if next(failures, False):
            raise exc.OperationalError("INSERT", {}, ConnectionRefusedError("db restarting"))
        return real(events)

    monkeypatch.setattr(recorder, "_record_sync", flaky)
    retries_before = metric("moderation_recorder_db_retries_total")
    topic = recorder.settings.kafka.topics.posts_submitted
    await broker.publish(payload(make_post("p1")), topic=topic, key=b"p1")

    assert metric("moderation_recorder_db_retries_total") - retries_before == 3
    with session_for(recorder) as session:
        assert crud.get_post(session, post_id="p1") is not None
    recorder.dead_letter_publishers[topic].mock.assert_not_called()


async def test_a_failure_creating_the_tables_is_retried_not_dead_lettered(
    recorder: Recorder, broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = iter([True])

    def racing(engine: Engine) -> None:
        if next(failures, False):  # another process created the enum types first
            raise exc.IntegrityError("CREATE TYPE", {}, ValueError("duplicate key value"))
        create_tables(engine)

    monkeypatch.setattr(recorder_module, "create_tables", racing)
    recorder.state.tables_ready = False
    topic = recorder.settings.kafka.topics.posts_submitted
    await broker.publish(payload(make_post("p1")), topic=topic, key=b"p1")

    assert recorder.state.tables_ready is True
    with session_for(recorder) as session:
        assert crud.get_post(session, post_id="p1") is not None
    recorder.dead_letter_publishers[topic].mock.assert_not_called()


async def test_an_event_the_database_rejects_is_isolated_and_dead_lettered(
    recorder: Recorder, broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = recorder._record_sync

    def reject_p3(events: list[Event]) -> crud.RecordResult:
        if any(event.post_id == "p3" for event in events):
            raise exc.DataError("INSERT", {}, ValueError("value too long for type"))
        return real(events)

    monkeypatch.setattr(recorder, "_record_sync", reject_p3)
    topic = recorder.settings.kafka.topics.posts_submitted
    posts = [payload(make_post(f"p{i}")) for i in range(8)]
    await broker.publish_batch(*posts, topic=topic)

    with session_for(recorder) as session:
        assert crud_helpers.count_posts(session) == 7
        assert crud.get_post(session, post_id="p3") is None
    dlq = recorder.dead_letter_publishers[topic]
    (call,) = dlq.mock.call_args_list
    letter = DeadLetter.model_validate(call.args[0])
    assert letter.error_type == "DataError"
    assert PostSubmitted.model_validate_json(letter.payload).post_id == "p3"


class _Record:
    """The attributes of an aiokafka ConsumerRecord the recorder reads."""

    def __init__(self, topic: str, value: bytes) -> None:
        self.topic, self.value, self.key = topic, value, b"p1"
        self.partition, self.offset = 0, 0


class _Message:
    """A batch message that remembers whether it was acknowledged or rewound."""

    def __init__(self, *records: _Record) -> None:
        self.raw_message = records
        self.calls: list[str] = []

    async def ack(self) -> None:
        self.calls.append("ack")

    async def nack(self) -> None:
        self.calls.append("nack")


async def test_an_unexpected_failure_rewinds_the_batch(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(events: list[Event]) -> crud.RecordResult:
        raise RuntimeError("bug")

    monkeypatch.setattr(recorder, "_record_sync", broken)
    topic = recorder.settings.kafka.topics.posts_submitted
    message = _Message(_Record(topic, payload(make_post("p1"))))
    with pytest.raises(RuntimeError, match="bug"):
        await recorder.handle(message)
    assert message.calls == ["nack"]  # never acknowledged: the batch is fetched again


async def test_a_written_batch_is_acknowledged(recorder: Recorder) -> None:
    recorder.open_database()
    topic = recorder.settings.kafka.topics.verdicts
    message = _Message(_Record(topic, payload(make_verdict("p1"))))
    await recorder.handle(message)
    assert message.calls == ["ack"]
    with session_for(recorder) as session:
        assert crud_helpers.count_verdicts(session, post_ids=["p1"]) == 1


async def test_probes_and_metrics(recorder: Recorder, broker: KafkaBroker) -> None:
    assert await recorder.database_ready() is True
    # A second app on the same recorder: only its routes are used.
    app = build_app(recorder.settings, recorder=recorder)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://recorder") as client:
        assert (await client.get("/healthz")).status_code == 200
        metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert "moderation_recorder_batch_seconds" in metrics.text


def test_no_engine_means_not_ready(settings: Settings) -> None:
    service = Recorder(settings)
    assert asyncio.run(service.database_ready()) is False
    with pytest.raises(RuntimeError, match="no database engine"):
        service._record_sync([make_post("p1")])


def test_the_service_uses_the_settings_topics() -> None:
    service = Recorder(Settings())  # as `build_app(settings)` builds it for the process
    topics = service.settings.kafka.topics
    # Escalations are written by the review workflow's own activity, not projected; hand-offs to
    # the agent service end in the verdicts and review requests it publishes; author actions and
    # report outcomes are what the recorder itself publishes.
    published = {topics.authors_actioned, topics.reports_resolved}
    not_recorded = {topics.review_escalated, topics.agent_requested} | published
    recorded = sorted(set(topics.main_topics()) - not_recorded)
    assert sorted(service.subscriber.topic_names) == recorded
    assert sorted(service.event_types) == recorded
    assert sorted(service.dead_letter_publishers) == recorded
    assert {service.actions_publisher.topic, service.reports_publisher.topic} == published
    broker = create_broker(service)
    assert broker.config.broker_config.allow_auto_create_topics is False
    (served,) = build_app(Settings()).brokers
    assert isinstance(served, KafkaBroker)
    (subscriber,) = served.subscribers
    assert isinstance(subscriber, LogicSubscriber)
    assert sorted(subscriber.topic_names) == recorded
    assert served.config.broker_config.allow_auto_create_topics is False


def test_open_database_creates_the_tables(settings: Settings) -> None:
    service = Recorder(settings)
    service.open_database()
    try:
        assert service.state.tables_ready is True
        engine = make_engine(settings)
        with Session(engine) as session:
            assert crud_helpers.count_posts(session) == 0
        engine.dispose()
    finally:
        service.close_database()
    assert service.state.engine is None
