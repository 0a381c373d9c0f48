"""Shapes of `/v1/posts`: a post to submit, a batch and its results, a post's trail.

Plain pydantic models: the submit routes validate the raw body with them in one pass in
pydantic-core. The trail's shapes keep the names `PostTrail`, `VerdictOut`, `ReviewOut` and
`DecisionOut` because they are component names of the published OpenAPI document. An appeal's
shapes are with the reviews' (`schemas.reviews`): an appeal opens a review.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from moderation.events import ImageRef, MetadataValue

# The PostSubmitted schema allows at most this much; `settings.api.max_text_chars` may lower it.
MAX_TEXT_CHARS = 10_000
MAX_KEY_CHARS = 256


def _nfc(value: object) -> object:
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("text must contain at least one non-whitespace character")
    return value


# Constraints first, validators after: pydantic then runs NFC before the length check and keeps
# its string error types (string_too_short / string_too_long).
PostText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS),
    BeforeValidator(_nfc),
    AfterValidator(_not_blank),
]


# --- submitting: `POST /v1/posts`, `POST /v1/posts:batch` ---------------------------------------

# The schema's hard cap; `settings.images.max_per_post` (4) is what the API allows.
MAX_IMAGES = 16


class ImageIn(BaseModel):
    """An image of a post, as the submitter sends it."""

    model_config = ConfigDict(extra="forbid")

    data_base64: str = Field(
        min_length=4,
        description="the image file (JPEG, PNG, WebP or GIF), base64 with the standard alphabet",
    )


class PostIn(BaseModel):
    """A post to moderate."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"text": "hello world", "author_id": "user-42", "external_id": "p-1"}]
        },
    )

    text: PostText = Field(
        description=f"the post; NFC-normalized, then 1..{MAX_TEXT_CHARS:,} characters"
    )
    author_id: str = Field(min_length=1, max_length=128, examples=["user-42"])
    external_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_KEY_CHARS,
        description=(
            "your id for the post: the same one (per API key) returns the same post_id; "
            "it takes precedence over an Idempotency-Key header"
        ),
    )
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict, description="opaque metadata carried with the post"
    )
    images: list[ImageIn] = Field(
        default_factory=list,
        max_length=MAX_IMAGES,
        description="up to `images.max_per_post` (4) images; checked, stripped of metadata and "
        'stored before the post is accepted (README "Images")',
    )


class PostAccepted(BaseModel):
    """The post is in Kafka (acknowledged with acks=all)."""

    post_id: str
    status: Literal["accepted"] = "accepted"


class BatchIn(BaseModel):
    """Posts of a batch when every one is valid (the fast path: one pass in pydantic-core)."""

    model_config = ConfigDict(extra="forbid")

    posts: list[PostIn]


class BatchEnvelope(BaseModel):
    """Posts of a batch before validation, to tell which ones are invalid."""

    model_config = ConfigDict(extra="forbid")

    posts: list[Any] = Field(min_length=1)


class ItemError(BaseModel):
    """Why one post of a batch was not accepted: `invalid` (fix it) or `unavailable` (resend)."""

    code: Literal["invalid", "unavailable"]
    message: str
    errors: list[dict[str, str]] = Field(default_factory=list)


class BatchItemResult(BaseModel):
    """One post of a batch, in request order: its post id, or its error."""

    index: int
    post_id: str | None = None
    status: Literal["accepted"] | None = None
    error: ItemError | None = None


class BatchResult(BaseModel):
    """The answer to a batch: counts, then one result per post in request order."""

    accepted: int
    rejected: int
    unavailable: int
    results: list[BatchItemResult]


# --- a post's trail: `GET /v1/posts/{post_id}` ----------------------------------------------------


class VerdictOut(BaseModel):
    """A stage's verdict as recorded."""

    model_config = ConfigDict(from_attributes=True)

    stage: str
    decision: str
    primary_category: str
    confidence: float
    scores: dict[str, float]
    model_version: str
    policy_version: str
    rationale: str | None
    latency_ms: float
    config_version: str | None = Field(
        default=None, description="the live configuration it was decided with"
    )
    occurred_at: datetime


class ReviewOut(BaseModel):
    """A human review of the post (its first, then one per appeal)."""

    model_config = ConfigDict(from_attributes=True)

    review_id: str
    appeal_of: str | None
    status: str
    priority: str
    reason: str
    category: str
    claimed_by: str | None = Field(description="`key:<id>` (older rows: a key name)")
    claimed_by_display: str | None = Field(default=None, description="`name (key:<id>)`")
    sla_due_at: datetime | None
    escalated_at: datetime | None
    decided_at: datetime | None
    decided_by: str | None = Field(description="`key:<id>` (older rows: a key name)")
    decided_by_display: str | None = Field(default=None, description="`name (key:<id>)`")
    created_at: datetime
    updated_at: datetime


class DecisionOut(BaseModel):
    """A moderator's decision (append-only)."""

    model_config = ConfigDict(from_attributes=True)

    event_id: str
    review_id: str
    label: str
    decision: str
    moderator_id: str = Field(description="`key:<id>` (older rows: a key name)")
    moderator_display: str | None = Field(default=None, description="`name (key:<id>)`")
    note: str | None
    overrode: str | None
    decided_at: datetime


class PostTrail(BaseModel):
    """What is known about a post in the read model."""

    post_id: str
    status: str
    author_id: str | None
    external_id: str | None
    text: str | None
    submitted_at: datetime | None
    images: list[ImageRef] = Field(
        default_factory=list, description="the post's images: hashes and store addresses"
    )
    verdicts: list[VerdictOut]
    reviews: list[ReviewOut]
    decisions: list[DecisionOut]
