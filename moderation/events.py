"""Kafka events: one pydantic model per topic payload. The Kafka key is always `post_id`."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from moderation.taxonomy import Category, Decision, Stage

SCHEMA_VERSION: Literal[1] = 1

MetadataValue = str | int | float | bool | None

# The tenant of keys and posts created without one (a single-platform deployment).
DEFAULT_TENANT = "default"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    return uuid.uuid4().hex


class Event(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="payload schema version")
    event_id: str = Field(
        default_factory=new_event_id,
        description="unique id of this event (consumers deduplicate on it)",
        examples=["6f1c2b8e0d3a4b1f9c7e5a2d4b6c8e0f"],
    )
    occurred_at: AwareDatetime = Field(
        default_factory=utc_now, description="when it happened (UTC)"
    )
    post_id: str = Field(
        min_length=1,
        max_length=64,
        description="the post this event is about; also the Kafka key",
        examples=["0b9c1f6a5d2e4e8f8a7b6c5d4e3f2a1b"],
    )

    def key(self) -> bytes:
        return self.post_id.encode()


SHA256_HEX = r"^[0-9a-f]{64}$"


class ImageRef(BaseModel):
    """An image of a post as events carry it: where it is stored and its hashes, never bytes.

    The stored bytes are the sanitized re-encoding (no EXIF or other metadata), addressed by
    their SHA-256 (`sha256`); `original_sha256` and `original_md5` hash the bytes as uploaded,
    which is what shared hash lists of known-bad files hold; `pdq` is the perceptual hash
    (256 bits as 64 hex digits) that survives resizing and recompression.
    """

    model_config = ConfigDict(frozen=True)

    sha256: str = Field(pattern=SHA256_HEX, description="of the stored (sanitized) bytes")
    original_sha256: str = Field(pattern=SHA256_HEX, description="of the bytes as uploaded")
    original_md5: str = Field(pattern=r"^[0-9a-f]{32}$", description="of the bytes as uploaded")
    pdq: str = Field(pattern=SHA256_HEX, description="PDQ perceptual hash, 64 hex digits")
    pdq_quality: int = Field(ge=0, le=100, description="PDQ's quality (under 50: unreliable)")
    format: str = Field(max_length=8, examples=["jpeg", "png"])
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    size_bytes: int = Field(gt=0, description="of the stored bytes")
    uri: str = Field(max_length=512, description="the object store's address of the bytes")


class PostSubmitted(Event):
    """`posts.submitted`: a post accepted by the API."""

    text: Annotated[str, Field(min_length=1, max_length=10_000, description="NFC-normalized text")]
    author_id: str = Field(min_length=1, max_length=128, examples=["user-42"])
    tenant: str = Field(
        default=DEFAULT_TENANT,
        pattern=TENANT_PATTERN,
        description="the submitting key's tenant (posts are visible only within it)",
    )
    external_id: str | None = Field(
        default=None, max_length=256, description="the submitter's own id (idempotency)"
    )
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict, description="opaque submitter metadata", examples=[{"lang": "en"}]
    )
    images: list[ImageRef] = Field(
        default_factory=list, max_length=16, description="the post's images (references only)"
    )
    submitted_at: AwareDatetime = Field(default_factory=utc_now)


class ModerationVerdict(Event):
    """`moderation.verdicts`: what one stage decided about a post."""

    decision: Decision
    scores: dict[Category, float] = Field(description="calibrated probability per category")
    primary_category: Category = Field(description="the category the decision is about")
    confidence: float = Field(ge=0.0, le=1.0)
    stage: Stage
    model_version: str = Field(examples=["fast-20261121-3f2a1b"])
    policy_version: str = Field(examples=["v1"])
    rationale: str | None = None
    policy_sections: list[Category] = Field(
        default_factory=list, description="the policy sections the verdict relied on (agent)"
    )
    signals: list[str] = Field(
        default_factory=list,
        description="screening signals raised on the post: `injection:<technique>`, and "
        "`unreadable:<rule>` when stage 1 could not read it (`language:<code>`, "
        "`unfamiliar-words`, `length`)",
        examples=[["injection:fake-system"]],
    )
    latency_ms: float = Field(ge=0.0, description="time from submission to this verdict")
    config_version: str | None = Field(
        default=None,
        max_length=32,
        description="the live configuration it was decided with (`c<n>`, or `static`)",
        examples=["c12"],
    )


class ReviewPriority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


def review_id_for(post_id: str, appeal: int = 0) -> str:
    """The id of a post's review (and of its workflow instance); appeals get their own."""
    return f"review-{post_id}" if appeal == 0 else f"review-{post_id}-appeal-{appeal}"


def report_review_id(post_id: str, number: int) -> str:
    """The id of the `number`-th review that user reports reopened on a post."""
    return f"review-{post_id}-report-{number}"


