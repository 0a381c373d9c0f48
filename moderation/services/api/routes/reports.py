"""`POST /v1/reports` (scope `report`): a platform user reports a post.

Deduplicated per (tenant, reporter, post): the same report again answers 200 with the first one.
Each reporter may file `reports.per_reporter_limit` reports per `reports.window_seconds` (a sliding
window counted in the database, so it holds across API replicas): past it, 429 with `Retry-After`.
The effect on reviews (priority raise, reopen) and the reporter's weight: `crud/reports.py`.
Nothing is recorded half-way: a reopen's `ReviewRequested` is published first (503 when Kafka
does not take it, with nothing recorded), then the report, the raise and the review are recorded
in one transaction.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlmodel import Session

from moderation.db import crud
from moderation.db.models import Report
from moderation.db.schemas import ReportCreate, ReportPublic
from moderation.events import ReviewPriority, ReviewRequested, utc_now
from moderation.services.api.deps import ApiState, require
from moderation.services.api.limits import rate_limited
from moderation.services.api.publisher import PublishUnavailable
from moderation.services.api.routes.appeals import _decision_as_verdict, _verdict_event
from moderation.services.api.routes.errors import ApiError, unavailable_response
from moderation.services.api.routes.posts import UNAVAILABLE
from moderation.services.api.security import Principal, Scope
from moderation.settings import ReportSettings
from moderation.taxonomy import Category

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["reports"])

ReportKey = Annotated[Principal, Depends(require(Scope.REPORT))]


def public_report(report: Report, review_id: str | None = None) -> ReportPublic:
    """The API shape of a report."""
    return ReportPublic(
        report_id=report.id,
        post_id=report.post_id,
        reporter_id=report.reporter_id,
        reason=report.reason,
        text=report.text,
        status=report.outcome or "open",  # type: ignore[arg-type]
        weight=round(report.weight, 4),
        created_at=report.created_at,
        resolved_at=report.resolved_at,
        review_id=review_id,
    )


def _plan(
    state: ApiState, principal: Principal, body: ReportCreate
) -> tuple[crud.ReportPlan, ReviewRequested | None]:
    """What the report does: 404 for a post the key does not see; the reopen to publish."""
    settings: ReportSettings = state.settings.reports
    with Session(state.engine) as session:
        post = crud.get_post(session, post_id=body.post_id)
        if post is None or not principal.sees(post.tenant):
            raise ApiError(404, f"post '{body.post_id}' not found")
        plan = crud.plan_report(
            session,
            tenant=post.tenant,
            reporter_id=body.reporter_id,
            post_id=body.post_id,
            reason=Category(body.reason),
            now=utc_now(),
            limit=settings.per_reporter_limit,
            window_seconds=settings.window_seconds,
            reopen_threshold=settings.reopen_threshold,
        )
        if plan.reopen_review_id is None:
            return plan, None
        verdict = crud.latest_automated_verdict(session, post_id=body.post_id)
        decision = crud.latest_decision(session, post_id=body.post_id)
    if verdict is not None:
        shown = _verdict_event(verdict)
    elif decision is not None:
        shown = _decision_as_verdict(decision, state.settings.models.policy_version)
    else:
        return plan._replace(reopen_review_id=None), None
    reopen = ReviewRequested(
        review_id=plan.reopen_review_id,
        post_id=body.post_id,
        reason=f"reported: {', '.join(plan.reasons)}",
        priority=ReviewPriority.HIGH,
        verdict=shown,
    )
    return plan, reopen


def _file(
    state: ApiState,
    principal: Principal,
    body: ReportCreate,
    plan: crud.ReportPlan,
    reopen: ReviewRequested | None,
) -> tuple[Report, bool]:
    assert plan.post is not None
    report = Report(
        id=uuid.uuid4().hex,
        tenant=plan.post.tenant,
        reporter_id=body.reporter_id,
        post_id=body.post_id,
        reason=body.reason,
        text=body.text,
        weight=plan.weight,
        created_at=utc_now(),
    )
    with Session(state.engine) as session:
        return crud.file_report(
            session,
            report=report,
            actor=principal.actor,
            priority_threshold=state.settings.reports.priority_threshold,
            reopen=reopen,
            removed_by=plan.removed_by,
        )


@router.post(
    "/reports",
    status_code=201,
    response_model=ReportPublic,
    summary="Report a post",
    responses={
        200: {"model": ReportPublic, "description": "this reporter already reported the post"},
        403: {"description": "the key lacks the `report` scope"},
        404: {"description": "no such post (or one of a tenant the key does not see)"},
        422: {
            "description": "an unknown reason (the answer lists the valid ones), a field "
            "missing or too long"
        },
        **UNAVAILABLE,
    },
)
async def create_report(body: ReportCreate, request: Request, principal: ReportKey) -> Response:
    """Record the report (201), or answer the reporter's earlier report of the post (200).

    Past the thresholds the report raises the priority of the post's open review, or reopens
    an allowed post for review (`review_id` in the answer).
    """
    state: ApiState = request.app.state.api
    plan, reopen = await run_in_threadpool(_plan, state, principal, body)
    if plan.existing is not None:
        return JSONResponse(public_report(plan.existing).model_dump(mode="json"), status_code=200)
    if plan.retry_after > 0:
        limit = state.settings.reports
        raise rate_limited(
            f"reporter '{body.reporter_id[:128]}' filed {limit.per_reporter_limit} reports in the "
            f"last {limit.window_seconds:,.0f}s, the limit",
            plan.retry_after,
        )
    if reopen is not None:
        topic = state.settings.kafka.topics.review_requested
        try:
            await state.publisher.publish(topic, reopen.key(), reopen.model_dump_json().encode())
        except PublishUnavailable as error:
            state.metrics.unavailable.labels("report", "kafka").inc()
            log.warning("report answered 503: %s", error)
            return unavailable_response(error.reason)
    report, created = await run_in_threadpool(_file, state, principal, body, plan, reopen)
    review_id = reopen.review_id if reopen is not None and created else None
    answer = public_report(report, review_id)
    return JSONResponse(answer.model_dump(mode="json"), status_code=201 if created else 200)
