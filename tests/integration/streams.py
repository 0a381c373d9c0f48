"""Helpers shared by the integration tests that drive the services through Kafka."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import delete_topics, ensure_topics
from moderation.devtools.stack.services import PipelineServices, isolated_settings
from moderation.events import DeadLetter, PostSubmitted
from moderation.kafka_auth import ADMIN, aiokafka_auth
from moderation.settings import Settings, get_settings
from moderation.taxonomy import VIOLATING

# Thresholds no fast-model score can pass: stage 1 decides nothing, every post is uncertain.
STAGE_ONE_DECIDES_NOTHING = {
    # The configured thresholds, not the model's error-budget choice, which would decide some.
    "MODERATION_ERROR_BUDGET__APPLY": "false",
    "MODERATION_THRESHOLDS__ALLOW": "1.0",
    "MODERATION_THRESHOLDS__REMOVE": json.dumps(dict.fromkeys([c.value for c in VIOLATING], 1.01)),
}


def kafka_admin_auth() -> dict[str, Any]:
    """SASL options of the tooling's super user (`admin`): tests create, read and forge freely."""
    return aiokafka_auth(get_settings(), ADMIN)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


async def produce(settings: Settings, posts: list[PostSubmitted]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        **kafka_admin_auth(),
        enable_idempotence=True,
        acks="all",
    )
    await producer.start()
    try:
        sends = [
            await producer.send(
                settings.kafka.topics.posts_submitted,
                post.model_dump_json().encode(),
                key=post.key(),
            )
            for post in posts
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


@contextmanager
def topics_of_their_own(settings: Settings, prefix: str) -> Iterator[Settings]:
    """`settings` with topics and consumer groups of their own, created now, deleted after."""
    isolated = isolated_settings(settings, f"{prefix}-{uuid.uuid4().hex[:8]}")
    asyncio.run(ensure_topics(isolated))
    try:
        yield isolated
    finally:
        asyncio.run(delete_topics(isolated))


@contextmanager
def running_services(
    services: PipelineServices, *names: str, dapr: DaprRuntime | None = None
) -> Iterator[PipelineServices]:
    """Start `names`; with `dapr`, first give the Dapr apps among them (the review and agent
    services) their daprd (app port set), and the worker its daprd (live configuration).

    Afterwards the services stop, the agent service's daprd too, and the stack's own daprd of
    the review service (no app port) is back.
    """
    ports = {
        "review": services.settings.review.service_port,
        "agent": services.settings.agent_service.service_port,
    }
    apps = [name for name in names if name in ports] if dapr is not None else []
    if dapr is not None:
        # The agent's daprd fronts the model server the services are pointed at.
        llm_base_url = services.extra_env.get("MODERATION_LLM__BASE_URL")
        for app in apps or ["review"]:
            dapr.stop_sidecar(app=app)
            dapr.start_sidecar(app_port=ports[app], app=app, llm_base_url=llm_base_url)
        if "worker" in names:
            dapr.start_sidecar(app="worker")  # its live configuration
    try:
        # Inside: a service that fails to start must not leave the ones before it running.
        services.start(*names, timeout=600)
        yield services
    finally:
        services.stop("dashboard", *reversed(names))
        if dapr is not None:
            for app in [*(apps or ["review"]), "worker"]:
                dapr.stop_sidecar(app=app)
            dapr.start_sidecar()


async def consume_dead_letters(settings: Settings, topic: str, count: int) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        **kafka_admin_auth(),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        async with asyncio.timeout(30):
            while len(letters) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    letters.extend(DeadLetter.model_validate_json(r.value) for r in records)
    finally:
        await consumer.stop()
    return sorted(letters, key=lambda letter: (letter.partition, letter.offset))
