"""Shapes of `/v1/reviews` (the moderators' queue, a decision) and of an appeal (it opens a review).

SQLModel classes without `table=True`: the `Public` / `Create` / `Accepted` family of the review
tables in `moderation.db.models`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, model_validator
from sqlmodel import Field, SQLModel

from moderation.db.models import ReviewStatus
from moderation.events import ImageRef
from moderation.taxonomy import Category


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
    tenant: str | None = Field(
        default=None, description="the post's tenant (null while it is not recorded yet)"
    )
    group: str = Field(
        description="the moderator group it is routed to now, by its category and its post's "
        "language (`GET /v1/reviews/groups`)",
    )
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
    images: list[ImageRef] = Field(
        default_factory=list,
        description="the post's images (hashes and store addresses; the bytes: "
        "`GET /v1/images/{sha256}`)",
    )
    votes: int = Field(
        default=0,
        description="double review: judgements other moderators already gave (1: you are the "
        "second reviewer; 2: they disagreed and you decide); what they chose is not shown",
    )
    suggestion: SuggestionPublic | None
    policy_section: str | None = Field(description="the policy text for `category`")
    precedents: list[PrecedentPublic] = Field(description="up to 3 similar past decisions")


class ReviewGroupPublic(SQLModel):
    """A moderator group: what is routed to it and how many of its reviews are open."""

    name: str
    categories: list[str] = Field(description="review categories it takes (empty: any)")
    languages: list[str] = Field(description="post languages it takes (empty: any)")
    open: int = Field(description="its undecided reviews, of the tenants the key sees")
    mine: bool = Field(description="whether the key lists and claims this group's reviews")
    default: bool = Field(default=False, description="the group of reviews no other matches")


class ReviewGroupsPublic(SQLModel):
    """`GET /v1/reviews/groups`: the groups in routing order, the default group last."""

    items: list[ReviewGroupPublic]
    key_groups: list[str] | None = Field(
        description="the groups the key works on; null: every group (admin, or no groups)"
    )


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
    add_images_to_hashlist: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="a removal only: add the post's images (PDQ, and the uploaded file's SHA-256 "
        "and MD5) to this existing hash list of the decision's label, so re-uploads are "
        "removed at once",
    )


DecisionStatus = Literal["accepted", "awaiting_second_review", "awaiting_tie_break"]


class DecisionAccepted(SQLModel):
    """The decision was handed to the review's workflow, which records and publishes it; or,
    on a double-reviewed review, recorded as a vote that leaves the review open for another
    moderator."""

    review_id: str
    event_id: str = Field(description="the ReviewDecided event's id (a vote's id)")
    status: DecisionStatus = Field(
        default="accepted",
        description="accepted: handed to the workflow (202); awaiting_second_review: the first "
        "of two independent judgements, recorded (200); awaiting_tie_break: the second "
        "moderator disagreed, recorded (200), and a third decides",
    )


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


MAX_BULK_DECISIONS = 500
# What `?language=` accepts: a lower-case ISO 639 code, optionally with a region or script.
LANGUAGE_PATTERN = r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$"


class BulkDecisionCreate(SQLModel):
    """One decision for many reviews: listed ones, or every open review of one author.

    Exactly one of `review_ids` and `author_id`; `tenant` narrows an author to one tenant (an
    author is a tenant's: without it, the author's reviews in every tenant the key sees).
    """

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    review_ids: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_BULK_DECISIONS,
        description=f"the reviews to decide (1 to {MAX_BULK_DECISIONS}, no repeats)",
    )
    author_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="decide the author's open reviews"
    )
    tenant: str | None = Field(
        default=None, min_length=1, max_length=64, description="the author's tenant"
    )
    label: Category = Field(description="the category the posts fall in (safe when allowed)")
    decision: Literal["allow", "remove"]
    note: str | None = Field(default=None, max_length=2_000)

    @model_validator(mode="after")
    def _one_selection(self) -> BulkDecisionCreate:
        if (self.review_ids is None) == (self.author_id is None):
            raise ValueError("give exactly one of review_ids and author_id")
        if self.tenant is not None and self.author_id is None:
            raise ValueError("tenant narrows author_id: give it only with author_id")
        if self.review_ids is not None and len(set(self.review_ids)) != len(self.review_ids):
            raise ValueError("review_ids lists a review more than once")
        return self


class BulkDecisionOutcome(SQLModel):
    """What became of one review of a bulk decision."""

    review_id: str
    outcome: Literal["decided", "voted", "skipped", "failed"] = Field(
        description="decided: handed to its workflow; voted: a double-reviewed review, your "
        "judgement recorded and the review left for another moderator (reason); skipped: not "
        "decidable by you (reason); failed: its workflow could not be told, so it was reopened"
    )
    reason: str | None = None
    event_id: str | None = Field(default=None, description="the ReviewDecided event's id")


class BulkDecisionResult(SQLModel):
    """Per-review outcomes of a bulk decision, in the order decided, and their counts."""

    outcomes: list[BulkDecisionOutcome]
    decided: int
    voted: int = 0
    skipped: int
    failed: int
