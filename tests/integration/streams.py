"""Helpers shared by the integration tests that drive the services through Kafka."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from moderation.events import PostSubmitted
from moderation.settings import Settings


async def produce(settings: Settings, posts: list[PostSubmitted]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_idempotence=True, acks="all"
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
