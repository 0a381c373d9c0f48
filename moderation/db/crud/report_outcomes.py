"""What became of user reports: their resolution by the post's next human decision, and the
outbox of `ReportResolved` (the recorder publishes after commit).

Apart from `reports` (filing) because the recorder's projection calls `resolve_reports` in the
transaction that records a decision, and filing itself records through the projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from moderation.db.crud._sql import _chunks, _utc
from moderation.db.crud.strikes import _latest_decisions, new_id
from moderation.db.models import Report
from moderation.events import ReportOutcome, ReportResolved
from moderation.taxonomy import Category, Decision

REPORTS = Report.__table__  # type: ignore[attr-defined]


def resolve_reports(session: Session, *, post_ids: Sequence[str], now: datetime) -> int:
    """Resolve the open reports filed before their post's latest human decision: upheld when it
    removed the post, else rejected (the caller commits). Returns how many were resolved."""
    resolved = 0
    for chunk in _chunks(sorted(set(post_ids))):
        reports = session.exec(
            select(Report).where(
                col(Report.post_id).in_(list(chunk)), col(Report.resolved_at).is_(None)
            )
        ).all()
        if not reports:
            continue
        decisions = _latest_decisions(session, sorted({r.post_id for r in reports}))
        for report in reports:
            decision = decisions.get(report.post_id)
            if decision is None or _utc(report.created_at) > _utc(decision.decided_at):
                continue  # filed after the decision: it waits for the next review
            upheld = decision.decision == Decision.REMOVE.value
            report.outcome = (ReportOutcome.UPHELD if upheld else ReportOutcome.REJECTED).value
            report.resolved_at = _utc(now)
            report.decision_event_id = decision.event_id
            report.resolution_event_id = new_id()
            session.add(report)
            resolved += 1
    return resolved


# --- the outbox of ReportResolved -----------------------------------------------------------


def unpublished_report_resolutions(session: Session, *, limit: int = 500) -> list[Report]:
    """Resolved reports not yet published to Kafka, oldest resolution first."""
    return list(
        session.exec(
            select(Report)
            .where(
                col(Report.resolved_at).is_not(None),
                Report.published == False,  # noqa: E712 - SQL, not Python truthiness
            )
            .order_by(col(Report.resolved_at), col(Report.id))
            .limit(limit)
        ).all()
    )


def mark_reports_published(session: Session, *, ids: Sequence[str]) -> int:
    """Mark report resolutions published (after Kafka acknowledged them); commits."""
    count = 0
    for chunk in _chunks(list(ids)):
        result = session.execute(
            sa.update(REPORTS)
            .where(REPORTS.c.id.in_(list(chunk)), REPORTS.c.published.is_(False))
            .values(published=True)
            .returning(REPORTS.c.id)
        )
        count += len(result.all())
    session.commit()
    return count


def report_resolved_event(report: Report) -> ReportResolved:
    """The `ReportResolved` event of a resolved report (its stable event id)."""
    if report.resolved_at is None or report.outcome is None or report.resolution_event_id is None:
        raise ValueError(f"report {report.id} is not resolved")
    return ReportResolved(
        event_id=report.resolution_event_id,
        occurred_at=_utc(report.resolved_at),
        post_id=report.post_id,
        tenant=report.tenant,
        report_id=report.id,
        reporter_id=report.reporter_id,
        reason=Category(report.reason),
        outcome=ReportOutcome(report.outcome),
        decision_event_id=report.decision_event_id,
    )
