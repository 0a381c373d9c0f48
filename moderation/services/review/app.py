"""The review service: a Dapr app that turns `review.requested` into one workflow per review.

Dapr's Kafka pub/sub delivers `review.requested` to it (a programmatic subscription, raw payload:
the events are plain JSON written by FastStream, not CloudEvents), and only that topic. For each
event it schedules the workflow `review_id` unless it exists (a redelivery starts nothing new). A
payload that is not a `ReviewRequested` goes to `review.requested.dlq` with its error; when Dapr
cannot schedule, the delivery is answered RETRY and Dapr redelivers it.

`build_app(settings)` is the process; run it with `moderation review-service` next to its daprd
(`--app-port settings.review.service_port`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from dapr.ext.workflow import DaprWorkflowClient
from fastapi import FastAPI
from prometheus_client import REGISTRY, Counter

from jobs.schedule import job_router
from moderation.db.engine import create_tables, make_engine
from moderation.events import ReviewRequested
from moderation.services.review.activities import ReviewActivities
from moderation.services.review.queue_metrics import ReviewQueueCollector
from moderation.services.review.workflow import WORKFLOW_NAME, build_runtime, workflow_input
from moderation.services.sidecar.app import require_app_token, serve_dapr_app, subscribe_topic
from moderation.services.sidecar.instances import read_workflow_state
from moderation.services.sidecar.pubsub import DaprSink
from moderation.services.sidecar.tokens import use_api_token
from moderation.settings import Settings
from moderation.telemetry import configure_tracing

logger = logging.getLogger(__name__)

SUBSCRIPTION_ROUTE = "/events/review-requested"
WORKFLOWS_STARTED = Counter(
    "moderation_review_workflows_started_total", "review workflows scheduled"
)
DUPLICATES = Counter(
    "moderation_review_requests_duplicate_total", "review requests whose workflow already existed"
)
DEAD_LETTERS = Counter("moderation_review_dead_letters_total", "review requests dead-lettered")


def build_app(settings: Settings) -> FastAPI:
    """The review service; only daprd (with `dapr.app_token`) may call it, probes excepted.

    Raises:
        ValueError: no app token outside development (anyone who reaches the port could then
            start reviews or the nightly job).
    """
    topics = settings.kafka.topics
    state: dict[str, Any] = {}
    require_app_token(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        use_api_token(settings)  # before the first SDK client
        engine = make_engine(settings)
        await asyncio.to_thread(create_tables, engine)
        sink = DaprSink(settings)
        runtime = build_runtime(settings, ReviewActivities(engine, sink, settings))
        runtime.start()
        queue_metrics = ReviewQueueCollector(engine)
        REGISTRY.register(queue_metrics)
        state["runtime"] = runtime
        state["sink"] = sink
        state["client"] = DaprWorkflowClient(host="127.0.0.1", port=str(settings.dapr.grpc_port))
        try:
            yield
        finally:
            REGISTRY.unregister(queue_metrics)
            runtime.shutdown()
            state["client"].close()
            sink.close()
            engine.dispose()

    app = FastAPI(title="review service", lifespan=lifespan)
    serve_dapr_app(app, settings, state)
    # The stack's Dapr app also receives the triggers of the local nightly schedule.
    app.include_router(job_router(settings))

    def start(event: ReviewRequested, trace: dict[str, str] | None) -> None:
        _start_workflow(state["client"], event, settings, trace)

    subscribe_topic(
        app, settings, topic=topics.review_requested, route=SUBSCRIPTION_ROUTE,
        event_type=ReviewRequested, consumer_group="review-service",
        sink=lambda: state["sink"], act=start, dead_letters=DEAD_LETTERS,
    )  # fmt: skip
    return app


def _start_workflow(
    client: DaprWorkflowClient,
    event: ReviewRequested,
    settings: Settings,
    trace: dict[str, str] | None = None,
) -> None:
    """Schedule the review's workflow unless it exists (idempotent on the review id)."""
    if read_workflow_state(client, event.review_id) is not None:
        DUPLICATES.inc()
        return
    try:
        client.schedule_new_workflow(
            WORKFLOW_NAME,
            input=workflow_input(event, settings, trace),
            instance_id=event.review_id,
        )
    except Exception:
        # Two deliveries raced: the other one scheduled it.
        if read_workflow_state(client, event.review_id) is None:
            raise
        DUPLICATES.inc()
        return
    WORKFLOWS_STARTED.inc()


def run_review_service(settings: Settings) -> None:
    """`moderation review-service`: serve until stopped."""
    configure_tracing("review-service", settings)
    uvicorn.run(
        build_app(settings),
        host=settings.worker.service_host,
        port=settings.review.service_port,
        log_level="warning",
        # The Dapr workflow runtime's gRPC clients: the standard loop they are tested on.
        loop="asyncio",
    )
