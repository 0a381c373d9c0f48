"""The classifier worker's handler with a scripted model, run in memory and against the local
Kafka (`tests.messaging`)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from faststream.kafka import KafkaBroker

from moderation.classifier.cascade import AgentStage, first_stage
from moderation.events import (
    AgentRequested,
    DeadLetter,
    ModerationVerdict,
    PostSubmitted,
    ReviewRequested,
)
from moderation.services.worker.app import Worker, create_broker
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests.messaging import Messaging
from tests.scripted_llm import ScriptedModel as ScriptedLLM
from tests.scripted_llm import ScriptedProvider, remove_json


class ScriptedModel:
    """P(safe) high for 'hello', P(spam) high for 'buy', else uncertain."""

    version = "scripted-1"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        out = np.full((len(texts), len(CATEGORIES)), 0.01)
        for row, text in enumerate(texts):
            out[row, CATEGORIES.index(Category.SAFE)] = 0.95 if "hello" in text else 0.3
            out[row, CATEGORIES.index(Category.SPAM)] = 0.97 if "buy" in text else 0.2
        return out


@pytest.fixture
def worker(messaging: Messaging) -> Worker:
    """The worker's router (handler, publishers) and the models it serves: none yet."""
    return Worker(messaging.settings)


@pytest.fixture
def scripted(worker: Worker) -> Iterator[None]:
    worker.state.scorer = ScriptedModel()
    yield
    worker.state.scorer = None


@pytest.fixture
def kafka_broker(worker: Worker, messaging: Messaging) -> KafkaBroker:
    return create_broker(worker, principal=messaging.principal("worker"))


def payload(post_id: str, text: str) -> bytes:
    return PostSubmitted(post_id=post_id, text=text, author_id="u1").model_dump_json().encode()


def published(publisher: Any) -> list[dict[str, Any]]:
    """The messages a publisher's test mock saw, in the order they were read."""
    return [call.args[0] for call in publisher.mock.call_args_list]


