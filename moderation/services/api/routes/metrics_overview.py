"""`GET /v1/metrics/overview`: what the moderators' metrics dashboard plots (scope `moderate`).

Throughput, latency percentiles, decision and category mix, the share sent to humans,
model-vs-human agreement, the review queue with the load per moderator, the model registry's
versions with their scores, and the latest job runs; `crud.metrics_overview` defines each number.
The scope is `moderate`, as for the rest of the dashboard: the answer names moderators and their
handling times, which a `read` key (an integrator reading its posts' trails) has no need for.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.schemas import MetricsOverviewPublic
from moderation.events import utc_now
from moderation.services.api.deps import ModerateKey, StateDep
from moderation.services.api.routes.errors import ApiError

router = APIRouter(prefix="/v1", tags=["metrics"])

MAX_HOURS = 24 * 90

RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, unknown or revoked API key"},
    403: {"description": "the key lacks the `moderate` scope"},
    422: {"description": "hours or bucket_minutes out of range, or too many buckets"},
}


def _overview(
    engine: Engine, hours: float, bucket_minutes: int, tenants: frozenset[str] | None
) -> MetricsOverviewPublic:
    with Session(engine) as session:
        return crud.metrics_overview(
            session, now=utc_now(), hours=hours, bucket_minutes=bucket_minutes, tenants=tenants
        )


@router.get(
    "/metrics/overview",
    response_model=MetricsOverviewPublic,
    summary="Pipeline and review metrics over a window, in time buckets",
    responses=RESPONSES,
)
async def metrics_overview(
    state: StateDep,
    principal: ModerateKey,
    hours: Annotated[float, Query(gt=0, le=MAX_HOURS, description="the window")] = 24,
    bucket_minutes: Annotated[
        int, Query(ge=1, le=24 * 60, description="bucket size; buckets align to the epoch")
    ] = 60,
) -> MetricsOverviewPublic:
    """Counts over every row of the window; latency percentiles and per-moderator means over
    the newest `latency_sample.cap` rows (`latency_sample.truncated` says when that cut).
    Only the tenants the key sees are counted."""
    try:
        return await run_in_threadpool(
            _overview, state.engine, hours, bucket_minutes, principal.tenants
        )
    except ValueError as error:
        raise ApiError(
            422,
            f"invalid request: {error}",
            errors=[
                {"field": "query bucket_minutes", "message": str(error), "type": "too_many_buckets"}
            ],
        ) from error
