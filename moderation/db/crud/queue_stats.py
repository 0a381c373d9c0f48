"""The review queue in numbers: counts and flow, the oldest review waiting, moderators' load.

`review_stats` serves the review API; `queue_metrics` adds the rest for the metrics dashboard.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

import sqlalchemy as sa
from sqlmodel import Session

from moderation.actors import actor_display
from moderation.db.crud._sql import AUDIT, DECISIONS, REVIEWS, _utc
from moderation.db.crud._tenants import Tenants, post_visible
from moderation.db.crud.api_keys import api_key_names
from moderation.db.crud.audit import AUDIT_ENTITY_REVIEW
from moderation.db.crud.metrics import METRICS_ROW_CAP, MetricsWindow
from moderation.db.crud.reviews import effective_review_status
from moderation.db.models import ReviewStatus
from moderation.db.schemas import ModeratorLoadPublic, QueueMetricsPublic
from moderation.taxonomy import Decision


class ReviewStats(NamedTuple):
    """The queue at a glance, as Bluesky Ozone's queue statistics."""

    pending: int
    escalated: int
    claimed: int
    inbound_24h: int
    actioned_24h: int
    action_rate: float | None
    avg_handling_seconds: float | None


def review_stats(session: Session, *, now: datetime, tenants: Tenants = None) -> ReviewStats:
    """Queue counts at `now` and the last 24 hours' flow.

    `pending`, `escalated` and `claimed` count undecided reviews by effective status (they do
    not overlap). `inbound_24h`: reviews created in the window; `actioned_24h`: reviews decided
    in it; `action_rate`: the share of the window's recorded human decisions that remove;
    `avg_handling_seconds`: mean of decided_at - created_at over the window's decided reviews.
    Rates are None when there is nothing to average. Only reviews and decisions of `tenants`'
    posts count (None: every tenant).
    """
    now = _utc(now)
    since = now - timedelta(hours=24)
    status = effective_review_status(now)
    visible = post_visible(REVIEWS.c.post_id, tenants)
    counts = dict(
        session.execute(
            sa.select(status, sa.func.count())
            .where(REVIEWS.c.status != ReviewStatus.DECIDED, *visible)
            .group_by(status)
        ).all()
    )
    inbound = session.execute(
        sa.select(sa.func.count())
        .select_from(REVIEWS)
        .where(REVIEWS.c.created_at >= since, *visible)
    ).scalar_one()
    handled = session.execute(
        sa.select(REVIEWS.c.created_at, REVIEWS.c.decided_at).where(
            REVIEWS.c.status == ReviewStatus.DECIDED, REVIEWS.c.decided_at >= since, *visible
        )
    ).all()
    decided, removed = session.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(
                sa.func.sum(sa.case((DECISIONS.c.decision == Decision.REMOVE.value, 1))),
                0,
            ),
        ).where(DECISIONS.c.decided_at >= since, *post_visible(DECISIONS.c.post_id, tenants))
    ).one()
    # Times come back aware from the column type: subtract in Python, portable across backends.
    durations = [
        (_utc(decided_at) - _utc(created_at)).total_seconds() for created_at, decided_at in handled
    ]
    return ReviewStats(
        pending=int(counts.get(ReviewStatus.PENDING.value, 0)),
        escalated=int(counts.get(ReviewStatus.ESCALATED.value, 0)),
        claimed=int(counts.get(ReviewStatus.CLAIMED.value, 0)),
        inbound_24h=int(inbound),
        actioned_24h=len(handled),
        action_rate=round(int(removed) / int(decided), 4) if decided else None,
        avg_handling_seconds=round(sum(durations) / len(durations), 3) if durations else None,
    )


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def moderator_load(
    session: Session,
    *,
    window: MetricsWindow,
    row_cap: int = METRICS_ROW_CAP,
    tenants: Tenants = None,
) -> list[ModeratorLoadPublic]:
    """Per moderator, the reviews decided in the window (the newest `row_cap`): how many, mean
    handling (their first claim of the review to the decision) and mean time to decision."""
    decided = sa.and_(
        REVIEWS.c.status == ReviewStatus.DECIDED,
        REVIEWS.c.decided_by.is_not(None),
        window.covers(REVIEWS.c.decided_at),
        *post_visible(REVIEWS.c.post_id, tenants),
    )
    claims = (
        sa.select(
            AUDIT.c.entity_id.label("review_id"),
            AUDIT.c.actor.label("moderator"),
            sa.func.min(AUDIT.c.at).label("claimed_at"),
        )
        .where(
            AUDIT.c.action == "review.claim",
            AUDIT.c.entity == AUDIT_ENTITY_REVIEW,
            AUDIT.c.entity_id.in_(sa.select(REVIEWS.c.review_id).where(decided)),
        )
        .group_by(AUDIT.c.entity_id, AUDIT.c.actor)
        .subquery()
    )
    rows = session.execute(
        sa.select(
            REVIEWS.c.decided_by, REVIEWS.c.created_at, REVIEWS.c.decided_at, claims.c.claimed_at
        )
        .select_from(
            REVIEWS.outerjoin(
                claims,
                sa.and_(
                    claims.c.review_id == REVIEWS.c.review_id,
                    claims.c.moderator == REVIEWS.c.decided_by,
                ),
            )
        )
        .where(decided)
        .order_by(REVIEWS.c.decided_at.desc(), REVIEWS.c.id.desc())
        .limit(row_cap)
    ).all()
    handling: dict[str, list[float]] = {}
    waiting: dict[str, list[float]] = {}
    for moderator, created_at, decided_at, claimed_at in rows:
        done = _utc(decided_at)
        waiting.setdefault(moderator, []).append((done - _utc(created_at)).total_seconds())
        handled = handling.setdefault(moderator, [])
        if claimed_at is not None and _utc(claimed_at) <= done:
            handled.append((done - _utc(claimed_at)).total_seconds())
    names = api_key_names(session, actors=waiting)
    load = [
        ModeratorLoadPublic(
            moderator=moderator,
            moderator_display=actor_display(moderator, names),
            decided=len(waits),
            mean_handling_seconds=_mean(handling[moderator]),
            mean_time_to_decision_seconds=_mean(waits),
        )
        for moderator, waits in waiting.items()
    ]
    return sorted(load, key=lambda row: (-row.decided, row.moderator))


