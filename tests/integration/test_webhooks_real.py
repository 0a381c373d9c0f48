"""Outbound webhooks end to end: real Kafka (SASL/SCRAM, the `dispatcher` principal and its
ACLs), real PostgreSQL (the `moderation_webhooks` role and its grants), a real HTTP receiver.

The dispatcher runs in this process against the real broker (its consumer group, its delivery
loop); events are published to the run's own topics; a receiver on 127.0.0.1 (its own thread and
event loop, `webhooks.allow_private_targets` on) verifies every signature with `standardwebhooks`
(an old or replayed timestamp gets 400), deduplicates by `webhook-id` and counts what it
accepted. It fails each delivery's first attempts, times out once, then answers.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from fastapi import FastAPI, Request, Response
from faststream import TestApp
from sqlalchemy import Engine, text
from sqlmodel import Session, col, select
from standardwebhooks import Webhook, WebhookVerificationError

from moderation.db import crud
from moderation.db.engine import make_engine
from moderation.db.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from moderation.db.roles import SERVICE_ROLES
from moderation.devtools.stack.kafka import KafkaBroker, delete_topics, ensure_topics
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import isolated_settings
from moderation.events import Event, ModerationVerdict, PostSubmitted, utc_now
from moderation.kafka_auth import aiokafka_auth
from moderation.services.webhooks.app import WebhookService, build_app
from moderation.settings import Settings, WebhookSettings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from moderation.webhooks import new_secret
from tests.integration.streams import kafka_admin_auth
from tests.integration.test_kafka_auth import join, send

pytestmark = pytest.mark.integration

FAILS_FIRST = 2  # 500, 500, then one timeout, then 200
TIMEOUT_SECONDS = 1.0
TEST_WEBHOOKS = WebhookSettings(
    allow_private_targets=True,  # the receiver is on 127.0.0.1
    require_https=False,
    timeout_seconds=TIMEOUT_SECONDS,
    backoff_base_seconds=0.1,
    backoff_cap_seconds=0.5,
    breaker_failures=3,
    breaker_cooldown_seconds=2.0,
    poll_interval_seconds=0.1,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Behaviour:
    """What one receiver path does with each delivery's n-th attempt."""

    secret: str
    fail_first: int = 0
    time_out_once: bool = False
    always_status: int | None = None
    delay: float = 0.0


