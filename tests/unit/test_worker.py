"""The classifier worker's handler, in memory (TestKafkaBroker) with a scripted model."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker

from moderation.classifier.cascade import AgentStage, first_stage
from moderation.events import DeadLetter, ModerationVerdict, PostSubmitted, ReviewRequested
from moderation.services.worker.app import Worker, create_broker
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
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
def worker() -> Worker:
    """The worker's router (handler, publishers) and the models it serves: none yet."""
    return Worker(Settings())


@pytest.fixture
def scripted(worker: Worker) -> Iterator[None]:
    worker.state.scorer = ScriptedModel()
    yield
    worker.state.scorer = None


@pytest.fixture
def kafka_broker(worker: Worker) -> KafkaBroker:
    return create_broker(worker)


def payload(post_id: str, text: str) -> bytes:
    return PostSubmitted(post_id=post_id, text=text, author_id="u1").model_dump_json().encode()


async def test_each_post_gets_one_model_verdict_and_uncertain_ones_a_review(
    worker: Worker, scripted: None, kafka_broker: KafkaBroker
) -> None:
    topic = worker.settings.kafka.topics.posts_submitted
    async with TestKafkaBroker(kafka_broker) as broker:
        await broker.publish(payload("p1", "hello friends"), topic=topic, key=b"p1")
        await broker.publish(payload("p2", "buy cheap pills"), topic=topic, key=b"p2")
        await broker.publish(payload("p3", "hmm"), topic=topic, key=b"p3")

        verdicts = [
            ModerationVerdict.model_validate(call.args[0])
            for call in worker.verdict_publisher.mock.call_args_list
        ]
        reviews = [
            ReviewRequested.model_validate(call.args[0])
            for call in worker.review_publisher.mock.call_args_list
        ]

    assert [(v.post_id, v.decision) for v in verdicts] == [
        ("p1", Decision.ALLOW),
        ("p2", Decision.REMOVE),
        ("p3", Decision.REVIEW),
    ]
    assert all(v.stage is Stage.MODEL and v.model_version == "scripted-1" for v in verdicts)
    assert all(v.policy_version == worker.settings.models.policy_version for v in verdicts)
    assert [r.post_id for r in reviews] == ["p3"]
    assert reviews[0].verdict.decision is Decision.REVIEW


async def test_poison_message_goes_to_the_dead_letter_topic_and_others_go_on(
    worker: Worker, scripted: None, kafka_broker: KafkaBroker
) -> None:
    topic = worker.settings.kafka.topics.posts_submitted
    async with TestKafkaBroker(kafka_broker) as broker:
        await broker.publish(b"{not json", topic=topic, key=b"bad")
        await broker.publish(
            json.dumps({"post_id": "p9", "author_id": "u"}).encode(), topic=topic, key=b"p9"
        )
        await broker.publish(payload("p10", "hello"), topic=topic, key=b"p10")

        dead = [
            DeadLetter.model_validate(call.args[0])
            for call in worker.dead_letter_publisher.mock.call_args_list
        ]
        verdict_posts = [
            call.args[0]["post_id"] for call in worker.verdict_publisher.mock.call_args_list
        ]

    assert [d.key for d in dead] == ["bad", "p9"]
    assert dead[0].payload == "{not json" and dead[0].error_type == "ValidationError"
    assert "text" in dead[1].error  # the missing field is named
    assert all(d.source_topic == topic for d in dead)
    assert verdict_posts == ["p10"]


async def test_stage_one_runs_off_the_event_loop(worker: Worker, kafka_broker: KafkaBroker) -> None:
    """The loop answers /healthz and heartbeats while stage 1 works on a batch."""
    loop_ran = threading.Event()

    class WaitsForTheLoop(ScriptedModel):
        def predict_proba(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
            # Run on the event loop itself, this would wait for a callback that cannot run.
            assert loop_ran.wait(timeout=5), "stage 1 blocked the event loop"
            return super().predict_proba(texts)

    async def mark_the_loop_free() -> None:
        await asyncio.sleep(0.05)
        loop_ran.set()

    worker.state.scorer = WaitsForTheLoop()
    topic = worker.settings.kafka.topics.posts_submitted
    try:
        async with TestKafkaBroker(kafka_broker) as broker:
            marker = asyncio.create_task(mark_the_loop_free())
            await broker.publish(payload("p1", "hello friends"), topic=topic, key=b"p1")
            await marker
            verdicts = [
                ModerationVerdict.model_validate(call.args[0])
                for call in worker.verdict_publisher.mock.call_args_list
            ]
    finally:
        worker.state.scorer = None
    assert [(v.post_id, v.decision) for v in verdicts] == [("p1", Decision.ALLOW)]


def test_classify_batch_uses_one_model_call(worker: Worker) -> None:
    calls: list[int] = []

    class Counting(ScriptedModel):
        def predict_proba(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
            calls.append(len(texts))
            return super().predict_proba(texts)

    posts = [PostSubmitted(post_id=f"p{i}", text="hello", author_id="u") for i in range(50)]
    results = first_stage(posts, Counting(), worker.settings, agent_enabled=True)
    assert calls == [50]
    assert len(results) == 50


async def test_uncertain_posts_go_to_the_agent_and_get_a_second_verdict(
    worker: Worker, scripted: None, kafka_broker: KafkaBroker
) -> None:
    """Stage 1 decides the clear cases; the uncertain post gets the agent's verdict."""
    model = ScriptedLLM([remove_json(Category.SPAM)])
    worker.state.agent = AgentStage(worker.settings, ScriptedProvider(model), None)
    topic = worker.settings.kafka.topics.posts_submitted
    try:
        async with TestKafkaBroker(kafka_broker) as broker:
            await broker.publish(payload("p1", "hello friends"), topic=topic, key=b"p1")
            await broker.publish(payload("p3", "hmm"), topic=topic, key=b"p3")
            verdicts = [
                ModerationVerdict.model_validate(call.args[0])
                for call in worker.verdict_publisher.mock.call_args_list
            ]
            reviews = worker.review_publisher.mock.call_args_list
    finally:
        worker.state.agent = None

    assert [(v.post_id, v.stage, v.decision) for v in verdicts] == [
        ("p1", Stage.MODEL, Decision.ALLOW),
        ("p3", Stage.MODEL, Decision.REVIEW),
        ("p3", Stage.AGENT, Decision.REVIEW),
    ]
    # 0.7 * 0.99 + 0.3 * 0.2 = 0.753 for spam: below the agent's remove threshold, so a human
    # decides, on the agent's verdict.
    [review] = [ReviewRequested.model_validate(call.args[0]) for call in reviews]
    assert review.post_id == "p3" and review.verdict.stage is Stage.AGENT
    assert review.verdict.scores[Category.SPAM] == pytest.approx(0.753)
    assert len(model.requests) == 1


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
