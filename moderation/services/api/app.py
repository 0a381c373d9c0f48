"""The ingest API application: `build_app(settings)` wires routes, errors and resources."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import Engine
from starlette.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from moderation.db.engine import create_tables, make_engine
from moderation.kafka_auth import aiokafka_auth
from moderation.services.api.deps import ApiState
from moderation.services.api.images import ImageIntake, max_submit_body_bytes
from moderation.services.api.limits import ApiLimits, BodySizeLimit
from moderation.services.api.metrics import ApiMetrics
from moderation.services.api.publisher import KafkaPublisher, Publisher
from moderation.services.api.routes import (
    admin_keys,
    appeals,
    audit,
    authors,
    bulk_reviews,
    config,
    hashlists,
    health,
    images,
    metrics_overview,
    posts,
    reports,
    reviews,
    webhooks,
    workflow_instances,
)
from moderation.services.api.routes.errors import ErrorBody, install_error_handlers
from moderation.services.api.routes.submit_lane import SUBMIT_PATH, SubmitFastLane
from moderation.services.api.workflows import DaprReviewWorkflows, ReviewWorkflows
from moderation.services.sidecar.history import DaprWorkflowHistory, WorkflowHistory
from moderation.settings import Settings

log = logging.getLogger(__name__)

BATCH_PATH = "/v1/posts:batch"

DESCRIPTION = """\
Submit posts for moderation. A post is accepted (202) only once Kafka acknowledged it with
`acks=all`; when Kafka cannot acknowledge in time the answer is 503 with `Retry-After`.
Moderators work the human review queue under `/v1/reviews` (scope `moderate`).
Authenticate with `Authorization: Bearer <api key>` or `X-API-Key`.
Each key belongs to a tenant: what belongs to a tenant the key does not see answers 404, as if
unknown (`moderate` keys see the tenants granted to them, `admin` keys every tenant). Admins
list, create and revoke keys under `/v1/admin/keys`.
Each key has rate limits (posts, and other requests, per minute): past them the answer is 429
with `Retry-After`. Bodies above the size limit are refused with 413.
"""


def build_app(
    settings: Settings,
    *,
    publisher: Publisher | None = None,
    engine: Engine | None = None,
    workflows: ReviewWorkflows | None = None,
    workflow_history: WorkflowHistory | None = None,
    start_image_decoders: bool = False,
) -> FastAPI:
    """Build the API.

    Args:
        settings: the settings tree (`api`, `kafka`, `db`, `dapr`, `review` are used).
        publisher: where events go; default an idempotent Kafka producer. The app starts and
            closes it in its lifespan either way.
        engine: the read-model database; default one from `settings.db.url`, which the app
            then also disposes of.
        workflows: where decisions go; default the review service's Dapr sidecar. The app
            closes it in its lifespan either way.
        workflow_history: where `/v1/workflows` reads instances; default the agent and review
            services' Dapr sidecars. The app closes it in its lifespan either way.
    """
    metrics = ApiMetrics()
    # Per app, not per lifespan: a restart of the lifespan must not refill every bucket.
    limits = ApiLimits.from_settings(settings.api)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_engine = engine is None
        db_engine = engine if engine is not None else make_engine(settings)
        create_tables(db_engine)
        broker = publisher or KafkaPublisher(
            settings.kafka.bootstrap_servers,
            timeout=settings.api.publish_timeout_seconds,
            auth=aiokafka_auth(settings, "api"),
        )
        await broker.start()
        gateway = workflows or DaprReviewWorkflows.from_settings(settings)
        history = workflow_history or DaprWorkflowHistory.from_settings(settings)
        app.state.api = ApiState(
            settings=settings,
            engine=db_engine,
            publisher=broker,
            metrics=metrics,
            workflows=gateway,
            limits=limits,
            workflow_history=history,
            images=ImageIntake(settings.images),
        )
        if start_image_decoders and settings.images.enabled:
            # The served API starts its decoder processes now, in the background, not on the
            # first image post (each takes about half a second to start; a post arriving
            # meanwhile waits for a slot); tests and the demo start them lazily.
            warm = asyncio.create_task(asyncio.to_thread(app.state.api.images.pool.start))
        try:
            yield
        finally:
            if start_image_decoders and settings.images.enabled:
                await warm
            app.state.api.images.close()
            await history.close()
            await gateway.close()
            await broker.close()
            if own_engine:
                db_engine.dispose()

    app = FastAPI(
        title="moderation ingest API",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    install_error_handlers(app)
    # Outermost last: proxy headers, CORS, then the body limit (it also guards the fast lane),
    # then the lane.
    app.add_middleware(SubmitFastLane)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.api.max_body_bytes,
        per_path={
            BATCH_PATH: settings.api.max_batch_body_bytes,
            # A post may carry images (base64 in the JSON body).
            SUBMIT_PATH: max_submit_body_bytes(settings.api.max_body_bytes, settings.images),
        }
        if settings.images.enabled
        else {BATCH_PATH: settings.api.max_batch_body_bytes},
    )
    if settings.api.cors_origins:
        # Keys travel in headers, never in cookies: no credentials, only the listed origins.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"],
            expose_headers=["Retry-After", "Location", "Idempotent-Replayed"],
        )
    # Outermost: every layer below (the fast lane included) sees the same client address. Only
    # a listed proxy's X-Forwarded-For is believed (the right-most entry not itself a trusted
    # proxy); with none listed, X-Forwarded-For is ignored and the socket peer is the client.
    # The server runs without its own proxy handling (`cli.run_api`: proxy_headers=False).
    if settings.api.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.api.trusted_proxies)
    app.include_router(posts.router)
    app.include_router(appeals.router)
    app.include_router(authors.router)
    app.include_router(reports.router)
    app.include_router(bulk_reviews.router)
    app.include_router(reviews.router)
    app.include_router(metrics_overview.router)
    app.include_router(config.router)
    app.include_router(workflow_instances.router)
    app.include_router(audit.router)
    app.include_router(images.router)
    app.include_router(hashlists.router)
    app.include_router(webhooks.router)
    app.include_router(admin_keys.router)
    app.include_router(health.router)
    _document_security(app)
    return app


ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
# What any `/v1` operation may answer besides its own documented errors.
COMMON_ERRORS: dict[str, dict[str, Any]] = {
    "401": {"description": "missing, unknown or revoked API key"},
    "429": {
        "description": "over the key's rate limit, or too many failed key checks from the client",
        "headers": {
            "Retry-After": {"description": "whole seconds to wait", "schema": {"type": "integer"}}
        },
    },
}
BODY_ERRORS: dict[str, dict[str, Any]] = {
    "400": {"description": "malformed JSON"},
    "413": {"description": "the body is larger than the API's limit"},
    "422": {"description": "a field is missing or out of its limits"},
}


def _document_security(app: FastAPI) -> None:
    """Declare both key schemes, and the error answers, in the OpenAPI document.

    The routes authenticate in one plain dependency (`deps.current_key`) rather than through
    FastAPI's security classes, so the document has to be told. Every `/v1` error answer has the
    body of `routes/errors.py` (FastAPI would document its own validation error shape), and
    every `/v1` operation may answer 401 and 429, and with a body 400, 413 and 422.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {})
            components["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "the API key"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            error_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = components.setdefault("schemas", {})
            schemas.update(error_schema.pop("$defs", {}))
            schemas["ErrorBody"] = error_schema
            for path, operations in schema.get("paths", {}).items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        _document_operation(operation)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_operation(operation: dict[str, Any]) -> None:
    operation["security"] = [{"bearer": []}, {"apiKey": []}]
    responses = operation.setdefault("responses", {})
    extra = COMMON_ERRORS | (BODY_ERRORS if "requestBody" in operation else {})
    for status, response in extra.items():
        responses.setdefault(status, dict(response))
    for status, response in responses.items():
        if status[:1] in ("4", "5"):
            response["content"] = {"application/json": {"schema": ERROR_REF}}
