"""User reports: filing (deduplicated, rate limited, weighted), their effect on reviews, and
their resolution (the outbox of `ReportResolved`).

Filing is two steps so that nothing is recorded half-way (`routes/reports.py`):
`plan_report` reads what a report would do (404, an existing report, the reporter's limit, its
weight, a priority raise, a reopen); the route publishes the reopen's `ReviewRequested` when there
is one (503 when Kafka does not take it: nothing recorded); `file_report` then records the report,
the priority raise and the reopened review in one transaction, audited.

A reporter's weight is (upheld + 1) / (resolved + 2) over its resolved reports in the tenant: 0.5
with no history, towards 1 for a reporter whose reports are upheld, towards 0 for one whose
reports are rejected. A post's open reports are summed by weight: reaching
`reports.priority_threshold` raises its open review's priority one step (once per crossing),
reaching `reports.reopen_threshold` on an allowed post with no open review reopens it for review
as `review-<post>-report-<n>` (the open review then stops further reopens until it is
decided). Once the review is decided, the recorder resolves the reports filed before the
decision (`report_outcomes.resolve_reports`), which resets the sum: new reports can reopen again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

import sqlalchemy as sa
from sqlmodel import Session, col, select

from moderation.db.crud._sql import REVIEWS, _utc
from moderation.db.crud.audit import AUDIT_ENTITY_REVIEW, append_audit
from moderation.db.crud.projections import record_events
from moderation.db.crud.strikes import new_id, removing_event
from moderation.db.models import Post, PostStatus, Report, Review, ReviewStatus
from moderation.events import ReportOutcome, ReviewPriority, ReviewRequested, report_review_id
from moderation.taxonomy import Category

REPORTS = Report.__table__  # type: ignore[attr-defined]
AUDIT_ENTITY_REPORT = "report"
_NEXT_PRIORITY = {
    ReviewPriority.LOW.value: ReviewPriority.NORMAL.value,
    ReviewPriority.NORMAL.value: ReviewPriority.HIGH.value,
    ReviewPriority.HIGH.value: ReviewPriority.URGENT.value,
}


class ReportPlan(NamedTuple):
    """What filing a report would do (`plan_report`)."""

    post: Post | None  # None: no such post
    existing: Report | None  # the same reporter already reported this post
    retry_after: float  # > 0: over the reporter's limit, seconds until a slot frees
    weight: float
    open_weight: float  # the post's open reports before this one
    open_review: Review | None
    removed_by: str | None  # the post is removed already: the report is upheld at once
    reopen_review_id: str | None  # the review a reopen would create
    reasons: list[str]  # the open reports' reasons, this one's included


def reporter_weight(session: Session, *, tenant: str, reporter_id: str) -> float:
    """(upheld + 1) / (resolved + 2) over the reporter's resolved reports in `tenant`."""
    upheld = sa.func.sum(sa.case((REPORTS.c.outcome == ReportOutcome.UPHELD.value, 1), else_=0))
    row = session.execute(
        sa.select(sa.func.count(), upheld).where(
            REPORTS.c.tenant == tenant,
            REPORTS.c.reporter_id == reporter_id,
            REPORTS.c.resolved_at.is_not(None),
        )
    ).one()
    resolved, upheld_count = int(row[0]), int(row[1] or 0)
    return (upheld_count + 1) / (resolved + 2)


def find_report(session: Session, *, tenant: str, reporter_id: str, post_id: str) -> Report | None:
    """The reporter's report of the post, or None."""
    return session.exec(
        select(Report).where(
            Report.tenant == tenant, Report.reporter_id == reporter_id, Report.post_id == post_id
        )
    ).first()


def _limit_wait(
    session: Session, *, tenant: str, reporter_id: str, now: datetime, limit: int, window: float
) -> float:
    """Seconds until the reporter may file again (0.0: now), over a sliding window."""
    since = _utc(now) - timedelta(seconds=window)
    recent = session.exec(
        select(Report.created_at)
        .where(
            Report.tenant == tenant,
            Report.reporter_id == reporter_id,
            col(Report.created_at) > since,
        )
        .order_by(col(Report.created_at).desc())
        .limit(limit)
    ).all()
    if len(recent) < limit:
        return 0.0
    # The oldest of the last `limit` leaves the window first.
    return max(0.0, (_utc(recent[-1]) - since).total_seconds())


def _open_reports(session: Session, post_id: str) -> list[Report]:
    return list(
        session.exec(
            select(Report)
            .where(Report.post_id == post_id, col(Report.resolved_at).is_(None))
            .order_by(col(Report.created_at))
        ).all()
    )


def open_review_for_post(session: Session, *, post_id: str) -> Review | None:
    """The post's undecided review (the most recent), or None."""
    return session.exec(
        select(Review)
        .where(Review.post_id == post_id, Review.status != ReviewStatus.DECIDED)
        .order_by(col(Review.created_at).desc(), col(Review.id).desc())
    ).first()


def _count_report_reviews(session: Session, post_id: str) -> int:
    pattern = f"review-{post_id}-report-%"
    statement = (
        select(sa.func.count())
        .select_from(Review)
        .where(Review.post_id == post_id, col(Review.review_id).like(pattern))
    )
    return int(session.exec(statement).one())


