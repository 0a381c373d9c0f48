"""Appeals: a submitter disputes a human decision, which reopens the post for a new review."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session, col, select

from moderation.db.crud._sql import _verdict_summary
from moderation.db.crud.audit import AUDIT_ENTITY_REVIEW, append_audit, post_tenant
from moderation.db.crud.projections import record_review_requested
from moderation.db.crud.reads import latest_automated_verdict
from moderation.db.models import HumanDecision, Review, ReviewStatus
from moderation.events import ReviewRequested


def latest_decision(session: Session, *, post_id: str) -> HumanDecision | None:
    """The post's most recent human decision, or None."""
    return session.exec(
        select(HumanDecision)
        .where(HumanDecision.post_id == post_id)
        .order_by(col(HumanDecision.decided_at).desc(), col(HumanDecision.id).desc())
    ).first()


def open_appeal_for(session: Session, *, post_id: str) -> Review | None:
    """The post's undecided appeal review, or None."""
    return session.exec(
        select(Review).where(
            Review.post_id == post_id,
            col(Review.appeal_of).is_not(None),
            Review.status != ReviewStatus.DECIDED,
        )
    ).first()


def count_appeals(session: Session, *, post_id: str) -> int:
    """How many appeal reviews the post has had (the next is `review_id_for(post_id, n + 1)`)."""
    statement = (
        select(sa.func.count())
        .select_from(Review)
        .where(Review.post_id == post_id, col(Review.appeal_of).is_not(None))
    )
    return int(session.exec(statement).one())


def record_appeal(session: Session, *, event: ReviewRequested, actor: str) -> bool:
    """Record an appeal's review at once (the recorder projects the same event later) and audit
    it as `review.appeal`, naming the decision appealed.

    Returns:
        Whether the review was new.
    """
    appealed = (
        session.exec(select(HumanDecision).where(HumanDecision.event_id == event.appeal_of)).first()
        if event.appeal_of is not None
        else None
    )
    new = record_review_requested(session, event=event)
    verdict = latest_automated_verdict(session, post_id=event.post_id)
    append_audit(
        session,
        actor=actor,
        action="review.appeal",
        entity=AUDIT_ENTITY_REVIEW,
        entity_id=event.review_id,
        before=(
            {
                "decision_event_id": appealed.event_id,
                "review_id": appealed.review_id,
                "label": appealed.label,
                "decision": appealed.decision,
                "moderator": appealed.moderator_id,
            }
            if appealed is not None
            else None
        ),
        after={
            "post_id": event.post_id,
            "status": ReviewStatus.PENDING.value,
            "priority": event.priority.value,
            "reason": event.reason,
            "appeal_of": event.appeal_of,
            "automated_verdict": _verdict_summary(verdict),
            "policy_version": verdict.policy_version if verdict is not None else None,
        },
        tenant=post_tenant(session, post_id=event.post_id),
        at=event.occurred_at,
        commit=False,
    )
    session.commit()
    return new
