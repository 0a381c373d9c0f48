"""The pipeline through the real Kafka and PostgreSQL: worker and recorder as real processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlmodel import Session

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.events import PostSubmitted
from moderation.settings import Settings
from moderation.stack.kafka import KafkaBroker, delete_topics, ensure_topics
from moderation.stack.postgres import PostgresCluster
from moderation.stack.services import PipelineServices, isolated_settings

pytestmark = pytest.mark.integration

STREAM = 5_000


@pytest.fixture(scope="module")
def pipeline_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    """Topics and consumer groups of this module's own: no other test's backlog."""
    isolated = isolated_settings(settings, f"it-{uuid.uuid4().hex[:8]}")
    asyncio.run(ensure_topics(isolated))
    yield isolated
    asyncio.run(delete_topics(isolated))


@pytest.fixture(scope="module")
def services(pipeline_settings: Settings, postgres: PostgresCluster) -> Iterator[PipelineServices]:
    running = PipelineServices(pipeline_settings)
    running.start("recorder", "worker", timeout=600)
    yield running
    running.stop("worker", "recorder")


def model_verdict_counts(settings: Settings, prefix: str) -> dict[str, int]:
    """post_id -> number of stage-1 verdict rows, for this test's posts."""
    engine = make_engine(settings)
    create_tables(engine)
    try:
        with Session(engine) as session:
            rows = session.execute(
                text(
                    "SELECT post_id, count(*) FROM verdicts "
                    "WHERE stage = 'model' AND post_id LIKE :prefix GROUP BY post_id"
                ),
                {"prefix": f"{prefix}%"},
            ).all()
    finally:
        engine.dispose()
    return {str(post_id): int(count) for post_id, count in rows}


def wait_for_verdicts(
    settings: Settings, prefix: str, expected: int, timeout: float
) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = model_verdict_counts(settings, prefix)
        if len(counts) >= expected:
            return counts
        time.sleep(0.5)
    raise AssertionError(f"only {len(counts)} of {expected} posts got a verdict in {timeout:.0f}s")


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


def make_posts(prefix: str, count: int) -> list[PostSubmitted]:
    texts = [
        "Lovely sunset at the beach today, thanks everyone for coming!",
        "WIN a FREE iPhone now!!! Click http://win.example to claim your prize",
        "Does anyone know a good recipe for banana bread?",
        "You are a worthless idiot and everyone hates you",
    ]
    return [
        PostSubmitted(
            post_id=f"{prefix}{i:05d}", text=texts[i % len(texts)], author_id=f"a{i % 50}"
        )
        for i in range(count)
    ]


async def test_posts_get_verdicts_recorded(
    services: PipelineServices, pipeline_settings: Settings, unique: str
) -> None:
    settings = pipeline_settings
    prefix = f"it-{unique}-"
    await produce(settings, make_posts(prefix, 40))
    counts = await asyncio.to_thread(wait_for_verdicts, settings, prefix, 40, 120)
    assert set(counts.values()) == {1}

    # The model that produced the verdicts is the registered fast-model champion.
    engine = make_engine(settings)
    try:
        with Session(engine) as session:
            versions = {v.model_version for v in crud.list_verdicts(session, post_ids=list(counts))}
            champion = crud.get_champion(session, kind="fast")
    finally:
        engine.dispose()
    assert champion is not None
    assert versions == {champion.version}


async def test_worker_killed_mid_stream_loses_and_doubles_nothing(
    services: PipelineServices, pipeline_settings: Settings, unique: str
) -> None:
    settings = pipeline_settings
    prefix = f"kill-{unique}-"
    posts = make_posts(prefix, STREAM)
    producing = asyncio.create_task(produce(settings, posts))

    # Kill the worker once it is visibly in the middle of the stream.
    deadline = time.monotonic() + 120
    while len(await asyncio.to_thread(model_verdict_counts, settings, prefix)) < STREAM // 10:
        assert time.monotonic() < deadline, "the worker made no progress"
        await asyncio.sleep(0.2)
    services.kill("worker")
    done_at_kill = len(await asyncio.to_thread(model_verdict_counts, settings, prefix))
    await producing
    assert done_at_kill < STREAM, "the stream finished before the kill: nothing was tested"

    await asyncio.to_thread(services.start, "worker")
    counts = await asyncio.to_thread(wait_for_verdicts, settings, prefix, STREAM, 300)

    assert len(counts) == STREAM  # none lost
    assert set(counts.values()) == {1}  # exactly one model verdict row each
