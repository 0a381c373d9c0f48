"""The recorder: projects every topic into the read model (PostgreSQL) through `crud`.

One batch subscriber reads the four topics in consumer group `worker.recorder_group` (the only
consumer of that group). Each batch is parsed into its events, written with
`crud.record_events` (one insert per table, idempotent on natural keys) and only then
acknowledged: offsets are committed manually after the database transaction committed.

- A message that cannot be parsed, or that the database rejects as data (too long, a NUL byte),
  goes to `<topic>.dlq` as a `DeadLetter` with its error; the rest of the batch goes on.
- A database that is down or restarting is retried with capped exponential backoff until it is
  back: nothing is dropped and nothing is acknowledged before it is written.
- Any other failure rewinds the batch (nack: seek back) so it is redelivered; duplicates are
  harmless because every write is an insert-or-ignore.

It also derives the consequences of the facts in the same transaction (strikes and the
enforcement ladder's actions, `data/policy/enforcement.yaml`; the resolution of user reports) and
publishes them from their outbox tables once the transaction committed: `AuthorActioned` to
`authors.actioned`, `ReportResolved` to `reports.resolved`, after every batch, at start-up and
every `outbox_interval` seconds (a crash between commit and publish loses nothing; a row is
re-sent under its own `event_id`, which consumers deduplicate on).

`Recorder(settings)` holds the router (subscriber and dead-letter publishers), its state and the
batch logic; `build_app(settings)` is the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from faststream import AckPolicy
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker, KafkaRouter
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter, Histogram
from pydantic import BaseModel
from sqlalchemy import Engine, exc
from sqlmodel import Session

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.engine import ping as ping_database
from moderation.events import (
    DeadLetter,
    Event,
    ModerationVerdict,
    PostSubmitted,
    ReviewDecided,
    ReviewRequested,
    utc_now,
)
from moderation.kafka_auth import Principal, faststream_security
from moderation.partitioning import key_partitioner
from moderation.policy import EnforcementPolicy, load_enforcement
from moderation.services.asgi import asgi_service, batch_records, serve, undecoded
from moderation.settings import Settings
from moderation.telemetry import configure_tracing, record_spans

logger = logging.getLogger(__name__)

EVENTS_RECORDED = Counter(
    "moderation_recorder_events_total",
    "events written to the read model, by topic and outcome (inserted | duplicate)",
    ["topic", "outcome"],
)
DEAD_LETTERS = Counter(
    "moderation_recorder_dead_letters_total", "messages sent to a dead-letter topic", ["topic"]
)
DB_RETRIES = Counter(
    "moderation_recorder_db_retries_total", "database writes retried after a transient error"
)
BATCH_SECONDS = Histogram(
    "moderation_recorder_batch_seconds",
    "time to record a batch: parse, write, commit, acknowledge",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
OUTBOX_PUBLISHED = Counter(
    "moderation_recorder_outbox_published_total",
    "consequences published from the outbox (author actions, report outcomes), by topic",
    ["topic"],
)
OUTBOX_FAILURES = Counter(
    "moderation_recorder_outbox_failures_total",
    "outbox flushes that stopped on an error (the rows are re-sent on the next flush)",
)
BATCH_EVENTS = Histogram(
    "moderation_recorder_batch_events",
    "messages per batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between attempts while the database is unavailable (it never gives up)."""

    initial_seconds: float = 0.2
    max_seconds: float = 3.0
    # Pause before a failed batch is redelivered, so an unexpected error cannot spin.
    rewind_pause_seconds: float = 1.0


@dataclass
class RecorderState:
    """Resources the handler uses; the engine is set at start-up (or by the embedded demo)."""

    engine: Engine | None = None
    tables_ready: bool = False


@dataclass
class _Parsed:
    record: Any  # aiokafka ConsumerRecord (untyped)
    event: Event


@dataclass
class _Outcome:
    inserted: dict[str, int] = field(default_factory=dict)
    rejected: list[tuple[Any, BaseException]] = field(default_factory=list)


class TablesNotReady(RuntimeError):
    """The tables could not be created yet (database down, or another process creating them)."""


def _is_rejected_data(error: BaseException) -> bool:
    """The database refused this data: retrying cannot help, the event is a poison message."""
    return isinstance(error, exc.DataError | exc.IntegrityError)