def oldest_waiting_review(
    session: Session, *, now: datetime, tenants: Tenants = None
) -> datetime | None:
    """When the oldest review waiting for a moderator (pending or escalated) was created."""
    status = effective_review_status(_utc(now))
    oldest = session.execute(
        sa.select(sa.func.min(REVIEWS.c.created_at)).where(
            status.in_([ReviewStatus.PENDING.value, ReviewStatus.ESCALATED.value]),
            *post_visible(REVIEWS.c.post_id, tenants),
        )
    ).scalar_one()
    return _utc(oldest) if oldest is not None else None


def queue_metrics(
    session: Session,
    *,
    now: datetime,
    window: MetricsWindow,
    row_cap: int = METRICS_ROW_CAP,
    tenants: Tenants = None,
) -> QueueMetricsPublic:
    """`review_stats` at `now`, the oldest review waiting for a moderator, and the window's
    load per moderator (all of `tenants`' posts; None: every tenant)."""
    now = _utc(now)
    oldest_at = oldest_waiting_review(session, now=now, tenants=tenants)
    return QueueMetricsPublic(
        **review_stats(session, now=now, tenants=tenants)._asdict(),
        oldest_pending_at=oldest_at,
        oldest_pending_age_seconds=(
            round(max(0.0, (now - oldest_at).total_seconds()), 3) if oldest_at else None
        ),
        moderators=moderator_load(session, window=window, row_cap=row_cap, tenants=tenants),
    )
