"""Kafka refuses clients without credentials and services outside their own topics (real broker).

Finding 2 of the security review: a forged `review.decisions` event was recorded as a human
decision. The broker now authenticates every client (SASL/SCRAM) and authorises each service
principal for its own topics and group only (`moderation.kafka_auth.acl_grants`). Each refusal
here has its positive control: the rightful principal does the same thing successfully.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from moderation.devtools.stack.kafka import KafkaBroker
from moderation.events import ReviewDecided
from moderation.kafka_auth import Principal, aiokafka_auth
from moderation.settings import Settings
from moderation.taxonomy import Category, Decision
from tests.integration.streams import topics_of_their_own

pytestmark = pytest.mark.integration

TIMEOUT = 20.0


@pytest.fixture
def isolated(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    with topics_of_their_own(settings, "auth") as own:
        yield own


def forged_decision() -> bytes:
    return (
        ReviewDecided(
            review_id="r-forged",
            post_id="p-forged",
            label=Category.SAFE,
            decision=Decision.ALLOW,
            moderator_id="key:x",
        )
        .model_dump_json()
        .encode()
    )


async def send(settings: Settings, topic: str, auth: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, request_timeout_ms=5000, **auth
    )
    await asyncio.wait_for(producer.start(), TIMEOUT)
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, forged_decision()), TIMEOUT)
    finally:
        await producer.stop()


async def join(settings: Settings, topic: str, group: str, principal: Principal) -> None:
    """Join `group` on `topic` as `principal` and fetch once (authorisation is checked)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=group,
        auto_offset_reset="earliest",
        **aiokafka_auth(settings, principal),
    )
    await asyncio.wait_for(consumer.start(), TIMEOUT)
    try:
        await asyncio.wait_for(consumer.getmany(timeout_ms=1000), TIMEOUT)
    finally:
        await consumer.stop()


async def test_a_client_without_credentials_is_refused(isolated: Settings) -> None:
    topic = isolated.kafka.topics.review_decisions
    with pytest.raises(KafkaConnectionError):
        await send(isolated, topic, {})  # PLAINTEXT: no SASL handshake, the broker hangs up
    await send(isolated, topic, aiokafka_auth(isolated, "review"))  # the rightful writer


async def test_a_wrong_password_is_refused(isolated: Settings) -> None:
    wrong = aiokafka_auth(isolated, "review") | {"sasl_plain_password": "not-the-password"}
    with pytest.raises(KafkaConnectionError):
        await send(isolated, isolated.kafka.topics.review_decisions, wrong)


@pytest.mark.parametrize("principal", ["api", "worker", "recorder"])
async def test_only_the_review_service_may_publish_human_decisions(
    isolated: Settings, principal: Principal
) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await send(
            isolated, isolated.kafka.topics.review_decisions, aiokafka_auth(isolated, principal)
        )


async def test_only_the_api_may_submit_posts(isolated: Settings) -> None:
    topic = isolated.kafka.topics.posts_submitted
    for principal in ("review", "recorder"):
        with pytest.raises(TopicAuthorizationFailedError):
            await send(isolated, topic, aiokafka_auth(isolated, principal))
    await send(isolated, topic, aiokafka_auth(isolated, "api"))


async def test_a_service_cannot_read_as_another_service_s_group(isolated: Settings) -> None:
    topics, worker = isolated.kafka.topics, isolated.worker
    # The worker may not consume decisions, nor join the recorder's group.
    with pytest.raises((TopicAuthorizationFailedError, GroupAuthorizationFailedError)):
        await join(isolated, topics.review_decisions, worker.recorder_group, "worker")
    with pytest.raises(GroupAuthorizationFailedError):
        await join(isolated, topics.posts_submitted, worker.recorder_group, "worker")
    await join(isolated, topics.posts_submitted, worker.classifier_group, "worker")
    await join(isolated, topics.review_decisions, worker.recorder_group, "recorder")
