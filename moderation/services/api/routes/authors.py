"""`/v1/authors`: an author's history and standing, and the author's appeal of an action.

An author is (tenant, author_id): the same id in two tenants is two authors. Strikes and actions
are written by the recorder (`crud/strikes.py`); this module only reads them, and turns an
author's appeal of an action into an appeal review of the post behind it.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlmodel import Session

from moderation.db import crud
from moderation.db.schemas import (
    AppealAccepted,
    AppealCreate,
    AuthorActionPublic,
    AuthorPostPublic,
    AuthorPublic,
    AuthorVerdictPublic,
    StandingPublic,
    StrikePublic,
)
from moderation.events import (
    TENANT_PATTERN,
    ActionKind,
    ReviewPriority,
    ReviewRequested,
    review_id_for,
    utc_now,
)
from moderation.services.api.deps import ApiState, CurrentKey, SubmitKey
from moderation.services.api.publisher import PublishUnavailable
from moderation.services.api.routes.appeals import (
    _decision_as_verdict,
    _record_appeal,
    _verdict_event,
)
from moderation.services.api.routes.errors import ApiError, unavailable_response
from moderation.services.api.routes.posts import SUBMIT_AUTH_ERRORS, UNAVAILABLE
from moderation.services.api.security import Principal, Scope

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["authors"])

MAX_OFFSET = 1_000_000_000


def _not_found(author_id: str) -> ApiError:
    return ApiError(404, f"author '{author_id}' not found")


def _author(
    state: ApiState, tenant: str, author_id: str, limit: int, offset: int
) -> AuthorPublic | None:
    now = utc_now()
    with Session(state.engine) as session:
        rows = crud.get_author(
            session, tenant=tenant, author_id=author_id, limit=limit, offset=offset
        )
    if rows is None:
        return None
    standing = crud.author_standing(rows.strikes, rows.actions, now)
    return AuthorPublic(
        tenant=rows.tenant,
        author_id=rows.author_id,
        standing=StandingPublic(
            status=standing.status,  # type: ignore[arg-type]
            until=standing.until,
            action_id=standing.action_id,
            active_strikes=standing.active_strikes,
        ),
        post_count=rows.post_count,
        limit=limit,
        offset=offset,
        posts=[
            AuthorPostPublic(
                post_id=post.id,
                status=post.status.value,
                text=post.text,
                submitted_at=post.submitted_at,
            )
            for post in rows.posts
        ],
        verdicts=[
            AuthorVerdictPublic(
                post_id=v.post_id,
                stage=v.stage,
                decision=v.decision,
                primary_category=v.primary_category,
                confidence=v.confidence,
                model_version=v.model_version,
                occurred_at=v.occurred_at,
            )
            for v in rows.verdicts
        ],
        strikes=[
            StrikePublic(
                strike_id=s.id or 0,
                post_id=s.post_id,
                category=s.category,
                severity=s.severity,
                weight=s.weight,
                state=crud.strike_state(s, now),  # type: ignore[arg-type]
                issued_at=s.issued_at,
                expires_at=s.expires_at,
                overturned_at=s.overturned_at,
                overturned_by=s.overturned_by,
                policy_version=s.policy_version,
            )
            for s in rows.strikes
        ],
        actions=[
            AuthorActionPublic(
                action_id=a.action_id,
                action=a.action,  # type: ignore[arg-type]
                days=a.days,
                until=a.until,
                reason=a.reason,
                post_id=a.post_id,
                threshold=a.threshold,
                active_strikes=a.active_strikes,
                strike_ids=a.strike_ids,
                reverses=a.reverses,
                reversed_by=a.reversed_by,
                created_at=a.created_at,
                policy_version=a.policy_version,
            )
            for a in rows.actions
        ],
    )


@router.get(
    "/authors/{author_id}",
    response_model=AuthorPublic,
    summary="An author's posts, verdicts, strikes, actions and standing",
    responses={
        403: {"description": "the key has neither the `read` nor the `moderate` scope"},
        404: {
            "description": "no post by this author in the tenant (or a tenant the key does not see)"
        },
    },
)
async def get_author(
    author_id: str,
    request: Request,
    principal: CurrentKey,
    tenant: Annotated[
        str | None,
        Query(
            pattern=TENANT_PATTERN,
            description="the author's tenant, for keys that see several; default the key's own",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AuthorPublic:
    """The author of `tenant` (default: the key's): a page of posts, newest first, with their
    verdicts; every strike (active, expired, overturned) and action; the standing now."""
    if not (principal.allows(Scope.READ) or principal.allows(Scope.MODERATE)):
        raise ApiError(
            403, f"API key '{principal.name}' lacks scope 'read' (or 'moderate') to read authors"
        )
    chosen = tenant or principal.tenant
    if not principal.sees(chosen):
        raise _not_found(author_id)
    state: ApiState = request.app.state.api
    found = await run_in_threadpool(_author, state, chosen, author_id, limit, offset)
    if found is None:
        raise _not_found(author_id)
    return found


def _action_appeal(
    state: ApiState, principal: Principal, author_id: str, action_id: str, reason: str
) -> ReviewRequested:
    """The appeal review of the post behind the action, or 404 / 409 saying why not."""
    with Session(state.engine) as session:
        action = crud.get_author_action(
            session, tenant=principal.tenant, author_id=author_id, action_id=action_id
        )
        if action is None:
            raise ApiError(404, f"action '{action_id}' of author '{author_id}' not found")
        if action.action == ActionKind.REVERSE.value:
            raise ApiError(409, f"action '{action_id}' is a reversal: there is nothing to appeal")
        if action.reversed_by is not None:
            raise ApiError(
                409, f"action '{action_id}' was already reversed (by '{action.reversed_by}')"
            )
        standing = [
            s for s in crud.strikes_by_id(session, ids=action.strike_ids) if s.overturned_at is None
        ]
        if not standing:
            raise ApiError(409, f"action '{action_id}' rests on no standing strike")
        post_id = standing[0].post_id  # the latest strike the action counted
        open_appeal = crud.open_appeal_for(session, post_id=post_id)
        if open_appeal is not None:
            raise ApiError(
                409, f"post '{post_id}' already has an open appeal ('{open_appeal.review_id}')"
            )
        decision = crud.latest_decision(session, post_id=post_id)
        verdict = crud.latest_automated_verdict(session, post_id=post_id)
        appeals = crud.count_appeals(session, post_id=post_id)
    if verdict is not None:
        shown = _verdict_event(verdict)
    elif decision is not None:
        shown = _decision_as_verdict(decision, state.settings.models.policy_version)
    else:  # a strike always rests on a verdict or a decision
        raise ApiError(409, f"post '{post_id}' has no recorded verdict to review")
    # A human removal is appealed as any decision; an automated one names the removing verdict.
    appealed = decision.event_id if decision is not None else standing[0].cause_event_id
    return ReviewRequested(
        review_id=review_id_for(post_id, appeals + 1),
        post_id=post_id,
        reason=f"appeal of action {action.action} ({action_id}): {reason}",
        priority=ReviewPriority.HIGH,
        verdict=shown,
        appeal_of=appealed,
    )


@router.post(
    "/authors/{author_id}/actions/{action_id}/appeal",
    status_code=202,
    response_model=AppealAccepted,
    summary="Appeal an action taken on an author",
    responses={
        **SUBMIT_AUTH_ERRORS,
        404: {"description": "no such action of this author in the key's tenant"},
        409: {"description": "a reversal, already reversed, or its post has an open appeal"},
        422: {"description": "the reason is missing or longer than 2,000 characters"},
        **UNAVAILABLE,
    },
)
async def appeal_action(
    author_id: str, action_id: str, body: AppealCreate, request: Request, principal: SubmitKey
) -> Response:
    """Open a high-priority appeal review of the post whose strike the action counted last
    (202). A moderator's `allow` overturns the strike, and the recorder reverses every action
    that no longer holds; `remove` leaves them standing."""
    state: ApiState = request.app.state.api
    appeal = await run_in_threadpool(
        _action_appeal, state, principal, author_id, action_id, body.reason
    )
    topic = state.settings.kafka.topics.review_requested
    try:
        await state.publisher.publish(topic, appeal.key(), appeal.model_dump_json().encode())
    except PublishUnavailable as error:
        state.metrics.unavailable.labels("appeal", "kafka").inc()
        log.warning("action appeal answered 503: %s", error)
        return unavailable_response(error.reason)
    await run_in_threadpool(_record_appeal, state.engine, appeal, principal.actor)
    accepted = AppealAccepted(
        review_id=appeal.review_id, post_id=appeal.post_id, appeal_of=str(appeal.appeal_of)
    )
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202)
