"""`metrics_overview`: everything the metrics dashboard plots, in one read."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from moderation.db.crud._tenants import Tenants
from moderation.db.crud.metrics import (
    METRICS_ROW_CAP,
    agreement,
    category_mix,
    decision_mix,
    human_share,
    latency_percentiles,
    metrics_window,
    throughput_buckets,
)
from moderation.db.crud.model_metrics import model_version_metrics, recent_job_runs
from moderation.db.crud.queue_stats import queue_metrics
from moderation.db.crud.review_votes import reviewer_agreement
from moderation.db.schemas import MetricsOverviewPublic, MetricsWindowPublic


def metrics_overview(
    session: Session,
    *,
    now: datetime,
    hours: float,
    bucket_minutes: int,
    row_cap: int = METRICS_ROW_CAP,
    tenants: Tenants = None,
) -> MetricsOverviewPublic:
    """Everything the metrics dashboard plots, for the last `hours` in `bucket_minutes` buckets.

    Posts, verdicts, decisions and reviews count only for `tenants` (None: every tenant); the
    model registry's versions and the job runs are the platform's and shown to every caller.

    Raises:
        ValueError: an invalid window (see `metrics_window`).
    """
    window = metrics_window(now=now, hours=hours, bucket_minutes=bucket_minutes)
    latency, latency_window, sample = latency_percentiles(
        session, window=window, row_cap=row_cap, tenants=tenants
    )
    per_label, total = agreement(session, window=window, tenants=tenants)
    reviewers, reviewers_total = reviewer_agreement(
        session, since=window.since, until=window.end, tenants=tenants
    )
    return MetricsOverviewPublic(
        window=MetricsWindowPublic(
            since=window.since, until=window.until, hours=hours, bucket_minutes=bucket_minutes
        ),
        throughput=throughput_buckets(session, window=window, tenants=tenants),
        latency=latency,
        latency_window=latency_window,
        latency_sample=sample,
        decision_mix=decision_mix(session, window=window, tenants=tenants),
        category_mix=category_mix(session, window=window, tenants=tenants),
        to_humans=human_share(session, window=window, tenants=tenants),
        agreement=per_label,
        agreement_total=total,
        reviewer_agreement=reviewers,
        reviewer_agreement_total=reviewers_total,
        queue=queue_metrics(session, now=now, window=window, row_cap=row_cap, tenants=tenants),
        model_versions=model_version_metrics(session),
        job_runs=recent_job_runs(session),
    )
