"""The webhook dispatcher (`moderation webhook-dispatcher`): events in, signed deliveries out.

One batch subscriber reads `moderation.verdicts`, `review.decisions`, `authors.actioned` and
`reports.resolved` in consumer group `webhooks.consumer_group`. Each event becomes one delivery
per active endpoint of its tenant that asked for its type (`crud.insert_webhook_deliveries`,
idempotent on (endpoint, event)); the batch's offsets are committed only after the deliveries
are written. Sending is the delivery loop's (`delivery.py`), so a slow endpoint never holds the
consumer, and the consumer never holds the pipeline (it is a consumer group of its own).

- An endpoint receives the events that occur after it was registered (a new consumer group
  starts at the topics' beginning; what happened before an endpoint existed is not its news).
- The tenant is the event's `tenant` field when it has one (author and report events); a
  verdict's or decision's is its post's, from the read model. A post not recorded yet (the
  recorder may lag) rewinds the batch to be read again; past `unknown_post_grace_seconds` after
  the event the message is dead-lettered instead, so one lost post cannot stall a partition.
- A message that cannot be parsed goes to `<topic>.dlq` as a `DeadLetter`; the rest go on.
- Any other failure (the database down) rewinds the batch after a pause; duplicates are
  harmless.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from faststream import AckPolicy
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker, KafkaRouter
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine, exc
from sqlmodel import Session

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.engine import ping as ping_database
from moderation.db.models import WebhookEndpoint
from moderation.events import (
    TENANT_PATTERN,
    DeadLetter,
    ModerationVerdict,
    ReviewDecided,
    utc_now,
)
from moderation.kafka_auth import Principal, faststream_security
from moderation.services.asgi import asgi_service, batch_records, serve, undecoded
from moderation.services.webhooks.delivery import Dispatcher
from moderation.settings import Settings
from moderation.telemetry import configure_tracing
from moderation.webhooks import EventType, Resolver, event_types_by_topic, system_resolver

logger = logging.getLogger(__name__)

DELIVERIES_CREATED = Counter(
    "moderation_webhook_deliveries_created_total",
    "deliveries created from events (one per event and matching endpoint; a redelivered "
    "event creates none)",
    ["event_type"],
)
DEAD_LETTERS = Counter(
    "moderation_webhook_dead_letters_total", "messages sent to a dead-letter topic", ["topic"]
)
REWIND_PAUSE_SECONDS = 1.0


class PostNotRecorded(RuntimeError):
    """Events whose post the read model does not have yet: the batch is read again later."""


class _GenericEvent(BaseModel):
    """What the dispatcher needs of an author or report event (their payloads vary)."""

    model_config = ConfigDict(extra="allow")

    event_id: str = Field(min_length=1, max_length=64)
    tenant: str = Field(pattern=TENANT_PATTERN)
    occurred_at: AwareDatetime | None = None


@dataclass
class _Parsed:
    record: Any  # aiokafka ConsumerRecord
    event_type: EventType
    event_id: str
    post_id: str | None
    tenant: str | None
    occurred_at: datetime
    data: dict[str, Any]


@dataclass
class DispatcherState:
    engine: Engine | None = None


class WebhookService:
    """The dispatcher's consumer (router and fan-out) and its delivery loop.

    Args:
        settings: topics, consumer group, database, webhook settings.
        state: where the engine lives; a fresh one by default.
        resolver: host name resolution for the delivery loop (tests pass their own).
        dispatcher: the delivery loop; default one on this service's engine.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        state: DispatcherState | None = None,
        resolver: Resolver = system_resolver,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.settings = settings
        self.state = state or DispatcherState()
        self.group_id = settings.webhooks.consumer_group
        topics = settings.kafka.topics
        self.event_types = event_types_by_topic(topics)
        self.resolver = resolver
        self.dispatcher = dispatcher or Dispatcher(
            settings, lambda: self.state.engine, resolver=resolver
        )
        self.router = KafkaRouter()
        self.dead_letter_publishers = {
            topic: self.router.publisher(topic + topics.dlq_suffix, title=f"{topic}-dlq")
            for topic in self.event_types
        }
        self.subscriber = self.router.subscriber(
            *self.event_types,
            group_id=self.group_id,
            batch=True,
            max_records=500,
            batch_timeout_ms=settings.worker.batch_timeout_ms,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            decoder=undecoded,
            title="webhook-dispatcher",
            description="verdicts, decisions, author actions and report outcomes, turned into "
            "webhook deliveries",
        )
        self.subscriber(self._handler())

    def _handler(self) -> Any:
        service = self

        async def create_deliveries(message: KafkaMessage) -> None:
            """Turn a batch of events into deliveries; commit its offsets once they are written."""
            await service.handle(message)

        return create_deliveries

    async def handle(self, message: Any) -> None:
        records = batch_records(message.raw_message)
        try:
            await self.fan_out(records)
            await message.ack()
        except Exception as error:
            level = logging.INFO if isinstance(error, PostNotRecorded) else logging.WARNING
            logger.log(level, "webhooks: batch of %d rewound: %s", len(records), error)
            await asyncio.sleep(REWIND_PAUSE_SECONDS)
            try:
                await message.nack()
            except Exception:  # noqa: BLE001 - e.g. partitions revoked: the group redelivers
                logger.warning("webhooks: could not rewind the batch", exc_info=True)
            raise

    # --- parsing --------------------------------------------------------------------------

    def parse(self, record: Any) -> _Parsed:
        """One record as the dispatcher sees it.

        Raises:
            ValueError: not JSON, not an event of its topic (pydantic's errors are ValueErrors).
        """
        event_type = self.event_types[record.topic]
        raw = record.value or b""
        if event_type == "post.verdict" or event_type == "review.decided":
            model = ModerationVerdict if event_type == "post.verdict" else ReviewDecided
            event = model.model_validate_json(raw)
            return _Parsed(
                record,
                event_type,
                event.event_id,
                event.post_id,
                None,
                event.occurred_at,
                event.model_dump(mode="json"),
            )
        document = json.loads(raw)
        if not isinstance(document, dict):
            raise ValueError(f"expected a JSON object, got {type(document).__name__}")
        generic = _GenericEvent.model_validate(document)
        post_id = document.get("post_id")
        return _Parsed(
            record,
            event_type,
            generic.event_id,
            post_id if isinstance(post_id, str) else None,
            generic.tenant,
            generic.occurred_at or utc_now(),
            document,
        )

    # --- the batch ------------------------------------------------------------------------

    async def fan_out(self, records: Sequence[Any]) -> int:
        """Create the deliveries of a batch; how many were new.

        Raises:
            PostNotRecorded: some events' posts are not recorded yet (within the grace time).
        """
        parsed: list[_Parsed] = []
        dead: list[tuple[Any, BaseException]] = []
        for record in records:
            try:
                parsed.append(self.parse(record))
            except (KeyError, ValueError, ValidationError) as error:
                dead.append((record, error))
        created = await asyncio.to_thread(self._write, parsed, dead)
        for record, reason in dead:
            await self._dead_letter(record, reason)
        if created:
            self.dispatcher.poke()
        return created

    def _write(self, parsed: list[_Parsed], dead: list[tuple[Any, BaseException]]) -> int:
        engine = self.state.engine
        if engine is None:
            raise RuntimeError("the webhook dispatcher has no database engine (not started)")
        now = utc_now()
        grace = timedelta(seconds=self.settings.webhooks.unknown_post_grace_seconds)
        with Session(engine) as session:
            need = [item.post_id for item in parsed if item.tenant is None and item.post_id]
            tenants = crud.post_tenants(session, post_ids=need) if need else {}
            ready: list[tuple[_Parsed, str]] = []
            waiting = 0
            for item in parsed:
                tenant = item.tenant or tenants.get(item.post_id or "")
                if tenant is not None:
                    ready.append((item, tenant))
                elif now - item.occurred_at < grace:
                    waiting += 1
                else:
                    dead.append(
                        (item.record, PostNotRecorded(f"post {item.post_id!r} is not recorded"))
                    )
            if waiting:
                # Nothing is written: the whole batch comes again, and is written then.
                raise PostNotRecorded(f"{waiting} events wait for their post to be recorded")
            endpoints = crud.active_webhook_endpoints(
                session, tenants={tenant for _, tenant in ready}
            )
            by_type: dict[str, list[crud.NewDelivery]] = {}
            for delivery in self._deliveries(ready, endpoints, now):
                by_type.setdefault(delivery.event_type, []).append(delivery)
            created = 0
            for event_type, deliveries in by_type.items():
                # One insert (and commit) per type, so the metric counts only new deliveries.
                new = crud.insert_webhook_deliveries(session, deliveries=deliveries)
                DELIVERIES_CREATED.labels(event_type=event_type).inc(new)
                created += new
        return created

    def _deliveries(
        self,
        ready: list[tuple[_Parsed, str]],
        endpoints: list[WebhookEndpoint],
        now: datetime,
    ) -> list[crud.NewDelivery]:
        expires = now + timedelta(hours=self.settings.webhooks.max_age_hours)
        found: list[crud.NewDelivery] = []
        for item, tenant in ready:
            body = {
                "type": item.event_type,
                "timestamp": item.occurred_at.isoformat(),
                "data": item.data | {"tenant": tenant},
            }
            for endpoint in endpoints:
                if (
                    endpoint.tenant == tenant
                    and item.event_type in endpoint.event_types
                    # An endpoint hears what happens once it exists, not the topic's history.
                    and item.occurred_at >= endpoint.created_at
                ):
                    found.append(
                        crud.NewDelivery(
                            endpoint_id=endpoint.id,
                            event_id=item.event_id,
                            event_type=item.event_type,
                            payload=body,
                            created_at=now,
                            expires_at=expires,
                        )
                    )
        return found

    async def _dead_letter(self, record: Any, error: BaseException) -> None:
        letter = DeadLetter.from_record(record, error, consumer_group=self.group_id)
        await self.dead_letter_publishers[record.topic].publish(
            letter.model_dump_json().encode(),
            key=record.key or None,
            headers={"content-type": "application/json"},
        )
        DEAD_LETTERS.labels(topic=record.topic).inc()

    # --- lifespan and probes ---------------------------------------------------------------

    def open_database(self) -> None:
        if self.state.engine is None:
            self.state.engine = make_engine(self.settings)
        try:
            create_tables(self.state.engine)
        except exc.SQLAlchemyError as error:
            # Not fatal: the tables are the owner's to create (the service role has no DDL).
            logger.warning("webhooks: tables not checked at start-up: %s", str(error)[:200])

    def close_database(self) -> None:
        if self.state.engine is not None:
            self.state.engine.dispose()
            self.state.engine = None

    async def database_ready(self) -> bool:
        engine = self.state.engine
        if engine is None:
            return False
        return await asyncio.to_thread(ping_database, engine)


