"""SQLModel tables of the read model (Kafka is the log; these are projections of it).

PostgreSQL in the stack, SQLite in the embedded demo: only portable column types are used.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Dialect,
    Enum,
    Index,
    TypeDecorator,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from moderation.events import DEFAULT_TENANT, utc_now


class AwareDateTime(TypeDecorator[datetime]):
    """Timestamps stay timezone-aware UTC on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def _json_column() -> Any:
    return Column(JSON, nullable=False)


def _aware(nullable: bool = False) -> Any:
    return Column(AwareDateTime(), nullable=nullable)


def _enum_column(enum: type[StrEnum], *, index: bool = False) -> Any:
    """Store an enum by its value as plain text, readable by dashboards and raw SQL."""
    return Column(
        Enum(enum, native_enum=False, values_callable=lambda e: [m.value for m in e], length=16),
        nullable=False,
        index=index,
    )


class PostStatus(StrEnum):
    PENDING = "pending"  # submitted, no verdict yet
    ALLOWED = "allowed"
    REMOVED = "removed"
    IN_REVIEW = "in_review"
    DECIDED = "decided"  # a human decided


class Post(SQLModel, table=True):
    __tablename__ = "posts"
    # The recorder writes a post, then updates its derived status when the verdict arrives.
    # Free space in each page and no index on `status` let PostgreSQL do that update in place
    # (a HOT update), which roughly halves the cost of the second write.
    __table_args__ = {"postgresql_with": {"fillfactor": 70}}

    id: str = Field(primary_key=True, max_length=64)
    # The submitting key's tenant: keys of another tenant never see the post.
    tenant: str = Field(default=DEFAULT_TENANT, max_length=64, index=True)
    text: str
    author_id: str = Field(index=True, max_length=128)
    external_id: str | None = Field(default=None, max_length=256, index=True)
    metadata_: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON))
    # The post's images as `events.ImageRef` dumps (their store address and hashes, no bytes).
    images: list[dict[str, Any]] = Field(default_factory=list, sa_column=_json_column())
    status: PostStatus = Field(default=PostStatus.PENDING, sa_column=_enum_column(PostStatus))
    submitted_at: datetime = Field(sa_column=_aware())
    recorded_at: datetime = Field(default_factory=utc_now, sa_column=_aware())


class Verdict(SQLModel, table=True):
    __tablename__ = "verdicts"
    __table_args__ = (UniqueConstraint("post_id", "stage", "model_version"),)

    id: int | None = Field(default=None, primary_key=True)
    post_id: str = Field(index=True, max_length=64)
    event_id: str = Field(max_length=64)
    stage: str = Field(max_length=16)
    decision: str = Field(max_length=16, index=True)
    primary_category: str = Field(max_length=32)
    confidence: float
    scores: dict[str, float] = Field(default_factory=dict, sa_column=_json_column())
    model_version: str = Field(max_length=128)
    policy_version: str = Field(max_length=32)
    rationale: str | None = None
    policy_sections: list[str] = Field(default_factory=list, sa_column=_json_column())
    signals: list[str] = Field(default_factory=list, sa_column=_json_column())
    latency_ms: float
    # The live configuration the verdict was made with (`moderation/live_config.py`).
    config_version: str | None = Field(default=None, max_length=32)
    occurred_at: datetime = Field(sa_column=_aware())
    recorded_at: datetime = Field(default_factory=utc_now, sa_column=_aware())


