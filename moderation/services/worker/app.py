"""The classifier worker: posts.submitted → the cascade → moderation.verdicts (+ review.requested).

Consumes in batches (one fast-model call per batch); stage-1 verdicts leave at once, the posts in
the uncertain band are then handed to the agent service on `agent.requested` (the default,
`agent.runs_in = agent-service`: the worker never waits for an LLM), or run through the classifier
agent in the batch (`runs_in = worker`, `moderation.classifier.cascade`). Offsets are
committed only after every verdict and hand-off of the batch is acknowledged by Kafka (FastStream
`NACK_ON_ERROR`: an exception rewinds the batch and it is redelivered; duplicates are harmless
because the recorder upserts on (post_id, stage, model_version)). A message that cannot be
parsed goes to `posts.submitted.dlq` with its error and the rest of the batch goes on.

`Worker(settings)` holds the router (subscriber and publishers) and the models it serves;
`build_app(settings)` is the process. The models served follow the registry without a restart
(`moderation.services.worker.registry_watch`): the fast champion is swapped in between batches,
and the agent switches to a promoted LoRA adapter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from faststream import AckPolicy, Context
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker, KafkaRouter
from faststream.kafka.message import KafkaMessage
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError
from sqlmodel import Session

from moderation.classifier.agent_steps import handoff
from moderation.classifier.cascade import (
    AgentStage,
    Scorer,
    create_agent_stage,
    first_stage,
    second_stage,
)
from moderation.classifier.image_stage import ImageJudge
from moderation.db import crud
from moderation.events import DeadLetter, PostSubmitted
from moderation.images.hashlists import HashList
from moderation.kafka_auth import Principal, faststream_security
from moderation.partitioning import key_partitioner
from moderation.services.asgi import asgi_service, batch_records, serve, undecoded
from moderation.services.sidecar.config import LiveConfigWatch
from moderation.services.worker.registry_watch import RegistryWatch
from moderation.settings import Settings
from moderation.telemetry import PostTraces, configure_tracing

if TYPE_CHECKING:
    from moderation.classifier.injection.model import InjectionDetector

logger = logging.getLogger(__name__)
JSON_HEADERS = {"content-type": "application/json"}

POSTS_SCORED = Counter(
    "moderation_worker_posts_total",
    "posts decided, by the stage that decided, its decision and primary category",
    ["stage", "decision", "category"],
)
SUBMIT_TO_VERDICT = Histogram(
    "moderation_worker_submit_to_verdict_seconds",
    "from the post's submission to its verdict leaving the worker, by stage",
    ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
CONSUMER_LAG = Gauge(
    "moderation_worker_consumer_lag",
    "records of posts.submitted not yet consumed, per partition (at the last batch)",
    ["partition"],
)
DEAD_LETTERS = Counter("moderation_worker_dead_letters_total", "messages sent to the DLQ")
HANDOFFS = Counter(
    "moderation_worker_agent_handoffs_total", "uncertain posts handed to the agent service"
)
BATCH_SECONDS = Histogram("moderation_worker_batch_seconds", "time to score and publish a batch")


@dataclass
class WorkerState:
    """The models a worker serves; only the worker writes them."""

    # Replaced whole when the registry promotes a model; a batch keeps the one it started with.
    scorer: Scorer | None = None
    # None: no agent (disabled, or not configured in the demo); uncertain posts go to review.
    agent: AgentStage | None = None
    # True: uncertain posts go to the agent service (`agent.requested`), which runs the agent
    # as a durable workflow; the worker then never waits for an LLM.
    handoff: bool = False
    # None: the regex injection screen alone (`worker.learned_injection_detector` off).
    detector: InjectionDetector | None = None
    # Hash lists and the nudity detector for posts with images (`classifier/image_stage.py`);
    # None: not loaded yet, and a post with images is then never allowed by stage 1.
    images: ImageJudge | None = None

    def serve(self, scorer: Scorer) -> None:
        """Score the next batches with `scorer` (the registry watch reports each new one here)."""
        # One assignment: a batch reads `scorer` once, so it never mixes two models.
        self.scorer = scorer


class Worker:
    """The worker's router (subscriber and publishers), its served models and its batch logic.

    The handlers live on a router so the embedded demo can mount them on one in-memory broker
    together with the recorder's; the service mounts them on its own Kafka broker. Tests inspect
    the publishers' mocks under FastStream's `TestKafkaBroker`.

    Args:
        settings: topics, consumer group, batching and thresholds come from here.
        state: the models served; an empty one by default (the app's start-up fills it).
    """

    def __init__(self, settings: Settings, *, state: WorkerState | None = None) -> None:
        self.settings = settings
        self.state = state or WorkerState()
        topics = settings.kafka.topics
        self.router = KafkaRouter()
        self.verdict_publisher = self.router.publisher(topics.verdicts, title="verdicts")
        self.review_publisher = self.router.publisher(
            topics.review_requested, title="review-requests"
        )
        self.agent_publisher = self.router.publisher(topics.agent_requested, title="agent-handoffs")
        self.dead_letter_publisher = self.router.publisher(
            topics.posts_submitted + topics.dlq_suffix, title="dlq"
        )
        self.subscriber = self.router.subscriber(
            topics.posts_submitted,
            group_id=settings.worker.classifier_group,
            batch=True,
            max_records=settings.worker.max_batch,
            batch_timeout_ms=settings.worker.batch_timeout_ms,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            # The handler parses each record itself (a poison one goes to the DLQ alone):
            # FastStream's own JSON decoding of the batch would parse every post twice.
            decoder=undecoded,
            title="posts-submitted",
        )
        self.subscriber(self._handler())

    def apply_settings(self, settings: Settings) -> None:
        """Decide the next batches with `settings` (the live configuration changed)."""
        self.settings = settings

    def _handler(self) -> Any:
        worker = self

        async def handle_posts_submitted(message: KafkaMessage = Context("message")) -> None:  # noqa: B008
            """Score a batch of PostSubmitted events and publish their verdicts."""
            await worker.handle(message)

        return handle_posts_submitted

    async def handle(self, message: KafkaMessage) -> None:
        """Score the batch in `message` and publish its verdicts (the subscriber's work)."""
        started = time.perf_counter()
        settings, state = self.settings, self.state
        scorer = state.scorer
        if scorer is None:
            raise RuntimeError("the classifier worker has no model loaded")
        records = batch_records(message.raw_message)
        _record_lag(message, records)
        posts: list[PostSubmitted] = []
        traces = PostTraces(JSON_HEADERS)
        pending: list[asyncio.Future[Any] | None] = []
        for record in records:
            try:
                posts.append(PostSubmitted.model_validate_json(record.value or b""))
                traces.start(posts[-1].post_id, record.headers)
            except ValidationError as error:
                DEAD_LETTERS.inc()
                letter = DeadLetter.from_record(
                    record, error, consumer_group=settings.worker.classifier_group
                )
                pending.append(await _publish(self.dead_letter_publisher, letter, record.key))

        agent = state.agent
        # The images first (hash lists, the detector: off the loop, the detector reads the
        # store); a post whose images were not judged is never allowed by stage 1.
        findings = None
        if state.images is not None and any(post.images for post in posts):
            findings = await asyncio.to_thread(state.images.judge, posts)
        # Off the event loop, within a time budget: the loop also answers /healthz and keeps the
        # consumer's heartbeats, so no batch of hostile posts may hold it.
        stage1 = await asyncio.to_thread(
            first_stage,
            posts,
            scorer,
            settings,
            agent_enabled=agent is not None or (state.handoff and settings.agent.enabled),
            deadline=time.monotonic() + settings.worker.stage1_budget_seconds,
            detector=state.detector,
            images=findings,
        )
        # Stage 1's verdicts leave before the agent runs: the clear cases do not wait for it.
        for result in stage1:
            post_id = result.post.post_id
            headers = traces.headers(post_id)
            verdict = result.verdict
            pending.append(await _publish(self.verdict_publisher, verdict, verdict.key(), headers))
            if result.review is not None:
                review = result.review
                pending.append(await _publish(self.review_publisher, review, review.key(), headers))
            if not result.to_agent:
                _count(result.post, "model", verdict.decision.value, verdict.primary_category.value)
                traces.end(post_id, decided_by="model")
        uncertain = [result for result in stage1 if result.to_agent]
        if agent is None and uncertain:
            # Handed to the agent service: its workflow publishes the agent's verdict.
            for item in uncertain:
                request = handoff(item)
                headers = traces.headers(item.post.post_id)
                pending.append(
                    await _publish(self.agent_publisher, request, request.key(), headers)
                )
                HANDOFFS.inc()
                traces.end(item.post.post_id, decided_by="agent-service")
        elif agent is not None and uncertain:
            judged = await second_stage(uncertain, agent, settings, contexts=traces.contexts())
            for item, (agent_verdict, agent_review) in zip(uncertain, judged, strict=True):
                post_id = item.post.post_id
                headers = traces.headers(post_id)
                if agent_verdict is not None:
                    key = agent_verdict.key()
                    pending.append(
                        await _publish(self.verdict_publisher, agent_verdict, key, headers)
                    )
                    decision, category = agent_verdict.decision, agent_verdict.primary_category
                    _count(item.post, "agent", decision.value, category.value)
                if agent_review is not None:
                    key = agent_review.key()
                    pending.append(
                        await _publish(self.review_publisher, agent_review, key, headers)
                    )
                    if agent_verdict is None:  # a fallback: the post went to review
                        _count(item.post, "agent", "review", item.verdict.primary_category.value)
                traces.end(post_id, decided_by="agent")
        traces.end_all()
        # Commit (by returning) only once Kafka acknowledged every verdict of the batch.
        await asyncio.gather(*(ack for ack in pending if ack is not None))
        BATCH_SECONDS.observe(time.perf_counter() - started)


def _count(post: PostSubmitted, stage: str, decision: str, category: str) -> None:
    POSTS_SCORED.labels(stage=stage, decision=decision, category=category).inc()
    elapsed = (datetime.now(UTC) - post.submitted_at).total_seconds()
    SUBMIT_TO_VERDICT.labels(stage=stage).observe(max(0.0, elapsed))


def _record_lag(message: KafkaMessage, records: Sequence[Any]) -> None:
    """Lag per partition: the partition's high watermark minus the batch's next offset."""
    consumer = getattr(message, "consumer", None)
    highwater = getattr(consumer, "highwater", None)
    if highwater is None:
        return  # the in-memory test broker has no consumer
    last: dict[Any, int] = {}
    for record in records:
        last[TopicPartition(record.topic, record.partition)] = record.offset
    for partition, offset in last.items():
        watermark = highwater(partition)
        if watermark is not None:
            CONSUMER_LAG.labels(partition=str(partition.partition)).set(watermark - offset - 1)


async def _publish(
    publisher: Any, event: Any, key: bytes | None, headers: dict[str, str] | None = None
) -> asyncio.Future[Any] | None:
    """Hand the event to the producer without waiting; the caller awaits all acks at once.

    `headers` carry the post's trace context. Returns the ack future (None from the in-memory
    test broker, which confirms at once).
    """
    future: asyncio.Future[Any] | None = await publisher.publish(
        event.model_dump_json().encode(),
        key=key,
        headers=headers or JSON_HEADERS,
        no_confirm=True,
    )
    return future


def create_broker(worker: Worker, *, principal: Principal = "worker") -> KafkaBroker:
    """A Kafka broker carrying the worker's router.

    Args:
        worker: the router to carry, and its settings.
        principal: who the broker connects as; the tests that run against the real Kafka act
            as `admin`, to publish posts and read the verdicts back.
    """
    settings = worker.settings
    broker = KafkaBroker(
        settings.kafka.bootstrap_servers,
        security=faststream_security(settings, principal),
        client_id="classifier-worker",
        log_level=logging.DEBUG,  # a line per batch is noise at INFO
        enable_idempotence=True,  # implies acks="all"
        linger_ms=settings.worker.linger_ms,
        # Verdicts of a batch leave together: bigger produce requests, fewer socket writes.
        max_batch_size=1024 * 1024,
        partitioner=key_partitioner,
    )
    broker.include_router(worker.router)
    return broker


def build_app(settings: Settings) -> AsgiFastStream:
    """The worker service: serves the registry's champions and follows their promotions."""
    worker = Worker(settings)
    state = worker.state
    resources = AsyncExitStack()  # closed in reverse: the watch stops before the engine goes

    async def start_agent() -> None:
        if not settings.agent.enabled or state.agent is not None:
            return
        if settings.agent.runs_in == "agent-service":
            state.handoff = True
            logger.info(
                "uncertain posts go to the agent service (%s)",
                settings.kafka.topics.agent_requested,
            )
        else:
            state.agent, close = create_agent_stage(settings)
            resources.push_async_callback(close)
            logger.info("classifier agent on %s (%s)", settings.llm.base_url, settings.llm.model)

    async def start_models() -> None:
        from moderation.classifier.fast.store import ensure_fast_model
        from moderation.classifier.injection.model import load_detector
        from moderation.db.engine import make_engine

        state.detector = await asyncio.to_thread(load_detector, settings)
        engine = make_engine(settings)
        resources.callback(engine.dispose)

        def database_lists() -> list[HashList]:
            with Session(engine) as session:
                return crud.database_hashlists(session)

        state.images = await asyncio.to_thread(
            partial(ImageJudge.from_settings, settings, database_lists=database_lists)
        )
        detector = state.images.detector
        if detector is not None:
            # Load the detector's model now, not on the first image post.
            await asyncio.to_thread(lambda: detector.session)
        watch = RegistryWatch(engine, settings, serve=state.serve, agent=state.agent)
        # After the agent: the first registry read also sets the agent's model name.
        await watch.start(partial(ensure_fast_model, settings))
        resources.push_async_callback(watch.stop)
        logger.info("classifier worker scoring with %s", state.scorer and state.scorer.version)

    async def model_loaded() -> bool:
        return state.scorer is not None

    async def follow_live_config() -> None:
        # Thresholds and the agent switch follow the configuration store; a batch keeps the
        # settings it started with (`handle` reads them once).
        watch = LiveConfigWatch(
            settings, f"127.0.0.1:{settings.worker.dapr_grpc_port}", worker.apply_settings
        )
        watch.start()
        resources.callback(watch.stop)

    return asgi_service(
        create_broker(worker),
        title="classifier worker",
        description="Scores posts.submitted with the fast model; publishes verdicts and reviews.",
        readiness=[("model", model_loaded)],
        on_startup=[start_agent, start_models, follow_live_config],
        on_shutdown=[resources.aclose],
    )


def run_worker(settings: Settings) -> None:
    """`moderation worker`: serve the worker until stopped."""
    configure_tracing("worker", settings)
    serve(
        build_app(settings),
        host=settings.worker.service_host,
        port=settings.worker.classifier_health_port,
    )