class ReviewRequested(Event):
    """`review.requested` (HumanReviewRequired): a post that needs a moderator."""

    review_id: str = Field(
        default="",
        max_length=128,
        description="the review and its workflow instance; `review-<post_id>` when empty",
    )
    reason: str = Field(examples=["uncertain: no category passed its threshold"])
    priority: ReviewPriority = ReviewPriority.NORMAL
    verdict: ModerationVerdict = Field(description="the automated verdict being reviewed")
    appeal_of: str | None = Field(
        default=None,
        description="event_id of the human decision this review appeals (or, for an author's "
        "appeal of an action caused by an automated removal, of the removing verdict)",
    )

    @model_validator(mode="after")
    def _default_review_id(self) -> ReviewRequested:
        if not self.review_id:
            object.__setattr__(self, "review_id", review_id_for(self.post_id))
        return self


class AgentRequested(Event):
    """`agent.requested`: an uncertain post handed from stage 1 to the agent service."""

    post: PostSubmitted
    verdict: ModerationVerdict = Field(description="stage 1's verdict (its scores and signals)")
    reason: str = Field(description="why stage 1 could not decide")
    priority: ReviewPriority = Field(description="the review's priority if it comes to one")
    screen: list[str] = Field(
        default_factory=list, description="the injection screen's findings (techniques)"
    )


class ReviewEscalated(Event):
    """`review.escalated`: a review passed its SLA undecided; its priority went up."""

    review_id: str = Field(max_length=128)
    priority: ReviewPriority
    reason: str


class ReviewDecided(Event):
    """`review.decisions` (HumanDecisionMade): a moderator's decision."""

    review_id: str = Field(default="", max_length=128)
    label: Category
    decision: Decision
    moderator_id: str = Field(
        min_length=1,
        description="the deciding API key as `key:<id>` (unique; names repeat); events from "
        "before key ids carry the key's name",
        examples=["key:7"],
    )
    note: str | None = Field(default=None, max_length=2_000)
    overrode: Decision | None = Field(
        default=None, description="the automated decision this one replaced"
    )


class ActionKind(StrEnum):
    """What happens to an author; `reverse` undoes an earlier action (its `reverses`)."""

    WARN = "warn"
    RATE_LIMIT = "rate_limit"
    SUSPEND = "suspend"
    BAN = "ban"
    REVERSE = "reverse"


class AuthorActioned(Event):
    """`authors.actioned`: the enforcement ladder acted on an author, or reversed an action.

    Kafka key: `post_id`, the post whose strike (or overturned strike) caused it. The recorder
    publishes it from its outbox: a redelivery carries the same `event_id`.
    """

    tenant: str = Field(pattern=TENANT_PATTERN)
    author_id: str = Field(min_length=1, max_length=128, examples=["user-42"])
    action: ActionKind
    action_id: str = Field(max_length=40, description="the action (`GET /v1/authors/{id}`)")
    days: int | None = Field(default=None, description="how long a rate limit or suspension is")
    until: AwareDatetime | None = Field(default=None, description="when a timed action ends")
    active_strikes: int = Field(ge=0, description="the author's weighted active strikes")
    reason: str = Field(max_length=500)
    reverses: str | None = Field(
        default=None, max_length=40, description="for `reverse`: the action_id it undoes"
    )
    policy_version: str = Field(max_length=32, examples=["e1"])


class ReportOutcome(StrEnum):
    UPHELD = "upheld"
    REJECTED = "rejected"


class ReportResolved(Event):
    """`reports.resolved`: what became of a user's report (Kafka key: the reported post)."""

    tenant: str = Field(pattern=TENANT_PATTERN)
    report_id: str = Field(max_length=40)
    reporter_id: str = Field(min_length=1, max_length=128)
    reason: Category
    outcome: ReportOutcome
    decision_event_id: str | None = Field(
        default=None,
        max_length=64,
        description="the human decision that settled it (or the verdict that had removed the "
        "post when it was reported)",
    )


class DeadLetter(BaseModel):
    """`<topic>.dlq`: a message that could not be processed, with the error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    source_topic: str
    partition: int
    offset: int
    key: str | None
    payload: str = Field(description="the original bytes (UTF-8, or base64 when not UTF-8)")
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    error_type: str
    error: str
    consumer_group: str
    failed_at: AwareDatetime = Field(default_factory=utc_now)

    @classmethod
    def from_record(cls, record: Any, error: BaseException, *, consumer_group: str) -> DeadLetter:
        """The dead letter for a Kafka ConsumerRecord that could not be processed."""
        raw: bytes = record.value or b""
        encoding: Literal["utf-8", "base64"] = "utf-8"
        try:
            payload = raw.decode("utf-8")
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(raw).decode(), "base64"
        return cls(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode("utf-8", "replace") if record.key else None,
            payload=payload,
            payload_encoding=encoding,
            error_type=type(error).__name__,
            error=str(error)[:2_000],
            consumer_group=consumer_group,
        )
