"""The ingest API application: `create_app(settings)` wires routes, errors and resources."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import Engine

from moderation.api.deps import ApiState
from moderation.api.metrics import ApiMetrics
from moderation.api.publisher import KafkaPublisher, Publisher
from moderation.api.routes import health, posts, reviews
from moderation.api.routes.errors import install_error_handlers
from moderation.api.routes.submit_lane import SubmitFastLane
from moderation.api.workflows import DaprReviewWorkflows, ReviewWorkflows
from moderation.db.engine import create_tables, make_engine
from moderation.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """\
Submit posts for moderation. A post is accepted (202) only once Kafka acknowledged it with
`acks=all`; when Kafka cannot acknowledge in time the answer is 503 with `Retry-After`.
Moderators work the human review queue under `/v1/reviews` (scope `moderate`).
Authenticate with `Authorization: Bearer <api key>` or `X-API-Key`.
"""


def create_app(
    settings: Settings,
    *,
    publisher: Publisher | None = None,
    engine: Engine | None = None,
    workflows: ReviewWorkflows | None = None,
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
    """
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_engine = engine is None
        db_engine = engine if engine is not None else make_engine(settings)
        create_tables(db_engine)
        broker = publisher or KafkaPublisher(
            settings.kafka.bootstrap_servers, timeout=settings.api.publish_timeout_seconds
        )
        await broker.start()
        gateway = workflows or DaprReviewWorkflows.from_settings(settings)
        app.state.api = ApiState(
            settings=settings,
            engine=db_engine,
            publisher=broker,
            metrics=metrics,
            workflows=gateway,
        )
        reviews.preload_in_background()
        try:
            yield
        finally:
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
    app.add_middleware(SubmitFastLane)
    app.include_router(posts.router)
    app.include_router(reviews.router)
    app.include_router(health.router)
    _document_security(app)
    return app


def _document_security(app: FastAPI) -> None:
    """Declare both key schemes in the OpenAPI document.

    The routes authenticate in one plain dependency (`deps.current_key`) rather than through
    FastAPI's security classes, so the document has to be told.
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
            for path, operations in schema.get("paths", {}).items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}, {"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
