"""What every Dapr app of ours serves besides its own work: the app-token guard, its one
programmatic subscription, a delivery route that dead-letters what it cannot parse and asks
for a redelivery when it cannot act, and the probes (`/healthz`, `/readyz` on the workflow
worker, `/metrics`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import BaseModel, ValidationError

from moderation.services.sidecar.pubsub import DaprSink, delivered_payload
from moderation.services.sidecar.tokens import AppTokenGuard
from moderation.settings import Settings
from moderation.telemetry import carrier_of

logger = logging.getLogger(__name__)
E = TypeVar("E", bound=BaseModel)


def require_app_token(settings: Settings) -> None:
    """Refuse to build a Dapr app without an app token outside development.

    Raises:
        ValueError: anyone who reaches the port could then call the Dapr routes.
    """
    if settings.dapr.app_token is None and settings.environment != "development":
        raise ValueError("MODERATION_DAPR__APP_TOKEN (or APP_API_TOKEN) must be set")


def serve_dapr_app(app: FastAPI, settings: Settings, state: Mapping[str, Any]) -> None:
    """The token guard and the probes; `state["runtime"]` is the app's workflow runtime."""
    token = settings.dapr.app_token
    if token is not None:
        app.add_middleware(AppTokenGuard, token=token)
    else:
        logger.warning("no Dapr app token: anyone who reaches the port may call the Dapr routes")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        runtime = state.get("runtime")
        ready = runtime is not None and runtime.wait_for_worker_ready(timeout=0.5)
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def subscribe_topic(
    app: FastAPI,
    settings: Settings,
    *,
    topic: str,
    route: str,
    event_type: type[E],
    consumer_group: str,
    sink: Callable[[], DaprSink],
    act: Callable[[E, dict[str, str] | None], None],
    dead_letters: Counter,
) -> None:
    """Take `topic` from the app's daprd (raw payloads) and `act` on each event in a thread.

    A payload that is not an `event_type` goes to `<topic>.dlq` with its error (answered
    SUCCESS: it is handled); when `act` raises, the delivery is answered RETRY and Dapr
    redelivers it. `act` gets the delivery's trace context (daprd passes it in the headers).
    """

    @app.get("/dapr/subscribe")
    def subscribe() -> list[dict[str, Any]]:
        return [
            {
                "pubsubname": settings.dapr.pubsub_name,
                "topic": topic,
                "route": route,
                "metadata": {"rawPayload": "true"},
            }
        ]

    async def deliver(request: Request) -> JSONResponse:
        payload = delivered_payload(await request.body())
        try:
            event = event_type.model_validate_json(payload)
        except ValidationError as error:
            dead_letters.inc()
            await asyncio.to_thread(sink().dead_letter, topic, consumer_group, payload, error)
            return JSONResponse({"status": "SUCCESS"})  # handled: it is in the dead-letter topic
        try:
            await asyncio.to_thread(act, event, carrier_of(request.headers))
        except Exception as error:  # noqa: BLE001 - Dapr redelivers; the error is logged
            logger.warning("could not act on %s from %s (%s); Dapr will redeliver",
                           getattr(event, "post_id", "?"), topic, error)  # fmt: skip
            return JSONResponse({"status": "RETRY"})
        return JSONResponse({"status": "SUCCESS"})

    app.add_api_route(route, deliver, methods=["POST"])