class ReviewStatus(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    ESCALATED = "escalated"
    DECIDED = "decided"


class Review(SQLModel, table=True):
    """A human review task: one per review id (a post's first review, then one per appeal).

    `status` is what the last write set; a claim also expires with time, which the crud reads
    take into account (`crud.effective_review_status`).
    """

    __tablename__ = "reviews"

    id: int | None = Field(default=None, primary_key=True)
    review_id: str = Field(unique=True, max_length=128)
    post_id: str = Field(index=True, max_length=64)
    appeal_of: str | None = Field(
        default=None, max_length=64, description="event_id of the human decision appealed"
    )
    status: ReviewStatus = Field(
        default=ReviewStatus.PENDING, sa_column=_enum_column(ReviewStatus, index=True)
    )
    priority: str = Field(default="normal", max_length=16, index=True)
    reason: str
    category: str = Field(max_length=32, index=True)
    claimed_by: str | None = None
    claim_expires_at: datetime | None = Field(default=None, sa_column=_aware(nullable=True))
    sla_due_at: datetime | None = Field(default=None, sa_column=_aware(nullable=True))
    escalated_at: datetime | None = Field(default=None, sa_column=_aware(nullable=True))
    decided_at: datetime | None = Field(default=None, sa_column=_aware(nullable=True))
    decided_by: str | None = None
    created_at: datetime = Field(default_factory=utc_now, sa_column=_aware())
    updated_at: datetime = Field(default_factory=utc_now, sa_column=_aware())


class HumanDecision(SQLModel, table=True):
    """Append-only: one row per human decision event (`ReviewDecided`).

    Not `Decision`: that is the allow / remove / review enum (`moderation.taxonomy`) which
    verdicts and human decisions carry.
    """

    __tablename__ = "decisions"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=64)
    review_id: str = Field(default="", max_length=128, index=True)
    post_id: str = Field(index=True, max_length=64)
    label: str = Field(max_length=32)
    decision: str = Field(max_length=16)
    moderator_id: str
    note: str | None = None
    overrode: str | None = Field(
        default=None, max_length=16, description="the automated decision this one replaced"
    )
    decided_at: datetime = Field(sa_column=_aware())


class AuditLog(SQLModel, table=True):
    """Append-only: who did what, when, with the state before and after."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    actor: str
    action: str = Field(max_length=64, index=True)
    entity: str = Field(max_length=32)
    entity_id: str = Field(max_length=64, index=True)
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    at: datetime = Field(default_factory=utc_now, sa_column=_aware())
    # The tenant of the post the entry is about; None for global changes (live configuration,
    # API keys), which only keys that see every tenant may read.
    tenant: str | None = Field(default=None, max_length=64, index=True)


class ModelStatus(StrEnum):
    CHAMPION = "champion"
    CHALLENGER = "challenger"
    RETIRED = "retired"


class ModelVersion(SQLModel, table=True):
    """The model registry."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("kind", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)  # "fast" | "agent-lora"
    version: str = Field(max_length=128)
    status: ModelStatus = Field(default=ModelStatus.CHALLENGER, sa_column=_enum_column(ModelStatus))
    artifact_uri: str
    artifact_sha256: str | None = Field(
        default=None,
        max_length=64,
        description="SHA-256 of the artifact's files (`classifier.artifacts.artifact_digest`); "
        "loaders refuse an artifact without it or with another",
    )
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=_json_column())
    created_at: datetime = Field(default_factory=utc_now, sa_column=_aware())


class JobRun(SQLModel, table=True):
    __tablename__ = "job_runs"

    id: int | None = Field(default=None, primary_key=True)
    job: str = Field(max_length=64, index=True)
    status: str = Field(max_length=16)
    started_at: datetime = Field(default_factory=utc_now, sa_column=_aware())
    finished_at: datetime | None = Field(default=None, sa_column=_aware(nullable=True))
    counts: dict[str, Any] = Field(default_factory=dict, sa_column=_json_column())
    details: dict[str, Any] = Field(default_factory=dict, sa_column=_json_column())


class ApiKey(SQLModel, table=True):
    """API keys, hashed at rest: only `prefix` (for lookup) and the hash are stored."""

    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128)
    prefix: str = Field(unique=True, max_length=32)
    key_hash: str = Field(max_length=128)
    scopes: list[str] = Field(default_factory=list, sa_column=_json_column())
    tenant: str = Field(default=DEFAULT_TENANT, max_length=64, index=True)
    # Further tenants a `moderate` key may work on (`*`: all); other scopes see only `tenant`.
    granted_tenants: list[str] = Field(default_factory=list, sa_column=_json_column())
    # The moderator groups (`settings.review.groups`) a `moderate` key works on; empty: all.
    moderator_groups: list[str] = Field(default_factory=list, sa_column=_json_column())
    created_at: datetime = Field(default_factory=utc_now, sa_column=_aware())
    revoked_at: datetime | None = Field(default=None, sa_column=_aware(nullable=True))


class IdempotencyKey(SQLModel, table=True):
    """Maps a submitter's external_id / Idempotency-Key to the post id it created."""

    __tablename__ = "idempotency_keys"

    key: str = Field(primary_key=True, max_length=300)
    post_id: str = Field(max_length=64)
    published: bool = False
    created_at: datetime = Field(default_factory=utc_now, sa_column=_aware())