def plan_report(
    session: Session,
    *,
    tenant: str,
    reporter_id: str,
    post_id: str,
    reason: Category,
    now: datetime,
    limit: int,
    window_seconds: float,
    reopen_threshold: float,
) -> ReportPlan:
    """What filing this report would do; reads only (the route decides, `file_report` writes).

    `tenant` is the post's: the caller checks that the key sees it.
    """
    post = session.get(Post, post_id)
    empty = ReportPlan(None, None, 0.0, 0.0, 0.0, None, None, None, [])
    if post is None:
        return empty
    existing = find_report(session, tenant=tenant, reporter_id=reporter_id, post_id=post_id)
    if existing is not None:
        return empty._replace(post=post, existing=existing)
    wait = _limit_wait(
        session,
        tenant=tenant,
        reporter_id=reporter_id,
        now=now,
        limit=limit,
        window=window_seconds,
    )
    if wait > 0:
        return empty._replace(post=post, retry_after=wait)
    weight = reporter_weight(session, tenant=tenant, reporter_id=reporter_id)
    removed_by = removing_event(session, post_id=post_id)
    open_reports = _open_reports(session, post_id)
    open_weight = sum(report.weight for report in open_reports)
    reasons = sorted({report.reason for report in open_reports} | {reason.value})
    open_review = open_review_for_post(session, post_id=post_id)
    reopen: str | None = None
    reviewable = post.status in (PostStatus.ALLOWED, PostStatus.DECIDED)
    if (
        removed_by is None
        and open_review is None
        and reviewable
        and open_weight + weight >= reopen_threshold
    ):
        reopen = report_review_id(post_id, _count_report_reviews(session, post_id) + 1)
    return ReportPlan(
        post, None, 0.0, weight, open_weight, open_review, removed_by, reopen, reasons
    )


def file_report(
    session: Session,
    *,
    report: Report,
    actor: str,
    priority_threshold: float,
    reopen: ReviewRequested | None,
    removed_by: str | None,
) -> tuple[Report, bool]:
    """Record the report; raise the post's open review's priority when the open reports cross
    `priority_threshold`; record the `reopen` review (already published); all in one
    transaction, audited (`report.file`, `review.reported`, `review.reopen`).

    A report of a post already removed is upheld at once (`removed_by`: the removing event).

    Returns:
        The report and whether it is new (False: the reporter's earlier report of the post).
    """
    existing = find_report(
        session, tenant=report.tenant, reporter_id=report.reporter_id, post_id=report.post_id
    )
    if existing is not None:
        session.rollback()
        return existing, False
    now = _utc(report.created_at)
    before = sum(r.weight for r in _open_reports(session, report.post_id))
    if removed_by is not None:
        report.resolved_at = now
        report.outcome = ReportOutcome.UPHELD.value
        report.decision_event_id = removed_by
        report.resolution_event_id = new_id()
    session.add(report)
    try:
        session.flush()  # the unique key: a racing duplicate fails here, before anything else
    except sa.exc.IntegrityError:
        session.rollback()
        raced = find_report(
            session, tenant=report.tenant, reporter_id=report.reporter_id, post_id=report.post_id
        )
        if raced is None:
            raise
        return raced, False
    append_audit(
        session,
        actor=actor,
        action="report.file",
        entity=AUDIT_ENTITY_REPORT,
        entity_id=report.id,
        before=None,
        after={
            "post_id": report.post_id,
            "reporter_id": report.reporter_id,
            "reason": report.reason,
            "weight": report.weight,
            "open_weight": before + (report.weight if removed_by is None else 0.0),
            "outcome": report.outcome,
        },
        tenant=report.tenant,
        at=now,
        commit=False,
    )
    after = before + report.weight
    review = open_review_for_post(session, post_id=report.post_id)
    if removed_by is None and review is not None and before < priority_threshold <= after:
        _raise_priority(session, review=review, report=report, weight=after, actor=actor)
    if reopen is not None:
        append_audit(
            session,
            actor=actor,
            action="review.reopen",
            entity=AUDIT_ENTITY_REVIEW,
            entity_id=reopen.review_id,
            before=None,
            after={
                "post_id": reopen.post_id,
                "reason": reopen.reason,
                "priority": reopen.priority.value,
                "open_report_weight": after,
                "report_id": report.id,
            },
            tenant=report.tenant,
            at=now,
            commit=False,
        )
        record_events(session, events=[reopen])  # commits the whole transaction
    else:
        session.commit()
    session.refresh(report)
    return report, True


def _raise_priority(
    session: Session, *, review: Review, report: Report, weight: float, actor: str
) -> None:
    raised = sa.case(_NEXT_PRIORITY, value=REVIEWS.c.priority, else_=ReviewPriority.URGENT.value)
    row = session.execute(
        sa.update(REVIEWS)
        .where(REVIEWS.c.review_id == review.review_id, REVIEWS.c.status != ReviewStatus.DECIDED)
        .values(priority=raised, updated_at=_utc(report.created_at))
        .returning(REVIEWS.c.priority)
    ).first()
    if row is None:
        return
    append_audit(
        session,
        actor=actor,
        action="review.reported",
        entity=AUDIT_ENTITY_REVIEW,
        entity_id=review.review_id,
        before={"priority": review.priority},
        after={
            "priority": str(row.priority),
            "post_id": review.post_id,
            "open_report_weight": weight,
            "report_id": report.id,
        },
        tenant=report.tenant,
        at=report.created_at,
        commit=False,
    )
