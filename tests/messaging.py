"""Run a messaging test twice: in memory, and against the local Kafka.

A test takes the `messaging` fixture (tests/conftest.py) and is run once per mode:

- `memory`: FastStream's `TestKafkaBroker(broker)`; `publish` runs the handlers before it
  returns, so what the test waits for is true at once.
- `kafka` (marked `integration`): `TestKafkaBroker(broker, with_real=True)` on the local Kafka,
  with topics and consumer groups of the run's own (created here, deleted after). FastStream adds
  a consumer per publisher, so `publisher.mock` records what was read back from the real topic;
  the test waits for that observable state (`Messaging.wait_until`), never for a guessed time.

Against Kafka the test broker connects as `admin`: the services' own principals may not write
their input topics nor read their output topics (their ACLs are tested in test_kafka_auth.py).
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Literal, cast

from faststream import TestApp
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.subscriber.usecase import LogicSubscriber

from moderation.devtools.stack.kafka import KafkaBroker as LocalKafka
from moderation.devtools.stack.kafka import delete_topics, ensure_topics
from moderation.devtools.stack.services import isolated_settings
from moderation.kafka_auth import ADMIN, Principal
from moderation.settings import Settings

Mode = Literal["memory", "kafka"]

# Long enough for a consumer group to join and a batch to go round on a busy machine.
KAFKA_TIMEOUT_SECONDS = 60.0


async def eventually(predicate: Callable[[], bool], what: str, *, within: float) -> None:
    """Poll `predicate` until it holds; fail after `within` seconds (0: it must hold now)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true after {within:.0f}s: {what}")
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Messaging:
    """One run of a messaging test.

    Attributes:
        mode: `memory` or `kafka`.
        settings: the settings the services under test use (against Kafka: the run's own topics
            and consumer groups).
        prefix: put in front of keys and post ids, so that runs sharing a database never meet
            (empty in memory, where nothing is shared).
    """

    mode: Mode
    settings: Settings
    prefix: str = ""

    @property
    def real(self) -> bool:
        return self.mode == "kafka"

    def id(self, name: str) -> str:
        """A post id (or key) of this run."""
        return f"{self.prefix}{name}"

    def principal(self, service: Principal) -> Principal:
        """Who the service's broker connects as: itself in memory, `admin` against Kafka."""
        return ADMIN if self.real else service

    async def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait for observable state: true at once in memory, polled against Kafka."""
        await eventually(predicate, what, within=KAFKA_TIMEOUT_SECONDS if self.real else 0.0)

    @asynccontextmanager
    async def running(
        self, broker: KafkaBroker, app: AsgiFastStream | None = None
    ) -> AsyncIterator[KafkaBroker]:
        """`broker` under `TestKafkaBroker`, in this run's mode, started.

        Args:
            broker: the service's broker (its publishers get a `.mock`).
            app: the service's app, if its lifespan must run too (it then starts the broker).
        """
        async with AsyncExitStack() as stack:
            test_broker = await stack.enter_async_context(
                TestKafkaBroker(broker, with_real=self.real, connect_only=app is not None)
            )
            if app is not None:
                await stack.enter_async_context(TestApp(app))
            if self.real:
                await _readers_positioned(test_broker)
            yield test_broker


async def _readers_positioned(broker: KafkaBroker) -> None:
    """Wait until the consumers FastStream added for the publishers know where they read from.

    They have no group and start at the end of the topic: one that resolved its position only
    after the first message arrived would miss it.
    """
    for subscriber in broker.subscribers:
        reader = cast("LogicSubscriber[object]", subscriber)
        consumer = reader.consumer
        if reader.group_id is None and consumer is not None:
            for partition in consumer.assignment():
                await consumer.position(partition)


@functools.cache
def start_local_kafka() -> None:
    """Start the local stack's Kafka if it is not running (idempotent), once per test session."""
    kafka = LocalKafka(Settings())
    kafka.install()
    kafka.start()


@asynccontextmanager
async def kafka_run(base: Settings) -> AsyncIterator[Messaging]:
    """A run against the local Kafka: topics and consumer groups of its own, deleted after."""
    await asyncio.to_thread(start_local_kafka)  # it runs its own event loop
    run = f"msg-{uuid.uuid4().hex[:10]}"
    settings = isolated_settings(base, run)
    await ensure_topics(settings)
    try:
        yield Messaging("kafka", settings, prefix=f"{run}-")
    finally:
        await delete_topics(settings)
