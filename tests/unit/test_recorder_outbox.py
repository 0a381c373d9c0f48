"""The recorder publishes the consequences it derives (author actions, report outcomes) from its
outbox after commit: in memory (FastStream's TestKafkaBroker, SQLite behind)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from faststream import TestApp
from faststream.kafka import KafkaBroker, TestKafkaBroker
from sqlmodel import Session, select

from moderation.db.models import AuthorAction, Report
from moderation.events import (
    AuthorActioned,
    Event,
    ModerationVerdict,
    PostSubmitted,
    ReportResolved,
    ReviewDecided,
    utc_now,
)
from moderation.services.recorder.app import Recorder, RetryPolicy, build_app
from moderation.settings import DatabaseSettings, Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage

FAST_RETRY = RetryPolicy(initial_seconds=0.01, max_seconds=0.02, rewind_pause_seconds=0.0)


def removal(post_id: str) -> ModerationVerdict:
    return ModerationVerdict(
        post_id=post_id,
        decision=Decision.REMOVE,
        scores=dict.fromkeys(CATEGORIES, 0.1),
        primary_category=Category.SPAM,
        confidence=0.95,
        stage=Stage.MODEL,
        model_version="fast-1",
        policy_version="v1",
        latency_ms=1.0,
    )


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    settings = Settings(db=DatabaseSettings(url_override=f"sqlite:///{tmp_path / 'rec.db'}"))
    # No periodic flush during a test: every flush below is the test's own.
    service = Recorder(settings, retry=FAST_RETRY, outbox_interval=3_600.0)
    yield service
    service.close_database()


@pytest.fixture
async def broker(recorder: Recorder) -> AsyncIterator[KafkaBroker]:
    app = build_app(recorder.settings, recorder=recorder)
    (kafka_broker,) = app.brokers
    assert isinstance(kafka_broker, KafkaBroker)
    async with TestKafkaBroker(kafka_broker) as test_broker, TestApp(app):
        yield test_broker


async def send(recorder: Recorder, broker: KafkaBroker, event: Event) -> None:
    topics = recorder.settings.kafka.topics
    topic = {
        PostSubmitted: topics.posts_submitted,
        ModerationVerdict: topics.verdicts,
        ReviewDecided: topics.review_decisions,
    }[type(event)]
    await broker.publish(event.model_dump_json().encode(), topic=topic, key=event.key())


def published(publisher: Any) -> list[dict[str, Any]]:
    return [call.args[0] for call in publisher.mock.call_args_list]


def rows(recorder: Recorder, model: Any) -> list[Any]:
    assert recorder.state.engine is not None
    with Session(recorder.state.engine) as session:
        return list(session.exec(select(model)).all())


async def test_a_removal_publishes_author_actioned_after_commit(
    recorder: Recorder, broker: KafkaBroker
) -> None:
    for post_id in ("p1", "p2"):
        await send(recorder, broker, PostSubmitted(post_id=post_id, text="buy", author_id="a1"))
        await send(recorder, broker, removal(post_id))
    events = [AuthorActioned.model_validate(body) for body in published(recorder.actions_publisher)]
    assert [(e.action.value, e.post_id, e.author_id, e.tenant) for e in events] == [
        ("warn", "p1", "a1", "default"),
        ("rate_limit", "p2", "a1", "default"),
    ]
    stored = {a.action_id: a for a in rows(recorder, AuthorAction)}
    assert all(stored[e.action_id].published for e in events)
    assert {e.event_id for e in events} == {a.event_id for a in stored.values()}
    # An overturn publishes the reversal, keyed by the post it concerns.
    allow = ReviewDecided(
        post_id="p2", label=Category.SAFE, decision=Decision.ALLOW, moderator_id="key:1"
    )
    await send(recorder, broker, allow)
    last = AuthorActioned.model_validate(published(recorder.actions_publisher)[-1])
    assert (last.action.value, last.reverses, last.post_id) == (
        "reverse",
        events[1].action_id,
        "p2",
    )


async def test_a_crash_between_commit_and_publish_loses_nothing(
    recorder: Recorder, broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = recorder.actions_publisher
    original = publisher.publish

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("kafka went away after the database commit")

    monkeypatch.setattr(publisher, "publish", broken)
    await send(recorder, broker, PostSubmitted(post_id="p1", text="buy", author_id="a1"))
    await send(recorder, broker, removal("p1"))  # recorded and acknowledged; publish fails
    [action] = rows(recorder, AuthorAction)
    assert not action.published
    assert published(publisher) == []

    monkeypatch.setattr(publisher, "publish", original)
    # What a restarted recorder does first (`start_outbox`), and every later flush.
    assert await recorder.flush_outbox() == 1
    [body] = published(publisher)
    event = AuthorActioned.model_validate(body)
    assert (event.event_id, event.action_id) == (action.event_id, action.action_id)
    [action] = rows(recorder, AuthorAction)
    assert action.published
    assert await recorder.flush_outbox() == 0  # published once: nothing left to send


async def test_a_decided_report_publishes_report_resolved(
    recorder: Recorder, broker: KafkaBroker
) -> None:
    await send(recorder, broker, PostSubmitted(post_id="p1", text="hi", author_id="a1"))
    assert recorder.state.engine is not None
    with Session(recorder.state.engine) as session:
        session.add(
            Report(
                id="r1",
                tenant="default",
                reporter_id="u9",
                post_id="p1",
                reason="spam",
                weight=0.5,
                created_at=utc_now(),
            )
        )
        session.commit()
    remove = ReviewDecided(
        post_id="p1", label=Category.SPAM, decision=Decision.REMOVE, moderator_id="key:1"
    )
    await send(recorder, broker, remove)
    [body] = published(recorder.reports_publisher)
    resolved = ReportResolved.model_validate(body)
    assert (resolved.report_id, resolved.outcome.value, resolved.decision_event_id) == (
        "r1",
        "upheld",
        remove.event_id,
    )
    assert (resolved.tenant, resolved.reporter_id, resolved.post_id) == ("default", "u9", "p1")
    [report] = rows(recorder, Report)
    assert report.published and report.resolution_event_id == resolved.event_id