def create_broker(service: WebhookService, *, principal: Principal = "dispatcher") -> KafkaBroker:
    """A Kafka broker carrying the dispatcher's router, connected as `principal`."""
    broker = KafkaBroker(
        service.settings.kafka.bootstrap_servers,
        security=faststream_security(service.settings, principal),
        client_id="webhook-dispatcher",
        log_level=logging.DEBUG,
        enable_idempotence=True,  # dead letters: acks=all, no duplicates on producer retries
        allow_auto_create_topics=False,
    )
    broker.include_router(service.router)
    return broker


def build_app(
    settings: Settings,
    *,
    service: WebhookService | None = None,
    principal: Principal = "dispatcher",
) -> AsgiFastStream:
    """The dispatcher: the consumer, the delivery loop, `/healthz`, `/readyz`, `/metrics`.

    Args:
        settings: the settings tree.
        service: the service to run; default `WebhookService(settings)`.
        principal: who the broker connects to Kafka as.
    """
    webhooks = service or WebhookService(settings)

    async def start() -> None:
        await asyncio.to_thread(webhooks.open_database)
        webhooks.dispatcher.start()

    async def stop() -> None:
        await webhooks.dispatcher.close()
        await asyncio.to_thread(webhooks.close_database)

    app = asgi_service(
        create_broker(webhooks, principal=principal),
        title="webhook-dispatcher",
        description="Delivers verdicts, decisions, author actions and report outcomes to the "
        "platforms' webhook endpoints (Standard Webhooks signatures, retries, breakers).",
        readiness=[("database", webhooks.database_ready)],
        on_startup=[start],
    )
    app.after_shutdown(stop)
    return app


def run_webhook_dispatcher(settings: Settings) -> None:
    """`moderation webhook-dispatcher`: serve the dispatcher until stopped."""
    configure_tracing("webhook-dispatcher", settings)
    serve(build_app(settings), host=settings.webhooks.host, port=settings.webhooks.port)