def by_post(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Posts in order; a post's own messages as they came (one key: one partition, in order).

    Against Kafka, posts with different keys may be read back in any order.
    """
    return sorted(messages, key=lambda message: str(message["post_id"]))


async def test_each_post_gets_one_model_verdict_and_uncertain_ones_a_review(
    worker: Worker, scripted: None, kafka_broker: KafkaBroker, messaging: Messaging
) -> None:
    topic = worker.settings.kafka.topics.posts_submitted
    p1, p2, p3 = (messaging.id(name) for name in ("p1", "p2", "p3"))
    async with messaging.running(kafka_broker) as broker:
        await broker.publish(payload(p1, "hello friends"), topic=topic, key=p1.encode())
        await broker.publish(payload(p2, "buy cheap pills"), topic=topic, key=p2.encode())
        await broker.publish(payload(p3, "hmm"), topic=topic, key=p3.encode())
        await messaging.wait_until(
            lambda: (
                len(published(worker.verdict_publisher)) >= 3
                and len(published(worker.review_publisher)) >= 1
            ),
            "three verdicts and a review",
        )
        verdicts = [
            ModerationVerdict.model_validate(m)
            for m in by_post(published(worker.verdict_publisher))
        ]
        reviews = [
            ReviewRequested.model_validate(m) for m in by_post(published(worker.review_publisher))
        ]

    assert [(v.post_id, v.decision) for v in verdicts] == [
        (p1, Decision.ALLOW),
        (p2, Decision.REMOVE),
        (p3, Decision.REVIEW),
    ]
    assert all(v.stage is Stage.MODEL and v.model_version == "scripted-1" for v in verdicts)
    assert all(v.policy_version == worker.settings.models.policy_version for v in verdicts)
    assert [r.post_id for r in reviews] == [p3]
    assert reviews[0].verdict.decision is Decision.REVIEW


async def test_poison_message_goes_to_the_dead_letter_topic_and_others_go_on(
    worker: Worker, scripted: None, kafka_broker: KafkaBroker, messaging: Messaging
) -> None:
    topic = worker.settings.kafka.topics.posts_submitted
    bad, p9, p10 = (messaging.id(name) for name in ("bad", "p9", "p10"))
    async with messaging.running(kafka_broker) as broker:
        await broker.publish(b"{not json", topic=topic, key=bad.encode())
        await broker.publish(
            json.dumps({"post_id": p9, "author_id": "u"}).encode(), topic=topic, key=p9.encode()
        )
        await broker.publish(payload(p10, "hello"), topic=topic, key=p10.encode())
        await messaging.wait_until(
            lambda: (
                len(published(worker.dead_letter_publisher)) >= 2
                and len(published(worker.verdict_publisher)) >= 1
            ),
            "two dead letters and a verdict",
        )
        # Different keys: against Kafka the letters may come back in any order.
        dead = sorted(
            (DeadLetter.model_validate(m) for m in published(worker.dead_letter_publisher)),
            key=lambda letter: str(letter.key),
        )
        verdict_posts = [m["post_id"] for m in published(worker.verdict_publisher)]

    assert [d.key for d in dead] == [bad, p9]
    assert dead[0].payload == "{not json" and dead[0].error_type == "ValidationError"
    assert "text" in dead[1].error  # the missing field is named
    assert all(d.source_topic == topic for d in dead)
    assert verdict_posts == [p10]


async def test_stage_one_runs_off_the_event_loop(
    worker: Worker, kafka_broker: KafkaBroker, messaging: Messaging
) -> None:
    """The loop answers /healthz and heartbeats while stage 1 works on a batch."""
    loop = asyncio.get_running_loop()

    class WaitsForTheLoop(ScriptedModel):
        def predict_proba(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
            # Run on the event loop itself, this would wait for a callback that cannot run.
            loop_ran = threading.Event()
            loop.call_soon_threadsafe(loop_ran.set)
            assert loop_ran.wait(timeout=5), "stage 1 blocked the event loop"
            return super().predict_proba(texts)

    worker.state.scorer = WaitsForTheLoop()
    topic = worker.settings.kafka.topics.posts_submitted
    p1 = messaging.id("p1")
    try:
        async with messaging.running(kafka_broker) as broker:
            await broker.publish(payload(p1, "hello friends"), topic=topic, key=p1.encode())
            await messaging.wait_until(
                lambda: len(published(worker.verdict_publisher)) >= 1, "the verdict"
            )
            verdicts = [
                ModerationVerdict.model_validate(m) for m in published(worker.verdict_publisher)
            ]
    finally:
        worker.state.scorer = None
    assert [(v.post_id, v.decision) for v in verdicts] == [(p1, Decision.ALLOW)]


def test_classify_batch_uses_one_model_call() -> None:
    calls: list[int] = []

    class Counting(ScriptedModel):
        def predict_proba(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
            calls.append(len(texts))
            return super().predict_proba(texts)

    posts = [PostSubmitted(post_id=f"p{i}", text="hello", author_id="u") for i in range(50)]
    results = first_stage(posts, Counting(), Settings(), agent_enabled=True)
    assert calls == [50]
    assert len(results) == 50


async def test_uncertain_posts_go_to_the_agent_and_get_a_second_verdict(
    worker: Worker, scripted: None, kafka_broker: KafkaBroker, messaging: Messaging
) -> None:
    """Stage 1 decides the clear cases; the uncertain post gets the agent's verdict."""
    model = ScriptedLLM([remove_json(Category.SPAM)])
    worker.state.agent = AgentStage(worker.settings, ScriptedProvider(model), None)
    topic = worker.settings.kafka.topics.posts_submitted
    p1, p3 = messaging.id("p1"), messaging.id("p3")
    try:
        async with messaging.running(kafka_broker) as broker:
            await broker.publish(payload(p1, "hello friends"), topic=topic, key=p1.encode())
            await broker.publish(payload(p3, "hmm"), topic=topic, key=p3.encode())
            await messaging.wait_until(
                lambda: (
                    len(published(worker.verdict_publisher)) >= 3
                    and len(published(worker.review_publisher)) >= 1
                ),
                "three verdicts and a review",
            )
            verdicts = [
                ModerationVerdict.model_validate(m)
                for m in by_post(published(worker.verdict_publisher))
            ]
            reviews = published(worker.review_publisher)
    finally:
        worker.state.agent = None

    assert [(v.post_id, v.stage, v.decision) for v in verdicts] == [
        (p1, Stage.MODEL, Decision.ALLOW),
        (p3, Stage.MODEL, Decision.REVIEW),
        (p3, Stage.AGENT, Decision.REVIEW),
    ]
    # 0.7 * 0.99 + 0.3 * 0.2 = 0.753 for spam: below the agent's remove threshold, so a human
    # decides, on the agent's verdict.
    [review] = [ReviewRequested.model_validate(m) for m in reviews]
    assert review.post_id == p3 and review.verdict.stage is Stage.AGENT
    assert review.verdict.scores[Category.SPAM] == pytest.approx(0.753)
    assert len(model.requests) == 1


async def test_uncertain_posts_are_handed_to_the_agent_service_without_waiting_for_it(
    worker: Worker, scripted: None, kafka_broker: KafkaBroker, messaging: Messaging
) -> None:
    """With the agent in the agent service, the worker publishes stage 1's verdicts and hands
    each uncertain post to `agent.requested`; it runs no agent and requests no review."""
    worker.state.handoff = True
    topic = worker.settings.kafka.topics.posts_submitted
    p1, p3 = messaging.id("p1"), messaging.id("p3")
    try:
        async with messaging.running(kafka_broker) as broker:
            await broker.publish(payload(p1, "hello friends"), topic=topic, key=p1.encode())
            await broker.publish(payload(p3, "hmm"), topic=topic, key=p3.encode())
            await messaging.wait_until(
                lambda: (
                    len(published(worker.verdict_publisher)) >= 2
                    and len(published(worker.agent_publisher)) >= 1
                ),
                "two verdicts and a hand-off",
            )
            verdicts = [
                ModerationVerdict.model_validate(m)
                for m in by_post(published(worker.verdict_publisher))
            ]
            handoffs = [AgentRequested.model_validate(m) for m in published(worker.agent_publisher)]
            reviews = published(worker.review_publisher)
    finally:
        worker.state.handoff = False

    assert [(v.post_id, v.stage, v.decision) for v in verdicts] == [
        (p1, Stage.MODEL, Decision.ALLOW),
        (p3, Stage.MODEL, Decision.REVIEW),
    ]
    assert "to the agent" in (verdicts[1].rationale or "")
    [handoff] = handoffs
    assert handoff.post_id == p3 and handoff.post.text == "hmm"
    assert handoff.verdict == verdicts[1] and handoff.reason.startswith("uncertain")
    assert reviews == []


def test_consumer_lag_is_the_high_watermark_past_the_batch() -> None:
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from moderation.services.worker.app import CONSUMER_LAG, _record_lag

    watermarks = {TopicPartition("posts", 0): 120, TopicPartition("posts", 1): 7}
    message = SimpleNamespace(consumer=SimpleNamespace(highwater=watermarks.get))
    records = [
        SimpleNamespace(topic="posts", partition=0, offset=98),
        SimpleNamespace(topic="posts", partition=0, offset=99),
        SimpleNamespace(topic="posts", partition=1, offset=6),
    ]
    _record_lag(message, records)  # type: ignore[arg-type]
    assert CONSUMER_LAG.labels(partition="0")._value.get() == 20  # offsets 100..119 wait
    assert CONSUMER_LAG.labels(partition="1")._value.get() == 0