class Recorder:
    """The recorder's router (subscriber and DLQ publishers), state and batch logic.

    Args:
        settings: topics, consumer group and database come from here.
        state: where the engine lives; a fresh one by default.
        max_records: the largest batch handed to the handler.
        retry: backoff while the database is unavailable.
        enforcement: the enforcement policy; default `strikes.enforcement_policy` loaded.
        outbox_interval: seconds between outbox flushes when no batch arrives.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        state: RecorderState | None = None,
        max_records: int | None = None,
        retry: RetryPolicy | None = None,
        enforcement: EnforcementPolicy | None = None,
        outbox_interval: float = 5.0,
    ) -> None:
        self.settings = settings
        self.state = state or RecorderState()
        self.retry = retry or RetryPolicy()
        self.enforcement = enforcement or load_enforcement(settings.strikes.enforcement_policy)
        self.outbox_interval = outbox_interval
        self._outbox_lock = asyncio.Lock()
        self._outbox_task: asyncio.Task[None] | None = None
        self.group_id = settings.worker.recorder_group
        topics = settings.kafka.topics
        self.event_types: dict[str, type[Event]] = {
            topics.posts_submitted: PostSubmitted,
            topics.verdicts: ModerationVerdict,
            topics.review_requested: ReviewRequested,
            topics.review_decisions: ReviewDecided,
        }
        self.topic_of_kind: dict[str, str] = {
            "posts": topics.posts_submitted,
            "verdicts": topics.verdicts,
            "reviews": topics.review_requested,
            "decisions": topics.review_decisions,
        }
        self.router = KafkaRouter()
        self.dead_letter_publishers = {
            topic: self.router.publisher(topic + topics.dlq_suffix, title=f"{topic}-dlq")
            for topic in self.event_types
        }
        self.actions_publisher = self.router.publisher(
            topics.authors_actioned,
            title="authors-actioned",
            description="AuthorActioned: the enforcement ladder's actions and their reversals",
        )
        self.reports_publisher = self.router.publisher(
            topics.reports_resolved,
            title="reports-resolved",
            description="ReportResolved: what became of each user report",
        )
        self.subscriber = self.router.subscriber(
            *self.event_types,
            group_id=self.group_id,
            batch=True,
            # An upper bound: a batch is whatever is fetched, so it stays small at low rates;
            # large batches amortize round trips under backlog (5,000 recorded about a third
            # more events/s than 2,000 here, and a batch still takes well under a second).
            max_records=max_records or settings.worker.recorder_max_batch,
            batch_timeout_ms=settings.worker.batch_timeout_ms,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            decoder=undecoded,  # about a third of the CPU per event otherwise
            title="recorder",
            description="every event of the pipeline, projected into the read model",
        )
        self.subscriber(self._handler())

    def _handler(self) -> Any:
        recorder = self

        async def record_batch(message: KafkaMessage) -> None:
            """Record a batch of events of any topic; commit its offsets once it is written."""
            await recorder.handle(message)

        return record_batch

    async def handle(self, message: Any) -> None:
        """Record the batch, then acknowledge it; on failure rewind it for redelivery."""
        started = time.perf_counter()
        records = batch_records(message.raw_message)
        try:
            await self.record(records)
            await message.ack()  # commits the consumer's offsets: only after the DB commit
            await self.flush_outbox()
        except Exception:
            # FastStream logs the exception itself; say what happens to the batch.
            logger.warning("recorder: batch of %d failed; rewinding it", len(records))
            await asyncio.sleep(self.retry.rewind_pause_seconds)
            try:
                await message.nack()  # seek back: the batch is fetched again
            except Exception:  # noqa: BLE001 - e.g. partitions revoked: the group redelivers
                logger.warning("recorder: could not rewind the batch", exc_info=True)
            raise
        BATCH_EVENTS.observe(len(records))
        BATCH_SECONDS.observe(time.perf_counter() - started)

    async def record(self, records: Sequence[Any]) -> None:
        """Parse, write (retrying while the database is down) and dead-letter a batch."""
        started = time.time_ns()
        parsed: list[_Parsed] = []
        dead: list[tuple[Any, BaseException]] = []
        for record in records:
            try:
                event_type = self.event_types[record.topic]
                parsed.append(_Parsed(record, event_type.model_validate_json(record.value or b"")))
            except (KeyError, ValueError) as error:  # pydantic's ValidationError is a ValueError
                dead.append((record, error))
        outcome = await self._record_isolating(parsed)
        record_spans("record event", _span_records(parsed), start_time=started)
        dead.extend(outcome.rejected)
        for record, reason in dead:
            await self._dead_letter(record, reason)
        received: dict[str, int] = {}
        for item in parsed:
            received[item.record.topic] = received.get(item.record.topic, 0) + 1
        for kind, inserted in outcome.inserted.items():
            topic = self.topic_of_kind[kind]
            EVENTS_RECORDED.labels(topic=topic, outcome="inserted").inc(inserted)
            received[topic] = received.get(topic, 0) - inserted
        for topic, duplicates in received.items():
            if duplicates > 0:
                EVENTS_RECORDED.labels(topic=topic, outcome="duplicate").inc(duplicates)

    async def _record_isolating(self, items: Sequence[_Parsed]) -> _Outcome:
        """Write the events; if the database rejects some as data, bisect to isolate them."""
        if not items:
            return _Outcome()
        try:
            result = await self._record_with_retry([item.event for item in items])
        except exc.SQLAlchemyError as error:
            if not _is_rejected_data(error):
                raise
            if len(items) == 1:
                logger.warning("recorder: the database rejected an event: %s", error.args[0])
                return _Outcome(rejected=[(items[0].record, error)])
            middle = len(items) // 2
            first = await self._record_isolating(items[:middle])
            second = await self._record_isolating(items[middle:])
            inserted = {
                kind: first.inserted.get(kind, 0) + second.inserted.get(kind, 0)
                for kind in {*first.inserted, *second.inserted}
            }
            return _Outcome(inserted=inserted, rejected=first.rejected + second.rejected)
        return _Outcome(inserted=dict(result.inserted))

    async def _record_with_retry(self, events: list[Event]) -> crud.RecordResult:
        delay = self.retry.initial_seconds
        while True:
            try:
                return await asyncio.to_thread(self._record_sync, events)
            except (exc.SQLAlchemyError, TablesNotReady) as error:
                if _is_rejected_data(error):
                    raise
                if isinstance(error, exc.ProgrammingError):
                    self.state.tables_ready = False  # e.g. tables missing: create them again
                DB_RETRIES.inc()
                logger.warning(
                    "recorder: database unavailable (%s); retrying in %.1fs",
                    str(error).splitlines()[0][:200],
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry.max_seconds)

    def _record_sync(self, events: list[Event]) -> crud.RecordResult:
        engine = self.state.engine
        if engine is None:
            raise RuntimeError("the recorder has no database engine (the app was not started)")
        if not self.state.tables_ready:
            try:
                create_tables(engine)
            except exc.SQLAlchemyError as error:
                # Never mistaken for rejected data: a race creating types is an IntegrityError.
                raise TablesNotReady(str(error).splitlines()[0]) from error
            self.state.tables_ready = True
        with Session(engine) as session:
            return crud.record_events(session, events=events, enforcement=self.enforcement)

    # --- the outbox: consequences published after their transaction committed ---------------

    async def flush_outbox(self) -> int:
        """Publish every unpublished author action and report outcome, then mark them.

        Never raises: a failure is logged and counted, and what was not marked published is
        sent again by the next flush. Returns how many events were published.
        """
        if self.state.engine is None or not self.state.tables_ready:
            return 0
        async with self._outbox_lock:
            try:
                return await self._flush_outbox()
            except Exception:  # noqa: BLE001 - retried on the next flush, never lost
                OUTBOX_FAILURES.inc()
                logger.warning("recorder: outbox flush failed; retrying later", exc_info=True)
                return 0

    async def _flush_outbox(self) -> int:
        topics = self.settings.kafka.topics
        published = 0
        while True:
            actions, reports = await asyncio.to_thread(self._read_outbox)
            if not actions and not reports:
                return published
            published += await _publish_rows(
                actions,
                crud.author_actioned_event,
                self.actions_publisher,
                self._mark_actions,
                topics.authors_actioned,
            )
            published += await _publish_rows(
                reports,
                crud.report_resolved_event,
                self.reports_publisher,
                self._mark_reports,
                topics.reports_resolved,
            )

    def _read_outbox(self) -> tuple[list[Any], list[Any]]:
        engine = self.state.engine
        if engine is None:
            return [], []
        with Session(engine) as session:
            return (
                crud.unpublished_author_actions(session, limit=_OUTBOX_PAGE),
                crud.unpublished_report_resolutions(session, limit=_OUTBOX_PAGE),
            )

    def _mark_actions(self, ids: list[int]) -> None:
        if self.state.engine is not None:
            with Session(self.state.engine) as session:
                crud.mark_author_actions_published(session, ids=ids, now=utc_now())

    def _mark_reports(self, ids: list[str]) -> None:
        if self.state.engine is not None:
            with Session(self.state.engine) as session:
                crud.mark_reports_published(session, ids=ids)

    async def start_outbox(self) -> None:
        """Flush the outbox now (what a crash left behind), then every `outbox_interval`."""

        async def loop() -> None:
            while True:
                await self.flush_outbox()
                await asyncio.sleep(self.outbox_interval)

        if self._outbox_task is None:
            self._outbox_task = asyncio.create_task(loop(), name="recorder-outbox")

    async def stop_outbox(self) -> None:
        """Stop the periodic flush (before the broker closes)."""
        task, self._outbox_task = self._outbox_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _dead_letter(self, record: Any, error: BaseException) -> None:
        letter = DeadLetter.from_record(record, error, consumer_group=self.group_id)
        await self.dead_letter_publishers[record.topic].publish(
            _json(letter), key=record.key or None, headers={"content-type": "application/json"}
        )
        DEAD_LETTERS.labels(topic=record.topic).inc()

    # --- lifespan and probes ---------------------------------------------------------------

    def open_database(self) -> None:
        """Create the engine (and the tables, if the database already answers)."""
        if self.state.engine is None:
            self.state.engine = make_engine(self.settings)
        try:
            create_tables(self.state.engine)
            self.state.tables_ready = True
        except exc.SQLAlchemyError as error:
            # Not fatal: the first batch retries (and creates the tables) until it is back.
            logger.warning("recorder: tables not ready at start-up: %s", str(error).splitlines()[0])

    def close_database(self) -> None:
        """Dispose of the engine's connections."""
        if self.state.engine is not None:
            self.state.engine.dispose()
            self.state.engine = None
            self.state.tables_ready = False

    async def database_ready(self) -> bool:
        """Really ping the database (SELECT 1)."""
        engine = self.state.engine
        if engine is None:
            return False
        return await asyncio.to_thread(ping_database, engine)


