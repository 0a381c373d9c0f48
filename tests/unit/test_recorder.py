"""The recorder in memory: FastStream's TestKafkaBroker in front, SQLite behind."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from faststream import TestApp
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.subscriber.usecase import LogicSubscriber
from prometheus_client import REGISTRY
from sqlalchemy import Engine, exc
from sqlmodel import Session

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.models import PostStatus
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


async def test_events_of_every_topic_land_and_status_is_derived(
    recorder: Recorder, broker: KafkaBroker
) -> None:
    topics = recorder.settings.kafka.topics
    review = ReviewRequested(post_id="p2", reason="unsure", verdict=make_verdict("p2"))
    decision = ReviewDecided(
        post_id="p2", label=Category.SPAM, decision=Decision.REMOVE, moderator_id="m1"
    )
    await broker.publish(payload(make_post("p1")), topic=topics.posts_submitted, key=b"p1")
    await broker.publish(payload(make_verdict("p1")), topic=topics.verdicts, key=b"p1")
    # p2 arrives out of order: the decision first, the post last.
    await broker.publish(payload(decision), topic=topics.review_decisions, key=b"p2")
    await broker.publish(payload(review), topic=topics.review_requested, key=b"p2")
    await broker.publish(payload(make_post("p2")), topic=topics.posts_submitted, key=b"p2")

    with session_for(recorder) as session:
        p1 = crud.get_post_trail(session, post_id="p1")
        p2 = crud.get_post_trail(session, post_id="p2")
    assert p1.post is not None and p1.post.status is PostStatus.ALLOWED
    assert [v.decision for v in p1.verdicts] == ["allow"]
    assert p2.post is not None and p2.post.status is PostStatus.DECIDED
    assert len(p2.reviews) == 1 and [d.event_id for d in p2.decisions] == [decision.event_id]
    for publisher in recorder.dead_letter_publishers.values():
        publisher.mock.assert_not_called()


async def test_an_appeal_is_a_second_review_of_the_same_post(
    recorder: Recorder, broker: KafkaBroker
) -> None:
    topics = recorder.settings.kafka.topics
    first = ReviewRequested(post_id="p1", reason="unsure", verdict=make_verdict("p1"))
    decision = ReviewDecided(
        review_id=first.review_id,
        post_id="p1",
        label=Category.SPAM,
        decision=Decision.REMOVE,
        moderator_id="m1",
        overrode=Decision.REVIEW,
    )
    appeal = ReviewRequested(
        review_id=review_id_for("p1", 1),
        post_id="p1",
        reason="appeal: not spam",
        priority=ReviewPriority.HIGH,
        verdict=make_verdict("p1"),
        appeal_of=decision.event_id,
    )
    await broker.publish(payload(make_post("p1")), topic=topics.posts_submitted, key=b"p1")
    await broker.publish(payload(first), topic=topics.review_requested, key=b"p1")
    await broker.publish(payload(decision), topic=topics.review_decisions, key=b"p1")
    for _ in range(2):  # a redelivered appeal is the same review
        await broker.publish(payload(appeal), topic=topics.review_requested, key=b"p1")

    with session_for(recorder) as session:
        trail = crud.get_post_trail(session, post_id="p1")
    assert trail.post is not None and trail.post.status is PostStatus.IN_REVIEW
    assert [(r.review_id, r.status, r.appeal_of) for r in trail.reviews] == [
        ("review-p1", "decided", None),
        ("review-p1-appeal-1", "pending", decision.event_id),
    ]
    [recorded] = trail.decisions
    assert (recorded.review_id, recorded.overrode) == ("review-p1", "review")


async def test_duplicates_are_harmless(recorder: Recorder, broker: KafkaBroker) -> None:
    topics = recorder.settings.kafka.topics
    post, verdict = payload(make_post("p1")), payload(make_verdict("p1"))
    duplicates_before = metric(
        "moderation_recorder_events_total", topic=topics.posts_submitted, outcome="duplicate"
    )
    await broker.publish_batch(post, post, topic=topics.posts_submitted)
    await broker.publish(post, topic=topics.posts_submitted, key=b"p1")
    await broker.publish_batch(verdict, verdict, topic=topics.verdicts)

    with session_for(recorder) as session:
        assert crud_helpers.count_posts(session) == 1
        assert crud_helpers.verdicts_per_post(session) == {"p1": 1}
    duplicates = metric(
        "moderation_recorder_events_total", topic=topics.posts_submitted, outcome="duplicate"
    )
    assert duplicates - duplicates_before == 2


async def test_a_poison_message_goes_to_the_dlq_and_the_batch_goes_on(
    recorder: Recorder, broker: KafkaBroker
) -> None:
    topic = recorder.settings.kafka.topics.posts_submitted
    missing_field = json.dumps({"post_id": "p9", "text": "no author"}).encode()
    await broker.publish_batch(
        payload(make_post("p1")),
        b"{not json",
        missing_field,
        b"\xff\xfe binary",
        payload(make_post("p2")),
        topic=topic,
    )

    with session_for(recorder) as session:
        assert crud_helpers.count_posts(session, post_ids=["p1", "p2", "p9"]) == 2
    dlq = recorder.dead_letter_publishers[topic]
    letters = [DeadLetter.model_validate(call.args[0]) for call in dlq.mock.call_args_list]
    assert [letter.payload_encoding for letter in letters] == ["utf-8", "utf-8", "base64"]
    assert letters[0].payload == "{not json"
    assert all(letter.source_topic == topic for letter in letters)
    assert all(letter.error_type == "ValidationError" for letter in letters)
    assert "author_id" in letters[1].error
    assert letters[2].consumer_group == recorder.settings.worker.recorder_group
    for other_topic, publisher in recorder.dead_letter_publishers.items():
        if other_topic != topic:
            publisher.mock.assert_not_called()


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
    # Escalations are written by the review workflow's own activity, not projected.
    recorded = sorted(set(topics.main_topics()) - {topics.review_escalated})
    assert sorted(service.subscriber.topic_names) == recorded
    assert sorted(service.event_types) == recorded
    assert sorted(service.dead_letter_publishers) == recorded
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