class ConfigEntry(SQLModel, table=True):
    """The live configuration (`moderation/live_config.py`), one row per key, read by the
    services through the Dapr Configuration API (`configuration.postgresql`).

    The columns are the ones Dapr's component reads, in its order (`SELECT *`: key, value,
    version, metadata); `version` is a global, rising number, so the newest row names the
    version of the whole configuration. A trigger notifies Dapr of every change
    (`db/engine.py`). Changes are written by the API and audited in `audit_log`.
    """

    __tablename__ = "moderation_config"

    key: str = Field(primary_key=True, max_length=128)
    value: str = Field(max_length=1_000)
    version: str = Field(max_length=32)
    meta: dict[str, str] | None = Field(default=None, sa_column=Column("metadata", JSON))


class WebhookEndpoint(SQLModel, table=True):
    """An outbound webhook endpoint of a tenant (`services/webhooks/`, README "Webhooks").

    The signing secret is stored usable (HMAC needs it, it cannot be hashed like an API key);
    the API shows it only when it is created or rotated. After a rotation the previous secret
    signs too until `previous_secret_expires_at`. Deleting an endpoint sets `disabled_at`: its
    delivery log stays readable.
    """

    __tablename__ = "webhook_endpoints"

    id: str = Field(primary_key=True, max_length=40)
    tenant: str = Field(default=DEFAULT_TENANT, max_length=64, index=True)
    owner_key_id: int | None = Field(default=None, index=True, description="who registered it")
    url: str = Field(max_length=2_048)
    event_types: list[str] = Field(default_factory=list, sa_column=_json_column())
    secret: str = Field(max_length=128)
    previous_secret: str | None = Field(default=None, max_length=128)
    previous_secret_expires_at: datetime | None = Field(
        default=None, sa_column=_aware(nullable=True)
    )
    created_at: datetime = Field(default_factory=utc_now, sa_column=_aware())
    disabled_at: datetime | None = Field(default=None, sa_column=_aware(nullable=True))


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    SUCCEEDED = "succeeded"
    DEAD = "dead"  # every attempt failed until its deadline: the dead-letter record


