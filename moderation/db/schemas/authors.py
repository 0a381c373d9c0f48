"""Shapes of `/v1/authors/{author_id}`: an author's posts, verdicts, strikes, actions, standing.

SQLModel classes without `table=True`: the `Public` family of `strikes`, `author_actions` and the
posts and verdicts of `moderation.db.models`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlmodel import Field, SQLModel

StrikeState = Literal["active", "expired", "overturned"]
StandingStatus = Literal["good", "warned", "rate_limited", "suspended", "banned"]


class StandingPublic(SQLModel):
    """Where the author stands now: the heaviest action in force."""

    status: StandingStatus
    until: datetime | None = Field(description="when a rate limit or suspension ends")
    action_id: str | None = Field(description="the action in force")
    active_strikes: int = Field(description="active strikes, each counted by its weight")


class AuthorPostPublic(SQLModel):
    """One of the author's posts."""

    post_id: str
    status: str
    text: str
    submitted_at: datetime


class AuthorVerdictPublic(SQLModel):
    """A verdict on one of the listed posts."""

    post_id: str
    stage: str
    decision: str
    primary_category: str
    confidence: float
    model_version: str
    occurred_at: datetime


class StrikePublic(SQLModel):
    """A strike: one per removed post."""

    strike_id: int
    post_id: str
    category: str
    severity: str
    weight: int
    state: StrikeState
    issued_at: datetime
    expires_at: datetime
    overturned_at: datetime | None
    overturned_by: str | None = Field(description="the event (an allow decision) overturning it")
    policy_version: str


class AuthorActionPublic(SQLModel):
    """An action of the enforcement ladder, or the reversal (`reverse`) of one."""

    action_id: str
    action: Literal["warn", "rate_limit", "suspend", "ban", "reverse"]
    days: int | None
    until: datetime | None
    reason: str
    post_id: str = Field(description="the post whose strike (or overturn) caused it")
    threshold: int | None = Field(description="the ladder step's strikes")
    active_strikes: int
    strike_ids: list[int]
    reverses: str | None = Field(description="for `reverse`: the action it undoes")
    reversed_by: str | None = Field(description="the `reverse` action that undid this one")
    created_at: datetime
    policy_version: str


class AuthorPublic(SQLModel):
    """An author of one tenant: a page of posts (newest first) with their verdicts, and every
    strike and action."""

    tenant: str
    author_id: str
    standing: StandingPublic
    post_count: int
    limit: int
    offset: int
    posts: list[AuthorPostPublic]
    verdicts: list[AuthorVerdictPublic]
    strikes: list[StrikePublic]
    actions: list[AuthorActionPublic]
