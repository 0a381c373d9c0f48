"""`POST /v1/reviews/bulk-decision`: one decision for many reviews (scope `moderate`).

The dashboard's "Decide selected" and "all open reviews of this author". Each review goes the
single decision's way (`reviews.decide`), one after another, each in its own transaction: it
is claimed for the caller when unclaimed (or extended when the caller holds it), marked
decided, audited, and its `ReviewDecided` raised to its own workflow. A review someone else
holds is skipped, not taken (an admin decides it, as in the single path); a review whose
workflow cannot be told is reopened and reported as failed. Nothing is decided half-way.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.models import ReviewStatus
from moderation.db.schemas import (
    MAX_BULK_DECISIONS,
    BulkDecisionCreate,
    BulkDecisionOutcome,
    BulkDecisionResult,
    DecisionCreate,
)
from moderation.events import utc_now
from moderation.services.api.deps import ApiState, ModerateKey, StateDep, WorkflowsDep
from moderation.services.api.routes.errors import ApiError
from moderation.services.api.routes.reviews import (
    AUTH_ERRORS,
    _claim,
    _get,
    check_decision,
    decide,
    routing,
)
from moderation.services.api.security import Principal, Scope
from moderation.services.api.workflows import ReviewWorkflows, WorkflowUnavailable

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["reviews"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    404: {"description": "`tenant` names a tenant the key does not see"},
    422: {
        "description": "not exactly one of review_ids and author_id, more than "
        f"{MAX_BULK_DECISIONS} reviews, or an invalid label, decision or note"
    },
}


def _author_reviews(
    engine: Engine, principal: Principal, author_id: str, tenant: str | None
) -> list[str]:
    """The author's open reviews in the tenants the key sees (or in `tenant`), queue order."""
    tenants = principal.tenants
    if tenant is not None:
        if not principal.sees(tenant):
            raise ApiError(404, f"author '{author_id}' not found in tenant '{tenant}'")
        tenants = frozenset({tenant})
    with Session(engine) as session:
        views, total = crud.list_reviews(
            session,
            now=utc_now(),
            author_id=author_id,
            limit=MAX_BULK_DECISIONS,
            tenants=tenants,
        )
    if total > MAX_BULK_DECISIONS:
        raise ApiError(
            422,
            f"author '{author_id}' has {total} open reviews, more than {MAX_BULK_DECISIONS} per "
            "call: decide them by review_ids, a page at a time",
        )
    return [view.review.review_id for view in views]


async def _decide_one(
    review_id: str,
    body: DecisionCreate,
    state: ApiState,
    principal: Principal,
    workflows: ReviewWorkflows,
) -> BulkDecisionOutcome:
    """One review of a bulk decision: claimed if need be, then decided as the single path."""

    def skipped(reason: str) -> BulkDecisionOutcome:
        return BulkDecisionOutcome(review_id=review_id, outcome="skipped", reason=reason)

    def failed(reason: str) -> BulkDecisionOutcome:
        return BulkDecisionOutcome(review_id=review_id, outcome="failed", reason=reason)

    try:
        view = await run_in_threadpool(_get, state.engine, review_id, principal.tenants)
        if view is None:
            return skipped(f"review '{review_id}' not found")
        held_by_other = (
            view.status is ReviewStatus.CLAIMED and view.review.claimed_by != principal.actor
        )
        if not (held_by_other and principal.allows(Scope.ADMIN)):
            # Claims it, extends the caller's own claim, or says who holds it (409) or that it
            # is routed to a moderator group the key is not in (403).
            seconds = state.settings.review.claim_seconds
            view = await run_in_threadpool(
                _claim, state.engine, review_id, principal, seconds, routing(state)
            )
        accepted = await decide(state, workflows, principal, view, body)
    except ApiError as error:
        return skipped(error.message)
    except WorkflowUnavailable as error:
        return failed(f"the review's workflow could not be told ({error.reason}): reopened")
    except Exception as error:
        # `decide` reopened it; the other reviews go on, each its own transaction.
        log.exception("bulk decision of review %s failed", review_id)
        return failed(f"internal error ({type(error).__name__}): not decided")
    if accepted.status != "accepted":
        return BulkDecisionOutcome(
            review_id=review_id,
            outcome="voted",
            reason=f"double review: {accepted.status.replace('_', ' ')}",
            event_id=accepted.event_id,
        )
    return BulkDecisionOutcome(review_id=review_id, outcome="decided", event_id=accepted.event_id)


@router.post(
    "/reviews/bulk-decision",
    response_model=BulkDecisionResult,
    summary="Decide many reviews alike: listed ones, or an author's open reviews",
    responses=RESPONSES,
)
async def bulk_decision(
    body: BulkDecisionCreate,
    state: StateDep,
    principal: ModerateKey,
    workflows: WorkflowsDep,
) -> BulkDecisionResult:
    """Each review decided (claimed for you first when unclaimed) or skipped with the reason.

    Per review, as `POST /v1/reviews/{review_id}/decision`: one audit row `review.decide`, the
    decision raised to its workflow; a review claimed by another moderator is skipped (an
    admin decides it); one whose workflow is unreachable is reopened (`failed`). Reviews the
    key does not see are skipped as not found.
    """
    check_decision(body.label, body.decision)
    if body.review_ids is not None:
        review_ids = body.review_ids
    else:
        assert body.author_id is not None  # the body's validator: exactly one of them
        review_ids = await run_in_threadpool(
            _author_reviews, state.engine, principal, body.author_id, body.tenant
        )
    decision = DecisionCreate(label=body.label, decision=body.decision, note=body.note)
    outcomes = [
        await _decide_one(review_id, decision, state, principal, workflows)
        for review_id in review_ids
    ]
    return BulkDecisionResult(
        outcomes=outcomes,
        decided=sum(item.outcome == "decided" for item in outcomes),
        voted=sum(item.outcome == "voted" for item in outcomes),
        skipped=sum(item.outcome == "skipped" for item in outcomes),
        failed=sum(item.outcome == "failed" for item in outcomes),
    )
