"""The ingest API against the real Kafka and PostgreSQL: 202 means "in posts.submitted".

Kafka is shared with other tests running at the same time: every test finds its own messages by
the post ids it was given, reading each partition from the end offsets taken before it posted.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI
from sqlmodel import Session

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.events import PostSubmitted
from moderation.services.api import build_app
from moderation.services.api.internal import create_internal_app
from moderation.settings import Settings
from tests.integration.streams import kafka_admin_auth

pytestmark = pytest.mark.integration

# Short, so the outage test sees many 503s; production keeps the 5 s default.
PUBLISH_TIMEOUT = 2.0
READ_DEADLINE = 60.0


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    api = settings.api.model_copy(update={"publish_timeout_seconds": PUBLISH_TIMEOUT})
    return settings.model_copy(update={"api": api})


@pytest.fixture
def api_key(api_settings: Settings, postgres: PostgresCluster, unique: str) -> str:
    engine = make_engine(api_settings)
    try:
        create_tables(engine)
        with Session(engine) as session:
            plaintext, _ = crud.create_api_key(
                session, name=f"api-real-{unique}", scopes=["submit", "read"]
            )
    finally:
        engine.dispose()
    return plaintext


@pytest.fixture
async def app(
    api_settings: Settings, kafka: KafkaBroker, postgres: PostgresCluster
) -> AsyncIterator[FastAPI]:
    app = build_app(api_settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://api",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=30.0,
    ) as http:
        yield http


@pytest.fixture
async def internal(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The API's internal listener (readiness with detail, metrics)."""
    transport = httpx.ASGITransport(app=create_internal_app(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://internal") as http:
        yield http


async def end_offsets(settings: Settings) -> dict[TopicPartition, int]:
    """Where each partition of posts.submitted ends now."""
    topic = settings.kafka.topics.posts_submitted
    # Subscribed (without a group) so that start() loads the topic's metadata.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka.bootstrap_servers, **kafka_admin_auth()
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        assert partitions, f"topic {topic} has no partitions"
        tps = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        offsets: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return offsets
    finally:
        await consumer.stop()


async def read_posts(
    settings: Settings,
    since: dict[TopicPartition, int],
    wanted: set[str],
    *,
    until: dict[TopicPartition, int] | None = None,
) -> dict[str, list[PostSubmitted]]:
    """Every copy of each wanted post found after `since`, by post id.

    Reads until every wanted id was seen (or, with `until`, up to those offsets).

    Raises:
        AssertionError: when the deadline passes first, naming how many are missing.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        **kafka_admin_auth(),
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    seen: dict[str, list[PostSubmitted]] = {}
    try:
        consumer.assign(list(since))
        for tp, offset in since.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + READ_DEADLINE
        while True:
            if until is None and wanted <= set(seen):
                break
            if until is not None and await _reached(consumer, until):
                break
            if time.monotonic() > deadline:
                missing = len(wanted - set(seen))
                raise AssertionError(f"{missing} of {len(wanted)} posts not found in the topic")
            batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
            for records in batch.values():
                for record in records:
                    post_id = record.key.decode() if record.key else ""
                    if post_id in wanted:
                        assert record.value is not None
                        event = PostSubmitted.model_validate_json(record.value)
                        assert event.post_id == post_id
                        seen.setdefault(post_id, []).append(event)
    finally:
        await consumer.stop()
    return seen


async def _reached(consumer: AIOKafkaConsumer, until: dict[TopicPartition, int]) -> bool:
    for tp, offset in until.items():
        if await consumer.position(tp) < offset:
            return False
    return True


async def test_accepted_post_is_in_the_topic_and_idempotent(
    client: httpx.AsyncClient, internal: httpx.AsyncClient, api_settings: Settings, unique: str
) -> None:
    since = await end_offsets(api_settings)
    body = {
        "text": "Cafe\u0301 opens at nine",
        "author_id": f"author-{unique}",
        "external_id": f"ext-{unique}",
        "metadata": {"lang": "en", "score": 3},
    }

    first = await client.post("/v1/posts", json=body)
    again = await client.post("/v1/posts", json=body)

    assert first.status_code == again.status_code == 202, first.text
    post_id = first.json()["post_id"]
    assert again.json()["post_id"] == post_id
    until = await end_offsets(api_settings)
    seen = await read_posts(api_settings, since, {post_id}, until=until)
    assert len(seen[post_id]) == 1, "the replay must publish nothing new"
    [event] = seen[post_id]
    assert event.text == "Café opens at nine"
    assert (event.author_id, event.external_id) == (f"author-{unique}", f"ext-{unique}")
    assert event.metadata == {"lang": "en", "score": 3}

    ready = await internal.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert (await client.get("/readyz")).status_code == 404  # never on the public port


async def test_batch_of_1000_all_land(
    client: httpx.AsyncClient, api_settings: Settings, unique: str
) -> None:
    since = await end_offsets(api_settings)
    posts = [{"text": f"batch post {i}", "author_id": f"author-{unique}"} for i in range(1_000)]

    response = await client.post("/v1/posts:batch", json={"posts": posts})

    assert response.status_code == 202, response.text[:500]
    body = response.json()
    assert body["accepted"] == 1_000
    post_ids = {result["post_id"] for result in body["results"]}
    assert len(post_ids) == 1_000
    seen = await read_posts(api_settings, since, post_ids)
    assert set(seen) == post_ids


@dataclass
class Outcome:
    started: float
    finished: float
    status: int
    post_id: str | None


@dataclass
class Poster:
    """Posts continuously from a few concurrent clients and records every answer."""

    client: httpx.AsyncClient
    tag: str
    outcomes: list[Outcome] = field(default_factory=list)
    running: bool = True

    async def run(self, worker: int) -> None:
        sequence = 0
        while self.running:
            sequence += 1
            started = time.monotonic()
            response = await self.client.post(
                "/v1/posts",
                json={"text": f"{self.tag} {worker}-{sequence}", "author_id": f"fault-{self.tag}"},
            )
            post_id = response.json().get("post_id") if response.status_code == 202 else None
            self.outcomes.append(Outcome(started, time.monotonic(), response.status_code, post_id))
            # A refused request comes back after the publish timeout; an accepted one at once.
            await asyncio.sleep(0.01)

    async def wait_for(self, status: int, *, after: float, count: int, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if sum(1 for o in self.outcomes if o.started > after and o.status == status) >= count:
                return
            await asyncio.sleep(0.05)
        recent = Counter(o.status for o in self.outcomes if o.started > after)
        raise AssertionError(f"no {count} x {status} within {within}s (answers since: {recent})")


@pytest.mark.timeout(300)
async def test_kafka_outage_gives_503_never_202_and_every_202_lands(
    client: httpx.AsyncClient,
    internal: httpx.AsyncClient,
    api_settings: Settings,
    kafka: KafkaBroker,
    unique: str,
) -> None:
    since = await end_offsets(api_settings)
    poster = Poster(client, tag=f"outage-{unique}")
    workers = [asyncio.create_task(poster.run(worker)) for worker in range(4)]
    restarted = False
    try:
        await poster.wait_for(202, after=0.0, count=20, within=30)

        await asyncio.to_thread(kafka.stop)
        stopped_at = time.monotonic()
        await poster.wait_for(503, after=stopped_at, count=8, within=60)
        ready = await internal.get("/readyz")
        assert ready.status_code == 503 and "kafka" in ready.json()["failing"]

        starting_at = time.monotonic()
        await asyncio.to_thread(kafka.start)
        restarted = True
        await poster.wait_for(202, after=time.monotonic(), count=20, within=90)
    finally:
        poster.running = False
        if not restarted:
            await asyncio.to_thread(kafka.start)
        await asyncio.gather(*workers, return_exceptions=True)

    during_outage = [
        o for o in poster.outcomes if stopped_at < o.started and o.finished < starting_at
    ]
    assert during_outage, "no request was answered while Kafka was down"
    assert Counter(o.status for o in during_outage) == {503: len(during_outage)}
    assert all(o.status in (202, 503) for o in poster.outcomes), Counter(
        o.status for o in poster.outcomes
    )
    accepted = {o.post_id for o in poster.outcomes if o.status == 202 and o.post_id}
    assert len(accepted) >= 40
    seen = await read_posts(api_settings, since, accepted)
    assert accepted <= set(seen)


BAD_REQUESTS = [
    # (what, path, headers, body, status, words the message must contain)
    ("malformed JSON", "/v1/posts", {}, b'{"text": "hi", ', 400, ["JSON"]),
    ("missing field", "/v1/posts", {}, b'{"text": "hi"}', 422, ["author_id"]),
    ("empty text", "/v1/posts", {}, b'{"text": "", "author_id": "u"}', 422, ["text"]),
    ("10,001 characters", "/v1/posts", {},
     json.dumps({"text": "x" * 10_001, "author_id": "u"}).encode(), 422, ["10,000"]),
    ("batch of 1,001", "/v1/posts:batch", {},
     json.dumps({"posts": [{"text": "hi", "author_id": "u"}] * 1_001}).encode(), 413, ["1,000"]),
    ("wrong content type", "/v1/posts", {"Content-Type": "text/plain"},
     b'{"text": "hi", "author_id": "u"}', 415, ["application/json"]),
    ("bad API key", "/v1/posts", {"Authorization": "Bearer mod_nope_nope"},
     b'{"text": "hi", "author_id": "u"}', 401, ["key"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "path", "headers", "body", "status", "words"),
    BAD_REQUESTS,
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_input_gets_a_4xx_that_says_what_is_wrong(
    client: httpx.AsyncClient,
    what: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    words: list[str],
) -> None:
    response = await client.post(
        path, content=body, headers={"Content-Type": "application/json", **headers}
    )
    assert response.status_code == status, (what, response.text)
    message = response.text
    for word in words:
        assert word.lower() in message.lower(), (what, message)
