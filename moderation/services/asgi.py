"""How a FastStream service is served: `/healthz`, `/readyz`, `/metrics` and its AsyncAPI document.

`/healthz` answers while the process runs; `/readyz` really pings the broker and runs the
service's own checks (its database, its model); `/metrics` is the Prometheus exposition;
`/asyncapi` (HTML) and `/asyncapi.json` describe the topics the service consumes and publishes.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvicorn
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.asgi.factories.asyncapi.route import AsyncAPIRoute
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from prometheus_client import make_asgi_app

ReadinessCheck = Callable[[], Awaitable[bool]]


def batch_records(raw_message: Any) -> list[Any]:
    """The ConsumerRecords of a batch subscriber's message (a tuple from aiokafka, a list from
    FastStream's TestKafkaBroker, a single record from a non-batch subscriber)."""
    return list(raw_message) if isinstance(raw_message, tuple | list) else [raw_message]


async def undecoded(message: Any) -> Any:
    """A batch subscriber's `decoder` that leaves the records' bodies as they came: the handler
    parses each record itself (a poison one goes to its dead-letter topic alone), so FastStream's
    own JSON decoding would parse every event twice (about a third of the CPU per event)."""
    return message.body


def asgi_service(
    broker: KafkaBroker,
    *,
    title: str,
    description: str,
    readiness: Sequence[tuple[str, ReadinessCheck]] = (),
    on_startup: Sequence[Callable[[], Any]] = (),
    on_shutdown: Sequence[Callable[[], Any]] = (),
) -> AsgiFastStream:
    """Wrap a FastStream broker into an ASGI app with health, readiness, metrics and docs."""

    @get(include_in_schema=False)
    async def healthz(scope: Any) -> AsgiResponse:  # noqa: ARG001 - ASGI signature
        return AsgiResponse(b"ok", 200)

    @get(include_in_schema=False)
    async def readyz(scope: Any) -> AsgiResponse:  # noqa: ARG001 - ASGI signature
        failing = [] if await broker.ping(timeout=3.0) else ["kafka"]
        for name, check in readiness:
            try:
                ok = await check()
            except Exception:  # noqa: BLE001 - a failing check is "not ready", with its name
                ok = False
            if not ok:
                failing.append(name)
        if failing:
            return AsgiResponse(f"not ready: {', '.join(failing)}".encode(), 503)
        return AsgiResponse(b"ready", 200)

    app = AsgiFastStream(
        broker,
        asgi_routes=[("/healthz", healthz), ("/readyz", readyz), ("/metrics", make_asgi_app())],
        specification=AsyncAPI(title=title, description=description, schema_version="3.0.0"),
        asyncapi_path=AsyncAPIRoute("/asyncapi", asyncapi_json_path="/asyncapi.json"),
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )
    app.after_startup(freeze_startup_objects)
    return app


async def freeze_startup_objects() -> None:
    """Move what start-up made (modules, the loaded models) out of the collector's reach.

    It lives as long as the process; left in the oldest generation, every full collection
    rescans it (about 0.1 s for the worker's ~300,000 objects) while messages wait.
    """
    gc.collect()
    gc.freeze()


def serve(app: AsgiFastStream, *, port: int, host: str = "127.0.0.1") -> None:
    """Run the service in this process until SIGTERM/SIGINT, on uvloop: the consumers' and
    producers' socket work is most of a stream service's event-loop time (`moderation bench`)."""
    uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="on", loop="uvloop")
