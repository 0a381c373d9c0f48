"""What the metrics dashboard plots about the flow of posts, over a window of time buckets.

Throughput, latency, the mix of decisions and categories, the share sent to humans, and how often
the automated stages agreed with the humans.

Counts are GROUP BYs over time buckets aligned to the epoch (hourly buckets start on the hour),
computed in a subquery so the grouped expression is a plain column (PostgreSQL with server-side
parameters would not match two copies of an expression holding a parameter). Percentiles and
mean durations are computed in Python on at most `row_cap` newest rows of the window:
`percentile_cont` and timestamp arithmetic have no portable SQL across PostgreSQL and SQLite.
Every function counts only the posts of `tenants` (and their verdicts and decisions); None
counts every tenant and adds no condition.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlmodel import Session

from moderation.db.crud._sql import (
    _AUTOMATED_STAGES,
    DECISIONS,
    POSTS,
    REVIEWS,
    VERDICTS,
    _dialect,
    _utc,
)
from moderation.db.crud._tenants import Tenants, post_visible, tenant_in
from moderation.db.schemas import (
    AgreementPublic,
    CategoryCountPublic,
    DecisionCountPublic,
    HumanSharePublic,
    LatencyMeasure,
    LatencyPercentilesPublic,
    LatencySamplePublic,
    ThroughputBucketPublic,
)
from moderation.taxonomy import Category, Decision, Stage

METRICS_ROW_CAP = 50_000
METRICS_MAX_BUCKETS = 2_000


HUMAN_STAGE = Stage.HUMAN.value


_STAGE_ORDER = (Stage.MODEL.value, Stage.AGENT.value)
_MEASURES: tuple[LatencyMeasure, ...] = ("verdict", "end_to_end")


class MetricsWindow(NamedTuple):
    """Whole buckets of `bucket_seconds`, numbered from the epoch, from `first` to `last`."""

    hours: float
    bucket_seconds: int
    first: int
    last: int
    until: datetime

    def start_of(self, bucket: int) -> datetime:
        """When bucket number `bucket` starts."""
        return datetime.fromtimestamp(bucket * self.bucket_seconds, UTC)

    @property
    def since(self) -> datetime:
        return self.start_of(self.first)

    @property
    def end(self) -> datetime:
        """The end of the last bucket (rows from `since` up to here are in the window)."""
        return self.start_of(self.last + 1)

    def bucket_of(self, moment: datetime) -> int:
        return int(_utc(moment).timestamp() // self.bucket_seconds)

    def covers(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        return sa.and_(column >= self.since, column < self.end)


def metrics_window(*, now: datetime, hours: float, bucket_minutes: int) -> MetricsWindow:
    """The buckets covering the last `hours` up to `now` (the first one may start earlier).

    Raises:
        ValueError: a window or bucket that is not positive, or more than `METRICS_MAX_BUCKETS`
            buckets.
    """
    if hours <= 0 or bucket_minutes < 1:
        raise ValueError("hours and bucket_minutes must be positive")
    bucket_seconds = bucket_minutes * 60
    now = _utc(now)
    first = int((now - timedelta(hours=hours)).timestamp() // bucket_seconds)
    last = int(now.timestamp() // bucket_seconds)
    if last - first + 1 > METRICS_MAX_BUCKETS:
        raise ValueError(
            f"{last - first + 1} buckets of {bucket_minutes} min in {hours:g} h: at most "
            f"{METRICS_MAX_BUCKETS}; choose larger buckets"
        )
    return MetricsWindow(hours, bucket_seconds, first, last, now)


def _bucket_index(
    session: Session, column: sa.ColumnElement[Any], bucket_seconds: int
) -> sa.ColumnElement[int]:
    """SQL: the number of the `bucket_seconds` bucket since the epoch that `column` falls in."""
    if _dialect(session) == "postgresql":
        epoch = sa.extract("epoch", column)
        return sa.cast(sa.func.floor(epoch / bucket_seconds), sa.BigInteger)
    # SQLite keeps UTC text; strftime('%s') reads it as epoch seconds, and integer division of
    # these positive numbers floors.
    return sa.cast(sa.func.strftime("%s", column), sa.Integer) // bucket_seconds


def _bucket_counts(
    session: Session,
    window: MetricsWindow,
    column: sa.ColumnElement[Any],
    *where: sa.ColumnElement[bool],
    by: sa.ColumnElement[Any] | None = None,
) -> dict[tuple[int, Any], int]:
    """(bucket, value of `by` or None) → rows of the window matching `where`."""
    inner = sa.select(
        _bucket_index(session, column, window.bucket_seconds).label("bucket"),
        (by if by is not None else sa.null()).label("value"),
    ).where(window.covers(column), *where)
    counted = inner.subquery()
    rows = session.execute(
        sa.select(counted.c.bucket, counted.c.value, sa.func.count()).group_by(
            counted.c.bucket, counted.c.value
        )
    ).all()
    return {(int(bucket), value): int(count) for bucket, value, count in rows}


def _first_review_exists() -> sa.Exists:
    # Appeals are reviews the submitter asked for, not ones the models sent.
    return sa.exists().where(REVIEWS.c.post_id == POSTS.c.id, REVIEWS.c.appeal_of.is_(None))


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def throughput_buckets(
    session: Session, *, window: MetricsWindow, tenants: Tenants = None
) -> list[ThroughputBucketPublic]:
    """Posts, automated verdicts by stage, human decisions and posts sent to humans per bucket
    (every bucket of the window, oldest first, zeros included)."""
    own_posts = tenant_in(POSTS.c.tenant, tenants)
    posts = _bucket_counts(session, window, POSTS.c.submitted_at, *own_posts)
    sent = _bucket_counts(session, window, POSTS.c.submitted_at, _first_review_exists(), *own_posts)
    decisions = _bucket_counts(
        session, window, DECISIONS.c.decided_at, *post_visible(DECISIONS.c.post_id, tenants)
    )
    verdicts = _bucket_counts(
        session,
        window,
        VERDICTS.c.occurred_at,
        VERDICTS.c.stage.in_(_AUTOMATED_STAGES),
        *post_visible(VERDICTS.c.post_id, tenants),
        by=VERDICTS.c.stage,
    )
    buckets = []
    for bucket in range(window.first, window.last + 1):
        submitted = posts.get((bucket, None), 0)
        to_humans = sent.get((bucket, None), 0)
        buckets.append(
            ThroughputBucketPublic(
                start=window.start_of(bucket),
                posts=submitted,
                verdicts={stage: verdicts.get((bucket, stage), 0) for stage in _STAGE_ORDER},
                decisions=decisions.get((bucket, None), 0),
                sent_to_humans=to_humans,
                share_to_humans=_share(to_humans, submitted),
            )
        )
    return buckets


def _percentiles(
    start: datetime | None, stage: str, measure: LatencyMeasure, values: list[float]
) -> LatencyPercentilesPublic:
    import numpy as np  # here: only the metrics read needs it, not the API's hot path

    p50, p95, p99 = np.percentile(np.asarray(values, dtype=float), [50, 95, 99])
    return LatencyPercentilesPublic(
        start=start,
        stage=stage,
        measure=measure,
        count=len(values),
        p50_ms=round(float(p50), 3),
        p95_ms=round(float(p95), 3),
        p99_ms=round(float(p99), 3),
    )


def latency_percentiles(
    session: Session,
    *,
    window: MetricsWindow,
    row_cap: int = METRICS_ROW_CAP,
    tenants: Tenants = None,
) -> tuple[list[LatencyPercentilesPublic], list[LatencyPercentilesPublic], LatencySamplePublic]:
    """p50/p95/p99 per bucket and for the whole window, per automated stage and measure.

    `verdict` is the verdict's `latency_ms` (submission to verdict, measured by the worker);
    `end_to_end` is submission to the verdict's row in the read model (`recorded_at`), which adds
    the verdicts topic and the recorder. Read from the newest `row_cap` verdicts of the window.

    Returns:
        (per bucket, whole window, which rows were read).
    """
    rows = session.execute(
        sa.select(
            VERDICTS.c.stage,
            VERDICTS.c.occurred_at,
            VERDICTS.c.recorded_at,
            VERDICTS.c.latency_ms,
            POSTS.c.submitted_at,
        )
        .select_from(VERDICTS.outerjoin(POSTS, POSTS.c.id == VERDICTS.c.post_id))
        .where(
            window.covers(VERDICTS.c.occurred_at),
            VERDICTS.c.stage.in_(_AUTOMATED_STAGES),
            *tenant_in(POSTS.c.tenant, tenants),
        )
        .order_by(VERDICTS.c.occurred_at.desc(), VERDICTS.c.id.desc())
        .limit(row_cap + 1)
    ).all()
    truncated = len(rows) > row_cap
    rows = rows[:row_cap]
    per_bucket: dict[tuple[int, str, LatencyMeasure], list[float]] = {}
    whole: dict[tuple[str, LatencyMeasure], list[float]] = {}
    for stage, occurred_at, recorded_at, latency, submitted_at in rows:
        measured: list[tuple[LatencyMeasure, float]] = [("verdict", float(latency))]
        if submitted_at is not None:
            # Clocks of different hosts may disagree by a little: never a negative duration.
            seconds = (_utc(recorded_at) - _utc(submitted_at)).total_seconds()
            measured.append(("end_to_end", max(0.0, seconds * 1000)))
        bucket = window.bucket_of(occurred_at)
        for measure, value in measured:
            per_bucket.setdefault((bucket, stage, measure), []).append(value)
            whole.setdefault((stage, measure), []).append(value)

    def order(stage: str, measure: LatencyMeasure) -> tuple[int, int]:
        return _rank(_STAGE_ORDER, stage), _MEASURES.index(measure)

    buckets = [
        _percentiles(window.start_of(bucket), stage, measure, per_bucket[bucket, stage, measure])
        for bucket, stage, measure in sorted(per_bucket, key=lambda k: (k[0], *order(*k[1:])))
    ]
    overall = [
        _percentiles(None, stage, measure, whole[stage, measure])
        for stage, measure in sorted(whole, key=lambda k: order(*k))
    ]
    sample = LatencySamplePublic(
        rows=len(rows),
        cap=row_cap,
        truncated=truncated,
        oldest=rows[-1][1] if rows else None,
    )
    return buckets, overall, sample


def _automated_in(window: MetricsWindow, tenants: Tenants) -> list[sa.ColumnElement[bool]]:
    return [
        window.covers(VERDICTS.c.occurred_at),
        VERDICTS.c.stage.in_(_AUTOMATED_STAGES),
        *post_visible(VERDICTS.c.post_id, tenants),
    ]


def _decided_in(window: MetricsWindow, tenants: Tenants) -> list[sa.ColumnElement[bool]]:
    return [window.covers(DECISIONS.c.decided_at), *post_visible(DECISIONS.c.post_id, tenants)]


def decision_mix(
    session: Session, *, window: MetricsWindow, tenants: Tenants = None
) -> list[DecisionCountPublic]:
    """Automated verdicts by stage and decision, then human decisions (stage `human`)."""
    verdicts = session.execute(
        sa.select(VERDICTS.c.stage, VERDICTS.c.decision, sa.func.count())
        .where(*_automated_in(window, tenants))
        .group_by(VERDICTS.c.stage, VERDICTS.c.decision)
    ).all()
    humans = session.execute(
        sa.select(DECISIONS.c.decision, sa.func.count())
        .where(*_decided_in(window, tenants))
        .group_by(DECISIONS.c.decision)
    ).all()
    rows = [(stage, decision, int(count)) for stage, decision, count in verdicts]
    rows += [(HUMAN_STAGE, decision, int(count)) for decision, count in humans]
    decisions = [d.value for d in Decision]
    stages = [*_STAGE_ORDER, HUMAN_STAGE]
    rows.sort(key=lambda row: (_rank(stages, row[0]), _rank(decisions, row[1]), row[1]))
    return [DecisionCountPublic(stage=s, decision=d, count=c) for s, d, c in rows]


def category_mix(
    session: Session, *, window: MetricsWindow, tenants: Tenants = None
) -> list[CategoryCountPublic]:
    """Automated verdicts by stage and primary category, then the human labels."""
    verdicts = session.execute(
        sa.select(VERDICTS.c.stage, VERDICTS.c.primary_category, sa.func.count())
        .where(*_automated_in(window, tenants))
        .group_by(VERDICTS.c.stage, VERDICTS.c.primary_category)
    ).all()
    humans = session.execute(
        sa.select(DECISIONS.c.label, sa.func.count())
        .where(*_decided_in(window, tenants))
        .group_by(DECISIONS.c.label)
    ).all()
    rows = [(stage, category, int(count)) for stage, category, count in verdicts]
    rows += [(HUMAN_STAGE, label, int(count)) for label, count in humans]
    categories = [c.value for c in Category]
    stages = [*_STAGE_ORDER, HUMAN_STAGE]
    rows.sort(key=lambda row: (_rank(stages, row[0]), _rank(categories, row[1]), row[1]))
    return [CategoryCountPublic(stage=s, category=c, count=n) for s, c, n in rows]


def _rank(order: Sequence[str], value: str) -> int:
    return order.index(value) if value in order else len(order)


def human_share(
    session: Session, *, window: MetricsWindow, tenants: Tenants = None
) -> HumanSharePublic:
    """Posts submitted in the window, and how many of them have a (non-appeal) review."""
    posts, sent = session.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.case((_first_review_exists(), 1), else_=0)), 0),
        ).where(window.covers(POSTS.c.submitted_at), *tenant_in(POSTS.c.tenant, tenants))
    ).one()
    return HumanSharePublic(
        posts=int(posts), sent_to_humans=int(sent), share=_share(int(sent), int(posts))
    )


def _latest_category(stage: str) -> sa.ScalarSelect[Any]:
    """SQL: the primary category of the decided post's latest `stage` verdict."""
    verdict = VERDICTS.alias(f"{stage}_verdict")
    return (
        sa.select(verdict.c.primary_category)
        .where(verdict.c.post_id == DECISIONS.c.post_id, verdict.c.stage == stage)
        .order_by(verdict.c.occurred_at.desc(), verdict.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def agreement(
    session: Session, *, window: MetricsWindow, tenants: Tenants = None
) -> tuple[list[AgreementPublic], AgreementPublic]:
    """For the window's human decisions: did the model (and the agent) pick the human's label?

    Returns:
        (per label in taxonomy order, all labels together).
    """
    inner = (
        sa.select(
            DECISIONS.c.label.label("label"),
            _latest_category(Stage.MODEL.value).label("model"),
            _latest_category(Stage.AGENT.value).label("agent"),
        )
        .where(*_decided_in(window, tenants))
        .subquery()
    )

    def agreed(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return sa.func.coalesce(sa.func.sum(sa.case((column == inner.c.label, 1), else_=0)), 0)

    rows = session.execute(
        sa.select(
            inner.c.label,
            sa.func.count(),
            sa.func.count(inner.c.model),
            agreed(inner.c.model),
            sa.func.count(inner.c.agent),
            agreed(inner.c.agent),
        ).group_by(inner.c.label)
    ).all()
    counts: dict[str, list[int]] = {
        str(label): [int(n) for n in numbers] for label, *numbers in rows
    }
    categories = [c.value for c in Category]
    labels = sorted(counts, key=lambda label: (_rank(categories, label), label))
    per_label = [_agreement(label, *counts[label]) for label in labels]
    totals = [sum(column) for column in zip(*counts.values(), strict=True)] or [0] * 5
    return per_label, _agreement("all", *totals)


def _agreement(
    label: str, decisions: int, model: int, model_agreed: int, agent: int, agent_agreed: int
) -> AgreementPublic:
    return AgreementPublic(
        label=label,
        decisions=decisions,
        model_compared=model,
        model_agreed=model_agreed,
        model_agreement=_share(model_agreed, model),
        agent_compared=agent,
        agent_agreed=agent_agreed,
        agent_agreement=_share(agent_agreed, agent),
    )
