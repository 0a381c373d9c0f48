"""The pipeline through the real Kafka and PostgreSQL: worker and recorder as real processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session

from moderation.classifier.fast.store import ensure_fast_model
from moderation.db import crud
from moderation.devtools.stack.kafka import KafkaBroker, delete_topics, ensure_topics
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices, isolated_settings
from moderation.events import PostSubmitted
from moderation.services.worker.registry_watch import register_champion
from moderation.settings import Settings
from tests import crud_helpers
from tests.integration.streams import produce

pytestmark = pytest.mark.integration

STREAM = 5_000


@pytest.fixture(scope="module")
def pipeline_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    """Topics and consumer groups of this module's own: no other test's backlog.

    Stage 1 only: the agent stage has its own tests (test_agent_cascade.py).
    """
    isolated = isolated_settings(settings, f"it-{uuid.uuid4().hex[:8]}")
    isolated = isolated.model_copy(
        update={"agent": isolated.agent.model_copy(update={"enabled": False})}
    )
    asyncio.run(ensure_topics(isolated))
    yield isolated
    asyncio.run(delete_topics(isolated))


@pytest.fixture(scope="module")
def services(
    pipeline_settings: Settings, postgres: PostgresCluster, read_model: Engine
) -> Iterator[PipelineServices]:
    # Registering models is the nightly's job: the worker's role may only read the registry.
    base = ensure_fast_model(pipeline_settings, progress=False)
    register_champion(read_model, base, pipeline_settings, keep_existing=True)
    running = PipelineServices(pipeline_settings)
    running.start("recorder", "worker", timeout=600)
    yield running
    running.stop("worker", "recorder")


def model_verdict_counts(engine: Engine, post_ids: list[str]) -> dict[str, int]:
    """post_id -> number of stage-1 verdict rows, for these posts."""
    with Session(engine) as session:
        return crud_helpers.verdicts_per_post(session, post_ids=post_ids, stage="model")


def wait_for_verdicts(engine: Engine, post_ids: list[str], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = model_verdict_counts(engine, post_ids)
        if len(counts) >= len(post_ids):
            return counts
        time.sleep(0.5)
    raise AssertionError(
        f"only {len(counts)} of {len(post_ids)} posts got a verdict in {timeout:.0f}s"
    )


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
    services: PipelineServices,
    pipeline_settings: Settings,
    read_model: Engine,
    unique: str,
) -> None:
    settings = pipeline_settings
    posts = make_posts(f"it-{unique}-", 40)
    post_ids = [post.post_id for post in posts]
    await produce(settings, posts)
    counts = await asyncio.to_thread(wait_for_verdicts, read_model, post_ids, 120)
    assert set(counts.values()) == {1}

    # The model that produced the verdicts is the registered fast-model champion.
    with Session(read_model) as session:
        versions = {v.model_version for v in crud_helpers.list_verdicts(session, post_ids=post_ids)}
        champion = crud.get_champion(session, kind="fast")
    assert champion is not None
    assert versions == {champion.version}


def test_each_service_logs_in_with_its_own_database_role(
    services: PipelineServices, read_model: Engine
) -> None:
    """Issue 11: no service uses the owner role (what the roles may do: test_artifact_registry)."""
    query = text("SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database()")
    with read_model.connect() as connection:
        users = {row[0] for row in connection.execute(query)}
    assert {"moderation_worker", "moderation_recorder"} <= users


async def test_worker_killed_mid_stream_loses_and_doubles_nothing(
    services: PipelineServices,
    pipeline_settings: Settings,
    read_model: Engine,
    unique: str,
) -> None:
    settings = pipeline_settings
    posts = make_posts(f"kill-{unique}-", STREAM)
    post_ids = [post.post_id for post in posts]
    producing = asyncio.create_task(produce(settings, posts))

    # Kill the worker once it is visibly in the middle of the stream.
    deadline = time.monotonic() + 120
    while len(await asyncio.to_thread(model_verdict_counts, read_model, post_ids)) < STREAM // 10:
        assert time.monotonic() < deadline, "the worker made no progress"
        await asyncio.sleep(0.2)
    services.kill("worker")
    done_at_kill = len(await asyncio.to_thread(model_verdict_counts, read_model, post_ids))
    await producing
    assert done_at_kill < STREAM, "the stream finished before the kill: nothing was tested"

    await asyncio.to_thread(services.start, "worker")
    counts = await asyncio.to_thread(wait_for_verdicts, read_model, post_ids, 300)

    assert len(counts) == STREAM  # none lost
    assert set(counts.values()) == {1}  # exactly one model verdict row each
