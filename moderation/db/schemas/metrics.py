"""Shapes of `GET /v1/metrics/overview`: what the metrics dashboard plots.

`crud.metrics_overview` computes every number; each field's description says which.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypeAlias

from sqlmodel import Field, SQLModel

from moderation.db.models import ModelStatus
from moderation.db.schemas.reviews import ReviewStatsPublic


class MetricsWindowPublic(SQLModel):
    """The period the overview covers: whole buckets aligned to the epoch, up to `until`."""

    since: datetime = Field(description="start of the first bucket")
    until: datetime = Field(description="when the overview was computed (inside the last bucket)")
    hours: float = Field(description="the window asked for (the first bucket may start earlier)")
    bucket_minutes: int


class ThroughputBucketPublic(SQLModel):
    """What flowed through in one time bucket."""

    start: datetime
    posts: int = Field(description="posts submitted in the bucket (by `submitted_at`)")
    verdicts: dict[str, int] = Field(
        description="automated verdicts by stage (`model`, `agent`), by `occurred_at`"
    )
    decisions: int = Field(description="human decisions, by `decided_at`")
    sent_to_humans: int = Field(description="of the bucket's posts, those given a review")
    share_to_humans: float | None = Field(description="sent_to_humans / posts; null without posts")


LatencyMeasure: TypeAlias = Literal["verdict", "end_to_end"]


class LatencyPercentilesPublic(SQLModel):
    """Percentiles of one latency measure of one stage, in one bucket or the whole window."""

    start: datetime | None = Field(description="the bucket; null for the whole window")
    stage: str
    measure: LatencyMeasure = Field(
        description="verdict: the verdict's `latency_ms` (submission to verdict, measured by the "
        "worker); end_to_end: submission to the verdict being recorded in the read model"
    )
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


class LatencySamplePublic(SQLModel):
    """Which verdicts the percentiles were computed on (the newest `cap` of the window)."""

    rows: int
    cap: int
    truncated: bool = Field(description="the window held more verdicts than `cap`")
    oldest: datetime | None = Field(description="the oldest verdict read")


class DecisionCountPublic(SQLModel):
    """How many verdicts (or human decisions, stage `human`) decided `decision`."""

    stage: str
    decision: str
    count: int


class CategoryCountPublic(SQLModel):
    """How many verdicts put posts in `category` (stage `human`: the moderators' labels)."""

    stage: str
    category: str
    count: int


class HumanSharePublic(SQLModel):
    """Posts of the window and how many of them were sent to human review (appeals excluded)."""

    posts: int
    sent_to_humans: int
    share: float | None


class AgreementPublic(SQLModel):
    """The models' primary category against the human label, for human decisions with `label`
    (`all`: every label). Only posts that reached a human are compared: the hard cases."""

    label: str
    decisions: int
    model_compared: int = Field(description="decisions whose post has a model-stage verdict")
    model_agreed: int
    model_agreement: float | None
    agent_compared: int = Field(description="decisions whose post has an agent-stage verdict")
    agent_agreed: int
    agent_agreement: float | None


class ReviewerAgreementPublic(SQLModel):
    """Two moderators' independent judgements of the same double-reviewed reviews
    (`review.double_review_share`), per review category (`all`: every category).

    A pair is the first moderator's vote and the second judgement (a disagreeing vote, else the
    decision that ended the review), compared on the label (the label implies the decision).
    """

    category: str
    pairs: int = Field(description="double reviews with both judgements in")
    agreed: int = Field(description="pairs with the same label")
    observed_agreement: float | None = Field(description="agreed / pairs")
    kappa: float | None = Field(
        description="Cohen's kappa: agreement beyond chance; None without pairs, or when "
        "both moderators only ever chose one and the same label (chance explains it all)"
    )
    awaiting_second: int = Field(description="first votes still waiting for a second judgement")


class ModeratorLoadPublic(SQLModel):
    """One moderator's decided reviews in the window."""

    moderator: str = Field(description="the API key as `key:<id>` (older rows: a key name)")
    moderator_display: str | None = Field(
        default=None, description="the moderator as people read it: `name (key:<id>)`"
    )
    decided: int
    mean_handling_seconds: float | None = Field(
        description="from the moderator's first claim of the review to the decision (null when "
        "no claim is recorded, e.g. an admin deciding unclaimed)"
    )
    mean_time_to_decision_seconds: float | None = Field(
        description="from the review's creation to the decision (queue wait included)"
    )


class QueueMetricsPublic(ReviewStatsPublic):
    """`GET /v1/reviews/stats`, plus the oldest waiting review and the load per moderator."""

    oldest_pending_at: datetime | None = Field(
        description="creation time of the oldest undecided, unclaimed review (pending or escalated)"
    )
    oldest_pending_age_seconds: float | None
    moderators: list[ModeratorLoadPublic] = Field(description="most decisions first")


class ModelVersionMetricsPublic(SQLModel):
    """A registered model version and the scores found in its `metrics` (null when absent)."""

    kind: str
    version: str
    status: ModelStatus
    created_at: datetime
    gold_macro_f1: float | None = Field(description="nightly: metrics.scores.gold.macro_f1")
    time_split_macro_f1: float | None = Field(description="nightly: scores.time_split.macro_f1")
    validation_macro_f1: float | None = Field(
        description="the base model's training report: macro_f1 on the validation split"
    )
    eval_loss: float | None = Field(description="LoRA adapters: eval loss on held-out decisions")
    promoted: bool | None = Field(description="nightly: decision.promote")
    run_id: int | None = Field(description="the nightly run that trained it")


class JobRunPublic(SQLModel):
    """One run of a job (the nightly), newest first."""

    id: int
    job: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    counts: dict[str, Any]
    promoted: bool | None = Field(description="details.promoted of a run that retrained")
    error: str | None


class MetricsOverviewPublic(SQLModel):
    """Everything the metrics dashboard plots, for one window."""

    window: MetricsWindowPublic
    throughput: list[ThroughputBucketPublic] = Field(description="every bucket, oldest first")
    latency: list[LatencyPercentilesPublic] = Field(
        description="per bucket, stage and measure (buckets without verdicts are absent)"
    )
    latency_window: list[LatencyPercentilesPublic] = Field(description="the whole window")
    latency_sample: LatencySamplePublic
    decision_mix: list[DecisionCountPublic]
    category_mix: list[CategoryCountPublic]
    to_humans: HumanSharePublic
    agreement: list[AgreementPublic] = Field(description="per human label, taxonomy order")
    agreement_total: AgreementPublic
    reviewer_agreement: list[ReviewerAgreementPublic] = Field(
        default_factory=list, description="per review category, taxonomy order"
    )
    reviewer_agreement_total: ReviewerAgreementPublic | None = Field(
        default=None, description="every category; None when no review was double-reviewed"
    )
    queue: QueueMetricsPublic
    model_versions: list[ModelVersionMetricsPublic] = Field(description="oldest first")
    job_runs: list[JobRunPublic] = Field(description="newest first")
