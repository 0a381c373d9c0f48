"""Health and metrics routes.

Public port (`router`): `/healthz` only, the process is up; no detail about dependencies.
Internal port (`internal_router`, see `moderation/services/api/internal.py`): `/healthz`, `/readyz`
(Kafka and the database really answer, and what failed, with the error) and `/metrics`. The
detail names brokers, hosts and drivers: it is for probes and Prometheus, never for the ingress.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text

from moderation.services.api.deps import ApiState
from moderation.services.api.metrics import CONTENT_TYPE_LATEST, ApiMetrics
from moderation.services.api.publisher import PublishUnavailable

router = APIRouter(tags=["health"])
internal_router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 3.0


@router.get("/healthz", summary="The process is up")
@internal_router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    """Always ok while the process serves requests."""
    return {"status": "ok"}


def _select_one(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1")).scalar_one()


async def _check_database(engine: Engine) -> str:
    try:
        # asyncio.to_thread, not the request pool: a hung connect must not hold a worker slot
        # that the timeout cannot reclaim.
        await asyncio.wait_for(asyncio.to_thread(_select_one, engine), CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"no answer to SELECT 1 within {CHECK_TIMEOUT_SECONDS:g}s"
    except Exception as error:  # noqa: BLE001 - any failure means "not ready", with its reason
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return "ok"


@internal_router.get(
    "/readyz",
    summary="Kafka answers a metadata request and the database answers SELECT 1",
    responses={503: {"description": "names the dependency that failed"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Really ask Kafka for metadata and the database for `SELECT 1`."""
    state: ApiState | None = getattr(request.app.state, "api", None)
    if state is None:  # the public app's lifespan has not made its resources yet
        return JSONResponse({"status": "starting"}, status_code=503, headers={"Retry-After": "1"})
    checks: dict[str, str] = {}

    async def kafka() -> None:
        try:
            await state.publisher.ping()
        except PublishUnavailable as error:
            checks["kafka"] = str(error)
        else:
            checks["kafka"] = "ok"

    async def database() -> None:
        checks["database"] = await _check_database(state.engine)

    async with asyncio.TaskGroup() as group:
        group.create_task(kafka())
        group.create_task(database())
    failing = sorted(name for name, result in checks.items() if result != "ok")
    if failing:
        return JSONResponse(
            {"status": "not ready", "failing": failing, "checks": checks},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return JSONResponse({"status": "ready", "checks": checks})


@internal_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """The Prometheus text exposition."""
    api_metrics: ApiMetrics = request.app.state.metrics
    return Response(api_metrics.render(), media_type=CONTENT_TYPE_LATEST)
