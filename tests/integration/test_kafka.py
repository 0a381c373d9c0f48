"""The real Apache Kafka broker: idempotent producer, consumer-group commit and resume."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from moderation.devtools.stack.kafka import KafkaBroker
from moderation.settings import Settings
from tests.integration.streams import kafka_admin_auth

pytestmark = pytest.mark.integration

MESSAGES = 10
COMMITTED = 4


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_admin_auth())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
        for _ in range(50):
            if topic in await admin.list_topics():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"topic {topic} was not created")
    finally:
        await admin.close()


async def _consume(bootstrap: str, topic: str, group: str, count: int) -> list[tuple[int, bytes]]:
    """Read `count` messages as group `group`, committing after each one, then leave."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        **kafka_admin_auth(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    received: list[tuple[int, bytes]] = []
    try:
        async with asyncio.timeout(30):
            while len(received) < count:
                batch = await consumer.getmany(timeout_ms=500, max_records=count - len(received))
                for partition, records in batch.items():
                    for record in records:
                        assert record.value is not None
                        received.append((record.offset, record.value))
                        await consumer.commit({partition: record.offset + 1})
    finally:
        await consumer.stop()
    return received


async def test_idempotent_producer_and_group_resume_across_broker_restart(
    kafka: KafkaBroker, settings: Settings, unique: str
) -> None:
    bootstrap = settings.kafka.bootstrap_servers
    topic, group = f"selftest.kafka.{unique}", f"selftest-{unique}"
    await _create_topic(bootstrap, topic)

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, **kafka_admin_auth(), enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        sent = [
            await producer.send_and_wait(topic, f"post-{i}".encode(), key=b"post-key")
            for i in range(MESSAGES)
        ]
    finally:
        await producer.stop()
    assert [meta.offset for meta in sent] == list(range(MESSAGES))

    first = await _consume(bootstrap, topic, group, COMMITTED)
    assert first == [(i, f"post-{i}".encode()) for i in range(COMMITTED)]

    # The committed offsets must survive a broker restart, not only a consumer restart.
    await asyncio.to_thread(kafka.stop)
    await asyncio.to_thread(kafka.start)

    rest = await _consume(bootstrap, topic, group, MESSAGES - COMMITTED)
    assert rest == [(i, f"post-{i}".encode()) for i in range(COMMITTED, MESSAGES)]

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **kafka_admin_auth(), group_id=group)
    await consumer.start()
    try:
        committed = await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()
    assert committed == MESSAGES
