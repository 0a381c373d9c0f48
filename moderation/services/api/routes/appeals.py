"""`POST /v1/posts/{post_id}/appeal`: reopen a decided post as a high-priority review."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.models import HumanDecision
from moderation.db.models import Verdict as VerdictRow
from moderation.db.schemas import AppealAccepted, AppealCreate
from moderation.events import ModerationVerdict, ReviewPriority, ReviewRequested, review_id_for
from moderation.services.api.deps import ApiState, SubmitKey
from moderation.services.api.publisher import PublishUnavailable
from moderation.services.api.routes.errors import ApiError, unavailable_response
from moderation.services.api.routes.posts import SUBMIT_AUTH_ERRORS, UNAVAILABLE
from moderation.services.api.security import Principal
from moderation.taxonomy import Category, Decision, Stage

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["posts"])


def _verdict_event(row: VerdictRow) -> ModerationVerdict:
    """The recorded automated verdict as the event it was recorded from."""
    return ModerationVerdict(
        event_id=row.event_id,
        occurred_at=row.occurred_at,
        post_id=row.post_id,
        decision=Decision(row.decision),
        scores={Category(name): score for name, score in row.scores.items()},
        primary_category=Category(row.primary_category),
        confidence=row.confidence,
        stage=Stage(row.stage),
        model_version=row.model_version,
        policy_version=row.policy_version,
        rationale=row.rationale,
        policy_sections=[Category(name) for name in row.policy_sections],
        signals=row.signals,
        latency_ms=row.latency_ms,
    )


def _decision_as_verdict(decision: HumanDecision, policy_version: str) -> ModerationVerdict:
    """A stand-in when no automated verdict is recorded: the human decision being appealed."""
    label = Category(decision.label)
    return ModerationVerdict(
        post_id=decision.post_id,
        occurred_at=decision.decided_at,
        decision=Decision(decision.decision),
        scores={label: 1.0},
        primary_category=label,
        confidence=1.0,
        stage=Stage.HUMAN,
        model_version=f"human:{decision.moderator_id}",
        policy_version=policy_version,
        latency_ms=0.0,
    )


def _appeal_request(
    state: ApiState, post_id: str, reason: str, principal: Principal
) -> ReviewRequested:
    """The appeal's review request, or 404 / 409 saying why there is none to make (another
    tenant's post is 404, as an unknown one)."""
    with Session(state.engine) as session:
        post = crud.get_post(session, post_id=post_id)
        if post is None or not principal.sees(post.tenant):
            raise ApiError(404, f"post '{post_id}' not found")
        decision = crud.latest_decision(session, post_id=post_id)
        if decision is None:
            raise ApiError(409, f"post '{post_id}' has no human decision to appeal yet")
        open_appeal = crud.open_appeal_for(session, post_id=post_id)
        if open_appeal is not None:
            raise ApiError(
                409, f"post '{post_id}' already has an open appeal ('{open_appeal.review_id}')"
            )
        appeals = crud.count_appeals(session, post_id=post_id)
        verdict = crud.latest_automated_verdict(session, post_id=post_id)
    return ReviewRequested(
        review_id=review_id_for(post_id, appeals + 1),
        post_id=post_id,
        reason=f"appeal of {decision.decision} ({decision.label}): {reason}",
        priority=ReviewPriority.HIGH,
        verdict=(
            _verdict_event(verdict)
            if verdict is not None
            else _decision_as_verdict(decision, state.settings.models.policy_version)
        ),
        appeal_of=decision.event_id,
    )


def _record_appeal(engine: Engine, request: ReviewRequested, actor: str) -> None:
    with Session(engine) as session:
        crud.record_appeal(session, event=request, actor=actor)


@router.post(
    "/posts/{post_id}/appeal",
    status_code=202,
    response_model=AppealAccepted,
    summary="Appeal a moderator's decision on a post",
    responses={
        **SUBMIT_AUTH_ERRORS,
        404: {"description": "no such post"},
        409: {"description": "no human decision yet, or an appeal is already open"},
        422: {"description": "the reason is missing or longer than 2,000 characters"},
        **UNAVAILABLE,
    },
)
async def appeal_post(
    post_id: str, body: AppealCreate, request: Request, principal: SubmitKey
) -> Response:
    """Reopen a decided post as a high-priority review linked to the decision (202).

    The review request is published to Kafka like a post (503 when Kafka does not acknowledge)
    and then recorded at once, so the post shows `in_review` and a second appeal gets 409.
    """
    state: ApiState = request.app.state.api
    appeal = await run_in_threadpool(_appeal_request, state, post_id, body.reason, principal)
    topic = state.settings.kafka.topics.review_requested
    try:
        await state.publisher.publish(topic, appeal.key(), appeal.model_dump_json().encode())
    except PublishUnavailable as error:
        state.metrics.unavailable.labels("appeal", "kafka").inc()
        log.warning("appeal answered 503: %s", error)
        return unavailable_response(error.reason)
    await run_in_threadpool(_record_appeal, state.engine, appeal, principal.actor)
    accepted = AppealAccepted(
        review_id=appeal.review_id, post_id=post_id, appeal_of=str(appeal.appeal_of)
    )
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202)
