"""Every API shape, defined once: what the REST API accepts and returns, what the dashboard reads.

Tables live in `moderation.db.models`; these are the `Create` / `Public` / `Accepted` families
(SQLModel without `table=True`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypeAlias

from pydantic import ConfigDict
from sqlmodel import Field, SQLModel

from moderation.db.models import ModelStatus, ReviewStatus
from moderation.taxonomy import Category

# --- API shapes of the review tables (the Create / Public family) ------------------------------


class SuggestionPublic(SQLModel):
    """The automated verdict a review is about: what the models suggested."""

    stage: str
    decision: str
    primary_category: str
    confidence: float
    scores: dict[str, float]
    rationale: str | None
    model_version: str
    policy_version: str
    policy_sections: list[str] = Field(default_factory=list)
    signals: list[str] = Field(default_factory=list)


class PrecedentPublic(SQLModel):
    """A similar past human decision (char n-gram cosine similarity)."""

    post_id: str
    text: str
    label: str
    decision: str
    note: str | None
    similarity: float


class ReviewPublic(SQLModel):
    """A review as the moderators' API shows it.

    `status` is the effective status at the time of the request: a claim that ran out no
    longer counts as claimed.
    """

    review_id: str
    post_id: str
    text: str | None = Field(description="the post (null while it is not recorded yet)")
    author_id: str | None
    status: ReviewStatus
    priority: str = Field(description="urgent, high, normal or low")
    reason: str
    category: str
    claimed_by: str | None = Field(
        description="the claiming API key as `key:<id>` (older rows: a key name)"
    )
    claimed_by_display: str | None = Field(
        default=None, description="the claimer as people read it: `name (key:<id>)`"
    )
    claim_expires_at: datetime | None
    sla_due_at: datetime | None
    escalated_at: datetime | None
    decided_at: datetime | None
    decided_by: str | None = Field(
        description="the deciding API key as `key:<id>` (older rows: a key name)"
    )
    decided_by_display: str | None = Field(
        default=None, description="the decider as people read it: `name (key:<id>)`"
    )
    created_at: datetime
    appeal_of: str | None = Field(description="event_id of the decision this review appeals")
    suggestion: SuggestionPublic | None
    policy_section: str | None = Field(description="the policy text for `category`")
    precedents: list[PrecedentPublic] = Field(description="up to 3 similar past decisions")


class ReviewsPublic(SQLModel):
    """A page of the review queue and how many reviews match the filters."""

    items: list[ReviewPublic]
    total: int
    limit: int
    offset: int


class DecisionCreate(SQLModel):
    """A moderator's decision on a claimed review."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    label: Category = Field(description="the category the post falls in (safe when allowed)")
    decision: Literal["allow", "remove"]
    note: str | None = Field(default=None, max_length=2_000)


class DecisionAccepted(SQLModel):
    """The decision was handed to the review's workflow, which records and publishes it."""

    review_id: str
    event_id: str = Field(description="the ReviewDecided event's id")
    status: Literal["accepted"] = "accepted"


class ReviewStatsPublic(SQLModel):
    """Queue statistics, as Bluesky Ozone's (`crud.review_stats` defines each number)."""

    pending: int = Field(description="undecided, unclaimed, not escalated")
    escalated: int = Field(description="undecided, unclaimed, escalated past their SLA")
    claimed: int = Field(description="undecided with a live claim")
    inbound_24h: int = Field(description="reviews created in the last 24 hours")
    actioned_24h: int = Field(description="reviews decided in the last 24 hours")
    action_rate: float | None = Field(
        description="share of the last 24 hours' decisions that removed the post"
    )
    avg_handling_seconds: float | None = Field(
        description="mean time from review creation to decision, last 24 hours"
    )


class AppealCreate(SQLModel):
    """Why the submitter disputes a moderator's decision."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    reason: str = Field(min_length=1, max_length=2_000)


class AppealAccepted(SQLModel):
    """The appeal is in Kafka: a high-priority review of the post, linked to the decision."""

    review_id: str
    post_id: str
    appeal_of: str
    status: Literal["accepted"] = "accepted"


# --- API shape of the metrics overview (`GET /v1/metrics/overview`, `crud.metrics_overview`) ---


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
    queue: QueueMetricsPublic
    model_versions: list[ModelVersionMetricsPublic] = Field(description="oldest first")
    job_runs: list[JobRunPublic] = Field(description="newest first")