class WebhookDelivery(SQLModel, table=True):
    """One event for one endpoint; its id is the `webhook-id` every attempt carries.

    Unique on (endpoint, event): a redelivered Kafka event creates nothing new.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    endpoint_id: str = Field(max_length=40)
    event_id: str = Field(max_length=64)
    event_type: str = Field(max_length=32)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=_json_column())
    status: DeliveryStatus = Field(
        default=DeliveryStatus.PENDING, sa_column=_enum_column(DeliveryStatus)
    )
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utc_now, sa_column=_aware())
    expires_at: datetime = Field(
        sa_column=_aware(), description="after a failed attempt past it, the delivery is dead"
    )
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=1_000)
    created_at: datetime = Field(default_factory=utc_now, sa_column=_aware())
    delivered_at: datetime | None = Field(default=None, sa_column=_aware(nullable=True))


class Strike(SQLModel, table=True):
    """A strike against an author: one per removed post (recorder; `crud/strikes.py`).

    Derived like the post status: a post whose latest human decision is `remove` (or, without
    one, whose most authoritative automated verdict is) holds a strike; a later human `allow`
    overturns it (`overturned_by`: that decision's event id). Active = not overturned and not
    expired.
    """

    __tablename__ = "strikes"
    __table_args__ = (
        UniqueConstraint("tenant", "author_id", "post_id"),
        Index("ix_strikes_author", "tenant", "author_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=64)
    author_id: str = Field(max_length=128)
    post_id: str = Field(max_length=64, index=True)
    category: str = Field(max_length=32)
    severity: str = Field(max_length=32)
    weight: int = Field(description="what it counts on the ladder (the policy's, when issued)")
    policy_version: str = Field(max_length=32)
    cause_event_id: str = Field(max_length=64, description="the decision or verdict removing it")
    issued_at: datetime = Field(sa_column=_aware())
    expires_at: datetime = Field(sa_column=_aware())
    overturned_at: datetime | None = Field(default=None, sa_column=_aware(nullable=True))
    overturned_by: str | None = Field(default=None, max_length=64)


class AuthorAction(SQLModel, table=True):
    """An action taken on an author by the enforcement ladder, or the reversal of one.

    Also the outbox of `AuthorActioned`: the recorder publishes rows with `published` false after
    its transaction commits (again on its next batch and at start-up when that failed), each
    under its own stable `event_id`.
    """

    __tablename__ = "author_actions"
    __table_args__ = (
        Index("ix_author_actions_author", "tenant", "author_id"),
        Index("ix_author_actions_unpublished", "published"),
    )

    # The order actions were taken in (and are published in); `action_id` names one.
    id: int | None = Field(default=None, primary_key=True)
    action_id: str = Field(unique=True, max_length=40)
    event_id: str = Field(unique=True, max_length=64)
    tenant: str = Field(max_length=64)
    author_id: str = Field(max_length=128)
    post_id: str = Field(max_length=64, description="the post whose strike (or overturn) led here")
    action: str = Field(max_length=16, description="warn, rate_limit, suspend, ban or reverse")
    days: int | None = None
    until: datetime | None = Field(default=None, sa_column=_aware(nullable=True))
    reason: str = Field(max_length=500)
    threshold: int | None = Field(default=None, description="the ladder step's `strikes`")
    active_strikes: int = Field(description="weighted active strikes when it was taken")
    strike_ids: list[int] = Field(default_factory=list, sa_column=_json_column())
    reverses: str | None = Field(default=None, max_length=40)
    reversed_by: str | None = Field(default=None, max_length=40)
    policy_version: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utc_now, sa_column=_aware())
    published: bool = False
    published_at: datetime | None = Field(default=None, sa_column=_aware(nullable=True))


class Report(SQLModel, table=True):
    """A user's report of a post (`POST /v1/reports`), one per (tenant, reporter, post).

    Open until a human decision on the post made after it (or the post already removed when
    reported): then upheld (remove) or rejected (allow), and published as `ReportResolved` by the
    recorder, like `AuthorAction`, from `published` false rows.
    """

    __tablename__ = "reports"
    __table_args__ = (
        UniqueConstraint("tenant", "reporter_id", "post_id"),
        Index("ix_reports_post", "post_id", "resolved_at"),
        Index("ix_reports_reporter", "tenant", "reporter_id", "created_at"),
        Index("ix_reports_unpublished", "published"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant: str = Field(max_length=64)
    reporter_id: str = Field(max_length=128)
    post_id: str = Field(max_length=64)
    reason: str = Field(max_length=32)
    text: str = Field(default="", max_length=2_000)
    weight: float = Field(description="the reporter's reliability when reporting (0 to 1)")
    created_at: datetime = Field(default_factory=utc_now, sa_column=_aware())
    resolved_at: datetime | None = Field(default=None, sa_column=_aware(nullable=True))
    outcome: str | None = Field(default=None, max_length=16)
    decision_event_id: str | None = Field(default=None, max_length=64)
    resolution_event_id: str | None = Field(default=None, max_length=64)
    published: bool = False


class ReviewVote(SQLModel, table=True):
    """A moderator's judgement of a double-reviewed review that did not end it (issue 15).

    A share of reviews (`review.double_review_share`) needs two moderators: the first one's
    judgement is a vote (ordinal 1); a second moderator who agrees decides the review (the usual
    `decisions` row); one who disagrees adds vote 2, and a third moderator's decision settles
    it. Reviewer agreement (Cohen's kappa) pairs vote 1 with the second judgement: vote 2, else
    the review's decision. Written by the API in the transaction that releases the claim.
    """

    __tablename__ = "review_votes"
    __table_args__ = (
        UniqueConstraint("review_id", "ordinal"),
        UniqueConstraint("review_id", "moderator_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=64)
    review_id: str = Field(max_length=128, index=True)
    post_id: str = Field(max_length=64, index=True)
    ordinal: int = Field(description="1: the first judgement, 2: the disagreeing second")
    moderator_id: str = Field(max_length=64)
    label: str = Field(max_length=32)
    decision: str = Field(max_length=16)
    note: str | None = None
    voted_at: datetime = Field(sa_column=_aware())


class HashListEntry(SQLModel, table=True):
    """A known-bad image hash on a list kept in the database (issue 16).

    Lists also come from files (`images.hashlist_dir`); these are the ones added through the API
    (`/v1/hashlists`, or a moderator's removal that adds the post's images). A list has one
    category; the worker reloads them every `images.hashlist_reload_seconds`.
    """

    __tablename__ = "hash_list_entries"
    __table_args__ = (UniqueConstraint("list_name", "kind", "hash"),)

    id: int | None = Field(default=None, primary_key=True)
    list_name: str = Field(max_length=64, index=True)
    category: str = Field(max_length=32)
    kind: str = Field(max_length=8, description="pdq | md5 | sha256")
    hash: str = Field(max_length=64)
    note: str = Field(default="", max_length=500)
    added_by: str = Field(max_length=64)
    added_at: datetime = Field(default_factory=utc_now, sa_column=_aware())