@dataclass
class Receiver:
    """A real HTTP receiver: verifies, deduplicates by webhook-id, counts."""

    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    attempts: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)  # webhook-id -> body
    accepted_at: dict[str, float] = field(default_factory=dict)
    duplicates: Counter[str] = field(default_factory=Counter)
    refused_signatures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{path}")
        async def receive(path: str, request: Request) -> Response:
            behaviour = self.behaviours[path]
            body = await request.body()
            try:
                data = Webhook(behaviour.secret).verify(body, dict(request.headers))
            except WebhookVerificationError as error:
                with self.lock:
                    self.refused_signatures.append(str(error))
                return Response(str(error), status_code=400)
            delivery_id = request.headers["webhook-id"]
            with self.lock:
                self.attempts[delivery_id] += 1
                attempt = self.attempts[delivery_id]
            if behaviour.delay:
                await asyncio.sleep(behaviour.delay)
            if behaviour.always_status is not None:
                return Response(status_code=behaviour.always_status)
            if attempt <= behaviour.fail_first:
                return Response("not yet", status_code=500)
            if behaviour.time_out_once and attempt == behaviour.fail_first + 1:
                await asyncio.sleep(TIMEOUT_SECONDS * 3)  # the dispatcher gives up first
                return Response(status_code=200)
            with self.lock:
                if delivery_id in self.accepted:
                    self.duplicates[delivery_id] += 1  # at least once: answered, not counted
                else:
                    self.accepted[delivery_id] = data
                    self.accepted_at[delivery_id] = time.monotonic()
            return Response(status_code=204)

        return app


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    server = uvicorn.Server(
        uvicorn.Config(found.app(), host="127.0.0.1", port=found.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="webhook-receiver", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the receiver did not start"
        time.sleep(0.05)
    yield found
    server.should_exit = True
    thread.join(timeout=10)


@dataclass
class Run:
    settings: Settings
    owner: Engine  # the owner's engine: the test's own setup and clean-up
    tenant: str
    producer: AIOKafkaProducer


@pytest.fixture
async def run(
    settings: Settings, kafka: KafkaBroker, postgres: PostgresCluster, unique: str
) -> AsyncIterator[Run]:
    """The run's own topics and consumer group; the dispatcher logs in to PostgreSQL as its
    own role; the rows the run wrote are deleted after."""
    isolated = isolated_settings(settings, f"it{unique}")
    test_settings = isolated.model_copy(
        update={
            "webhooks": TEST_WEBHOOKS.model_copy(update={"consumer_group": f"webhooks-{unique}"}),
            "db": isolated.db.model_copy(update={"user": SERVICE_ROLES["webhooks"]}),
        }
    )
    await ensure_topics(test_settings)  # and the dispatcher's ACLs for them
    owner = make_engine(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        **kafka_admin_auth(),
        enable_idempotence=True,
        acks="all",
    )
    await producer.start()
    tenant = f"it-{unique}"
    try:
        yield Run(test_settings, owner, tenant, producer)
    finally:
        await producer.stop()
        with owner.begin() as connection:
            connection.execute(
                text(
                    "DELETE FROM webhook_deliveries WHERE endpoint_id IN "
                    "(SELECT id FROM webhook_endpoints WHERE tenant = :tenant)"
                ),
                {"tenant": tenant},
            )
            for table in ("webhook_endpoints", "posts"):
                connection.execute(
                    text(f"DELETE FROM {table} WHERE tenant = :tenant"), {"tenant": tenant}
                )
            connection.execute(
                text("DELETE FROM audit_log WHERE tenant = :tenant"), {"tenant": tenant}
            )
        owner.dispose()
        await delete_topics(test_settings)


@asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[WebhookService]:
    """The dispatcher started for real: its broker as `dispatcher`, its engine, its loop."""
    service = WebhookService(settings)
    async with TestApp(build_app(settings, service=service)):
        yield service


@pytest.fixture
async def dispatcher(run: Run) -> AsyncIterator[WebhookService]:
    async with started(run.settings) as service:
        yield service


def endpoint(run: Run, url: str, secret: str, events: tuple[str, ...]) -> WebhookEndpoint:
    with Session(run.owner) as session:
        return crud.create_webhook_endpoint(
            session,
            tenant=run.tenant,
            owner_key_id=None,
            url=url,
            event_types=events,
            secret=secret,
            actor="it",
        )


def record_posts(run: Run, post_ids: list[str]) -> None:
    with Session(run.owner) as session:
        crud.record_events(
            session,
            events=[
                PostSubmitted(post_id=p, text="t", author_id="a", tenant=run.tenant)
                for p in post_ids
            ],
        )


def verdict(post_id: str) -> ModerationVerdict:
    return ModerationVerdict(
        post_id=post_id,
        decision=Decision.REMOVE,
        scores=dict.fromkeys(CATEGORIES, 0.1),
        primary_category=Category.SPAM,
        confidence=0.95,
        stage=Stage.MODEL,
        model_version="fast-it",
        policy_version="v1",
        latency_ms=1.0,
    )


async def publish(run: Run, topic: str, events: Sequence[Event]) -> None:
    sends = [
        await run.producer.send(topic, e.model_dump_json().encode(), key=e.key()) for e in events
    ]
    await asyncio.gather(*sends)


async def publish_raw(run: Run, topic: str, values: list[bytes]) -> None:
    await asyncio.gather(*[await run.producer.send(topic, v, key=b"author") for v in values])


def rows(run: Run, endpoint_id: str) -> list[WebhookDelivery]:
    with Session(run.owner) as session:
        return list(
            session.exec(
                select(WebhookDelivery).where(col(WebhookDelivery.endpoint_id) == endpoint_id)
            ).all()
        )


async def wait_for(check: Callable[[], bool], what: str, *, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {within:.0f}s: {what}")
        await asyncio.sleep(0.1)


async def test_every_event_is_delivered_once_through_failures_and_a_timeout(
    run: Run, receiver: Receiver
) -> None:
    # Every delivery fails three times here: a breaker would only slow the test down.
    settings = run.settings.model_copy(
        update={"webhooks": run.settings.webhooks.model_copy(update={"breaker_failures": 1000})}
    )
    async with started(settings):
        await deliver_through_failures(run, receiver)


async def deliver_through_failures(run: Run, receiver: Receiver) -> None:
    secret = new_secret()
    receiver.behaviours["flaky"] = Behaviour(secret, fail_first=FAILS_FIRST, time_out_once=True)
    hook = endpoint(run, receiver.url("flaky"), secret, ("post.verdict", "author.actioned"))
    topics = run.settings.kafka.topics
    post_ids = [f"{run.tenant}-p{i}" for i in range(12)]
    record_posts(run, post_ids[:10])
    verdicts = [verdict(p) for p in post_ids]
    # Two posts are recorded only after their verdicts were published (the recorder lagging):
    # the dispatcher reads their batch again until it can tell their tenant.
    await publish(run, topics.verdicts, verdicts)
    actions = [
        f'{{"event_id": "act-{run.tenant}-{i}", "tenant": "{run.tenant}", "author_id": "a{i}",'
        f' "action": "suspend"}}'.encode()
        for i in range(5)
    ]
    await publish_raw(run, topics.authors_actioned, actions)
    await asyncio.sleep(2.0)
    record_posts(run, post_ids[10:])
    # Every event again (a producer retry, a replayed partition): nothing new.
    await publish(run, topics.verdicts, verdicts[:5])
    expected = 12 + 5

    def everything_accepted() -> bool:
        return len(receiver.accepted) == expected

    await wait_for(everything_accepted, f"{expected} deliveries accepted", within=90)
    await asyncio.sleep(1.0)  # anything doubled would arrive now
    found = rows(run, hook.id)
    assert len(found) == expected  # one delivery per event, the replayed ones included
    assert {row.status for row in found} == {DeliveryStatus.SUCCEEDED}
    # The receiver's view: each webhook-id accepted once; none lost, none doubled.
    assert set(receiver.accepted) == {row.id for row in found}
    assert sum(receiver.duplicates.values()) == 0
    accepted_ids = sorted(body["data"]["event_id"] for body in receiver.accepted.values())
    wanted_ids = sorted(
        [v.event_id for v in verdicts] + [f"act-{run.tenant}-{i}" for i in range(5)]
    )
    assert accepted_ids == wanted_ids
    for row in found:
        # 2 x 500, the timeout (counted by the receiver: it saw the request), then 204.
        assert receiver.attempts[row.id] == FAILS_FIRST + 2, row.id
        assert row.attempts == FAILS_FIRST + 2 and row.last_status_code == 204
    assert receiver.refused_signatures == []
    body = next(b for b in receiver.accepted.values() if b["type"] == "post.verdict")
    assert body["data"]["tenant"] == run.tenant and body["data"]["decision"] == "remove"


async def test_a_dead_endpoint_does_not_delay_a_healthy_one(
    run: Run, dispatcher: WebhookService, receiver: Receiver
) -> None:
    topics = run.settings.kafka.topics
    healthy_secret = new_secret()
    receiver.behaviours["healthy"] = Behaviour(healthy_secret)
    healthy = endpoint(run, receiver.url("healthy"), healthy_secret, ("post.verdict",))

    async def healthy_latencies(batch: str, n: int) -> list[float]:
        post_ids = [f"{run.tenant}-{batch}-{i}" for i in range(n)]
        record_posts(run, post_ids)
        sent = {}
        for post_id in post_ids:
            event = verdict(post_id)
            sent[event.event_id] = time.monotonic()
            await publish(run, topics.verdicts, [event])
            await asyncio.sleep(0.05)

        def all_in() -> bool:
            with receiver.lock:
                got = {b["data"]["event_id"] for b in receiver.accepted.values()}
            return set(sent) <= got

        await wait_for(all_in, f"batch {batch} at the healthy endpoint", within=60)
        with receiver.lock:
            at = {
                body["data"]["event_id"]: receiver.accepted_at[delivery_id]
                for delivery_id, body in receiver.accepted.items()
            }
        return [at[event_id] - sent[event_id] for event_id in sent]

    alone = await healthy_latencies("alone", 20)
    # Now the same tenant also has a refused port, an endpoint that always answers 500 and one
    # that answers after the timeout: each gets every event too.
    slow_secret, failing_secret = new_secret(), new_secret()
    receiver.behaviours["failing"] = Behaviour(failing_secret, always_status=500)
    receiver.behaviours["slow"] = Behaviour(slow_secret, delay=TIMEOUT_SECONDS * 3)
    refused = endpoint(
        run, f"http://127.0.0.1:{free_port()}/nobody", new_secret(), ("post.verdict",)
    )
    failing = endpoint(run, receiver.url("failing"), failing_secret, ("post.verdict",))
    slow = endpoint(run, receiver.url("slow"), slow_secret, ("post.verdict",))
    with_dead = await healthy_latencies("with-dead", 20)
    for dead in (refused, failing, slow):
        found = rows(run, dead.id)
        assert found and all(row.status == DeliveryStatus.PENDING for row in found), dead.url
        assert any(row.attempts >= 1 for row in found)
        assert all(row.last_error for row in found if row.attempts)
    errors = {row.last_error for row in rows(run, slow.id) if row.last_error}
    assert any("timed out" in error for error in errors), errors
    median_alone, median_dead = statistics.median(alone), statistics.median(with_dead)
    worst_dead = max(with_dead)
    # The healthy endpoint's deliveries take about as long with the dead ones as without.
    assert median_dead < median_alone + 0.5, (alone, with_dead)
    assert worst_dead < TIMEOUT_SECONDS * 2, with_dead  # never one attempt of a dead endpoint
    assert {row.status for row in rows(run, healthy.id)} == {DeliveryStatus.SUCCEEDED}


async def test_a_failing_delivery_is_dead_after_its_window_and_can_be_redelivered(
    run: Run, dispatcher: WebhookService, receiver: Receiver
) -> None:
    secret = new_secret()
    receiver.behaviours["down"] = Behaviour(secret, always_status=503)
    hook = endpoint(run, receiver.url("down"), secret, ("post.verdict",))
    post_id = f"{run.tenant}-down"
    record_posts(run, [post_id])
    event = verdict(post_id)
    await publish(run, run.settings.kafka.topics.verdicts, [event])
    await wait_for(lambda: len(rows(run, hook.id)) == 1, "the delivery created", within=30)
    # Shorten its window (24 h in production) so the test sees it die.
    with Session(run.owner) as session:
        [row] = session.exec(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == hook.id))
        row.expires_at = utc_now() + timedelta(seconds=2)
        session.add(row)
        session.commit()

    def dead() -> bool:
        return rows(run, hook.id)[0].status == DeliveryStatus.DEAD

    await wait_for(dead, "the delivery marked dead", within=30)
    [row] = rows(run, hook.id)
    assert row.last_status_code == 503 and row.last_error == "HTTP 503" and row.attempts >= 1
    # The endpoint recovers; a manual redelivery sends the same webhook-id again.
    receiver.behaviours["down"] = Behaviour(secret)
    with Session(run.owner) as session:
        stored = session.get(WebhookDelivery, row.id)
        assert stored is not None
        now = utc_now()
        crud.redeliver_webhook(
            session, delivery=stored, at=now, expires_at=now + timedelta(hours=1)
        )
    await wait_for(lambda: row.id in receiver.accepted, "the redelivery accepted", within=30)

    def recorded() -> bool:  # the receiver answers before the dispatcher records its answer
        return rows(run, hook.id)[0].status == DeliveryStatus.SUCCEEDED

    await wait_for(recorded, "the redelivery recorded as succeeded", within=10)
    assert rows(run, hook.id)[0].last_status_code == 204


async def test_the_dispatcher_reads_its_topics_in_its_group_and_forges_nothing(run: Run) -> None:
    """Its principal's ACLs: read the four topics in group `webhooks`, write their DLQs only."""
    settings = run.settings
    topics, group = settings.kafka.topics, settings.webhooks.consumer_group
    auth = aiokafka_auth(settings, "dispatcher")
    for topic in (topics.verdicts, topics.review_decisions, topics.posts_submitted):
        with pytest.raises(TopicAuthorizationFailedError):
            await send(settings, topic, auth)
    with pytest.raises(GroupAuthorizationFailedError):
        await join(settings, topics.verdicts, settings.worker.recorder_group, "dispatcher")
    with pytest.raises((TopicAuthorizationFailedError, GroupAuthorizationFailedError)):
        await join(settings, topics.posts_submitted, group, "dispatcher")
    # The positive controls: its own topics, in its own group; its dead letters.
    for topic in (topics.verdicts, topics.authors_actioned, topics.reports_resolved):
        await join(settings, topic, group, "dispatcher")
    await send(settings, topics.verdicts + topics.dlq_suffix, auth)
