"""The webhook dispatcher in memory: the delivery loop against an in-process receiver
(httpx's MockTransport, SQLite behind) and the consumer on FastStream's TestKafkaBroker.

The same behaviours against the real Kafka, PostgreSQL and a real HTTP receiver (real timeouts,
refused connections) are in tests/integration/test_webhooks_real.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from faststream import TestApp
from faststream.kafka import KafkaBroker, TestKafkaBroker
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from standardwebhooks import Webhook, WebhookVerificationError

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from moderation.events import (
    ModerationVerdict,
    PostSubmitted,
    ReviewDecided,
    utc_now,
)
from moderation.services.webhooks.app import PostNotRecorded, WebhookService, build_app
from moderation.services.webhooks.delivery import Dispatcher
from moderation.settings import DatabaseSettings, Settings, WebhookSettings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from moderation.webhooks import new_secret

PUBLIC_IP = "93.184.216.34"
FAST = WebhookSettings(
    require_https=True,
    timeout_seconds=1.0,
    backoff_base_seconds=0.01,
    backoff_cap_seconds=0.05,
    breaker_failures=100,
    poll_interval_seconds=0.02,
)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, *, within: float = 10.0
) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {within:.0f}s: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(Settings(), url=f"sqlite:///{tmp_path / 'webhooks.db'}")
    create_tables(engine)
    yield engine
    engine.dispose()


def add_endpoint(
    engine: Engine,
    *,
    host: str,
    tenant: str = "acme",
    events: tuple[str, ...] = ("post.verdict",),
    secret: str | None = None,
) -> WebhookEndpoint:
    with Session(engine) as session:
        return crud.create_webhook_endpoint(
            session,
            tenant=tenant,
            owner_key_id=None,
            url=f"https://{host}/hook",
            event_types=events,
            secret=secret or new_secret(),
            actor="test",
        )


def add_deliveries(
    engine: Engine, endpoint_id: str, n: int, *, expires_in: timedelta = timedelta(hours=24)
) -> None:
    now = utc_now()
    with Session(engine) as session:
        crud.insert_webhook_deliveries(
            session,
            deliveries=[
                crud.NewDelivery(
                    endpoint_id=endpoint_id,
                    event_id=f"{endpoint_id}-event-{i}",
                    event_type="post.verdict",
                    payload={"type": "post.verdict", "data": {"i": i}},
                    created_at=now,
                    expires_at=now + expires_in,
                )
                for i in range(n)
            ],
        )


def deliveries(engine: Engine, endpoint_id: str) -> list[WebhookDelivery]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
            ).all()
        )


class Receiver:
    """An endpoint's behaviour per host: fail each delivery's first `fail` attempts with 500,
    time out once, then answer 204; it verifies every signature and counts deliveries by
    `webhook-id` (the receiver's view: each accepted once)."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets  # host -> secret
        self.plans: dict[str, Callable[[int], Awaitable[httpx.Response]]] = {}
        self.attempts: Tally[str] = Tally()
        self.accepted: Tally[str] = Tally()
        self.accepted_at: dict[str, float] = {}
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        host = request.headers["host"]
        body = await request.aread()
        try:
            Webhook(self.secrets[host]).verify(body, dict(request.headers))
        except WebhookVerificationError as error:
            return httpx.Response(400, text=str(error))
        delivery_id = request.headers["webhook-id"]
        self.attempts[delivery_id] += 1
        response = await self.plans[host](self.attempts[delivery_id])
        if response.status_code < 300 and delivery_id not in self.accepted:
            self.accepted_at[delivery_id] = time.monotonic()
        if response.status_code < 300:
            self.accepted[delivery_id] += 1
        return response


def flaky(fail: int) -> Callable[[int], Awaitable[httpx.Response]]:
    async def plan(attempt: int) -> httpx.Response:
        if attempt <= fail:
            return httpx.Response(500)
        if attempt == fail + 1:
            raise httpx.ReadTimeout("simulated timeout")
        return httpx.Response(204)

    return plan


def always(status: int, *, delay: float = 0.0) -> Callable[[int], Awaitable[httpx.Response]]:
    async def plan(attempt: int) -> httpx.Response:
        del attempt
        await asyncio.sleep(delay)
        return httpx.Response(status)

    return plan


def public_resolver(answers: dict[str, str] | None = None) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        del port
        return [(answers or {}).get(host, PUBLIC_IP)]

    return resolve


@pytest.fixture
def make_dispatcher(engine: Engine) -> Iterator[Callable[..., Dispatcher]]:
    made: list[Dispatcher] = []

    def make(
        receiver: Receiver, config: WebhookSettings = FAST, resolver: Any = None
    ) -> Dispatcher:
        client = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
        dispatcher = Dispatcher(
            Settings(webhooks=config),
            lambda: engine,
            client=client,
            resolver=resolver or public_resolver(),
        )
        made.append(dispatcher)
        return dispatcher

    yield make


@pytest.fixture
async def stop_all(make_dispatcher: Callable[..., Dispatcher]) -> AsyncIterator[list[Dispatcher]]:
    running: list[Dispatcher] = []
    yield running
    for dispatcher in running:
        await dispatcher.close()
        await dispatcher.client.aclose()


async def test_failures_and_a_timeout_are_retried_until_each_event_is_delivered_once(
    engine: Engine, make_dispatcher: Callable[..., Dispatcher], stop_all: list[Dispatcher]
) -> None:
    endpoint = add_endpoint(engine, host="hooks.example")
    receiver = Receiver({"hooks.example": endpoint.secret})
    receiver.plans["hooks.example"] = flaky(fail=2)
    add_deliveries(engine, endpoint.id, 10)
    dispatcher = make_dispatcher(receiver)
    stop_all.append(dispatcher)
    dispatcher.start()

    async def all_delivered() -> bool:
        return all(d.status == DeliveryStatus.SUCCEEDED for d in deliveries(engine, endpoint.id))

    await eventually(all_delivered, "every delivery succeeded")
    rows = deliveries(engine, endpoint.id)
    # The receiver's view: each webhook-id accepted exactly once, after 2 x 500 and a timeout.
    assert set(receiver.accepted) == {row.id for row in rows}
    assert set(receiver.accepted.values()) == {1}
    assert set(receiver.attempts.values()) == {4}
    for row in rows:
        assert (row.attempts, row.last_status_code, row.last_error) == (4, 204, None)
        assert row.delivered_at is not None
    # Pinned to the address that was checked; the host name still names the server.
    request = receiver.requests[0]
    assert request.url.host == PUBLIC_IP and request.headers["host"] == "hooks.example"
    assert request.extensions["sni_hostname"] == "hooks.example"
    assert request.headers["content-type"] == "application/json"


async def test_a_dead_endpoint_does_not_slow_a_healthy_one(
    engine: Engine, make_dispatcher: Callable[..., Dispatcher], stop_all: list[Dispatcher]
) -> None:
    healthy = add_endpoint(engine, host="healthy.example")
    dead = add_endpoint(engine, host="dead.example")
    receiver = Receiver({"healthy.example": healthy.secret, "dead.example": dead.secret})
    receiver.plans["healthy.example"] = always(200)
    receiver.plans["dead.example"] = always(500, delay=0.5)  # slow and failing
    add_deliveries(engine, dead.id, 40)
    dispatcher = make_dispatcher(receiver)
    stop_all.append(dispatcher)
    dispatcher.start()
    await asyncio.sleep(0.2)  # the dead endpoint's lane is busy
    started = time.monotonic()
    add_deliveries(engine, healthy.id, 20)
    dispatcher.poke()

    async def healthy_done() -> bool:
        return all(d.status == DeliveryStatus.SUCCEEDED for d in deliveries(engine, healthy.id))

    await eventually(healthy_done, "the healthy endpoint's deliveries", within=10)
    took = time.monotonic() - started
    # 40 dead deliveries at 0.5 s, 2 at a time, would hold a shared queue for 10 s.
    assert took < 3.0, took
    assert all(d.status == DeliveryStatus.PENDING for d in deliveries(engine, dead.id))


async def test_consecutive_failures_open_the_endpoints_breaker(
    engine: Engine, make_dispatcher: Callable[..., Dispatcher], stop_all: list[Dispatcher]
) -> None:
    endpoint = add_endpoint(engine, host="down.example")
    receiver = Receiver({"down.example": endpoint.secret})
    receiver.plans["down.example"] = always(503)
    add_deliveries(engine, endpoint.id, 10)
    config = FAST.model_copy(
        update={"breaker_failures": 3, "breaker_cooldown_seconds": 60, "endpoint_concurrency": 1}
    )
    dispatcher = make_dispatcher(receiver, config)
    stop_all.append(dispatcher)
    dispatcher.start()

    async def held_back() -> bool:
        rows = deliveries(engine, endpoint.id)
        later = utc_now() + timedelta(seconds=30)
        return sum(r.attempts for r in rows) == 3 and all(
            r.next_attempt_at > later for r in rows if r.attempts == 0
        )

    await eventually(held_back, "three attempts, then the rest held until the cooldown ends")
    await asyncio.sleep(0.3)  # polls go on; the open breaker keeps the endpoint out
    assert sum(receiver.attempts.values()) == 3
    assert dispatcher.lanes[endpoint.id].breaker.is_open
    assert metric("moderation_webhook_open_breakers") >= 1
    assert all(r.status == DeliveryStatus.PENDING for r in deliveries(engine, endpoint.id))


async def test_after_its_deadline_a_failing_delivery_is_dead_with_its_error(
    engine: Engine, make_dispatcher: Callable[..., Dispatcher], stop_all: list[Dispatcher]
) -> None:
    endpoint = add_endpoint(engine, host="broken.example")
    receiver = Receiver({"broken.example": endpoint.secret})
    receiver.plans["broken.example"] = always(500)
    add_deliveries(engine, endpoint.id, 2, expires_in=timedelta(seconds=0.5))
    dead_before = metric("moderation_webhook_deliveries_dead_total")
    dispatcher = make_dispatcher(receiver)
    stop_all.append(dispatcher)
    dispatcher.start()

    async def all_dead() -> bool:
        return all(d.status == DeliveryStatus.DEAD for d in deliveries(engine, endpoint.id))

    await eventually(all_dead, "both deliveries dead")
    for row in deliveries(engine, endpoint.id):
        assert row.attempts >= 1 and row.last_error == "HTTP 500"
        assert row.last_status_code == 500
    assert metric("moderation_webhook_deliveries_dead_total") == dead_before + 2
    # Nothing more is sent once it is dead.
    sent = sum(receiver.attempts.values())
    await asyncio.sleep(0.2)
    assert sum(receiver.attempts.values()) == sent


async def test_a_target_that_now_resolves_privately_is_refused_at_delivery(
    engine: Engine, make_dispatcher: Callable[..., Dispatcher], stop_all: list[Dispatcher]
) -> None:
    endpoint = add_endpoint(engine, host="rebound.example")
    receiver = Receiver({"rebound.example": endpoint.secret})
    receiver.plans["rebound.example"] = always(200)
    add_deliveries(engine, endpoint.id, 1)
    dispatcher = make_dispatcher(
        receiver, resolver=public_resolver({"rebound.example": "169.254.169.254"})
    )
    stop_all.append(dispatcher)
    dispatcher.start()

    async def attempted() -> bool:
        return deliveries(engine, endpoint.id)[0].attempts >= 1

    await eventually(attempted, "an attempt recorded")
    [row] = deliveries(engine, endpoint.id)
    assert row.status == DeliveryStatus.PENDING and row.last_status_code is None
    assert row.last_error is not None and "link-local" in row.last_error
    assert receiver.requests == []  # never sent


async def test_deliveries_of_a_deleted_endpoint_are_given_up_unsent(
    engine: Engine, make_dispatcher: Callable[..., Dispatcher], stop_all: list[Dispatcher]
) -> None:
    endpoint = add_endpoint(engine, host="gone.example")
    add_deliveries(engine, endpoint.id, 2)
    with Session(engine) as session:
        # Deleted behind the API's back (its own delete marks them dead itself).
        row = session.get(WebhookEndpoint, endpoint.id)
        assert row is not None
        row.disabled_at = utc_now()
        session.add(row)
        session.commit()
    receiver = Receiver({})
    dispatcher = make_dispatcher(receiver)
    stop_all.append(dispatcher)
    assert await dispatcher.poll_once() == 2
    assert [d.status for d in deliveries(engine, endpoint.id)] == [DeliveryStatus.DEAD] * 2
    assert receiver.requests == []


async def test_claims_are_leased_and_handed_back_on_close(
    engine: Engine, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    endpoint = add_endpoint(engine, host="slow.example")
    receiver = Receiver({"slow.example": endpoint.secret})
    receiver.plans["slow.example"] = always(200, delay=5.0)
    add_deliveries(engine, endpoint.id, 6)
    config = FAST.model_copy(update={"endpoint_concurrency": 1, "endpoint_queue": 4})
    first = make_dispatcher(receiver, config)

    def due_now() -> int:
        now = utc_now()
        return sum(1 for d in deliveries(engine, endpoint.id) if d.next_attempt_at <= now)

    # A new endpoint's lane has room for 4: the 2 claimed beyond it are handed back at once.
    assert await first.poll_once() == 6
    assert due_now() == 2
    second = make_dispatcher(receiver, config)
    assert await second.poll_once() == 2
    assert await second.poll_once() == 0  # a replica never claims what another holds
    await asyncio.sleep(0.1)  # each lane's worker takes its first delivery
    await first.close()
    # The ones still queued (3: one was being sent) are due again at once; the one whose
    # attempt was cut short comes back when its lease ends.
    assert due_now() == 3
    await second.close()
    await first.client.aclose()
    await second.client.aclose()


# --- the consumer ----------------------------------------------------------------------------


def make_verdict(post_id: str) -> ModerationVerdict:
    return ModerationVerdict(
        post_id=post_id,
        decision=Decision.REMOVE,
        scores=dict.fromkeys(CATEGORIES, 0.1),
        primary_category=Category.SPAM,
        confidence=0.9,
        stage=Stage.MODEL,
        model_version="fast-1",
        policy_version="v1",
        latency_ms=2.0,
    )


@pytest.fixture
def service(tmp_path: Path) -> Iterator[WebhookService]:
    settings = Settings(
        db=DatabaseSettings(url_override=f"sqlite:///{tmp_path / 'dispatcher.db'}"),
        webhooks=FAST,
    )
    webhooks = WebhookService(settings, resolver=public_resolver())
    yield webhooks
    webhooks.close_database()


@pytest.fixture
async def broker(service: WebhookService) -> AsyncIterator[KafkaBroker]:
    app = build_app(service.settings, service=service)
    (kafka_broker,) = app.brokers
    assert isinstance(kafka_broker, KafkaBroker)
    async with TestKafkaBroker(kafka_broker) as test_broker, TestApp(app):
        yield test_broker


def record_posts(service: WebhookService, *posts: tuple[str, str]) -> None:
    assert service.state.engine is not None
    with Session(service.state.engine) as session:
        crud.record_events(
            session,
            events=[
                PostSubmitted(post_id=post_id, text="t", author_id="a", tenant=tenant)
                for post_id, tenant in posts
            ],
        )


def record(topic: str, value: bytes, offset: int = 0) -> Any:
    return SimpleNamespace(topic=topic, value=value, key=b"k", partition=0, offset=offset)


def rows_of(service: WebhookService) -> list[WebhookDelivery]:
    assert service.state.engine is not None
    with Session(service.state.engine) as session:
        return list(session.exec(select(WebhookDelivery).order_by(col(WebhookDelivery.event_type))))


async def test_each_event_becomes_one_delivery_per_matching_endpoint(
    service: WebhookService, broker: KafkaBroker
) -> None:
    await service.dispatcher.close()  # only the consumer's part here
    engine = service.state.engine
    assert engine is not None
    verdicts = add_endpoint(engine, host="a.example", events=("post.verdict",))
    everything = add_endpoint(
        engine,
        host="b.example",
        events=("post.verdict", "review.decided", "author.actioned", "report.resolved"),
    )
    add_endpoint(engine, host="c.example", tenant="globex", events=("post.verdict",))
    record_posts(service, ("p1", "acme"), ("p2", "globex-less"))
    topics = service.settings.kafka.topics
    verdict = make_verdict("p1")
    decision = ReviewDecided(
        post_id="p1", label=Category.SPAM, decision=Decision.REMOVE, moderator_id="key:1"
    )
    actioned = b'{"event_id": "a-1", "tenant": "acme", "author_id": "u1", "action": "suspend"}'
    created = "moderation_webhook_deliveries_created_total"
    verdicts_before = metric(created, event_type="post.verdict")
    await broker.publish(verdict.model_dump_json().encode(), topic=topics.verdicts, key=b"p1")
    await broker.publish(verdict.model_dump_json().encode(), topic=topics.verdicts, key=b"p1")
    await broker.publish(decision.model_dump_json().encode(), topic=topics.review_decisions)
    await broker.publish(actioned, topic=topics.authors_actioned, key=b"u1")
    rows = rows_of(service)
    # Two endpoints asked for verdicts; the verdict came twice and counts once.
    assert metric(created, event_type="post.verdict") == verdicts_before + 2
    assert sorted((r.endpoint_id, r.event_type) for r in rows) == sorted(
        [
            (verdicts.id, "post.verdict"),
            (everything.id, "post.verdict"),
            (everything.id, "review.decided"),
            (everything.id, "author.actioned"),
        ]
    )
    body = next(r.payload for r in rows if r.endpoint_id == verdicts.id)
    assert body["type"] == "post.verdict"
    assert body["data"]["post_id"] == "p1" and body["data"]["tenant"] == "acme"
    assert body["data"]["event_id"] == verdict.event_id
    author = next(r.payload for r in rows if r.event_type == "author.actioned")
    assert author["data"] == {
        "event_id": "a-1",
        "tenant": "acme",
        "author_id": "u1",
        "action": "suspend",
    }


async def test_an_event_whose_post_is_not_recorded_yet_is_retried_then_dead_lettered(
    service: WebhookService, broker: KafkaBroker
) -> None:
    await service.dispatcher.close()
    engine = service.state.engine
    assert engine is not None
    add_endpoint(engine, host="a.example")
    topic = service.settings.kafka.topics.verdicts
    early = make_verdict("p-late")
    with pytest.raises(PostNotRecorded):
        await service.fan_out([record(topic, early.model_dump_json().encode())])
    assert rows_of(service) == []  # nothing written: the batch comes again
    record_posts(service, ("p-late", "acme"))
    assert await service.fan_out([record(topic, early.model_dump_json().encode())]) == 1
    # An event older than the grace time whose post never came: dead-lettered, not stalled.
    old = make_verdict("p-never").model_copy(update={"occurred_at": utc_now() - timedelta(hours=1)})
    dlq = service.dead_letter_publishers[topic]
    assert await service.fan_out([record(topic, old.model_dump_json().encode())]) == 0
    [call] = dlq.mock.call_args_list
    assert call.args[0]["error_type"] == "PostNotRecorded"


@pytest.mark.parametrize(
    ("topic_name", "value", "error"),
    [
        ("verdicts", b"not json", "ValidationError"),
        ("verdicts", b'{"post_id": "p1"}', "ValidationError"),
        ("authors_actioned", b"[1, 2]", "ValueError"),
        ("authors_actioned", b'{"event_id": "e1"}', "ValidationError"),
        ("reports_resolved", b'{"event_id": "e1", "tenant": "Not A Tenant"}', "ValidationError"),
    ],
)
async def test_unparseable_events_go_to_the_dlq_and_the_rest_goes_on(
    service: WebhookService, broker: KafkaBroker, topic_name: str, value: bytes, error: str
) -> None:
    await service.dispatcher.close()
    engine = service.state.engine
    assert engine is not None
    add_endpoint(engine, host="a.example", events=("report.resolved",))
    topics = service.settings.kafka.topics
    topic = getattr(topics, topic_name)
    good = b'{"event_id": "r-1", "tenant": "acme", "report_id": "rep-1", "outcome": "upheld"}'
    created = await service.fan_out(
        [record(topic, value, 1), record(topics.reports_resolved, good, 2)]
    )
    assert created == 1
    dlq = service.dead_letter_publishers[topic]
    [call] = dlq.mock.call_args_list
    assert call.args[0]["error_type"] == error
    assert call.args[0]["source_topic"] == topic and call.args[0]["offset"] == 1


async def test_an_endpoint_hears_only_what_happens_after_it_was_registered(
    service: WebhookService, broker: KafkaBroker
) -> None:
    await service.dispatcher.close()
    engine = service.state.engine
    assert engine is not None
    record_posts(service, ("p-old", "acme"), ("p-new", "acme"))
    before = make_verdict("p-old").model_copy(
        update={"occurred_at": utc_now() - timedelta(seconds=30)}
    )
    add_endpoint(engine, host="a.example")
    after = make_verdict("p-new")
    topic = service.settings.kafka.topics.verdicts
    records = [
        record(topic, e.model_dump_json().encode(), n) for n, e in enumerate((before, after))
    ]
    assert await service.fan_out(records) == 1
    [row] = rows_of(service)
    assert row.event_id == after.event_id