async def _publish_rows(
    rows: Sequence[Any],
    to_event: Callable[[Any], Event],
    publisher: Any,
    mark: Callable[[list[Any]], None],
    topic: str,
) -> int:
    """Publish one outbox table's rows in order, then mark those that went out (also when a
    later one fails: they are not sent again). Returns how many went out."""
    done: list[Any] = []
    try:
        for row in rows:
            event = to_event(row)
            await publisher.publish(_json(event), key=event.key(), headers=_JSON_HEADERS)
            done.append(row.id)
            OUTBOX_PUBLISHED.labels(topic=topic).inc()
    finally:
        if done:
            await asyncio.to_thread(mark, done)
    return len(done)


def _span_records(parsed: Sequence[_Parsed]) -> Iterator[tuple[Any, dict[str, str]]]:
    """Each written event's headers and span attributes (its topic and post)."""
    for item in parsed:
        attributes = {"messaging.destination.name": item.record.topic}
        post_id = getattr(item.event, "post_id", None)
        if post_id is not None:
            attributes["moderation.post_id"] = str(post_id)
        yield item.record.headers, attributes


def _json(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


_JSON_HEADERS = {"content-type": "application/json"}
# Outbox rows read per round trip; a flush goes on until none is left.
_OUTBOX_PAGE = 500


def create_broker(service: Recorder, *, principal: Principal = "recorder") -> KafkaBroker:
    """A Kafka broker carrying the recorder's router (topics exist: they are not created here).

    Args:
        service: the router to carry, and its settings.
        principal: who the broker connects as; the tests that run against the real Kafka act
            as `admin`, to publish events and read the dead letters back.
    """
    broker = KafkaBroker(
        service.settings.kafka.bootstrap_servers,
        security=faststream_security(service.settings, principal),
        client_id="recorder",
        log_level=logging.DEBUG,  # a line per batch is noise at INFO
        enable_idempotence=True,  # dead letters: acks=all, no duplicates on producer retries
        allow_auto_create_topics=False,
        partitioner=key_partitioner,
    )
    broker.include_router(service.router)
    return broker


def build_app(
    settings: Settings, *, recorder: Recorder | None = None, principal: Principal = "recorder"
) -> AsgiFastStream:
    """The recorder service: the broker plus `/healthz`, `/readyz` (Kafka + DB) and `/metrics`.

    Args:
        settings: the settings tree.
        recorder: the router to serve; default `Recorder(settings)` (tests pass one with a
            shorter retry).
        principal: who the broker connects to Kafka as (`create_broker`).
    """
    service = recorder or Recorder(settings)

    async def open_database() -> None:
        await asyncio.to_thread(service.open_database)

    async def close_database() -> None:
        await asyncio.to_thread(service.close_database)

    app = asgi_service(
        create_broker(service, principal=principal),
        title="recorder",
        description="Projects every topic into the PostgreSQL read model.",
        readiness=[("database", service.database_ready)],
        on_startup=[open_database],
    )
    app.after_startup(service.start_outbox)
    app.on_shutdown(service.stop_outbox)
    app.after_shutdown(close_database)
    return app


def run_recorder(settings: Settings) -> None:
    """`moderation recorder`: serve the recorder until stopped (health on its own port)."""
    configure_tracing("recorder", settings)
    serve(
        build_app(settings),
        host=settings.worker.service_host,
        port=settings.worker.recorder_health_port,
    )
